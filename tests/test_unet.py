"""The DDPM UNet family: forward/backward, its record, the derived x2 student, bad options, the
auto pairs on it, and the analyzers given only an image shape (the timestep is built for them)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import yaml

from redistill.artifact import ExportSpec, write_export
from redistill.cli.main import main
from redistill.distill import auto_pairs
from redistill.distill.hooks import capture
from redistill.distill.red_method import REDMethod
from redistill.errors import UserError
from redistill.flops import count_flops
from redistill.memory import analyze_memory
from redistill.modelref import resolve_model
from redistill.models import build_family, derive_student, list_models, spec_string
from redistill.plan import derive_for
from redistill.models.unet import Downsample, ResBlock, Upsample

# Ho et al.'s layout at width 8: the reference list indices (downblocks.2/5/8, upblocks.3/7/11).
TINY = "ddpm_unet:ch=8:ch_mult=1,2,2,2:num_res_blocks=2:attn=1:dropout=0.1"


def _batch(n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 1000, (n,), generator=gen)


def test_registered_as_a_diffusion_family():
    assert "ddpm_unet" in list_models()
    model, info = build_family(TINY)
    assert info.task == "diffusion" and info.num_classes is None and info.in_channels == 3
    assert info.slots == ("head", "downblocks.2", "downblocks.5", "downblocks.8")
    assert info.strides == (1, 2, 2, 2) and info.drop_order == ("downblocks.8", "downblocks.5", "downblocks.2")
    assert all(isinstance(model.get_submodule(s), nn.Conv2d) for s in info.slots)
    assert not any(hasattr(model, a) for a in ("_redistill_spec", "strides", "stride_slots", "input_shape"))


@pytest.mark.parametrize("spec", [TINY, "ddpm_unet:ch=8:ch_mult=1,2:num_res_blocks=1:attn=0,1:dropout=0"])
def test_forward_backward_every_parameter_gets_a_gradient(spec):
    model = build_family(spec).module.train()
    x, t = _batch()
    out = model(x, t)
    assert out.shape == x.shape
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_output_depends_on_the_timestep_and_a_scalar_timestep_broadcasts():
    # Two channels per GroupNorm group: with one (TINY's 8 channels and the default 32 groups), the norm
    # after the time embedding removes that per-channel shift, and the output changes with t only by
    # float noise (about 1e-6 of its scale).
    torch.manual_seed(0)
    model = build_family(TINY + ":norm_groups=4", dropout=0.0).module.eval()
    for block in model.modules():  # blocks start as (almost) their skip: give them a real second conv
        if isinstance(block, ResBlock):
            nn.init.xavier_uniform_(block.conv2.weight)
    x, _ = _batch()
    with torch.no_grad():
        a, b = model(x, torch.tensor([3, 3])), model(x, torch.tensor([900, 900]))
        c = model(x, torch.tensor(3))
    # Outputs start tiny (the output conv is initialised near zero), so compare against their scale.
    scale = a.abs().max()
    assert (a - b).abs().max() > 1e-2 * scale  # 0.16-0.54 of it over seeds 0-39
    assert torch.allclose(a, c, rtol=1e-6, atol=0)


def test_depth_options_move_the_slots():
    _, info = build_family("ddpm_unet:ch=8:ch_mult=1,2,2:num_res_blocks=1")
    assert info.slots == ("head", "downblocks.1", "downblocks.3") and info.strides == (1, 2, 2)


def test_spec_round_trips_through_yaml():
    model, info = build_family(TINY)
    rebuilt, again = build_family(yaml.safe_load(yaml.safe_dump(info.spec)))
    assert again == info
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_derived_x2_student_moves_one_stride_into_the_head():
    teacher = build_family(TINY)
    student, info = derive_student(teacher, 2)
    assert info.strides == (2, 2, 2, 1) and info.task == "diffusion"
    assert student.head.stride == (2, 2)
    last_down = student.get_submodule("downblocks.8")
    assert isinstance(last_down, Downsample) and last_down.stride == (1, 1)
    # The up-sample mirroring the last down-sample keeps the size; the others still double it.
    ups = [m for m in student.upblocks if isinstance(m, Upsample)]
    assert [u.factor for u in ups] == [1, 2, 2]
    assert isinstance(student.tail.conv, nn.ConvTranspose2d) and student.tail.conv.stride == (2, 2)

    x, t = _batch()
    shapes = {}
    hooks = [student.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape[-2:]))
             for n in ("head", "downblocks.2", "downblocks.5", "downblocks.8", "upblocks.3", "upblocks.7",
                       "upblocks.11")]
    with torch.no_grad():
        out = student.eval()(x, t)
    for h in hooks:
        h.remove()
    assert out.shape == x.shape
    assert {n: tuple(s) for n, s in shapes.items()} == {
        "head": (16, 16), "downblocks.2": (8, 8), "downblocks.5": (4, 4), "downblocks.8": (4, 4),
        "upblocks.3": (4, 4), "upblocks.7": (8, 8), "upblocks.11": (16, 16),
    }
    # Same parameter shapes as the teacher except the output conv, and the teacher's weights carried over.
    t_state, s_state = teacher.module.state_dict(), student.state_dict()
    differ = sorted(k for k in t_state if t_state[k].shape != s_state[k].shape)
    assert differ == ["tail.conv.weight"]
    assert torch.equal(s_state["downblocks.3.conv1.weight"], t_state["downblocks.3.conv1.weight"])


def test_x4_and_x8_students_run_at_full_size():
    teacher = build_family(TINY)
    x, t = _batch(1)
    for factor, strides in ((4, (4, 2, 1, 1)), (8, (8, 1, 1, 1))):
        student, info = derive_student(teacher, factor)
        assert info.strides == strides
        with torch.no_grad():
            assert student.eval()(x, t).shape == x.shape


@pytest.mark.parametrize("spec, message", [
    ("ddpm_unet:num_classes=10", "has no option 'num_classes'"),
    ("ddpm_unet:ch=7", "ch must be an even integer"),
    ("ddpm_unet:ch_mult=1,2:attn=2", "attn names levels"),
    ("ddpm_unet:num_res_blocks=0", "num_res_blocks must be an integer >= 1"),
    ("ddpm_unet:dropout=1.5", "dropout must be in [0, 1)"),
    ("ddpm_unet:strides=1,2,2", "has 4 stride slots (head, downblocks.2"),
    ("ddpm_unet:strides=1,2,3,2", "takes stride 1 or 2"),
])
def test_bad_options_are_user_errors(spec, message):
    with pytest.raises(UserError) as err:
        build_family(spec)
    assert message in str(err.value)


def test_input_size_not_divisible_by_the_reduction_is_a_user_error():
    model = build_family(TINY).module.eval()
    with pytest.raises(UserError, match="divisible by 8"):
        model(torch.zeros(1, 3, 28, 28), torch.zeros(1, dtype=torch.long))


# The authors' six x2 pairs (student layer <-> teacher layer), with their sides: the head's output,
# both sides of every student layer that still changes H x W, and the tail's input only.
AUTHORS_X2 = [
    ("head", "downblocks.2", "out"),
    ("downblocks.2", "downblocks.5", "in"), ("downblocks.2", "downblocks.5", "out"),
    ("downblocks.5", "downblocks.8", "in"), ("downblocks.5", "downblocks.8", "out"),
    ("upblocks.7", "upblocks.3", "in"), ("upblocks.7", "upblocks.3", "out"),
    ("upblocks.11", "upblocks.7", "in"), ("upblocks.11", "upblocks.7", "out"),
    ("tail", "upblocks.11", "in"),
]


def test_auto_pairs_are_the_authors_six_x2_pairs():
    teacher = build_family(TINY)
    student = derive_student(teacher, 2)
    pairs = auto_pairs(student.module, teacher.module, (1, 3, 32, 32))
    assert [(p.student, p.teacher, p.side) for p in pairs] == AUTHORS_X2
    assert len({p.student for p in pairs}) == 6


def test_auto_pairs_follow_resolutions_not_names():
    # One residual block per level moves every index; the rule finds the same six places.
    teacher = build_family("ddpm_unet:ch=8:num_res_blocks=1:attn=")
    student = derive_student(teacher, 2)
    pairs = auto_pairs(student.module, teacher.module, (1, 3, 32, 32))
    assert [(p.student, p.teacher, p.side) for p in pairs] == [
        ("head", "downblocks.1", "out"),
        ("downblocks.1", "downblocks.3", "in"), ("downblocks.1", "downblocks.3", "out"),
        ("downblocks.3", "downblocks.5", "in"), ("downblocks.3", "downblocks.5", "out"),
        ("upblocks.5", "upblocks.2", "in"), ("upblocks.5", "upblocks.2", "out"),
        ("upblocks.8", "upblocks.5", "in"), ("upblocks.8", "upblocks.5", "out"),
        ("tail", "upblocks.8", "in"),
    ]


def test_red_student_runs_with_two_inputs_and_every_pair_gives_a_loss():
    teacher = build_family(TINY)
    student = derive_student(teacher, 2).module
    method = REDMethod()
    method.setup(student, teacher.module, (1, 3, 32, 32))
    x, t = _batch()
    with capture(student, method.student_refs()) as fs, capture(teacher.module.eval(), method.teacher_refs()) as ft:
        out = student.train()(x, t)
        teacher.module(x, t)
    terms = method(fs, ft, None, None, None)
    assert out.shape == x.shape and len(terms) == 10
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())


def _map_bytes(channels: int, size: int) -> int:
    return channels * size * size * 4  # fp32


def test_analyzer_builds_the_timestep_and_counts_the_decoder_peak():
    # Without attention, the layer-convention peak is the first decoder block of level 0, at its
    # conv1: the concatenated input (kept for the skip, 3 ch), its SiLU output (3 ch), the conv's
    # output (ch) and the two encoder maps still waiting for later blocks (2 ch); plus the time
    # embedding (4 ch floats).
    ch = 8
    teacher = build_family(f"ddpm_unet:ch={ch}:attn=")
    student = derive_student(teacher, 2)
    from_shape = analyze_memory(teacher.module, (1, 3, 32, 32), convention="layer")
    x = torch.randn(1, 3, 32, 32)
    explicit = analyze_memory(teacher.module, (x, torch.zeros(1, dtype=torch.long)), convention="layer")
    assert from_shape.peaks == explicit.peaks
    assert from_shape.peak_module == "upblocks.12.conv1"
    assert from_shape.peaks["layer"] == 9 * _map_bytes(ch, 32) + 4 * ch * 4
    small = analyze_memory(student.module, (1, 3, 32, 32), convention="layer")
    assert small.peak_module == "upblocks.12.conv1"
    assert small.peaks["layer"] == 9 * _map_bytes(ch, 16) + 4 * ch * 4
    assert count_flops(teacher.module, (1, 3, 32, 32)) > count_flops(student.module, (1, 3, 32, 32)) > 0


def test_derive_for_a_budget_on_the_unet():
    teacher = build_family("ddpm_unet:ch=8:attn=")
    result = derive_for(teacher, (1, 3, 32, 32), budget="100KiB", convention="layer")
    assert result.factor == 2 and [c[0] for c in result.changed] == ["head", "downblocks.8"]
    assert result.ratio("layer") > 3.9


def test_export_round_trip_keeps_a_diffusion_model_without_classes(tmp_path):
    model, info = build_family(TINY)
    spec = ExportSpec(model=info.spec, num_classes=None, in_channels=3, input_shape=[1, 3, 32, 32])
    folder = write_export(tmp_path / "unet", model, spec)
    again, again_info = resolve_model(str(folder))
    assert again_info.task == "diffusion" and again_info.num_classes is None
    assert again_info.input_shape == (1, 3, 32, 32)
    x, t = _batch()
    with torch.no_grad():
        assert torch.equal(again(x, t), model.eval()(x, t))


@pytest.mark.parametrize("spec", [TINY, "ddpm_unet:ch=8:attn=:dropout=0.0:ch_mult=1,2", "ddpm_unet"])
def test_spec_string_rebuilds_the_same_network(spec):
    _, info = build_family(spec)
    text = spec_string(info.spec)
    assert text.startswith("ddpm_unet:strides=")
    assert build_family(text).info == info


def test_cli_lists_and_derives_the_unet(tmp_path, capsys):
    assert main(["models", "ddpm_unet"]) == 0
    assert "head=1, downblocks.2=2, downblocks.5=2, downblocks.8=2" in capsys.readouterr().out
    out = tmp_path / "student.yaml"
    assert main(["derive", "ddpm_unet:ch=8:attn=", "--input", "1x3x32x32", "--factor", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ddpm_unet:strides=2,2,2,1:ch=8:attn=" in text and "head 1->2, downblocks.8 2->1" in text
    student, info = resolve_model(str(out))
    assert info.strides == (2, 2, 2, 1) and student.tail.conv.stride == (2, 2)
