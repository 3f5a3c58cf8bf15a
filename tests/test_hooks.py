"""Scoped feature capture: values, input/output refs, cleanup, bad names."""

import pytest
import torch
import torch.nn as nn

from redistill.distill.hooks import capture, make_ref, parse_ref
from redistill.errors import UserError


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(3, 4, 1), nn.Tanh()))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_capture_outputs_and_inputs_match_manual_forward():
    net = _net()
    x = torch.randn(2, 2, 5, 5)
    with capture(net, ["0", "2.0:in", "2.0", "2"]) as feats:
        out = net(x)
    conv0 = net[0](x)
    assert torch.equal(feats["0"], conv0)
    assert torch.equal(feats["2.0:in"], torch.relu(conv0))
    assert torch.equal(feats["2.0"], net[2][0](torch.relu(conv0)))
    assert torch.equal(feats["2"], out)


def test_captured_features_keep_their_graph():
    net = _net()
    with capture(net, ["2.0"]) as feats:
        net(torch.randn(1, 2, 4, 4))
    feats["2.0"].sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_hooks_are_removed_on_exit_and_on_error():
    net = _net()
    with capture(net, ["0", "2.0:in"]):
        assert _hook_count(net) == 2
    assert _hook_count(net) == 0
    with pytest.raises(RuntimeError):
        with capture(net, ["0"]):
            raise RuntimeError("boom")
    assert _hook_count(net) == 0


def test_unknown_name_suggests_close_names_and_leaves_no_hook():
    net = _net()
    with pytest.raises(UserError, match=r"no layer '2\.5' in the student.*did you mean"):
        with capture(net, ["0", "2.5"], "student"):
            pass
    assert _hook_count(net) == 0


def test_bad_side_suffix_is_a_user_error():
    with pytest.raises(UserError, match="layer:in"):
        with capture(_net(), ["0:input"]):
            pass


def test_ref_round_trip():
    assert parse_ref("layer2.0:in") == ("layer2.0", "in")
    assert parse_ref("layer2.0") == ("layer2.0", "out")
    assert make_ref("layer2.0", "in") == "layer2.0:in"
    assert make_ref("conv1", "out") == "conv1"
