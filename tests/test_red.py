"""RED block math, ablations, module surgery, layouts, the RED loss and the "red" method."""

import math

import pytest
import torch
import torch.nn as nn

from redistill.distill import create_method
from redistill.distill import REDMethod
from redistill.distill.red import (
    REDBlock,
    REDWrapped,
    apply_red_layout,
    insert_red,
    red_layout,
    red_loss,
)
from redistill.errors import UserError


def _identity_bn(bn: nn.BatchNorm2d) -> None:
    # eval BN computes (x - mean) / sqrt(var + eps) * 1 + 0: with var = 1 - eps it is the identity
    bn.running_var.fill_(1.0 - bn.eps)


def _hand_block(**opts) -> REDBlock:
    """One-channel block whose convs and BNs are set so the math is easy by hand:
    gate g = sigmoid(2 x), encoder r = ReLU6(x)."""
    block = REDBlock(1, **opts).eval()
    with torch.no_grad():
        if block.gate is not None:
            block.gate[0].weight.fill_(2.0)
            _identity_bn(block.gate[1])
        if block.encoder is not None:
            block.encoder[0].weight.zero_()
            k = block.encoder[0].kernel_size[0] // 2
            block.encoder[0].weight[0, 0, k, k] = 1.0  # centre tap only: the conv is the identity
            _identity_bn(block.encoder[1])
    return block


X = torch.tensor([-1.0, 0.5, 7.0]).view(1, 1, 1, 3)


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_red_block_matches_hand_computation():
    y = _hand_block()(X).flatten().tolist()
    # y = x * sigmoid(2x) + relu6(x)
    expected = [-1.0 * sig(-2.0) + 0.0, 0.5 * sig(1.0) + 0.5, 7.0 * sig(14.0) + 6.0]
    assert y == pytest.approx(expected, abs=1e-6)
    assert expected[0] == pytest.approx(-0.1192029, abs=1e-6)  # the arithmetic itself, written out


@pytest.mark.parametrize(
    "opts, formula",
    [
        ({"gate": False}, lambda x: x + min(max(x, 0.0), 6.0)),  # x + r(x)
        ({"encoder": False}, lambda x: x * sig(2 * x)),  # x * g(x)
        ({"shortcut": False}, lambda x: min(max(x * sig(2 * x), 0.0), 6.0)),  # r(x * g(x))
    ],
)
def test_ablations(opts, formula):
    y = _hand_block(**opts)(X).flatten().tolist()
    assert y == pytest.approx([formula(v) for v in X.flatten().tolist()], abs=1e-6)


def test_kernel_options_keep_spatial_size():
    block = REDBlock(3, gate_kernel=3, encoder_kernel=5)
    assert block.gate[0].kernel_size == (3, 3) and block.encoder[0].kernel_size == (5, 5)
    assert block(torch.randn(2, 3, 7, 9)).shape == (2, 3, 7, 9)
    assert block.options() == {"gate_kernel": 3, "encoder_kernel": 5, "gate": True, "encoder": True, "shortcut": True}


def test_bad_block_options_are_user_errors():
    with pytest.raises(UserError, match="odd"):
        REDBlock(4, encoder_kernel=2)
    with pytest.raises(UserError, match="gate or its encoder"):
        REDBlock(4, gate=False, encoder=False)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Flatten())


def test_output_side_surgery_is_visible_and_applied():
    model = _model().eval()
    layer = model[1]
    block = insert_red(model, "1", "out", channels=6)
    assert isinstance(model[1], REDWrapped) and model[1].layer is layer
    assert "REDBlock" in repr(model)
    keys = model.state_dict().keys()
    assert "1.red_out.gate.0.weight" in keys and "1.red_out.encoder.0.weight" in keys and "1.layer.weight" in keys
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), block(layer(model[0](x))).flatten(1))


def test_input_side_surgery_feeds_the_layer_the_red_output():
    model = _model().eval()
    layer = model[1]
    block = insert_red(model, "1", "in", example_input=torch.randn(1, 3, 8, 8))
    assert block.channels == 4  # read from the feature entering layer 1
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), layer(block(model[0](x))).flatten(1))


def test_both_sides_share_one_wrapper_and_duplicates_are_rejected():
    model = _model()
    insert_red(model, "1", "in", channels=4)
    insert_red(model, "1", "out", channels=6)
    wrapper = model[1]
    assert wrapper.red_in.channels == 4 and wrapper.red_out.channels == 6
    assert [n for n, _ in wrapper.named_children()] == ["red_in", "layer", "red_out"]
    with pytest.raises(UserError, match="already has a RED block"):
        insert_red(model, "1", "out", channels=6)


def test_surgery_errors():
    model = _model()
    with pytest.raises(UserError, match=r"no layer '1\.conv'.*did you mean 1"):
        insert_red(model, "1.conv", "out", channels=4)
    with pytest.raises(UserError, match="top-level layers: 0, 1, 2"):
        insert_red(model, "7", "out", channels=4)
    with pytest.raises(UserError, match="side"):
        insert_red(model, "1", "middle", channels=4)
    with pytest.raises(UserError, match="unknown RED option 'kernel'"):
        insert_red(model, "1", "out", channels=4, kernel=3)
    with pytest.raises(UserError, match="channels"):
        insert_red(model, "1", "out")


def test_layout_round_trip_rebuilds_the_same_network():
    model = _model().eval()
    insert_red(model, "0", "out", channels=4, encoder_kernel=5)
    insert_red(model, "1", "in", channels=4, gate=False)
    layout = red_layout(model)
    assert layout == [
        {"layer": "0", "side": "out", "channels": 4, "gate_kernel": 1, "encoder_kernel": 5, "gate": True,
         "encoder": True, "shortcut": True},
        {"layer": "1", "side": "in", "channels": 4, "gate_kernel": 1, "encoder_kernel": 3, "gate": False,
         "encoder": True, "shortcut": True},
    ]  # fmt: skip
    fresh = apply_red_layout(_model(), layout).eval()
    fresh.load_state_dict(model.state_dict())  # strict: same keys and shapes
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(fresh(x), model(x))


def test_red_loss_by_hand():
    # student (B=1, C=2, 1 x 2): channel mean [2, 2]; teacher (C=1): [1, 0]
    s = torch.tensor([[[[1.0, 3.0]], [[3.0, 1.0]]]])
    t = torch.tensor([[[[1.0, 0.0]]]])
    # cosine: 1 - (2*1 + 2*0) / (sqrt(8) * 1) = 1 - 1/sqrt(2)
    assert red_loss(s, t, "cosine").item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    # mse: ((2-1)^2 + (2-0)^2) / 2
    assert red_loss(s, t, "mse").item() == pytest.approx(2.5)
    # cosine is averaged over the batch: a second, perfectly aligned image halves it
    s2, t2 = torch.cat([s, s]), torch.cat([t, torch.tensor([[[[5.0, 5.0]]]])])
    assert red_loss(s2, t2, "cosine").item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(1, 2, 1, 2\).*\(1, 1, 2, 1\)"):
        red_loss(s, t.view(1, 1, 2, 1))


def test_red_method_weights_and_registry():
    method = create_method(
        "red",
        pairs=[{"student": "0", "teacher": "0", "alpha": 50}, "1 -> 1"],
        alpha=10,
        w_task=0.3,
        w_distill=0.7,
    )
    assert isinstance(method, REDMethod) and method.name == "red"
    assert method.task_weight == 0.3
    assert method.term_names() == ["red/0", "red/1"]
    # w_distill * alpha_k / K
    assert method.term_weight("red/0") == pytest.approx(0.7 * 50 / 2)
    assert method.term_weight("red/1") == pytest.approx(0.7 * 10 / 2)
    with pytest.raises(UserError, match="unknown option 'alpah'.*did you mean alpha"):
        create_method("red", alpah=1)
    with pytest.raises(UserError, match="distance"):
        REDMethod(distance="l1")


def test_red_method_setup_inserts_blocks_and_terms_follow_the_pairs():
    teacher, student = _model(), _model()
    method = REDMethod(pairs=[{"student": "1", "teacher": "1", "side": "in"}, {"student": "1", "teacher": "1"}])
    out = method.setup(student, teacher, torch.randn(2, 3, 8, 8))
    assert out is student and isinstance(student[1], REDWrapped)
    assert method.student_refs() == ["1.red_in", "1.red_out"]
    assert method.teacher_refs() == ["1:in", "1"]
    feats_s = {"1.red_in": torch.randn(2, 4, 8, 8), "1.red_out": torch.randn(2, 6, 4, 4)}
    feats_t = {"1:in": torch.randn(2, 4, 8, 8), "1": torch.randn(2, 6, 4, 4)}
    terms = method(feats_s, feats_t, None, None, None)
    assert set(terms) == {"red/1:in", "red/1"}
    assert terms["red/1"].item() == pytest.approx(red_loss(feats_s["1.red_out"], feats_t["1"]).item())
    with pytest.raises(RuntimeError, match="already"):
        method.setup(student, teacher, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_mean_gradient_matches_autograd_and_keeps_the_layout(channels_last):
    from redistill.distill.red import channel_mean

    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(2, 3, 4, dtype=torch.float32)
    (channel_mean(x) * w).sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    (ref.mean(dim=1).float() * w).sum().backward()
    assert channel_mean(x).dtype == torch.float32
    assert torch.allclose(x.grad, ref.grad)
    assert x.grad.dtype == x.dtype
    assert x.grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_block_on_a_parameter_free_layer_follows_the_model_dtype():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2)).double()
    block = insert_red(model, "1", "out", example_input=torch.randn(1, 3, 8, 8))
    assert block.channels == 4 and block.gate[0].weight.dtype == torch.float64
    assert model(torch.randn(1, 3, 8, 8, dtype=torch.float64)).shape == (1, 4, 4, 4)


def test_nested_pairs_and_their_layout():
    def nested() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU()))

    student, teacher = nested().eval(), nested()
    method = REDMethod(pairs=["1 -> 1", "1.0 -> 1.0"])
    method.setup(student, teacher, torch.randn(1, 3, 8, 8))
    # the inner layer is wrapped first, so both blocks end up where the pairs said
    assert method.student_refs() == ["1.red_out", "1.layer.0.red_out"]
    assert [(e["layer"], e["side"]) for e in red_layout(student)] == [("1", "out"), ("1.0", "out")]
    fresh = apply_red_layout(nested(), red_layout(student)).eval()
    fresh.load_state_dict(student.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(fresh(x), student(x))
    with pytest.raises(UserError, match="w_task must be a number"):
        REDMethod(w_task="half")
