"""Cost of one memory analysis against a plain forward, in process, and FakeTensorMode == real.

For each model and size (224-896 px, fp32): a plain eval forward, ``analyze_memory`` (BN folded
from one trace, heavy ops allocated and not computed: the default), ``analyze_memory(compute_all=True)``
(every op computed) and ``analyze_memory(fake=True)`` are called in turn for several rounds;
each analysis is reported as the median over rounds of its time over the same round's forward (and
the range). The target is a default analysis <= 1.5x a forward. Then, on every
model of ``memory_exactness.py`` at 224 px, the default and the fake analysis are checked equal to
the one that computes every op (peaks of every convention and the whole per-op timeline), and a
1x3x8192x8192 MobileNetV2 is planned under FakeTensorMode.

    python benchmarks/analysis_speed.py [--models resnet18 mobilenet_v2] [--sizes 224 448] [--repeats 11]
Writes benchmarks/results/analysis_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_exactness import MODELS, build  # noqa: E402

from redistill.memory import analyze_memory  # noqa: E402
from redistill.memory.analyze import make_inputs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.5


def _interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Wall times of each function, called in turn ``repeats`` times after one warm-up round, so that
    a drifting machine (a shared CPU, the allocator's state) weighs on all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def _ratio(times: dict, key: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of ``key``'s time over the forward's in the same round."""
    r = [a / f for a, f in zip(times[key], times["forward"])]
    return statistics.median(r), min(r), max(r)


def _figures(r) -> tuple:
    return r.peaks, [(e.op, e.module, e.live_bytes) for e in r.timeline]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*",
                        default=["resnet18", "mobilenet_v2", "resnet50", "efficientnet_b0", "mnasnet0_5"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[224, 448, 672, 896])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--exactness-models", nargs="*", default=MODELS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    timing = []
    for name in args.models:
        model = build(name)
        for size in args.sizes:
            x = make_inputs((1, 3, size, size))
            def forward():
                with torch.no_grad():
                    model(*x)

            times = _interleaved({"forward": forward, "analyze": lambda: analyze_memory(model, x),
                                  "computed": lambda: analyze_memory(model, x, compute_all=True),
                                  "fake": lambda: analyze_memory(model, (1, 3, size, size), fake=True)},
                                 args.repeats)
            row = {"model": name, "size": size, **{f"{k}_s": statistics.median(v) for k, v in times.items()}}
            for key in ("analyze", "computed", "fake"):
                r = _ratio(times, key)
                row[f"{key}_x"], row[f"{key}_x_range"] = r[0], r[1:]
            timing.append(row)
            print(timing[-1], flush=True)
    equal = []
    for name in args.exactness_models:
        model = build(name)
        computed = _figures(analyze_memory(model, (1, 3, 224, 224), compute_all=True))
        equal.append({"model": name,
                      "default_equals_computed": _figures(analyze_memory(model, (1, 3, 224, 224))) == computed,
                      "fake_equals_real": _figures(analyze_memory(model, (1, 3, 224, 224), fake=True)) == computed})
        print(equal[-1], flush=True)
    t0 = time.perf_counter()
    big = analyze_memory(build("mobilenet_v2"), (1, 3, 8192, 8192), fake=True, dtype="int8")
    big_row = {"model": "mobilenet_v2", "input": "1x3x8192x8192", "dtype": "int8", "peak_live": big.peaks["live"],
               "seconds": time.perf_counter() - t0,
               "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    met = all(r["analyze_x"] <= TARGET for r in timing)
    assert all(r["default_equals_computed"] and r["fake_equals_real"] for r in equal), equal
    out = {"target": TARGET, "met": met, "timing": timing, "fake_equals_real": equal, "large_input": big_row,
           "threads": 1, "torch": torch.__version__}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "analysis_speed.json").write_text(json.dumps(out, indent=1))
    lines = ["# Analysis cost vs a plain forward (in process, CPU, 1 thread)", "",
             "A plain forward, the default analysis, the analysis that computes every op "
             f"(`compute_all=True`) and the FakeTensorMode one are called in turn, {args.repeats} rounds after a "
             "warm-up; "
             "a ratio is the median over rounds of that round's time over its forward, with the lowest and "
             "highest round in brackets.", "",
             f"Target: the default analysis (BN folded from one trace, convolutions and matrix products "
             f"allocated and not computed) <= {TARGET}x a forward. "
             + ("**Met** on every row below." if met else
                f"**Not met**: {sum(r['analyze_x'] > TARGET for r in timing)} of {len(timing)} rows exceed it "
                f"(worst {max(r['analyze_x'] for r in timing):.2f}x); the tracer's fixed per-op cost dominates "
                "small inputs of models with many cheap ops."), "",
             "| model | px | forward (s) | analyze (s) | analyze / forward | every op computed / forward "
             "| fake (s) | fake / forward |",
             "|---|---|---|---|---|---|---|---|"]
    span = lambda r, k: f"{r[k]:.2f}x ({r[k + '_range'][0]:.2f}-{r[k + '_range'][1]:.2f})"  # noqa: E731
    for r in timing:
        lines.append(f"| {r['model']} | {r['size']} | {r['forward_s']:.3f} | {r['analyze_s']:.3f} | "
                     f"{span(r, 'analyze_x')} | {span(r, 'computed_x')} | {r['fake_s']:.3f} | {span(r, 'fake_x')} |")
    yes = lambda b: "yes" if b else "NO"  # noqa: E731
    lines += ["", "The default analysis and the FakeTensorMode one, each equal to the analysis that computes "
              "every op (peaks of all conventions and the per-op timeline), 1x3x224x224:", "",
              "| model | default == every op computed | fake == every op computed |", "|---|---|---|"]
    lines += [f"| {r['model']} | {yes(r['default_equals_computed'])} | {yes(r['fake_equals_real'])} |" for r in equal]
    lines += ["", f"Planned under FakeTensorMode: MobileNetV2 1x3x8192x8192 int8, live peak "
              f"{big_row['peak_live'] / 2**20:.1f} MiB, in {big_row['seconds']:.1f} s; the whole benchmark process "
              f"peaked at {big_row['max_rss_mib']:.0f} MiB resident.", ""]
    (RESULTS / "analysis_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
