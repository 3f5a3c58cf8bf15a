"""Generative metrics: FID / KID against known answers, k-NN precision / recall on hand-worked point
sets, the feature extractors' contract and files, sample loading, and `redistill fid` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from PIL import Image

from redistill.cli.main import main
from redistill.diffusion.features import (
    FORMAT, FashionFeatures, FashionNet, load_fashion_features, load_inception_features, save_fashion_net, sidecar,
    train_fashion_net,
)
from redistill.diffusion.metrics import (
    evaluate_samples, feature_metrics, kth_neighbour_radii, load_samples, pad_to, precision_recall, to_uint8,
)
from redistill.errors import UserError
from redistill.train import fid as fid_mod
from redistill.train.data import FASHION_MNIST_ROOT


def write_png(image: torch.Tensor, path: str) -> None:
    """One uint8 (C, H, W) image as an 8-bit PNG, as PIL (and torchvision's save_image) write it."""
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 1, 32, 32) blobs of random place, size and brightness: a set with spread."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cy, cx = (torch.rand(2, n, 1, 1, generator=gen) * 16 + 8)
    r = torch.rand(n, 1, 1, generator=gen) * 6 + 3
    level = torch.rand(n, 1, 1, generator=gen) * 155 + 100
    blob = level * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    return blob.round().clamp(0, 255).to(torch.uint8).unsqueeze(1)


@pytest.fixture(scope="module")
def extractor() -> FashionFeatures:
    torch.manual_seed(0)
    return FashionFeatures(FashionNet())


@pytest.fixture
def features_file(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "feat.safetensors"
    save_fashion_net(FashionNet(), path, {"test_accuracy": 0.5, "note": "random init"})
    return path


# ---------------------------------------------------------------- FID and KID


def test_fid_of_a_translated_copy_is_the_squared_shift():
    # Same covariance, means apart by delta: FID = |delta|^2 exactly.
    real = torch.randn(400, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64)
    same = feature_metrics(real, real.clone())
    moved = feature_metrics(real, real + delta)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert moved["fid"] == pytest.approx(float(delta.square().sum()), rel=1e-4)


def test_fid_and_kid_of_a_set_against_itself_are_zero_and_against_shifted_data_positive(extractor):
    images = _images(300)
    shifted = (images.int() + 60).clamp(0, 255).to(torch.uint8)  # brighter everywhere
    self_ = evaluate_samples(images, images, extractor, kid_subset_size=100, kid_subsets=20)
    other = evaluate_samples(shifted, images, extractor, kid_subset_size=100, kid_subsets=20)
    # An untrained extractor's features are small, so the scale is relative: ~0 means ~0 next to the shift.
    assert other["fid"] > 0 and self_["fid"] <= 1e-6 * other["fid"]
    assert other["kid_mean"] > 0 and abs(self_["kid_mean"]) < 0.01 * other["kid_mean"]
    assert (self_["precision"], self_["recall"]) == (1.0, 1.0) and other["recall"] < 0.5
    assert (self_["n_real"], self_["n_fake"], self_["kid_subset_size"]) == (300, 300, 100)


def test_kid_is_seeded_and_leaves_the_global_generator_alone():
    a = torch.randn(200, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b = a + 0.3
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = feature_metrics(a, b, kid_subset_size=50, kid_subsets=10, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    again = feature_metrics(a, b, kid_subset_size=50, kid_subsets=10, seed=5)
    other = feature_metrics(a, b, kid_subset_size=50, kid_subsets=10, seed=6)
    assert first["kid_mean"] == again["kid_mean"] and first["kid_std"] > 0
    assert other["kid_mean"] != first["kid_mean"]
    # Small sets: subsets of half the set, so that they differ and the spread means something.
    small = feature_metrics(a[:40], b[:30])
    assert small["kid_subset_size"] == 15 and small["kid_std"] > 0


def test_too_few_points_or_mismatched_features_are_refused():
    with pytest.raises(UserError, match="at least 2 images"):
        feature_metrics(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(UserError, match="one D"):
        feature_metrics(torch.zeros(5, 3), torch.zeros(5, 4))


# ---------------------------------------------------------------- precision and recall


def _pts(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).unsqueeze(1)


def test_precision_recall_of_identical_and_of_far_disjoint_sets():
    a = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    assert precision_recall(a, a.clone()) == (1.0, 1.0)
    assert precision_recall(a, a + 100.0) == (0.0, 0.0)


def test_radii_are_the_kth_neighbour_excluding_the_point_itself():
    # 0, 1, 3: first neighbours at 1, 1, 2; second at 3, 2, 3.
    assert kth_neighbour_radii(_pts(0, 1, 3), 1).tolist() == [1.0, 1.0, 2.0]
    assert kth_neighbour_radii(_pts(0, 1, 3), 2).tolist() == [3.0, 2.0, 3.0]
    with pytest.raises(UserError, match="more than 3 points"):
        kth_neighbour_radii(_pts(0, 1, 3), 3)


def test_precision_recall_worked_examples():
    # real 0,1,2,10 (k=1 radii 1,1,1,8); fake 0,1,2,3 (radii 1,1,1,1). Every fake point is inside a real
    # ball (3 is within 1 of 2): precision 1. Real 10 is 7 from the nearest fake (3), radius 1: recall 3/4.
    assert precision_recall(_pts(0, 1, 2, 10), _pts(0, 1, 2, 3), k=1) == (1.0, 0.75)
    # real 0,1,2,3 (radii 1); fake 0.5,1.5,10,20 (radii 1,1,8.5,10). Fake 10 and 20 lie outside the real
    # balls: precision 1/2; the outlier 10's wide ball covers real 3: recall 1.
    assert precision_recall(_pts(0, 1, 2, 3), _pts(0.5, 1.5, 10, 20), k=1) == (0.5, 1.0)


# ---------------------------------------------------------------- extractors


def test_extractor_features_shape_and_torchmetrics_contract(extractor):
    from torchmetrics.image.fid import FrechetInceptionDistance

    images = _images(6)
    with torch.no_grad():
        feats = extractor(images)
    assert feats.shape == (6, 128) and extractor.num_features == 128
    # torchmetrics takes it as a custom feature model directly (uint8 in, (N, num_features) out).
    fid = FrechetInceptionDistance(feature=extractor)
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert float(fid.compute()) == pytest.approx(0.0, abs=1e-3)


def test_extractor_refuses_images_of_the_wrong_layout(extractor):
    with pytest.raises(UserError, match=r"1 x 28 x 28 images.*pad 28 px"):
        evaluate_samples(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), _images(4), extractor)
    with pytest.raises(UserError, match="3 x 32 x 32 images"):
        evaluate_samples(_images(4), torch.zeros(4, 3, 32, 32, dtype=torch.uint8), extractor)


def test_features_file_round_trip_and_provenance(features_file, extractor):
    loaded = load_fashion_features(features_file)
    images = _images(5)
    with torch.no_grad():
        assert torch.equal(loaded(images), extractor(images))  # both from seed 0
    record = json.loads(sidecar(features_file).read_text())
    assert record["format"] == FORMAT and record["note"] == "random init" and record["config"]["width"] == 16
    assert "test accuracy 50.00%" in loaded.name


def test_features_files_of_the_wrong_layout_are_named(tmp_path):
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(UserError, match="not a safetensors file"):
        load_fashion_features(tmp_path / "text.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="not a redistill Fashion-MNIST extractor"):
        load_fashion_features(tmp_path / "other.safetensors")
    small = FashionNet(width=8)
    meta = {"format": FORMAT, "architecture": "FashionNet", "config": json.dumps({"width": 16})}
    save_file(small.state_dict(), str(tmp_path / "misfit.safetensors"), metadata=meta)
    with pytest.raises(UserError, match=r"do not fit.*shape mismatch"):
        load_fashion_features(tmp_path / "misfit.safetensors")
    with pytest.raises(UserError, match="not found"):
        load_fashion_features(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("aux", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_inception_loads_from_a_stand_in_state_dict(tmp_path, aux):
    from torchvision.models import inception_v3

    path = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=aux, init_weights=False).state_dict(), path)
    extractor = load_inception_features(path)
    assert extractor.num_features == 2048
    with torch.no_grad():
        feats = extractor(_images(2))  # 1 x 32 x 32 -> 3 x 299 x 299 inside
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


def test_inception_refuses_other_layouts_and_code(tmp_path):
    torch.save(FashionNet().state_dict(), tmp_path / "fashion.pth")
    with pytest.raises(UserError, match=r"inception-v3 weights in .* do not fit.*missing keys"):
        load_inception_features(tmp_path / "fashion.pth")
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "nested.pth")
    with pytest.raises(UserError, match="not a state dict"):
        load_inception_features(tmp_path / "nested.pth")

    class Boom:
        def __reduce__(self):
            return (Path("owned").touch, ())

    torch.save({"a": Boom()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="not a readable state dict"):
        load_inception_features(tmp_path / "evil.pth")
    assert not Path("owned").exists()


def test_train_fashion_net_learns_a_separable_toy_problem():
    # Two classes: plain blobs, and blobs with every other row blanked (a texture convolutions see).
    images = _images(512, seed=3)
    labels = torch.arange(512) % 2
    images[labels == 1, :, 1::2] = 0
    net, acc = train_fashion_net(images[:384], labels[:384], images[384:], labels[384:], epochs=4, batch_size=64,
                                 width=8, lr=5e-3)
    assert acc > 0.8 and not net.training


# ---------------------------------------------------------------- images in


def test_to_uint8_and_pad():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(x.clamp(0, 1), value_range=(0.0, 1.0)).flatten().tolist() == [0, 0, 0, 255, 255]
    with pytest.raises(UserError, match="uint8"):
        to_uint8(torch.zeros(1, 1, 2, 2, dtype=torch.int64))
    padded = pad_to(torch.ones(2, 1, 28, 28, dtype=torch.uint8), 32)
    assert padded.shape == (2, 1, 32, 32) and int(padded.sum()) == 2 * 28 * 28 and padded[0, 0, 2, 2] == 1


def test_png_folder_and_tensor_file_give_the_same_images(tmp_path):
    floats = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = to_uint8(floats)
    (tmp_path / "png").mkdir()
    for i, im in enumerate(images):
        write_png(im, str(tmp_path / "png" / f"{i:05d}.png"))
    (tmp_path / "pt").mkdir()
    torch.save(floats, tmp_path / "pt" / "samples.pt")
    assert torch.equal(load_samples(tmp_path / "png"), images)
    assert torch.equal(load_samples(tmp_path / "pt"), images)
    assert torch.equal(load_samples(tmp_path / "pt" / "samples.pt"), images)


def test_bad_sample_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither samples.pt nor PNG"):
        load_samples(tmp_path / "empty")
    (tmp_path / "mixed").mkdir()
    write_png(torch.zeros(1, 32, 32, dtype=torch.uint8), str(tmp_path / "mixed" / "a.png"))
    write_png(torch.zeros(1, 64, 96, dtype=torch.uint8), str(tmp_path / "mixed" / "grid.png"))
    with pytest.raises(UserError, match=r"grid.png is 1x64x96 but a.png is 1x32x32"):
        load_samples(tmp_path / "mixed")
    torch.save({"images": torch.zeros(2, 1, 32, 32)}, tmp_path / "dict.pt")
    with pytest.raises(UserError, match="one .N, C, H, W. image tensor, got dict"):
        load_samples(tmp_path / "dict.pt")


# ---------------------------------------------------------------- redistill fid


def _png_dir(path: Path, images: torch.Tensor) -> Path:
    path.mkdir()
    for i, im in enumerate(images):
        write_png(im, str(path / f"{i:05d}.png"))
    return path


def test_fid_command_on_folders(tmp_path, features_file, capsys):
    samples = _png_dir(tmp_path / "samples", _images(40, seed=1))
    ref = _png_dir(tmp_path / "ref", _images(60, seed=2))
    out = tmp_path / "fid.json"
    rc = main(["fid", str(samples), "--ref", str(ref), "--features", str(features_file), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    record = json.loads(out.read_text())
    assert (record["n_fake"], record["n_real"], record["reference_pool"]) == (40, 40, 60)
    for word in ("FID", "KID", "±", "precision", "recall", "(40 of 60 images)", f"{record['fid']:.3f}"):
        assert word in text
    again = fid_mod.fid_report(samples, ref=ref, n=20, features=features_file)
    assert (again["n_fake"], again["n_real"]) == (20, 20)


def test_fid_refers_a_run_directory_to_its_samples(tmp_path, features_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".redistill-run").write_text("{}")
    with pytest.raises(UserError, match="has no samples/ folder: sample it first"):
        fid_mod.fid_report(run, ref=run, features=features_file)
    _png_dir(run / "samples", _images(8))
    result = fid_mod.fid_report(run, ref=run, features=features_file)
    assert result["fid"] == pytest.approx(0.0, abs=1e-4) and result["n_fake"] == 8


def test_default_extractor_is_trained_once_into_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REDISTILL_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_train(path, data_root=None, **kw):  # the real one takes minutes (see the slow test)
        calls.append(Path(path))
        save_fashion_net(FashionNet(width=4), path, {"test_accuracy": 0.1})
        return {"test_accuracy": 0.1}

    monkeypatch.setattr(fid_mod, "train_extractor", fake_train)
    first = fid_mod.load_extractor()
    second = fid_mod.load_extractor()
    assert calls == [tmp_path / "cache" / fid_mod.DEFAULT_FEATURES]
    assert "training one on the Fashion-MNIST training split" in capsys.readouterr().err
    assert first.num_features == second.num_features == 128


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="Fashion-MNIST not installed")
def test_fid_against_the_fashion_mnist_reference(tmp_path, features_file):
    test_x, _ = fid_mod.fashion_mnist_32("test")
    torch.save(test_x[:50], tmp_path / "samples.pt")
    result = fid_mod.fid_report(tmp_path / "samples.pt", n=50, features=features_file)
    assert result["reference_pool"] == 10_000 and result["n_real"] == 50
    assert "fashion-mnist test split" in result["reference"]


@pytest.mark.slow
def test_the_real_extractor_trains_to_a_useful_accuracy(tmp_path):
    record = fid_mod.train_extractor(tmp_path / "x.safetensors", epochs=1, progress=False)
    assert record["test_accuracy"] > 0.85
    assert load_fashion_features(tmp_path / "x.safetensors").num_features == 128
