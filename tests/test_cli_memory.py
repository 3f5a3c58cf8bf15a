"""`redistill memory`: MODEL forms, options, outputs, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from redistill.cli.main import main


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_memory_torchvision_model(capsys):
    rc, out, _ = run_cli(capsys, "memory", "resnet18", "--input", "1x3x224x224", "--convention", "layer")
    assert rc == 0
    assert "3920.0 KiB = 4014080 bytes" in out


def test_memory_json_plot_and_compare(capsys, tmp_path):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    rc, out, _ = run_cli(capsys, "memory", "mobilenet_v2", "--input", "1x3x64x64", "--compare", "resnet18",
                         "--json", str(js), "--plot", str(png), "--dtype", "int8")
    assert rc == 0
    data = json.loads(js.read_text())
    assert [d["model"] for d in data] == ["mobilenet_v2", "resnet18"]
    live = [d["peaks"]["live"] for d in data]
    ratio = f"{live[0] / live[1]:.2f}x"
    assert any(line.startswith("peak live") and ratio in line for line in out.splitlines())
    assert png.stat().st_size > 10_000


def test_memory_measure(capsys):
    rc, out, _ = run_cli(capsys, "memory", "resnet18", "--input", "1x3x32x32", "--measure")
    assert rc == 0 and "measured: live op-boundary" in out and "CPU allocator" in out


def test_memory_factory_forms(capsys, tmp_path, monkeypatch):
    src = textwrap.dedent(
        """
        import torch.nn as nn
        def tiny():
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
        """
    )
    (tmp_path / "mymodels.py").write_text(src)
    rc, out, _ = run_cli(capsys, "memory", f"{tmp_path / 'mymodels.py'}:tiny", "--input", "1x3x8x8")
    assert rc == 0
    # 3x8x8 input + 4x8x8 output, fp32
    assert f"= {(3 + 4) * 64 * 4} bytes" in out
    monkeypatch.syspath_prepend(str(tmp_path))
    rc, out2, _ = run_cli(capsys, "memory", "mymodels:tiny", "--input", "3x8x8")
    assert rc == 0 and f"= {(3 + 4) * 64 * 4} bytes" in out2


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["memory", "resnet81"], "did you mean"),
        (["memory", "torchvision:resnet18", "--input", "1x1x64x64"], "takes 3-channel images"),
        (["memory", "resnet18", "--input", "1x3x64x"], "NxCxHxW or CxHxW"),
        (["memory", "resnet18", "--input", "64x64"], "NxCxHxW or CxHxW"),
        (["memory", "redistill:mobilenet_v2"], "unknown model family"),
        (["memory", "torchvision:resnet81"], "did you mean resnet18"),
        (["memory", "resnet18", "--plot", "/nonexistent-dir/p.png"], "/nonexistent-dir/p.png"),
        (["memory", "resnet18", "--json", "/proc/x.json"], "/proc/x.json"),
        (["memory", "nosuchmodule_xyz:factory"], "cannot import module"),
    ],
)
def test_bad_input_one_line_exit_2(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "redistill", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_name_in_both_namespaces_says_which_one_won(capsys):
    # The project's resnet18 and torchvision's have the same parameters but are other modules;
    # the bare name is the project's, the prefix picks torchvision's, and the output says so.
    from redistill.cli.main import main

    assert main(["memory", "resnet18", "--input", "1x3x32x32", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "resnet18: redistill family resnet18 [2,2,1,2,2,2]" in out and "torchvision:resnet18" in out
    assert main(["memory", "torchvision:resnet18", "--input", "1x3x32x32", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "resnet18: torchvision resnet18 (the project's family is redistill:resnet18)" in out


def test_one_channel_input_builds_one_channel_families(capsys):
    from redistill.cli.main import main

    assert main(["memory", "cifar_resnet8", "--input", "1x28x28", "--top", "1"]) == 0
    assert "cifar_resnet8" in capsys.readouterr().out


def test_debug_shows_traceback():
    proc = subprocess.run([sys.executable, "-m", "redistill", "memory", "resnet81", "--debug"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
