"""`redistill derive` and `redistill models`, and the library functions behind them."""

from __future__ import annotations

import pytest
import yaml

from redistill.cli.main import main
from redistill.errors import UserError
from redistill.models import build_family, create_model
from redistill.plan import derive_for
from redistill.util import parse_bytes

SMALL = ["cifar_resnet8", "--input", "1x1x28x28"]


def test_parse_bytes():
    assert parse_bytes("800KiB") == 800 * 1024
    assert parse_bytes("1.5MB") == 1_500_000
    assert parse_bytes("4096") == 4096
    for bad in ["", "12 parsecs", "KiB", "-3KiB"]:
        with pytest.raises(UserError, match="malformed size"):
            parse_bytes(bad)


def test_derive_for_a_factor_compares_teacher_and_student():
    teacher = build_family("cifar_resnet8", in_channels=1)
    result = derive_for(teacher, (1, 1, 28, 28), factor=4)
    assert result.student_info.strides == (4, 1, 1, 1)
    assert result.changed == [("conv1", 1, 4), ("layer2", 2, 1), ("layer3", 2, 1)]
    # Stem output 16x28x28 fp32 and the input dominate the teacher; x4 shrinks both of the stem's maps.
    assert result.teacher.peaks["layer"] >= (16 * 28 * 28 + 28 * 28) * 4
    assert result.student.peaks["live"] < result.teacher.peaks["live"]
    assert result.ratio("live") == result.teacher.peaks["live"] / result.student.peaks["live"]
    assert result.student.flops < result.teacher.flops and result.student.params == result.teacher.params


def test_derive_for_a_budget_picks_the_smallest_factor():
    teacher = build_family("resnet18", width=16, num_classes=10)
    shape = (1, 3, 64, 64)
    x2 = derive_for(teacher, shape, budget="1GiB")
    assert x2.factor == 2 and x2.student.flops > 0
    x4 = derive_for(teacher, shape, budget=x2.student.peaks["live"] - 1)
    assert x4.factor == 4 and x4.student.peaks["live"] < x2.student.peaks["live"]
    with pytest.raises(UserError, match=r"best reachable is x16"):  # conv1, maxpool, layer2..4 absorb x16
        derive_for(teacher, shape, budget="1KiB")
    with pytest.raises(UserError, match="exactly one"):
        derive_for(teacher, shape)


def test_cli_derive_prints_and_writes_the_spec(tmp_path, capsys):
    out, plot = tmp_path / "student.yaml", tmp_path / "mem.png"
    assert main(["derive", *SMALL, "--factor", "4", "--out", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "cifar_resnet8:strides=4,1,1,1" in text and "conv1 1->4" in text
    assert "all of its down-sampling in the stem" in text  # [4,1,1,1]: one RED pair, not the paper's regime
    assert "peak (layer)" in text and "peak (live)" in text and "GFLOPs" in text
    spec = yaml.safe_load(out.read_text())
    assert spec["strides"] == [4, 1, 1, 1] and spec["in_channels"] == 1
    assert create_model(spec).conv1.stride == (4, 4)
    assert plot.stat().st_size > 0


def test_cli_derive_budget(capsys):
    assert main(["derive", *SMALL, "--budget", "1GiB"]) == 0
    text = capsys.readouterr().out
    assert "x2" in text and "already meets the budget" in text
    assert "down-sampling in the stem" not in text  # [2,1,2,1] keeps layer2's stride 2


def test_cli_derive_paper_shaped_student(capsys):
    # The paper-shaped teacher: its x4 student keeps a later down-sampling (the demo's pair).
    assert main(["derive", "cifar_resnet8:strides=1,2,2,2", "--input", "1x1x56x56", "--factor", "4"]) == 0
    text = capsys.readouterr().out
    assert "cifar_resnet8:strides=4,1,2,1" in text and "layer1 2->1, layer3 2->1" in text
    assert "down-sampling in the stem" not in text


@pytest.mark.parametrize(
    "argv,needle",
    [
        ([*SMALL, "--factor", "3"], "power of two"),
        ([*SMALL, "--factor", "8"], "largest factor it can absorb is 4"),
        ([*SMALL, "--budget", "1B"], "no factor meets the budget"),
        ([*SMALL, "--budget", "lots"], "malformed size"),
        ([*SMALL, "--factor", "2", "--drop", "layer1"], "stride 1, not 2"),
        (["cifar_resnet8:strides=4,1", "--input", "1x1x28x28", "--factor", "2"], "conv1, layer1, layer2, layer3"),
        (["cifar_resnt8", "--input", "1x1x28x28", "--factor", "2"], "did you mean"),
        (["resnxt18-4-11221", "--input", "1x3x64x64", "--factor", "2"], "did you mean resnext18"),
        (["resnxt18-4-11221", "--input", "1x3x64x64", "--factor", "2"], "family-<stem>-<digits>"),
        ([*SMALL, "--factor", "2", "--out", "/nonexistent/dir/s.yaml"], "does not exist"),
    ],
)
def test_cli_derive_errors_are_one_line_exit_2(argv, needle, capsys):
    assert main(["derive", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_cli_models_lists_families_and_slots(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "resnet18:" in text and "conv1=2, maxpool=2, layer1=1, layer2=2, layer3=2, layer4=2" in text
    assert main(["models", "--names-only"]) == 0
    assert "mobilenetv3_small" in capsys.readouterr().out.split()
    assert main(["models", "mobilenetv4"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_memory_accepts_family_specs():
    from redistill.modelref import resolve_model

    model, info = resolve_model("resnext18-4-11221")
    assert info.strides == (4, 1, 1, 2, 2, 1) and model.conv1.stride == (4, 4)
