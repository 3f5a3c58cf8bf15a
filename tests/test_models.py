"""Model families: specs, forward/backward, feature_info, torchvision compatibility, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
import yaml

from redistill.errors import UserError
from redistill.models import build_family, create_model, get_family, is_model_spec, list_models, register_model

# Classifiers (model(x) -> logits); the diffusion UNet has its own tests in test_unet.py.
CLASSIFIERS = [n for n in list_models() if get_family(n).task == "classification"]

# Small inputs and widths keep the suite fast (the code paths are those of full width);
# 32 px survives the default x32 reduction of the ImageNet layouts.
FAMILY_INPUT = {
    "cifar_resnet": (2, 1, 28, 28),
    "mobilenetv2": (2, 3, 32, 32),
    "mobilenetv3_small": (2, 3, 32, 32),
    "mobilenetv3_large": (2, 3, 32, 32),
    "resnet": (2, 3, 32, 32),
    "resnext": (2, 3, 32, 32),
}
SMALL_WIDTH = {"cifar_resnet": 4, "mobilenet": 0.25, "resnet": 16, "resnext18": 32, "resnext50": 16}


def _input_for(name: str) -> tuple[int, ...]:
    for prefix, shape in FAMILY_INPUT.items():
        if name.startswith(prefix):
            return shape
    raise KeyError(name)


def _build(name: str, **kw) -> nn.Module:
    shape = _input_for(name)
    width = next(w for prefix, w in SMALL_WIDTH.items() if name.startswith(prefix))
    return create_model(name, num_classes=7, in_channels=shape[1], width=width, **kw)


def _feature_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Size]:
    shapes, handles = {}, []
    for info in model.feature_info:
        module = model.get_submodule(info["module"])
        handles.append(module.register_forward_hook(
            lambda m, i, o, name=info["module"]: shapes.__setitem__(name, o.shape)))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def test_registry_lists_every_family():
    names = list_models()
    for expected in ["resnet18", "resnet34", "resnet50", "resnext18", "resnext50", "mobilenetv2",
                     "mobilenetv3_small", "mobilenetv3_large", "cifar_resnet8", "cifar_resnet56"]:
        assert expected in names
    assert names == sorted(names)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = _build(name).train()
    x = torch.randn(_input_for(name))
    out = model(x)
    assert out.shape == (x.shape[0], 7)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_feature_info_matches_real_shapes(name):
    model = _build(name).eval()
    x = torch.randn(_input_for(name))
    with torch.no_grad():
        shapes = _feature_shapes(model, x)
    assert len(model.feature_info) >= 3
    for info in model.feature_info:
        shape = shapes[info["module"]]
        assert shape[1] == info["num_chs"], info
        assert x.shape[-1] // shape[-1] == info["reduction"], (info, shape)



@pytest.mark.parametrize("name", CLASSIFIERS)
def test_build_family_returns_a_record_and_leaves_the_module_clean(name):
    model, info = build_family(name, num_classes=7)
    assert info.source == "redistill" and info.name == name and info.num_classes == 7
    assert info.slots and len(info.slots) == len(info.strides)
    assert all(isinstance(model.get_submodule(slot), nn.Module) for slot in info.slots)
    # Metadata travels in the record, not as attributes patched onto the module.
    assert not any(hasattr(model, a) for a in ("_redistill_spec", "strides", "stride_slots", "input_shape"))


def test_feature_info_follows_the_strides():
    model = create_model("resnet18:strides=8,1,1,2,2,1").eval()
    reductions = {f["module"]: f["reduction"] for f in model.feature_info}
    assert reductions == {"relu": 8, "layer1": 8, "layer2": 16, "layer3": 32, "layer4": 32}
    with torch.no_grad():
        shapes = _feature_shapes(model, torch.randn(1, 3, 64, 64))
    assert shapes["layer1"][-1] == 8 and shapes["layer4"][-1] == 2


@pytest.mark.parametrize(
    "forms",
    [
        ("resnext18-4-11221", "resnext18:strides=4,1,1,2,2,1", {"name": "resnext18", "strides": [4, 1, 1, 2, 2, 1]}),
        ("mobilenetv2-4-1221111", "mobilenetv2:strides=4,1,2,2,1,1,1,1",
         {"name": "mobilenetv2", "strides": [4, 1, 2, 2, 1, 1, 1, 1]}),
        ("mobilenetv3_small-4-22111111111", "mobilenetv3_small:strides=4,2,2,1,1,1,1,1,1,1,1,1",
         {"name": "mobilenetv3_small", "strides": [4, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1]}),
        ("cifar_resnet20-4-111", "cifar_resnet20:strides=4,1,1,1", {"name": "cifar_resnet20", "strides": [4, 1, 1, 1]}),
    ],
)
def test_spec_forms_build_the_same_model(forms):
    built = [build_family(f) for f in forms]
    ref = {k: v.shape for k, v in built[0].module.state_dict().items()}
    for m, info in built[1:]:
        assert info.strides == built[0].info.strides and info.spec == built[0].info.spec
        assert {k: v.shape for k, v in m.state_dict().items()} == ref


def test_yaml_spec_and_options_pass_through():
    spec = yaml.safe_load(
        "{name: resnet18, strides: [8, 1, 1, 2, 2, 1], num_classes: 10, in_channels: 1, dropout: 0.2}"
    )
    model = create_model(spec)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (8, 8)
    assert model.fc.out_features == 10 and isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.2
    assert create_model("mobilenetv2", width=0.5).features[0][0].out_channels == 16
    assert create_model("cifar_resnet", depth=8, width=8).layer3[0].conv1.out_channels == 32
    assert create_model("resnet18:strides=2,2,1,2,2,2:num_classes=5").fc.out_features == 5


@pytest.mark.parametrize("spec", ["resnext18-4-11221", "mobilenetv2:width=0.75", "cifar_resnet:depth=8"] + CLASSIFIERS)
def test_model_spec_round_trips_through_yaml(spec):
    model, info = build_family(spec, num_classes=3)
    text = yaml.safe_dump(info.spec)
    rebuilt, again = build_family(yaml.safe_load(text))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert again == info


def test_mobilenetv2_layout_names():
    model, info = build_family("mobilenetv2-1-1222121")
    assert info.slots[0] == "features.0" and len(info.slots) == 8
    dw = model.get_submodule("features.4.conv.3")
    assert isinstance(dw, nn.Conv2d) and dw.groups == dw.in_channels > 1 and dw.stride == (2, 2)
    first = model.get_submodule("features.1.conv.0")  # expansion 1: the depthwise conv comes first
    assert first.groups == first.in_channels
    assert isinstance(model.classifier, nn.Linear) and len(model.features) == 19


def test_resnext18_second_conv_is_grouped():
    block = create_model("resnext18").layer2[0]
    assert block.conv2.groups == 32 and block.conv1.groups == 1


@pytest.mark.parametrize(
    "name,tv_name",
    [("resnet18", "resnet18"), pytest.param("resnet50", "resnet50", marks=pytest.mark.slow),
     pytest.param("resnext50", "resnext50_32x4d", marks=pytest.mark.slow)],
)
def test_torchvision_checkpoints_load_and_match(name, tv_name, tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.get_model(tv_name, weights=None).eval()
    path = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), path)
    model = create_model(name).eval()
    result = model.load_state_dict(torch.load(path), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_is_model_spec_is_cheap_and_total():
    assert is_model_spec("resnet18") and is_model_spec("resnext18-4-11221")
    assert is_model_spec("resnet18:strides=8,1,1,2,2,1")
    assert is_model_spec("resnet18:strides=8,1")  # known family: building it gives the precise error
    for text in ["mobilenet_v2", "efficientnet_b0", "", "-", "pkg.mod:factory", None, 3, ["resnet18"]]:
        assert not is_model_spec(text)


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("resnet19", "did you mean"),
        ("resnet 18", "family-<stem>-<digits>"),
        ("resnet18:strides=8,1,1", "conv1, maxpool, layer1, layer2, layer3, layer4"),
        ("resnext18-4-1122", "6 stride slots"),
        ("mobilenetv2-1-1422121", "stride 1 or 2"),
        ("resnet18:strides=3,2,1,2,2,2", "power of two"),
        ("resnet18:widht=32", "did you mean width"),
        ("resnet18:strides", "key=value"),
        ({"strides": [1]}, "no 'name'"),
    ],
)
def test_bad_specs_raise_one_line_user_errors(spec, needle):
    with pytest.raises(UserError, match=None) as info:
        create_model(spec)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_cifar_resnet_rejects_unknown_depth():
    with pytest.raises(UserError, match="8, 14, 20, 32, 56"):
        create_model("cifar_resnet", depth=21)


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18", slots=["a"], default_strides=[1], drop_order=[])(lambda **kw: nn.Identity())


def _unread_pixels(spec: str) -> int:
    """Input pixels of a 28 px image that no output depends on (zero input gradient)."""
    model = create_model(spec, in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28, requires_grad=True)
    model.conv1(x).abs().sum().backward()  # the stem alone: what the rest of the net can ever see
    return int((x.grad[0, 0] == 0).sum())


def test_cifar_resnet_stem_kernel_reads_every_pixel_at_stride_4():
    # A 3x3 stem at stride 4 (padding 1) reads rows/columns 0-1, 3-5, ..., 23-25 only: 20 of 28.
    assert _unread_pixels("cifar_resnet20:strides=4,1,1,1") == 28 * 28 - 20 * 20
    assert _unread_pixels("cifar_resnet20:strides=4,1,1,1:stem_kernel=5") == 28 + 27  # last row and column
    assert _unread_pixels("cifar_resnet20:strides=4,1,1,1:stem_kernel=7") == 0
    assert _unread_pixels("cifar_resnet20") == 0
    model, info = build_family("cifar_resnet20:strides=4,1,1,1:stem_kernel=5", in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10) and model.conv1.padding == (2, 2)
    assert info.spec["stem_kernel"] == 5
    with pytest.raises(UserError, match="stem_kernel must be an odd positive integer, got 4"):
        create_model("cifar_resnet20:stem_kernel=4")
