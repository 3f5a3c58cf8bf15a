"""Patch-based execution: exact outputs on every kind of local op and grid, the analyzer's peak of
the executor equal to its measured op-boundary peak, and the search on hand-worked models."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from redistill.cli.main import main
from redistill.errors import UserError
from redistill.memory import replay
from redistill.memory.liveness import plan_live
from redistill.patch.executor import compile_patches
from redistill.patch.plan import candidate_splits, evaluate, prepare_model, search, trace_patched


class Block(nn.Module):
    """A ResNet basic block, with a strided 1x1 projection when it down-samples."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class Concat(nn.Module):
    """Two branches of different receptive fields, concatenated on channels."""

    def __init__(self, c: int):
        super().__init__()
        self.a = nn.Conv2d(c, 3, 1)
        self.b = nn.Sequential(nn.Conv2d(c, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 5, padding=2))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


def _bodies() -> dict[str, tuple[nn.Sequential, int]]:
    """Tiny bodies whose last module outputs a 12x12 map (every grid up to 4 divides it), and their input size."""
    return {
        "chain": (nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                nn.Conv2d(4, 6, 5, 2, 2), nn.ReLU6(inplace=True), nn.MaxPool2d(3, 1, 1)), 23),
        "dilated": (nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, 2, 3, dilation=3), nn.Conv2d(4, 5, 7, padding=3)), 23),
        "residual": (nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                   Block(8, 8, 1), Block(8, 12, 2)), 47),
        "concat": (nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), Concat(4), nn.Conv2d(6, 4, 3, padding=1)), 23),
        "pools": (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(3, 2, ceil_mode=True),
                                nn.AvgPool2d(2, 2), nn.AvgPool2d(3, 1, 1), nn.Conv2d(4, 4, 3, padding=1),
                                nn.MaxPool2d(3, 1, 1)), 49),
        "depthwise": (nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1, groups=8),
                                    nn.Conv2d(8, 4, 1)), 23),
    }


def _randomise_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("grid", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", list(_bodies()))
def test_patched_output_equals_plain(kind, grid):
    torch.manual_seed(0)
    body, size = _bodies()[kind]
    body = _randomise_bn(body)
    x = torch.randn(1, 3, size, size)
    prep = prepare_model(body, x)
    split = str(len(body) - 1)
    patched, _, _ = trace_patched(prep, split, grid)
    with torch.no_grad():
        want, got = body(x), patched(x)
    assert want.shape[2:] == (12, 12)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_split_inside_the_model_then_the_rest_runs_as_usual():
    torch.manual_seed(0)
    body, size = _bodies()["residual"]
    model = nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    model = _randomise_bn(model)
    report = evaluate(prepare_model(model, (2, 3, size, size)), "0.3", 3, dtype="fp32", latency_repeats=0)
    assert report.exact and report.split_shape == [2, 8, 24, 24]
    assert report.flops_after > report.flops_before  # the halos are recomputed


@pytest.mark.parametrize("kind, grid", [("residual", 2), ("concat", 4), ("pools", 3), ("depthwise", 2)])
@pytest.mark.parametrize("inplace_depthwise", [False, True])
def test_analyzer_peak_of_patched_run_equals_measured(kind, grid, inplace_depthwise):
    torch.manual_seed(0)
    body, size = _bodies()[kind]
    prep = prepare_model(_randomise_bn(body), (1, 3, size, size))
    _, ptrace, _ = trace_patched(prep, str(len(body) - 1), grid)
    for elem in (4, 1):
        plan = plan_live(ptrace, elem, inplace_depthwise=inplace_depthwise)
        measured = replay.replay(ptrace, plan, prep.inputs, elem)
        assert measured == plan.live


def _pointwise_pair(k: int) -> nn.Module:
    """conv k x k 1 -> 16 channels, conv k x k 16 -> 1, flatten, linear: worked out by hand below."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, k, padding=k // 2), nn.Conv2d(16, 1, k, padding=k // 2),
                         nn.Flatten(), nn.Linear(32 * 32, 10)).eval()


def test_search_finds_the_hand_worked_best_plan():
    # Input 32x32x1 fp32 = 4096 B. Split after the second conv, n x n tiles: the input and the
    # 4096 B split buffer stay alive; one tile holds 16*1024/n^2 + 1024/n^2 floats at the second
    # conv: 8192 + 69632/n^2 bytes, smallest for the largest grid tried (8): 9280 B. Split after
    # the first conv holds its 64 KiB output instead; unpatched, the peak is 69632 B.
    prep = prepare_model(_pointwise_pair(1), (1, 1, 32, 32))
    assert [c.name for c in candidate_splits(prep.trace)] == ["0", "1"]
    assert search(prep, dtype="fp32") == ("1", 8)
    report = evaluate(prep, "1", 8, dtype="fp32", latency_repeats=0)
    assert report.peak_before["fp32"] == 69632
    assert report.peak_after["fp32"] == 8192 + 69632 // 64
    assert report.peak_after["int8"] == (8192 + 69632 // 64) // 4
    assert report.flops_after == report.flops_before  # 1x1 convs: no halo to recompute


def test_search_says_run_plainly_when_no_plan_lowers_the_peak():
    # The peak is the 64-channel map after the global pool's only cut: patching the 1-channel
    # conv before it cannot lower it, so the search keeps the plain model.
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.AdaptiveAvgPool2d(4), nn.Conv2d(1, 64, 1),
                          nn.Upsample(scale_factor=8)).eval()
    prep = prepare_model(model, (1, 1, 16, 16))
    assert [c.name for c in candidate_splits(prep.trace)] == ["0"]
    assert search(prep, dtype="fp32") == (None, 1)
    report = evaluate(prep, None, 1, dtype="fp32", latency_repeats=0)
    assert report.peak_after == report.peak_before
    assert "no plan lowers its peak" in report.to_table()


def test_budget_search_takes_the_cheapest_plan_that_fits():
    prep = prepare_model(_pointwise_pair(3), (1, 1, 32, 32))
    plans = [(s, n) for s in ("0", "1") for n in (2, 4, 8)]
    figures = {p: evaluate(prep, *p, dtype="fp32", latency_repeats=0) for p in plans}
    plain = figures[("1", 2)].peak_before["fp32"]
    peaks = sorted({r.peak_after["fp32"] for r in figures.values() if r.peak_after["fp32"] < plain})
    assert len(peaks) >= 2
    budget = peaks[len(peaks) // 2]  # some plans fit, some do not, the plain model does not
    split, grid = search(prep, budget=budget, dtype="fp32")
    chosen = figures[(split, grid)]
    assert chosen.peak_after["fp32"] <= budget
    fitting = [r.flops_after for r in figures.values() if r.peak_after["fp32"] <= budget]
    assert chosen.flops_after == min(fitting)
    assert search(prep, budget=10**9, dtype="fp32") == (None, 1)  # the plain model fits
    with pytest.raises(UserError, match="no patch plan meets the budget"):
        search(prep, budget=peaks[0] - 1, dtype="fp32")


def test_global_op_and_cut_errors_name_the_culprit():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Conv2d(4, 4, 1)).eval()
    prep = prepare_model(model, (1, 3, 8, 8))
    with pytest.raises(UserError, match="module '1' is a global pooling"):
        compile_patches(prep.trace, "2", 1)
    assert [c.name for c in candidate_splits(prep.trace)] == ["0"]
    se = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Scale()).eval()
    with pytest.raises(UserError, match="global pooling"):
        compile_patches(prepare_model(se, (1, 3, 8, 8)).trace, "1", 2)


class Scale(nn.Module):
    """Squeeze-and-excitation in one line: a per-channel scale from the whole map."""

    def forward(self, x):
        return x * x.mean((2, 3), keepdim=True).sigmoid()


def test_cli_writes_report_and_plot(tmp_path, capsys):
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    rc = main(["patch", "cifar_resnet8", "--input", "1x3x16x16", "--split", "layer1", "--grid", "2",
               "--repeats", "1", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "split after 'layer1'" in text and "exact" in text
    report = json.loads(out.read_text())
    assert report["exact"] and report["grid"] == 2 and report["peak_after"]["int8"] < report["peak_before"]["int8"]
    assert png.stat().st_size > 0
