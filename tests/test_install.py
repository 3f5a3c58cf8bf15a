"""A non-editable install works away from the source tree: the configs ship as package data."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_wheel_in_a_fresh_venv_runs_the_demo(tmp_path):
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", *map(str, wheels.glob("*.whl"))], check=True)
    # torch & co. come from this environment's site-packages, added as a plain path: its .pth files
    # (the editable install's finder among them) are not run, so redistill is the wheel's copy.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work.mkdir()
    where = subprocess.run([str(py), "-c", "import redistill; print(redistill.__file__)"], cwd=work,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(site) and str(ROOT / "src") not in where
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(venv / "bin" / "redistill"), "demo", "--out", "demo", "--no-progress", "--threads", "1",
         "run.epochs=1", "data.subset=512", "data.val_subset=256"],
        cwd=work, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "demo" / "report.md").is_file() and "RED" in proc.stdout
