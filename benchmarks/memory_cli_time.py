"""Whole-process time of `redistill memory resnet50` vs a process that builds resnet50 and runs one forward.

Both are fresh Python processes (imports included), run alternately so machine noise hits both
alike; the ratio of the medians is the figure (target <= 3).

    python benchmarks/memory_cli_time.py [--repeats 5]
Writes benchmarks/results/memory_cli_time.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

BASELINE = (
    "import torch, torchvision\n"
    "m = torchvision.models.resnet50().eval()\n"
    "with torch.no_grad():\n"
    "    m(torch.randn(1, 3, 224, 224))\n"
)
ANALYZER = [sys.executable, "-m", "redistill", "memory", "resnet50", "--input", "1x3x224x224"]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    timed(ANALYZER)  # warm the file cache for both
    base, ours = [], []
    for _ in range(args.repeats):
        base.append(timed([sys.executable, "-c", BASELINE]))
        ours.append(timed(ANALYZER))
    result = {
        "command": " ".join(["redistill", *ANALYZER[3:]]),
        "baseline": "fresh python: import torch+torchvision, build resnet50, one forward (1x3x224x224)",
        "repeats": args.repeats,
        "baseline_s": base,
        "analyzer_s": ours,
        "baseline_median_s": statistics.median(base),
        "analyzer_median_s": statistics.median(ours),
        "ratio": statistics.median(ours) / statistics.median(base),
        "target": "<= 3",
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory_cli_time.json").write_text(json.dumps(result, indent=1))
    md = [
        "| process | median wall time (s) |",
        "|---|---|",
        f"| build resnet50 + one forward | {result['baseline_median_s']:.2f} |",
        f"| `{result['command']}` | {result['analyzer_median_s']:.2f} |",
        f"| **ratio** | **{result['ratio']:.2f}** (target <= 3) |",
    ]
    (RESULTS / "memory_cli_time.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
