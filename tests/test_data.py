"""Data sets, the fixed-seed validation split, augmentation and loaders."""

import gzip
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from redistill.errors import UserError
from redistill.train.config import load_config
from redistill.train.data import FASHION_MNIST_ROOT, batch_mixer, build_datasets, set_epoch, train_loader


def data_cfg(**data):
    return load_config({"model": {"student": "x"}, "data": {"workers": 0, **data}}).data


def _indices(subset) -> list[int]:
    return list(subset.indices)


def test_synthetic_split_is_disjoint_fixed_and_seeded():
    cfg = data_cfg(name="synthetic", val_fraction=0.25, synthetic={"train_size": 100, "test_size": 20})
    a, b = build_datasets(cfg), build_datasets(cfg)
    assert len(a.train) == 75 and len(a.val) == 25 and len(a.test) == 20
    assert not set(_indices(a.train)) & set(_indices(a.val))
    assert _indices(a.val) == _indices(b.val)  # same seed, same split
    other = build_datasets(data_cfg(name="synthetic", val_fraction=0.25, split_seed=1, synthetic={"train_size": 100}))
    assert _indices(other.val) != _indices(a.val)
    image, label = a.train[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32 and isinstance(label, int)


def test_subset_takes_from_the_training_part_only():
    cfg = data_cfg(name="synthetic", subset=10, val_fraction=0.2, val_subset=5, test_subset=7)
    s = build_datasets(cfg)
    full = build_datasets(data_cfg(name="synthetic", val_fraction=0.2))
    assert len(s.train) == 10 and len(s.val) == 5 and len(s.test) == 7
    assert set(_indices(s.train)) <= set(_indices(full.train))
    assert set(_indices(s.val)) <= set(_indices(full.val))


def test_no_validation_split():
    assert build_datasets(data_cfg(name="synthetic", val_fraction=0.0)).val is None


def test_loader_order_depends_only_on_seed_and_epoch():
    cfg = data_cfg(name="synthetic", batch_size=8, augment={"crop": "none", "flip": False})
    ds = build_datasets(cfg).train

    def first_targets(epoch):
        loader = train_loader(ds, cfg, seed=3)
        set_epoch(loader, 3, epoch)
        return next(iter(loader))[1].tolist()

    torch.manual_seed(0)
    a = first_targets(0)
    torch.manual_seed(99)  # global RNG state must not matter for the order
    assert first_targets(0) == a
    epochs = [first_targets(e) for e in range(1, 4)]
    assert any(e != a for e in epochs)


def test_augmentation_keeps_shape_and_resize():
    cfg = data_cfg(name="synthetic", image_size=24, augment={"crop": "resized", "flip": True, "randaugment_ops": 2})
    s = build_datasets(cfg)
    assert s.info.image_size == 24
    assert s.train[0][0].shape == (1, 24, 24) and s.test[0][0].shape == (1, 24, 24)


def test_batch_mixer_gives_soft_targets():
    cfg = data_cfg(name="synthetic", augment={"cutmix_alpha": 1.0, "mixup_alpha": 0.2})
    mix = batch_mixer(cfg.augment, 4)
    images, targets = mix(torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert images.shape == (6, 1, 8, 8) and targets.shape == (6, 4)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert batch_mixer(data_cfg().augment, 4) is None


def _write_idx(path: Path, array: torch.Tensor, compress: bool) -> None:
    dims = array.shape
    magic = 0x0800 | len(dims)  # unsigned byte data
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + array.numpy().tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_fashion(folder: Path, compress: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 30), ("t10k", 12)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        _write_idx(folder / f"{split}-images-idx3-ubyte", images, compress)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress)


@pytest.mark.parametrize("layout", ["flat_gz", "torchvision_raw"])
def test_fashion_mnist_layouts(tmp_path, layout):
    if layout == "flat_gz":  # the Debian package's layout: idx .gz files side by side
        _fake_fashion(tmp_path)
    else:
        _fake_fashion(tmp_path / "FashionMNIST" / "raw", compress=False)
    s = build_datasets(data_cfg(root=str(tmp_path), val_fraction=0.2))
    assert (len(s.train), len(s.val), len(s.test)) == (24, 6, 12)
    assert s.info.num_classes == 10 and s.info.in_channels == 1 and s.info.image_size == 28
    assert not list(tmp_path.glob("FashionMNIST/raw/*.tmp"))


def test_missing_dataset_names_path_and_fix(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        build_datasets(data_cfg(root=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="expected train-images-idx3-ubyte.gz"):
        build_datasets(data_cfg(root=str(tmp_path)))
    with pytest.raises(UserError, match="data.root is required"):
        build_datasets(data_cfg(name="cifar10"))
    with pytest.raises(UserError, match="CIFAR-10 not found"):
        build_datasets(data_cfg(name="cifar10", root=str(tmp_path)))


def test_default_fashion_mnist_hint_mentions_apt(monkeypatch, tmp_path):
    import redistill.train.data as data

    monkeypatch.setattr(data, "FASHION_MNIST_ROOT", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
        build_datasets(data_cfg())


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="Fashion-MNIST is not installed")
def test_real_fashion_mnist():
    s = build_datasets(data_cfg(subset=100, val_subset=50, test_subset=20))
    assert (len(s.train), len(s.val), len(s.test)) == (100, 50, 20)
    image, label = s.train[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10


def test_image_folder(tmp_path):
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8, generator=gen).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    s = build_datasets(data_cfg(name="imagefolder", root=str(tmp_path), image_size=16, val_fraction=0.25))
    assert s.info.num_classes == 2 and s.info.in_channels == 3
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 4)
    assert s.train[0][0].shape == (3, 16, 16) and s.test[0][0].shape == (3, 16, 16)
    with pytest.raises(UserError, match="train/ and val/"):
        build_datasets(data_cfg(name="imagefolder", root=str(tmp_path / "train")))


def test_preloaded_batches_match_the_per_image_pipeline_without_augmentation():
    from redistill.train.preload import preloaded_loaders

    cfg = data_cfg(name="synthetic", batch_size=8, eval_batch_size=10, augment={"crop": "none", "flip": False})
    splits = build_datasets(cfg)
    train, val, test = preloaded_loaders(splits, cfg, torch.device("cpu"))
    x, y = next(iter(test))
    expected = torch.stack([splits.test[i][0] for i in range(10)])
    assert torch.allclose(x, expected, atol=1e-6)
    assert y.tolist() == [splits.test[i][1] for i in range(10)]
    assert len(train) == len(splits.train) // 8 and len(val) == -(-len(splits.val) // 10)


def test_preloaded_augmentation_is_per_image_and_fixed_by_epoch():
    from redistill.train.preload import TensorBatches

    info = build_datasets(data_cfg(name="synthetic")).info
    images = torch.arange(16 * 4 * 4, dtype=torch.uint8).view(16, 1, 4, 4)
    aug = data_cfg(augment={"crop": "pad", "padding": 1, "flip": True}).augment
    batches = TensorBatches(images, torch.arange(16), 16, info, torch.device("cpu"), aug)

    def epoch(e):
        batches.set_epoch(0, e)
        return next(iter(batches))

    (x0, y0), (again, _), (x1, y1) = epoch(0), epoch(0), epoch(1)
    assert torch.equal(x0, again) and y0.tolist() != y1.tolist()
    raw = x0 * info.std[0] + info.mean[0]  # back to [0, 1] pixels
    pixels = (raw * 255).round().long()
    for img, label in zip(pixels, y0):
        source = images[label].long()
        # each output is a shifted (by at most 1 px, zero-filled) and maybe mirrored copy of its own image
        candidates = []
        for flipped in (source, source.flip(-1)):
            padded = torch.nn.functional.pad(flipped, (1, 1, 1, 1))
            candidates += [padded[:, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(img, c) for c in candidates)


def test_preload_refuses_unsupported_augmentation():
    from redistill.train.preload import preloaded_loaders

    cfg = data_cfg(name="synthetic", augment={"randaugment_ops": 2})
    with pytest.raises(UserError, match="augment.randaugment_ops"):
        preloaded_loaders(build_datasets(cfg), cfg, torch.device("cpu"))


def test_preloaded_resized_crop_boxes_follow_torchvision_rule():
    from redistill.train.preload import resized_crop_boxes

    boxes = resized_crop_boxes(4000, 20, 30, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 20).all() and (left + w <= 30).all()
    assert torch.equal(boxes, boxes.round())  # whole pixels, as torchvision's get_params returns
    share, aspect = h * w / 600, w / h
    assert share.min() >= 0.05 and share.max() <= 1 and 0.4 < share.mean() < 0.6  # area share ~ U(0.08, 1)
    assert aspect.min() > 0.6 and aspect.max() < 1.6  # log-uniform in (3/4, 4/3), rounding aside
    assert len(set(map(tuple, boxes.tolist()))) > 1000 and len(set(top.tolist())) > 10
    again = resized_crop_boxes(4000, 20, 30, torch.Generator().manual_seed(0))
    assert torch.equal(again, boxes)
    # No draw fits a 1 x 40 strip: torchvision's fallback, the central crop clamped to the widest ratio.
    assert resized_crop_boxes(3, 1, 40, torch.Generator().manual_seed(0)).tolist() == [[0.0, 19.0, 1.0, 1.0]] * 3


def test_preloaded_resized_crop_samples_the_box_like_interpolate():
    import torch.nn.functional as F

    from redistill.train.preload import resized_crop

    x = torch.randint(0, 256, (3, 2, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    full = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 3)
    assert torch.allclose(resized_crop(x, full, 16), x.float(), atol=1e-3)  # the whole image at its size: itself
    boxes = torch.tensor([[2.0, 3.0, 8.0, 8.0], [0.0, 0.0, 16.0, 10.0], [5.0, 1.0, 6.0, 12.0]])
    out = resized_crop(x, boxes, 24)
    for img, box, got in zip(x, boxes.long().tolist(), out):
        t, l, h, w = box
        want = F.interpolate(img[None, :, t : t + h, l : l + w].float(), size=(24, 24), mode="bilinear",
                             align_corners=False)[0]
        assert torch.allclose(got[:, 2:-2, 2:-2], want[:, 2:-2, 2:-2], atol=1e-3)  # inside the box's border
    assert out.shape == (3, 2, 24, 24) and out.dtype == torch.float32


def test_preloaded_resized_crop_through_the_loader():
    from redistill.train.preload import preloaded_loaders

    cfg = data_cfg(name="synthetic", canvas=24, image_size=32, batch_size=8, augment={"crop": "resized", "flip": True})
    train, _, test = preloaded_loaders(build_datasets(cfg), cfg, torch.device("cpu"))
    train.set_epoch(0, 0)
    x0, y0 = next(iter(train))
    train.set_epoch(0, 0)
    again, _ = next(iter(train))
    assert x0.shape == (8, 1, 32, 32) and torch.equal(x0, again)  # fixed by (seed, epoch)
    images = (test.images.float() / 255 - test.mean) / test.std
    assert x0.min() >= images.min() - 1e-4 and x0.max() <= images.max() + 1e-4  # bilinear: no new extremes


@pytest.mark.parametrize("size", [40, 12])  # up from the native 16 px, and down (antialiased)
def test_preload_resizes_once_like_the_per_image_pipeline(size):
    from redistill.train.preload import preloaded_loaders

    cfg = data_cfg(name="synthetic", image_size=size, batch_size=8, eval_batch_size=10,
                   augment={"crop": "none", "flip": False})
    splits = build_datasets(cfg)
    train, val, test = preloaded_loaders(splits, cfg, torch.device("cpu"))
    assert train.images.shape[1:] == val.images.shape[1:] == test.images.shape[1:] == (1, size, size)
    assert train.images.dtype == torch.uint8  # resized when built, batches only index it
    mean, std = splits.info.mean[0], splits.info.std[0]
    x, _ = next(iter(test))
    assert x.shape == (10, 1, size, size) and torch.allclose(x, (test.images[:10].float() / 255 - mean) / std)
    for batches, ds in ((train, splits.train), (val, splits.val), (test, splits.test)):
        x, y = (batches.images[:10].float() / 255 - mean) / std, batches.targets[:10]  # what every batch is cut from
        expected = torch.stack([ds[i][0] for i in range(10)])
        assert x.shape == expected.shape == (10, 1, size, size)
        assert torch.allclose(x, expected, atol=1e-6)  # the same resize kernel: equal pixel for pixel
        assert y.tolist() == [ds[i][1] for i in range(10)]


def test_preload_resizes_after_the_canvas():
    from redistill.train.preload import preloaded_loaders

    cfg = data_cfg(name="synthetic", canvas=24, image_size=48, batch_size=8, augment={"crop": "pad", "padding": 2})
    splits = build_datasets(cfg)
    train, _, test = preloaded_loaders(splits, cfg, torch.device("cpu"))
    assert splits.test[0][0].shape == (1, 48, 48) and test.images.shape[1:] == (1, 48, 48)
    train.set_epoch(0, 0)
    x, _ = next(iter(train))
    assert x.shape == (8, 1, 48, 48)  # the pad-and-crop augmentation works on the resized images
    with pytest.raises(UserError, match="resizes square images only, got 5x7"):
        from redistill.train.preload import resize_images

        resize_images(torch.zeros(2, 1, 5, 7, dtype=torch.uint8), 10)


def test_canvas_puts_each_image_whole_at_one_seeded_place():
    from redistill.train.data import place_on_canvas

    images = torch.randint(1, 256, (200, 1, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = place_on_canvas(images, 12, seed=3)
    assert out.shape == (200, 1, 12, 12) and out.dtype == torch.uint8
    places = set()
    for img, src in zip(out, images):
        rows, cols = img[0].nonzero(as_tuple=True)  # the source has no zero pixel: its box is the image
        top, left = int(rows.min()), int(cols.min())
        assert (int(rows.max()) - top, int(cols.max()) - left) == (4, 6)
        assert torch.equal(img[:, top : top + 5, left : left + 7], src)
        assert int(img.count_nonzero()) == 35  # blank everywhere else
        places.add((top, left))
    assert len(places) > 20 and {t for t, _ in places} == set(range(8)) and {l for _, l in places} == set(range(6))
    assert torch.equal(place_on_canvas(images, 12, seed=3), out)
    assert not torch.equal(place_on_canvas(images, 12, seed=4), out)
    square = images[:, :, :, :5]
    assert torch.equal(place_on_canvas(square, 5, seed=0), square)  # a canvas the image's size leaves it as it is


def test_canvas_through_build_datasets_and_preload():
    from redistill.train.preload import preloaded_loaders

    cfg = data_cfg(name="synthetic", canvas=24, batch_size=8, augment={"crop": "none", "flip": False})
    splits = build_datasets(cfg)
    assert splits.info.image_size == 24
    assert splits.train[0][0].shape == splits.test[0][0].shape == (1, 24, 24)
    x, _ = next(iter(preloaded_loaders(splits, cfg, torch.device("cpu"))[2]))
    assert x.shape == (8, 1, 24, 24)
    with pytest.raises(UserError, match=r"data.canvas=10 is smaller than the 16x16 images; set it to at least 16"):
        build_datasets(data_cfg(name="synthetic", canvas=10))
    with pytest.raises(UserError, match="data.canvas works for"):
        build_datasets(data_cfg(name="imagefolder", root="/nonexistent", canvas=40))


@pytest.mark.parametrize(
    "data, words",
    [
        ({"subset": 81}, "'data.subset' is 81 but only 80 training images are available (100 minus 20 held out"),
        ({"val_subset": 21}, "'data.val_subset' is 21 but the validation split has only 20 images"),
        ({"val_fraction": 0.0, "val_subset": 1}, "has only 0 images"),
        ({"test_subset": 21}, "'data.test_subset' is 21 but the test split has only 20 images"),
    ],
)
def test_subset_larger_than_its_split_is_refused(data, words):
    cfg = data_cfg(**{"name": "synthetic", "val_fraction": 0.2, "synthetic": {"train_size": 100, "test_size": 20}, **data})
    with pytest.raises(UserError) as err:
        build_datasets(cfg)
    assert words in str(err.value)


def test_subsets_equal_to_their_split_take_it_whole():
    cfg = data_cfg(name="synthetic", val_fraction=0.2, subset=80, val_subset=20, test_subset=20,
                   synthetic={"train_size": 100, "test_size": 20})
    s = build_datasets(cfg)
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 20)
