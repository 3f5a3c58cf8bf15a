"""README.md's walkthrough ("Fit your own model into a memory budget") runs as written.

The commands are the fenced ``bash`` block right after the ``<!-- walkthrough -->`` marker. They
run verbatim in one bash process (``set -euo pipefail``) inside a temporary directory that links
the repository's ``configs/`` (the README runs them from the repository root), with the directory
of this Python's ``redistill`` entry point first on PATH. Any failing command fails the test and
the output names it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Where `make setup` installs Fashion-MNIST; the configs the walkthrough trains with read it.
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Commands the fast variant runs: the analysis steps, which need no data and no earlier run.
ANALYSIS = {"memory", "derive", "layers"}


def walkthrough_commands(text: str) -> list[str]:
    """The walkthrough's commands, one string per command (continuation lines joined).

    Raises:
        AssertionError: no ``bash`` block follows the marker, or it is empty.
    """
    match = re.search(r"<!-- walkthrough -->\s*\n```bash\n(.*?)\n```", text, re.S)
    assert match, "README.md has no ```bash block right after <!-- walkthrough -->"
    commands, current = [], ""
    for line in match.group(1).splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(" ".join(current.split()))
            current = ""
    assert commands, "the walkthrough block holds no commands"
    return commands


def _is_analysis(command: str) -> bool:
    words = shlex.split(command)
    uses_runs = any(w.startswith(("runs/", "exports/")) for w in words)
    return len(words) > 1 and words[0] == "redistill" and words[1] in ANALYSIS and not uses_runs


def _is_assignment(command: str) -> bool:
    return re.match(r"[A-Za-z_]\w*=", command) is not None


def _entry_point_dir() -> Path:
    bindir = Path(sys.executable).parent
    if not (bindir / "redistill").is_file():
        pytest.fail(f"no redistill entry point next to {sys.executable}; run `make setup`")
    return bindir


def run_commands(commands: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``commands`` as one bash script in ``cwd``; fail the test on the first failing one."""
    (cwd / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    script = "\n".join([
        "set -euo pipefail",
        "trap 'echo \"README walkthrough command failed (exit $?): $BASH_COMMAND\" >&2' ERR",
        *commands,
    ])
    env = dict(os.environ)
    env["PATH"] = f"{_entry_point_dir()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: extra threads only add contention
    done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"README walkthrough failed (exit {done.returncode})\n"
                    f"--- stdout (tail)\n{done.stdout[-3000:]}\n--- stderr (tail)\n{done.stderr[-3000:]}")
    return done


def test_walkthrough_block_is_found_and_split():
    commands = walkthrough_commands(README.read_text())
    steps = [shlex.split(c)[1] for c in commands if c.startswith("redistill ")]
    # The order the README promises: memory -> derive -> layers -> train -> eval -> export.
    firsts = [steps.index(s) for s in ("memory", "derive", "layers", "train", "eval", "export")]
    assert firsts == sorted(firsts), steps
    assert not any(c.endswith("\\") for c in commands)


def test_walkthrough_split_joins_continuations():
    text = "<!-- walkthrough -->\n```bash\n# a comment\nX=1\nredistill train a.yaml \\\n  b=2 --out r\n\n```\n"
    assert walkthrough_commands(text) == ["X=1", "redistill train a.yaml b=2 --out r"]


def test_walkthrough_analysis_steps(tmp_path):
    """memory, derive and layers as written; derive picks the student the README names."""
    commands = walkthrough_commands(README.read_text())
    chosen = [c for c in commands if _is_assignment(c) or _is_analysis(c)]
    assert {shlex.split(c)[1] for c in chosen if not _is_assignment(c)} == ANALYSIS
    out = run_commands(chosen, tmp_path, timeout=300).stdout
    # What the prose after the walkthrough says step 2 prints.
    assert "student  cifar_resnet20:strides=2,1,2,1" in out
    assert re.search(r"peak \(live\)\s+147\.0 KiB\s+36\.8 KiB", out)
    # Step 3: the three pairs of the x2 student.
    assert "proposed pairs (pairs: auto):" in out
    assert re.search(r"layer2\.0:in\s+<->\s+layer3\.0:in", out)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION_MNIST} (make setup)")
def test_walkthrough_runs_as_written(tmp_path):
    """Every command of the walkthrough, as written (about a minute on a 2-core CPU)."""
    run_commands(walkthrough_commands(README.read_text()), tmp_path, timeout=1200)
    for run in ("teacher", "vanilla", "red"):
        assert (tmp_path / "runs" / run / "summary.json").is_file(), run
    assert (tmp_path / "exports" / "red" / "model.safetensors").is_file()
    assert (tmp_path / "exports" / "red" / "spec.yaml").is_file()
