"""The peak-memory analyzer: published figures, hand-computed cases, prediction == measurement."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn as nn
import torchvision

from redistill.models.toy import SmallUNet
from redistill.errors import UserError
from redistill.memory import analyze_memory, plot_reports

KIB = 1024


def tv(name: str) -> nn.Module:
    kw = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, **kw).eval()


# -- the published figures (docs/method.md section 9) ---------------------------------------
@pytest.mark.parametrize(
    "name, kwargs, kib",
    [
        ("resnet18", dict(convention="layer"), 3920),  # the paper's 3.83 MiB
        ("resnet50", dict(convention="layer"), 9408),  # the paper's 9.19 MiB
        ("mobilenet_v2", dict(dtype="int8"), 1470),
        ("mobilenet_v2", dict(dtype="int8", inplace_depthwise=True), 1372),  # MCUNetV2
        ("resnet50", dict(inplace_add=True), 7056),  # MCUNet's 7.2 MB
    ],
)
def test_published_figures(name, kwargs, kib):
    rep = analyze_memory(tv(name), (1, 3, 224, 224), **kwargs)
    assert rep.peak_bytes == kib * KIB


def test_resnet18_peak_location_and_params():
    model = tv("resnet18")
    rep = analyze_memory(model, (1, 3, 224, 224))
    assert rep.peak_module == "maxpool"
    assert rep.peak_op.startswith("max_pool2d")
    # parameters + buffers are reported apart and never counted in the peak
    expected = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    assert rep.param_bytes == expected
    # the model given is not modified (folding happens on a copy)
    assert isinstance(model.bn1, nn.BatchNorm2d)


def test_no_fold_bn_counts_batchnorm_outputs():
    folded = analyze_memory(tv("resnet18"), (1, 3, 224, 224))
    unfolded = analyze_memory(tv("resnet18"), (1, 3, 224, 224), fold_bn=False)
    # conv1 output (3136 KiB) and its BN output (3136 KiB) coexist, plus the input (588 KiB)
    assert unfolded.peak_bytes == (3136 + 3136) * KIB
    assert folded.peak_bytes < unfolded.peak_bytes
    assert folded.options["folded_pairs"] == 20 and unfolded.options["folded_pairs"] == 0


def test_batchnorm_without_running_statistics_is_not_folded():
    # in eval mode too it normalises by the batch's statistics: there is nothing to fold into the conv
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, track_running_stats=False),
                          nn.ReLU(), nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)).eval()
    for measure in (False, True):
        rep = analyze_memory(model, (1, 3, 8, 8), measure=measure)
        assert rep.options["folded_pairs"] == 1  # the second BN only
        assert {e.module for e in rep.timeline if "batch_norm" in e.op} == {"1"}


def test_batch_and_dtype_scale_linearly():
    base = analyze_memory(tv("resnet18"), (1, 3, 64, 64)).peak_bytes
    assert analyze_memory(tv("resnet18"), (1, 3, 64, 64), batch_size=4).peak_bytes == 4 * base
    assert analyze_memory(tv("resnet18"), (1, 3, 64, 64), dtype="fp16").peak_bytes * 2 == base
    assert analyze_memory(tv("resnet18"), (3, 64, 64), dtype="int8").peak_bytes * 4 == base


# -- hand-computed cases -------------------------------------------------------------------
class Chain(nn.Module):
    """conv 1->4 (8x8), relu in place, conv 4->2: every size by hand."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.b(self.relu(self.a(x)))


class Skip(nn.Module):
    """y = b(a(x)) + x, out of place: x must stay alive across a and b."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 8, 1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(self.a(x)) + x


def test_chain_by_hand():
    rep = analyze_memory(Chain(), (1, 1, 8, 8))
    # op a: input 64 floats + output 256 floats; relu in place: 256; op b: 256 + 128
    assert [e.live_bytes for e in rep.timeline] == [(64 + 256) * 4, 256 * 4, (256 + 128) * 4]
    assert rep.peak_bytes == 384 * 4 and rep.peak_module == "b"


def test_skip_by_hand_and_inplace_add():
    rep = analyze_memory(Skip(), (1, 2, 4, 4))
    x, h, y = 32, 128, 32  # elements of input, hidden, outputs
    # op a: x + h; op b: x (skip) + h + y; add: x + y + sum
    assert [e.live_bytes for e in rep.timeline] == [4 * (x + h), 4 * (x + h + y), 4 * (x + y + y)]
    layer = analyze_memory(Skip(), (1, 2, 4, 4), convention="layer")
    assert layer.peak_bytes == 4 * (x + h + y)
    # the input is the caller's, so only b's dying output can be overwritten by the add
    inplace = analyze_memory(Skip(), (1, 2, 4, 4), inplace_add=True)
    assert inplace.timeline[-1].live_bytes == 4 * (x + y)


class HoldsLocal(nn.Module):
    """Keeps a big intermediate in a local until return: eager keeps it, liveness frees it."""

    def __init__(self):
        super().__init__()
        self.up = nn.Conv2d(1, 16, 1)
        self.down = nn.Conv2d(16, 1, 1)
        self.tail = nn.Conv2d(1, 16, 1)

    def forward(self, x):
        big = self.up(x)
        small = self.down(big)
        return self.tail(small)


def test_eager_keeps_locals_alive_live_does_not():
    rep = analyze_memory(HoldsLocal(), (1, 1, 8, 8))
    n = 64
    assert rep.peaks["live"] == 4 * (n + 16 * n)  # up: input + big
    # eager: at tail the input (held by the caller), big (local), small and the output
    assert rep.peaks["eager"] == 4 * (n + 16 * n + n + 16 * n)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.a(x)
        if y.mean() > 0:  # data-dependent Python control flow: torch.fx cannot trace this
            y = self.b(y)
        else:
            y = self.c(y)
        for _ in range(int(y.abs().sum().item()) % 3 + 1):
            y = torch.relu(y)
        return y


def test_data_dependent_control_flow():
    rep = analyze_memory(DataDependent(), (1, 3, 16, 16), measure=True)
    assert rep.peak_bytes > 0
    assert rep.measured["live_boundary_peak"] == rep.peak_bytes
    assert rep.measured["eager_boundary_peak"] == rep.peaks["eager"]


# -- prediction == measurement on many real models -------------------------------------------
EXACT_MODELS = [
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "densenet121", "efficientnet_b0",
    "shufflenet_v2_x1_0", "regnet_y_400mf", "squeezenet1_0", "mnasnet0_5", "googlenet", "unet",
]


def _build(name: str) -> nn.Module:
    return SmallUNet().eval() if name == "unet" else tv(name)


def _check_exact(name: str, size: int, **flags) -> None:
    rep = analyze_memory(_build(name), (1, 3, size, size), measure=True, **flags)
    m = rep.measured
    assert m["live_boundary_peak"] == rep.peaks["live"], name
    assert m["eager_boundary_peak"] == rep.peaks["eager"], name
    # every op boundary agrees, not only the peak
    assert m["live_boundary"] == [e.live_bytes for e in rep.timeline], name
    assert m["cpu_allocator_peak"] >= m["live_predicted_peak"], name


@pytest.mark.parametrize("name", EXACT_MODELS)
def test_prediction_equals_measurement(name):
    _check_exact(name, 64)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mnasnet0_5", "resnet18"])
def test_prediction_equals_measurement_inplace_options(name):
    _check_exact(name, 32, inplace_depthwise=True, inplace_add=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXACT_MODELS)
def test_prediction_equals_measurement_224(name):
    _check_exact(name, 224)


@pytest.mark.gpu
def test_cuda_peak_at_least_prediction():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rep = analyze_memory(tv("resnet18"), (1, 3, 224, 224), measure=True)
    assert rep.measured["cuda_peak"] >= rep.peak_bytes


# -- reports -----------------------------------------------------------------------------------
def test_report_outputs(tmp_path):
    a = analyze_memory(tv("resnet18"), (1, 3, 64, 64), name="resnet18")
    b = analyze_memory(SmallUNet().eval(), (1, 3, 64, 64), name="unet")
    data = json.loads(a.to_json(tmp_path / "r.json"))
    assert data["peak_bytes"] == a.peak_bytes and len(data["timeline"]) == len(a.timeline)
    assert (tmp_path / "r.json").exists()
    table = a.to_table()
    assert "maxpool" in table and "<- peak" in table
    assert max(e.live_bytes for e in a.timeline) == a.peaks["live"]
    out = plot_reports([a, b], ["resnet18", "unet"], tmp_path / "p.png")
    assert out.stat().st_size > 10_000
    with pytest.raises(UserError, match="cannot write"):
        a.plot("/proc/nope/x.png")


def test_unknown_dtype_and_convention():
    with pytest.raises(UserError, match="dtype"):
        analyze_memory(Chain(), (1, 1, 8, 8), dtype="fp8")
    with pytest.raises(UserError, match="convention"):
        analyze_memory(Chain(), (1, 1, 8, 8), convention="peak")


def test_failure_names_module():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.ok = nn.Conv2d(3, 4, 1)
            self.bad = nn.Linear(5, 2)

        def forward(self, x):
            return self.bad(self.ok(x))

    with pytest.raises(UserError, match="module 'bad'"):
        analyze_memory(Broken(), (1, 3, 4, 4))


# -- one trace for folding, and FakeTensorMode ----------------------------------------------
def _figures(report) -> tuple:
    return (report.peaks, report.peak_index, [(e.op, e.module, e.live_bytes, e.produced_bytes, e.layer)
                                               for e in report.timeline], report.options["folded_pairs"])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "small_unet"])
def test_fold_from_one_trace_equals_tracing_the_folded_model(name):
    from redistill.memory.analyze import make_inputs
    from redistill.memory.fold import fold_batchnorm, fold_trace, foldable_pairs
    from redistill.memory.liveness import plan_eager, plan_live
    from redistill.memory.trace import trace_model

    model = SmallUNet().eval() if name == "small_unet" else tv(name)
    x = make_inputs((1, 3, 64, 64))
    trace, _ = trace_model(model, x)
    pairs = foldable_pairs(trace, model)
    assert pairs
    twice, _ = trace_model(fold_batchnorm(model, pairs), x)
    once = fold_trace(trace, model, pairs)
    # the shapes-only fold (no fused tensor made) records the same fused operands, in shape and size
    assert _structure(fold_trace(trace, model, pairs, weights=False)) == _structure(once)
    assert [(o.name, o.module) for o in once.ops] == [(o.name, o.module) for o in twice.ops]
    assert once.module_spans == twice.module_spans
    for elem in (4, 1):
        for dw, add in [(False, False), (True, True)]:
            assert plan_live(once, elem, dw, add).live == plan_live(twice, elem, dw, add).live
        assert plan_eager(once, elem).live == plan_eager(twice, elem).live
    from redistill.memory import replay
    out = replay.replay(once, plan_live(once, 4), x, 4)  # the folded trace still runs, on the fused weights
    assert out == plan_live(once, 4).live


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "small_unet"])
def test_fake_analysis_equals_real(name):
    model = SmallUNet().eval() if name == "small_unet" else tv(name)
    for kw in [dict(), dict(dtype="int8", inplace_depthwise=True, inplace_add=True), dict(fold_bn=False)]:
        real = analyze_memory(model, (1, 3, 64, 64), **kw)
        fake = analyze_memory(model, (1, 3, 64, 64), fake=True, **kw)
        assert _figures(fake) == _figures(real)


def test_fake_analysis_plans_what_cannot_be_allocated():
    # 1x3x8192x8192 through a 64-channel stem: 16 GiB of fp32 activations, planned without allocating them.
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 3, 3, padding=1)).eval()
    report = analyze_memory(model, (1, 3, 8192, 8192), fake=True)
    assert report.peaks["live"] == 8192 * 8192 * 4 * (64 + 64)  # the ReLU reads and writes 64 channels
    with pytest.raises(UserError, match="drop --fake"):
        analyze_memory(model, (1, 3, 8, 8), fake=True, measure=True)


# -- the shapes-only trace (heavy ops allocated, not computed) ----------------------------------
def _structure(trace):
    """Everything the analysis reads from a trace: ops, values, storages and their lifetimes."""
    return ([(o.name, o.module, o.inputs, o.outputs, o.in_place_of) for o in trace.ops],
            {k: (v.sid, v.shape, v.dtype, v.producer) for k, v in trace.values.items()},
            {k: (s.nbytes, s.itemsize, s.kind, s.birth, s.eager_death) for k, s in trace.storages.items()},
            trace.input_vids, trace.output_vids, trace.module_spans)


class _Branchy(nn.Module):
    """Control flow on a convolution's values: zeros (what an uncomputed output holds) take the other branch."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.constant_(self.conv.bias, 1.0)
        nn.init.constant_(self.conv.weight, 0.1)
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("ema", torch.zeros(4))

    def forward(self, x):
        y = self.conv(x)
        if self.how == "bool":
            return torch.relu(y) if y.sum() > 0 else y.unsqueeze(0).repeat(4, 1, 1, 1, 1)
        if self.how == "nonzero":  # a data-dependent shape
            return torch.nonzero(y > 1.0)
        if self.how == "slice":  # written into a slice of a computed buffer: the buffer is undefined too
            buf = torch.zeros(x.shape[0], 8, *x.shape[2:])
            buf[:, :4] = y
            return buf.relu() if buf.sum() > 0 else torch.cat([buf, buf])
        if self.how == "buffer":  # a buffer written in the forward: written once, from computed values
            self.count.add_(1)
            self.ema.mul_(0.5).add_(y.mean((0, 2, 3)))
            return y
        try:  # a model's own except Exception must not swallow the rerun
            scale = float(y.max())
        except Exception:
            scale = 0.0
        return y * 2 if scale > 0 else torch.cat([y, y, y])


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)

    def forward(self, x):
        y = self.conv(x).flatten(1)
        z = torch.matmul(y.unsqueeze(2), y.unsqueeze(1))
        return z.add_(1.0).relu_()


class _Pointwise(nn.Module):
    """Element-wise ops on convolution outputs: operands alike (allocated by a shapes-only trace), broadcast,
    of mixed layouts or integral (computed)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        s = nn.functional.silu(y + z) * torch.sigmoid(z)
        g = nn.functional.gelu(s, approximate="tanh") - nn.functional.hardswish(y).mul(2.0)
        t = torch.tanh(g * g.mean((2, 3), keepdim=True))
        m = t + z.contiguous(memory_format=torch.channels_last)
        k = (y > 0).to(torch.int32)
        return nn.functional.hardtanh(m, -0.5, 0.5) + nn.functional.relu(g) + (k + k).float()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "small_unet", "channels_last", "cl_1x1",
                                  "matmul", "pointwise", "cl_resnet18"])
def test_shapes_only_trace_equals_computing_every_op(name):
    from redistill.memory.trace import trace_model

    x = torch.rand(2, 3, 48, 40)
    if name == "small_unet":
        model = SmallUNet().eval()
    elif name == "channels_last":  # the CPU convolution keeps channels-last; its meta kernel would not
        model, x = tv("mobilenet_v2").to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    elif name == "cl_1x1":  # an (O, I, 1, 1) weight in channels-last passes is_contiguous(); its CPU conv is channels-last
        model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Flatten()).eval()
        model[0].weight.data = model[0].weight.data.to(memory_format=torch.channels_last)
    elif name == "matmul":  # bmm of two uncomputed values, then an in-place add_ and relu_ on the result
        model = _Outer().eval()
    elif name == "pointwise":
        model = _Pointwise().eval()
    elif name == "cl_resnet18":  # residual adds of channels-last operands
        model, x = tv("resnet18").to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    else:
        model = tv(name)
    fast, out = trace_model(model, (x,), values=False)
    assert out is None  # nothing was rerun: the output was not computed
    full, ref = trace_model(model, (x,), values=True)
    assert isinstance(ref, torch.Tensor)
    assert _structure(fast) == _structure(full)


_cl = dict(memory_format=torch.channels_last)


@pytest.mark.parametrize("op, args, allocated", [
    ("add.Tensor", lambda: (torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)), True),
    ("add.Tensor", lambda: (torch.rand(2, 3, 4, 5).to(**_cl), torch.rand(2, 3, 4, 5).to(**_cl)), True),
    ("mul.Tensor", lambda: (torch.rand(1, 3, 1, 5), torch.rand(1, 3, 1, 5)), True),
    ("gelu.default", lambda: (torch.rand(2, 3, 4, 5).to(**_cl),), True),
    ("hardtanh.default", lambda: (torch.rand(2, 3, 4, 5), -0.5, 0.5), True),
    ("sub.Tensor", lambda: (torch.rand(2, 3, 4, 5).double(), torch.rand(2, 3, 4, 5).double()), True),
    ("mul.Tensor", lambda: (torch.rand(2, 3, 4, 5), torch.rand(2, 3, 1, 1)), False),  # broadcast
    ("add.Tensor", lambda: (torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5).to(**_cl)), False),  # mixed layouts
    ("add.Tensor", lambda: (torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5).half()), False),  # promotion
    ("add.Tensor", lambda: (torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3, dtype=torch.int32)), False),
    ("relu.default", lambda: (torch.rand(4, 6)[:, ::2],), False),  # not dense
])
def test_element_wise_stand_in_is_laid_out_as_the_kernel_output(op, args, allocated):
    from redistill.memory.trace import _uncomputed

    packet, overload = op.split(".")
    func = getattr(getattr(torch.ops.aten, packet), overload)
    args = args()
    out = _uncomputed("same_layout", func, args, {}, True)
    assert (out is not None) == allocated
    if allocated:
        ref = func(*args)
        assert (out.shape, out.stride(), out.dtype) == (ref.shape, ref.stride(), ref.dtype)
        assert all(out.untyped_storage()._cdata != a.untyped_storage()._cdata for a in args
                   if isinstance(a, torch.Tensor))


@pytest.mark.parametrize("make, row_major", [
    (lambda: torch.rand(2, 3, 4, 5), True),
    (lambda: torch.rand(1, 3, 4, 5), True),
    (lambda: torch.rand(2, 3, 4, 5).to(**_cl), False),
    (lambda: torch.rand(6, 3, 1, 1).to(**_cl), False),  # is_contiguous() says yes; its strides are not row-major
    (lambda: torch.empty_strided((2, 0, 3), (1, 5, 7)), False),  # empty: is_contiguous() says yes too
    (lambda: torch.empty(2, 0, 3), True),
])
def test_row_major_is_the_exact_strides(make, row_major):
    from redistill.memory.trace import _row_major_cpu

    assert _row_major_cpu(make()) is row_major


@pytest.mark.parametrize("how", ["bool", "nonzero", "item_in_try", "slice", "buffer"])
def test_shapes_only_trace_reruns_where_a_value_decides(how):
    from redistill.memory.trace import trace_model

    model = _Branchy(how).eval()
    x = torch.rand(1, 3, 8, 8)
    full, ref = trace_model(model, (x,), values=True)
    ema = model.ema.clone()
    fast, out = trace_model(model, (x,), values=False)
    assert out is not None and torch.equal(out, ref)  # rerun with every op computed
    assert _structure(fast) == _structure(full)
    if how == "buffer":  # the second trace wrote the buffers once, from the real values
        assert model.count.item() == 2 and torch.allclose(model.ema, 0.5 * ema + ref.mean((0, 2, 3)))
    assert _figures(analyze_memory(model, x)) == _figures(analyze_memory(model, x, compute_all=True))


class _Stash(nn.Module):
    """conv -> BN -> ReLU -> conv, and a second conv whose output a computed op (abs) reads; the
    tensors are kept as Python references, which no ATen op sees."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1))
        self.b = nn.Conv2d(3, 4, 3)
        self.seen = {}

    def forward(self, x):
        y = self.a[0](x)
        self.seen["unread"] = y
        y = self.a[3](self.a[2](self.a[1](y)))
        self.seen["read"] = self.b(x).abs()
        return y + self.seen["read"]


def test_shapes_only_trace_zeroes_a_stand_in_buffer_only_when_a_computed_op_reads_it(monkeypatch):
    import redistill.memory.trace as trace_mod

    allocate = trace_mod._allocate_output

    def poisoned(func, args, kwargs):  # the worst an uninitialised buffer can hold
        out = allocate(func, args, kwargs)
        return out.fill_(float("nan")) if isinstance(out, torch.Tensor) else out

    monkeypatch.setattr(trace_mod, "_allocate_output", poisoned)
    model = _Stash().eval()
    x = torch.rand(1, 3, 8, 8)
    full, _ = trace_mod.trace_model(model, (x,), values=True)
    fast, out = trace_mod.trace_model(model, (x,), values=False)
    assert out is None and _structure(fast) == _structure(full)
    assert torch.equal(model.seen["read"], torch.zeros(1, 4, 6, 6))  # zeroed before abs read it
    assert model.seen["unread"].isnan().all()  # read only by the BN stand-in: never written


class _PlainState(nn.Module):
    """A plain tensor attribute (neither parameter nor buffer) written in place from an uncomputed
    value, then read by a computed op, then deciding a branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.scale = torch.ones(4, 1, 1)

    def forward(self, x):
        y = self.conv(x)
        self.scale.add_(y.mean() * 0)  # stood in: the attribute's buffer is handed back as it was
        w = y * self.scale  # computed: must not zero the attribute it reads
        if self.scale.sum() > 0:
            return w.relu()
        return w.unsqueeze(0).repeat(2, 1, 1, 1, 1)


def test_shapes_only_trace_leaves_state_an_in_place_stand_in_touched_as_it_was():
    from redistill.memory.trace import trace_model

    model = _PlainState().eval()
    x = torch.rand(1, 3, 8, 8)
    full, _ = trace_model(model, (x,), values=True)
    fast, _ = trace_model(model, (x,), values=False)
    assert torch.equal(model.scale, torch.ones(4, 1, 1))
    assert _structure(fast) == _structure(full)


def test_first_trace_in_a_process_sees_eager_frees():
    # The first dispatch of a process imports torch._dynamo, whose reference cycle kept the running op's
    # tensors alive while the collector was paused: the conv output never died.
    import subprocess
    import sys

    code = ("import torch, torch.nn as nn\n"
            "from redistill.memory.trace import trace_model\n"
            "m = nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU()).eval()\n"
            "t, _ = trace_model(m, (torch.rand(2, 4, 5, 5),))\n"
            "print([s.eager_death for s in t.storages.values() if s.kind == 'activation'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[1,", "None]"]  # the conv output dies after the ReLU; the ReLU output is returned


def test_shapes_only_trace_computes_under_another_mode_and_reports_real_errors():
    from torch.utils.flop_counter import FlopCounterMode

    from redistill.memory.trace import trace_model

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.rand(1, 3, 10, 10)
    with FlopCounterMode(display=False) as counter:  # a FLOP counter must see the convolutions run
        _, out = trace_model(model, (x,), values=False)
    assert out is not None
    assert counter.get_total_flops() == 2 * (8 * 27 * 64 + 4 * 8 * 64)
    with pytest.raises(UserError, match="expects 3"):  # the error of the real run, not of the shortcut
        trace_model(model, (torch.rand(1, 5, 10, 10),), values=False)


# -- what the analysis leaves behind --------------------------------------------------------
def test_analysis_restores_each_modules_mode_and_the_collector():
    import gc

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).train()
    model[1].eval()  # a frozen BN inside a model that trains: it must stay frozen, the rest must train
    seen = []
    model[3].register_forward_pre_hook(lambda m, a: seen.append((m.training, gc.isenabled())))
    analyze_memory(model, (1, 3, 8, 8))
    assert seen == [(False, False)]  # traced in eval mode with the collector paused
    assert [m.training for m in model] == [True, False, True, True] and model.training
    assert gc.isenabled()
    gc.disable()
    try:
        analyze_memory(model, (1, 3, 8, 8))
        assert not gc.isenabled()  # a caller's disabled collector stays disabled
    finally:
        gc.enable()


def test_ops_of_a_module_outside_the_model_go_to_its_caller():
    helper = nn.Conv2d(4, 4, 1)  # not registered as a submodule: the model calls it from outside

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return helper(self.stem(x))

    report = analyze_memory(Host().eval(), (1, 3, 8, 8), fold_bn=False)
    convs = [e.module for e in report.timeline if e.op == "convolution.default"]
    assert convs == ["stem", ""]
    assert [m.module for m in report.modules] == ["stem"]


@pytest.mark.parametrize("case", [
    ((2, 4, 9, 7), (6, 4, 3, 3), [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
    ((1, 8, 10, 10), (8, 1, 3, 3), [2, 2], [1, 1], [1, 1], False, [0, 0], 8),  # depthwise, strided
    ((1, 6, 11, 13), (4, 3, 3, 5), [2, 3], [1, 2], [2, 1], False, [0, 0], 2),  # grouped, dilated, odd
    ((1, 4, 7), (5, 4, 3), [2], [1], [1], False, [0], 1),  # 1-d
    ((1, 2, 5, 6, 7), (3, 2, 3, 3, 3), [1, 2, 1], [1, 0, 1], [1, 1, 2], False, [0, 0, 0], 1),  # 3-d
    ((1, 4, 9, 9), (6, 4, 3, 3), [1], [1], [1], False, [0], 1),  # one-element lists
    ((1, 4, 5, 6), (4, 3, 3, 3), [2, 2], [1, 1], [1, 1], True, [1, 0], 1),  # transposed
    ((1, 4, 5, 5), (4, 2, 4, 4), [2, 2], [1, 1], [1, 1], True, [0, 0], 2),  # transposed, grouped
    ((3, 4, 1, 1), (5, 4, 1, 1), [1, 1], [0, 0], [1, 1], False, [0, 0], 1),  # 1x1 input and kernel
])
def test_convolution_output_shape_matches_the_meta_kernel(case):
    from redistill.memory.trace import _allocate_output, _conv_output_shape

    x_shape, w_shape, *rest = case
    args = (torch.empty(x_shape), torch.empty(w_shape), None, *rest)
    assert _conv_output_shape(*args) is not None  # the formula path is the one tested
    meta = torch.ops.aten.convolution.default(*(a.to("meta") if isinstance(a, torch.Tensor) else a
                                                for a in args))
    out = _allocate_output(torch.ops.aten.convolution.default, args, {})
    assert (out.shape, out.stride(), out.dtype, out.device.type) == (meta.shape, meta.stride(), meta.dtype, "cpu")


def test_convolution_output_shape_agrees_with_the_meta_kernel_on_random_arguments():
    # 1-3-d, grouped, strided, dilated, padded and transposed, one-element lists among them: the formula
    # gives the meta kernel's shape, or None (the meta kernel then decides), never a different shape
    from redistill.memory.trace import _conv_output_shape

    rng = random.Random(0)
    answered = 0
    for _ in range(600):
        n, transposed, groups = rng.choice([1, 2, 3]), rng.random() < 0.3, rng.choice([1, 2])
        c_in, c_out = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
        dims, kernel = [rng.randint(1, 9) for _ in range(n)], [rng.randint(1, 4) for _ in range(n)]
        pick = lambda lo, hi: [rng.randint(lo, hi)] * (1 if rng.random() < 0.3 else n)  # noqa: E731
        stride, padding, dilation = pick(1, 3), pick(0, 2), pick(1, 2)
        output_padding = [rng.randint(0, min(stride[0], dilation[0]) - 1) if transposed else 0] * n
        w = [c_in, c_out // groups] if transposed else [c_out, c_in // groups]
        args = (torch.empty(2, c_in, *dims, device="meta"), torch.empty(*w, *kernel, device="meta"), None,
                stride, padding, dilation, transposed, output_padding, groups)
        try:
            expected = list(torch.ops.aten.convolution.default(*args).shape)
        except RuntimeError:
            expected = None
        got = _conv_output_shape(*args)
        assert got is None or got == expected, args
        answered += got is not None
    assert answered > 400  # the formula answers the ordinary cases itself


@pytest.mark.parametrize("case", [
    ((1, 4, 2, 2), (6, 4, 3, 3), [1, 1], [0, 0], [1, 1], False, [0, 0], 1),  # kernel larger than the input
    ((1, 4, 5, 5), (6, 3, 3, 3), [1, 1], [0, 0], [1, 1], False, [0, 0], 1),  # channels do not match
    ((1, 0, 5, 5), (6, 0, 3, 3), [1, 1], [0, 0], [1, 1], False, [0, 0], 1),  # no input channels
])
def test_convolution_output_shape_leaves_unusual_arguments_to_the_meta_kernel(case):
    from redistill.memory.trace import _conv_output_shape

    x_shape, w_shape, *rest = case
    assert _conv_output_shape(torch.empty(x_shape), torch.empty(w_shape), None, *rest) is None
