"""Student derivation: the authors' pairs, torchvision models, bad factors, memory figures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torchvision

from redistill.errors import UserError
from redistill.memory import analyze_memory
from redistill.models import build_family, derive_student, model_slots
from redistill.models.factory import build_spec

# Every teacher/student pair of docs/method.md section 2 (classification) with its authors' resolution.
PAIRS = [
    ("mobilenetv2-1-1222121", 4, "mobilenetv2-4-1221111", 128),
    ("mobilenetv2-1-1222121", 8, "mobilenetv2-8-1211111", 128),
    ("mobilenetv3_small-1-22121111211", 4, "mobilenetv3_small-4-22111111111", 128),
    ("resnext18-1-21222", 2, "resnext18-2-21221", 128),
    ("resnext18-1-21222", 4, "resnext18-4-11221", 128),
    ("resnext18-1-21222", 8, "resnext18-8-11211", 128),
    ("resnet18", 4, "resnet18:strides=8,1,1,2,2,1", 224),
    ("resnet34", 4, "resnet34:strides=8,1,1,2,2,1", 224),
    ("resnet50", 4, "resnet50:strides=8,1,1,2,2,1", 224),
    ("cifar_resnet20", 4, "cifar_resnet20:strides=4,1,1,1", 28),
    # Not a paper family: the ResNeXt-18 order above applied to its slots (last stage, first, middle).
    ("cifar_resnet20:strides=1,2,2,2", 2, "cifar_resnet20:strides=2,2,2,1", 56),
    ("cifar_resnet20:strides=1,2,2,2", 4, "cifar_resnet20:strides=4,1,2,1", 56),
    ("cifar_resnet20:strides=1,2,2,2", 8, "cifar_resnet20:strides=8,1,1,1", 56),
]


def _small_width(spec: str) -> float:
    if spec.startswith("resnext"):
        return 32
    return {"mob": 0.25, "cif": 4, "res": 16}[spec[:3]]


def _feature_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Size]:
    """Output shape of every feature_info module."""
    seen, handles = {}, []
    for info in model.feature_info:
        handles.append(model.get_submodule(info["module"]).register_forward_hook(
            lambda m, i, o, name=info["module"]: seen.__setitem__(name, o.shape)))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _final_features(model: nn.Module, x: torch.Tensor) -> torch.Size:
    """Shape of the last feature_info output (what the classifier pools)."""
    return _feature_shapes(model, x)[model.feature_info[-1]["module"]]


@pytest.mark.parametrize("teacher_spec,factor,student_spec,px", PAIRS, ids=[p[2] for p in PAIRS])
def test_authors_pairs_are_reproduced(teacher_spec, factor, student_spec, px):
    in_ch = 1 if teacher_spec.startswith("cifar") else 3
    # Narrow models keep the test fast; strides and layouts do not depend on width.
    kw = {"in_channels": in_ch, "num_classes": 10, "width": _small_width(teacher_spec)}
    built = build_family(teacher_spec, **kw)
    teacher, t_info = built.module.eval(), built.info
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, s_info = derive_student(built, factor)
    student = student.eval()

    expected = build_family(student_spec, **kw).info
    assert s_info.strides == expected.strides
    assert math.prod(s_info.strides) == math.prod(t_info.strides)
    assert s_info.strides[0] == t_info.strides[0] * factor
    assert s_info.spec == expected.spec
    assert t_info == build_family(teacher_spec, **kw).info  # the teacher is untouched
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())

    # Twice the total reduction, smaller than the authors' px, keeps the test fast.
    side = 2 * math.prod(t_info.strides)
    x = torch.randn(1, in_ch, side, side)
    with torch.no_grad():
        assert student(x).shape == teacher(x).shape
        shapes = _feature_shapes(student, x)
        assert shapes[student.feature_info[-1]["module"]] == _final_features(teacher, x)
    for info in student.feature_info:
        shape = shapes[info["module"]]
        assert shape[1] == info["num_chs"] and side // shape[-1] == info["reduction"], (info, shape)


def test_student_carries_teacher_weights_where_shapes_agree():
    teacher = build_family("resnet18:strides=2,1,2,2,2,2", num_classes=10)
    student = derive_student(teacher, 2, drop=["layer1"]).module
    t, s = teacher.module.state_dict(), student.state_dict()
    assert torch.equal(s["layer3.0.conv1.weight"], t["layer3.0.conv1.weight"])
    assert torch.equal(s["layer4.0.downsample.0.weight"], t["layer4.0.downsample.0.weight"])
    # layer1 no longer down-samples and keeps its width, so its shortcut conv is gone.
    assert "layer1.0.downsample.0.weight" in t and "layer1.0.downsample.0.weight" not in s


def test_drop_option_names_the_slots():
    teacher = build_family("resnet18")
    student, info = derive_student(teacher, 4, drop=["layer2", "layer3"])
    assert info.strides == (8, 2, 1, 1, 1, 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _final_features(student.eval(), x) == _final_features(teacher.module.eval(), x)


@pytest.mark.parametrize(
    "factor,drop,needle",
    [
        (3, None, "power of two"),
        (1, None, "power of two"),
        (2.0, None, "power of two"),
        (32, None, "largest factor it can absorb is 16"),
        (2, ["layer1"], "stride 1, not 2"),
        (2, ["layer9"], "did you mean"),
        (4, ["layer4"], "exactly 2 distinct slots"),
        (2, ["conv1"], "not a later stride slot"),
    ],
)
def test_bad_factors_and_drops_raise(factor, drop, needle):
    with pytest.raises(UserError) as info:
        derive_student(build_family("resnet18"), factor, drop=drop)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_factor_beyond_what_the_student_absorbs():
    student = derive_student(build_family("cifar_resnet8"), 4)  # [4,1,1,1]: nothing left to drop
    with pytest.raises(UserError, match="only 0"):
        derive_student(student, 2)


def test_unsupported_model_is_an_error():
    with pytest.raises(UserError, match="no known stride slots"):
        derive_student(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), 2)


def test_a_project_module_without_its_record_is_refused():
    # Its strides live in the record that build_family returned, not on the module.
    with pytest.raises(UserError, match="resolve_model"):
        derive_student(build_family("resnet18").module, 2)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_teachers(name):
    teacher = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    before = model_slots(teacher).strides
    student = derive_student(teacher, 4).module.eval()
    slots = model_slots(student)
    assert model_slots(teacher).strides == before  # edited on a copy
    assert slots.strides[0] == before[0] * 4 and math.prod(slots.strides) == math.prod(before)
    assert sum(a != b for a, b in zip(before, slots.strides)) == 3  # stem + two dropped slots
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        if name.startswith("resnet"):
            trunk_t = nn.Sequential(*list(teacher.children())[:-2])
            trunk_s = nn.Sequential(*list(student.children())[:-2])
        else:
            trunk_t, trunk_s = teacher.features, student.features
        assert trunk_s(x).shape == trunk_t(x).shape
        assert student(x).shape == teacher(x).shape
    # Same parameters: only strides moved.
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), student.state_dict().values()))


def test_torchvision_resnet_shortcut_follows_the_block():
    student = derive_student(torchvision.models.resnet50(weights=None), 4).module
    assert student.layer4[0].conv2.stride == (1, 1) and student.layer4[0].downsample[0].stride == (1, 1)
    assert student.conv1.stride == (8, 8) and student.maxpool.stride == 1


def test_torchvision_spec_round_trip():
    teacher = build_spec({"source": "torchvision", "name": "mobilenet_v3_small", "num_classes": 10})
    student = derive_student(teacher, 4)
    rebuilt = build_spec(student.info.spec)
    assert model_slots(rebuilt).strides == model_slots(student).strides == list(student.info.strides)
    with pytest.raises(UserError, match="12 stride slots"):
        build_spec({"source": "torchvision", "name": "mobilenet_v3_small", "strides": [2, 2]})


# Figures of the "Must hold": fp32, batch 1, 224 px, BN folded (the analyzer's default).
def _peaks(model: nn.Module) -> dict[str, int]:
    return analyze_memory(model, (1, 3, 224, 224), dtype="fp32", convention="live").peaks


def test_resnet18_student_peak_memory():
    teacher = build_family("resnet18")
    student = derive_student(teacher, 4)
    assert student.info.strides == (8, 1, 1, 2, 2, 1)
    t, s = _peaks(teacher.module), _peaks(student.module)
    for convention in ("layer", "live"):
        assert t[convention] == 3920 * 1024, convention
        assert s[convention] == 784 * 1024, convention


@pytest.mark.slow
def test_resnet50_student_peak_memory():
    teacher = build_family("resnet50")
    t, s = _peaks(teacher.module), _peaks(derive_student(teacher, 4).module)
    assert t["live"] == 9408 * 1024 and s["live"] == 2352 * 1024
