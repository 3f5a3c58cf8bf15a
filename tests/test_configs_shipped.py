"""Every shipped recipe config loads, builds its models, and its RED pairs validate."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch

from redistill.distill import auto_pairs, parse_pairs, validate_pairs
from redistill.models import create_model
from redistill.train import load_config

# The configs ship inside the package; `configs/` at the top of the checkout links there.
CONFIGS = Path(str(resources.files("redistill") / "configs"))
SHIPPED = sorted(p for d in ("demo", "fashion_mnist", "stl10", "imagenet") for p in (CONFIGS / d).glob("*.yaml"))
# (classes, channels) of each data set. Pairs depend on resolutions only through ratios, so
# 3-channel recipes are checked at small sizes (32 px for the x16 STL10 nets, 64 px for the
# x32 ImageNet ones: final maps of 2 x 2, so every stage keeps a distinct resolution) to
# keep this test cheap; Fashion-MNIST at its native 28 px.
DATA = {"fashion_mnist": (10, 1, 28), "stl10": (10, 3, 32), "imagefolder": (1000, 3, 64)}
# Recipe keys that must be equal across the teacher, vanilla and RED configs of one family.
RECIPE = ("data", "optim", "schedule", "run")


def _family(path: Path) -> str:
    for suffix in ("_teacher", "_x4_vanilla", "_x4_red", "teacher", "student_vanilla", "student_red"):
        if path.stem.endswith(suffix):
            return path.parent.name + "/" + path.stem[: -len(suffix)].rstrip("_")
    raise AssertionError(f"unexpected config name {path}")


def test_shipped_configs_exist():
    names = {f"{p.parent.name}/{p.name}" for p in SHIPPED}
    for d in ("demo", "fashion_mnist"):
        assert {f"{d}/teacher.yaml", f"{d}/student_vanilla.yaml", f"{d}/student_red.yaml"} <= names
    for fam in ("resnext18", "mobilenetv2", "mobilenetv3_small"):
        assert {f"stl10/{fam}_teacher.yaml", f"stl10/{fam}_x4_vanilla.yaml", f"stl10/{fam}_x4_red.yaml"} <= names
    for fam in ("resnet18", "resnet50"):
        assert {f"imagenet/{fam}_teacher.yaml", f"imagenet/{fam}_x4_red.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_loads_and_pairs_validate(path):
    cfg = load_config(path)
    classes, channels, size = DATA[cfg.data.name]
    size = cfg.data.image_size or size  # the demo resizes Fashion-MNIST to 56 px
    kw = dict(num_classes=classes, in_channels=channels, **cfg.model.options)
    student = create_model(cfg.model.student, **kw)
    if cfg.distill.method is None:
        assert cfg.model.teacher is None and cfg.distill.pairs is None
        return
    assert cfg.distill.method == "red"
    assert cfg.model.teacher_checkpoint, "a RED recipe must name the teacher's checkpoint"
    teacher = create_model(cfg.model.teacher, **kw)
    example = (1, channels, size, size)
    if cfg.distill.pairs == "auto":
        pairs = auto_pairs(student, teacher, example)
        assert pairs and pairs[0].side == "out"
    else:
        pairs = parse_pairs(cfg.distill.pairs)
        # The shipped (authors') pairs are what the resolution rule proposes.
        proposed = [(p.student, p.teacher, p.side) for p in auto_pairs(student, teacher, example)]
        assert [(p.student, p.teacher, p.side) for p in pairs] == proposed
    shapes = validate_pairs(student, teacher, pairs, example)
    assert len(shapes) == len(pairs)
    # The RED student and its teacher differ in stem stride only: same output, same classes.
    with torch.no_grad():
        assert student.eval()(torch.zeros(example)).shape == (1, classes)


@pytest.mark.parametrize("family", sorted({_family(p) for p in SHIPPED}))
def test_family_shares_one_recipe(family):
    """Teacher, vanilla and RED runs of a family train on the same recipe (a fair comparison)."""
    paths = [p for p in SHIPPED if _family(p) == family]
    cfgs = {p.stem: load_config(p) for p in paths}
    assert len(cfgs) == 3, paths
    recipes = {name: {k: getattr(c, k) for k in RECIPE} for name, c in cfgs.items()}
    first = next(iter(recipes.values()))
    for name, recipe in recipes.items():
        assert recipe == first, f"{family}: {name} uses another recipe"
    teacher = next(c for n, c in cfgs.items() if n.endswith("teacher"))
    red = next(c for n, c in cfgs.items() if n.endswith("red"))
    vanilla = next(c for n, c in cfgs.items() if n.endswith("vanilla"))
    assert red.model.teacher == teacher.model.student
    assert red.model.student == vanilla.model.student != teacher.model.student


def test_checkout_configs_link_is_the_package_data():
    checkout = Path(__file__).resolve().parents[1] / "configs"
    assert checkout.resolve() == CONFIGS.resolve()


@pytest.mark.parametrize("path", sorted((CONFIGS / "stl10").glob("*.yaml")), ids=lambda p: p.stem)
def test_stl10_recipe_is_the_authors(path):
    # The authors' run manager sets weight decay 0 for STL10, and only MobileNetV3-small has dropout.
    cfg = load_config(path)
    assert cfg.optim.weight_decay == 0.0
    assert cfg.model.options["dropout"] == (0.2 if path.stem.startswith("mobilenetv3_small") else 0.0)


def test_demo_is_the_paper_shaped_pair():
    """The demo's student keeps a later down-sampling (3 RED pairs), as the paper's students do."""
    cfg = load_config(CONFIGS / "demo" / "student_red.yaml")
    kw = dict(num_classes=10, in_channels=1)
    student, teacher = create_model(cfg.model.student, **kw), create_model(cfg.model.teacher, **kw)
    pairs = auto_pairs(student, teacher, (1, 1, cfg.data.image_size, cfg.data.image_size))
    assert [(p.student, p.teacher, p.side) for p in pairs] == [
        ("conv1", "layer2.0", "out"), ("layer2.0", "layer3.0", "in"), ("layer2.0", "layer3.0", "out")]
