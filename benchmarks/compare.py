"""Fair comparison of distillation methods on one student (issue 5).

Every method trains the same x4 student from the same trained teacher with the same
recipe, augmentation, epochs and seeds; only ``distill.method`` and its options differ.
The teacher is trained once (seed 0). Finished runs (a ``summary.json`` for the planned
number of epochs) are skipped and interrupted ones resumed, so a long comparison can be
completed over several calls; ``--jobs`` trains several runs at once (one GPU is far
from busy with these small networks).

Writes ``<results>/compare_<dataset>.{json,md}`` and ``compare_<dataset>.png`` (test
accuracy against peak activation memory of each deployed student, RED blocks counted,
like the paper's Figure 1).

Usage:
    python benchmarks/compare.py --dataset fashion_mnist --quick            # CPU smoke run
    python benchmarks/compare.py --dataset fashion_mnist --seeds 3 --device cuda --jobs 6
    python benchmarks/compare.py --methods vanilla,at,red,red_kd --seeds 2
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Every method of the comparison, in table order. "vanilla" is the student without a teacher;
# "student_plus" the authors' student+ control: RED's blocks and loss weights, every alpha 0.
ALL_METHODS = [
    "vanilla", "kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst",
    "crd", "reviewkd", "dkd", "mlld", "red", "student_plus", "red_kd",
]
EXTRA_ARMS = {"student_plus": "red"}  # arms that are another registered method with other options


@dataclass(frozen=True)
class Protocol:
    """One data set's networks and recipe (shared by every method)."""

    teacher: str
    student: str
    train_images: int  # after the validation split; sizes CRD's noise and the stage lengths
    data: dict
    optim: dict
    schedule: dict
    epochs: int
    teacher_epochs: int
    red: dict  # RED options of "red" and "red_kd"


PROTOCOLS = {
    "fashion_mnist": Protocol(
        teacher="cifar_resnet20",
        student="cifar_resnet20:strides=4,1,1,1",
        train_images=54000,
        # flips only: the per-image pad + crop of the CPU loader halves its throughput, and
        # data loading is what limits 57 runs on one GPU (measured on an H100 box, 16 cores)
        data={"name": "fashion_mnist", "batch_size": 256, "val_fraction": 0.1,
              "augment": {"crop": "none", "flip": True}},
        optim={"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4},
        schedule={"name": "cosine", "warmup_epochs": 0.0},
        epochs=3,
        teacher_epochs=10,
        red={"w_task": 0.5, "w_distill": 0.5, "alpha": 10.0},
    ),
}

QUICK = {"subset": 1200, "val_subset": 300, "test_subset": 500, "batch_size": 100, "epochs": 1}


def method_options(method: str, proto: Protocol, steps_per_epoch: int, epochs: int, n_train: int) -> dict[str, Any]:
    """The options each method gets in this benchmark; everything else is the method's default.

    Stage lengths scale with the run: init stages take 1/8 of the steps (RepDistiller: 30
    init epochs for 240), warm-ups one epoch (the DKD/ReviewKD ImageNet settings).
    """
    total = steps_per_epoch * epochs
    if method in ("ab", "fsp", "ft"):
        return {"init_steps": max(1, total // 8)}
    if method in ("dkd", "reviewkd"):
        return {"warmup_steps": steps_per_epoch}
    if method == "crd":
        return {"n_data": n_train}
    if method == "red":
        return dict(proto.red)
    if method == "student_plus":
        return {**proto.red, "alpha": 0.0}
    if method == "red_kd":
        return {**proto.red, "kd_weight": 0.5, "temperature": 4.0}
    return {}


def base_config(proto: Protocol, args: argparse.Namespace) -> dict[str, Any]:
    """The recipe every run shares (model and distill sections are filled per run)."""
    data = json.loads(json.dumps(proto.data))
    if args.data_root:
        data["root"] = args.data_root
    data["workers"] = args.workers
    if args.batch_size:
        data["batch_size"] = args.batch_size
    if args.subset:
        data["subset"] = args.subset
    if args.quick:
        data.update({k: QUICK[k] for k in ("subset", "val_subset", "test_subset", "batch_size")})
        data["batch_size"] = args.batch_size or QUICK["batch_size"]
    return {
        "data": data,
        "optim": dict(proto.optim),
        "schedule": dict(proto.schedule),
        "run": {"device": args.device, "amp": True, "channels_last": True, "progress": False, "log_every": 100},
    }


def plan(args: argparse.Namespace) -> tuple[Protocol, dict, list[tuple[str, int, dict, Path]]]:
    """The teacher config and every (method, seed, config, run_dir) of the comparison."""
    proto = PROTOCOLS[args.dataset]
    base = base_config(proto, args)
    epochs = args.epochs or (QUICK["epochs"] if args.quick else proto.epochs)
    teacher_epochs = args.teacher_epochs or (QUICK["epochs"] if args.quick else proto.teacher_epochs)
    subset = base["data"].get("subset")
    n_train = int(subset * (1 - base["data"]["val_fraction"])) if subset else proto.train_images
    steps_per_epoch = max(1, n_train // base["data"]["batch_size"])
    runs_dir = Path(args.runs)

    teacher_dir = runs_dir / "teacher"
    teacher = {**base, "model": {"student": proto.teacher}, "run": {**base["run"], "epochs": teacher_epochs, "seed": 0}}
    runs = []
    # seed-major: a comparison cut short still has every method on the first seeds
    for seed in range(args.seeds):
        for method in args.methods:
            cfg = {**base, "run": {**base["run"], "epochs": epochs, "seed": seed}}
            if method == "vanilla":
                cfg["model"] = {"student": proto.student}
            else:
                options = method_options(method, proto, steps_per_epoch, epochs, n_train)
                cfg["model"] = {"student": proto.student, "teacher": proto.teacher,
                                "teacher_checkpoint": str(teacher_dir / "best.pt")}
                cfg["distill"] = {"method": EXTRA_ARMS.get(method, method), "options": options, "pairs": None}
            runs.append((method, seed, cfg, runs_dir / method / f"seed{seed}"))
    return proto, {"config": teacher, "dir": teacher_dir}, runs


def finished(run_dir: Path, epochs: int) -> dict | None:
    """The run's summary if it completed the planned epochs, else None."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("epochs") == epochs else None


def train_one(cfg: dict, run_dir: str, prune: bool) -> dict:
    """Train (or resume) one run; in a worker process when ``--jobs`` > 1."""
    from redistill.train import load_config, run_training

    summary = run_training(load_config(cfg), run_dir, resume=True)
    if prune:  # keep the summary and metrics; checkpoints are what make runs resumable
        for name in ("last.pt", "best.pt"):
            Path(run_dir, name).unlink(missing_ok=True)
        shutil.rmtree(Path(run_dir, "tb"), ignore_errors=True)
    return summary


def run_all(args: argparse.Namespace) -> tuple[Protocol, dict, list[dict]]:
    """Train the teacher, then every pending run; returns the teacher and run summaries."""
    proto, teacher, runs = plan(args)
    t_epochs = teacher["config"]["run"]["epochs"]
    t_summary = finished(teacher["dir"], t_epochs)
    if t_summary is None:
        print(f"training the teacher {proto.teacher} ({t_epochs} epochs) -> {teacher['dir']}", flush=True)
        t_summary = train_one(teacher["config"], str(teacher["dir"]), prune=False)
    print(f"teacher test accuracy {t_summary['test_acc']:.2f}%", flush=True)

    summaries: list[dict] = []
    failures: list[dict] = []
    pending = []
    for method, seed, cfg, run_dir in runs:
        done = finished(run_dir, cfg["run"]["epochs"])
        if done is not None:
            summaries.append({**done, "bench_method": method, "seed": seed})
        else:
            pending.append((method, seed, cfg, run_dir))
    print(f"{len(summaries)} runs finished earlier, {len(pending)} to train", flush=True)
    deadline = args.started + args.budget_s if args.budget_s else None

    def record(method: str, seed: int, get_summary) -> None:
        try:
            summary = get_summary()
        except Exception as err:  # one failed run must not lose the others; it is reported and retried next time
            print(f"  {method:9s} seed {seed}: FAILED: {type(err).__name__}: {err}", flush=True)
            failures.append({"method": method, "seed": seed, "error": f"{type(err).__name__}: {err}"})
            return
        summaries.append({**summary, "bench_method": method, "seed": seed})
        print(f"  {method:9s} seed {seed}: test {summary['test_acc']:.2f}%  "
              f"({summary['train_time_s']:.0f} s)", flush=True)

    if args.jobs <= 1:
        for method, seed, cfg, run_dir in pending:
            if deadline is not None and time.monotonic() > deadline:
                print("time budget used up; run again to continue", flush=True)
                break
            record(method, seed, lambda: train_one(cfg, str(run_dir), args.prune))
    else:
        # spawn: CUDA cannot be shared with forked children
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(train_one, cfg, str(d), args.prune): (m, s) for m, s, cfg, d in pending}
            try:
                left = None if deadline is None else max(1.0, deadline - time.monotonic())
                for fut in as_completed(futures, timeout=left):
                    record(*futures[fut], fut.result)
            except TimeoutError:
                print("time budget used up; finished runs are kept, run again to continue", flush=True)
                # stop the runs in flight too: their last checkpoints let the next call resume them
                for proc in list(getattr(pool, "_processes", {}).values()):
                    proc.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
    args.failures = failures
    return proto, t_summary, summaries


# ------------------------------------------------------------------ aggregation


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def aggregate(t_summary: dict, summaries: list[dict], methods: list[str]) -> dict[str, Any]:
    """Per-method mean +- std of test accuracy, deployed-model figures, time ratio, ranking."""
    by_method: dict[str, list[dict]] = {}
    for s in summaries:
        by_method.setdefault(s["bench_method"], []).append(s)
    vanilla_time = None
    if "vanilla" in by_method:
        vanilla_time = _mean_std([s["train_time_s"] for s in by_method["vanilla"]])[0]
    rows = []
    for method in methods:
        runs = sorted(by_method.get(method, []), key=lambda s: s["seed"])
        if not runs:
            continue
        accs = [s["test_acc"] for s in runs]
        mean, std = _mean_std(accs)
        t_mean = _mean_std([s["train_time_s"] for s in runs])[0]
        first = runs[0]
        rows.append({
            "method": method,
            "seeds": [s["seed"] for s in runs],
            "test_acc": accs,
            "acc_mean": mean,
            "acc_std": std,
            "peak_bytes_live": first.get("peak_bytes_live"),
            "peak_bytes_layer": first.get("peak_bytes_layer"),
            "params": first.get("params"),
            "flops": first.get("flops"),
            "train_time_s": t_mean,
            "time_ratio": t_mean / vanilla_time if vanilla_time else None,
        })
    ranked = sorted(rows, key=lambda r: -r["acc_mean"])
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    verdict = {}
    if ranked:
        best = ranked[0]
        verdict["best"] = best["method"]
        for name in ("red", "red_kd"):
            row = next((r for r in ranked if r["method"] == name), None)
            if row is not None:
                verdict[f"{name}_rank"] = row["rank"]
                verdict[f"{name}_within_1std_of_best"] = best["acc_mean"] - row["acc_mean"] <= max(row["acc_std"], best["acc_std"])
        red = next((r for r in rows if r["method"] == "red"), None)
        red_kd = next((r for r in rows if r["method"] == "red_kd"), None)
        if red and red_kd:
            verdict["red_kd_ge_red"] = red_kd["acc_mean"] >= red["acc_mean"]
        plus = next((r for r in rows if r["method"] == "student_plus"), None)
        if red and plus:  # paired by seed: RED - student+ isolates the distillation loss
            common = sorted(set(red["seeds"]) & set(plus["seeds"]))
            diffs = [red["test_acc"][red["seeds"].index(s)] - plus["test_acc"][plus["seeds"].index(s)] for s in common]
            if diffs:
                mean, std = _mean_std(diffs)
                verdict["red_minus_student_plus"] = {"mean": mean, "std": std, "per_seed": diffs}
        vanilla = next((r for r in rows if r["method"] == "vanilla"), None)
        if vanilla and red:
            gap = t_summary["test_acc"] - vanilla["acc_mean"]
            verdict["red_gap_recovered"] = (red["acc_mean"] - vanilla["acc_mean"]) / gap if gap > 0 else None
    teacher = {k: t_summary.get(k) for k in ("model", "test_acc", "peak_bytes_live", "peak_bytes_layer", "params", "flops", "epochs", "device")}
    return {"teacher": teacher, "methods": rows, "verdict": verdict}


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def _count(n: int | None, unit: float, suffix: str) -> str:
    return "-" if n is None else f"{n / unit:.2f}{suffix}"


def to_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table plus the verdict, ranked by mean accuracy."""
    p = result["protocol"]
    t = result["teacher"]
    lines = [
        f"# Distillation methods compared on {p['dataset']}",
        "",
        f"Teacher `{p['teacher']}`, student `{p['student']}` (every method, same recipe): "
        f"{p['epochs']} epochs on {p.get('train_images', 'all')} training images (10% held out for validation), "
        f"batch {p['batch_size']}, {p['optim']}, {p['schedule']} schedule, "
        f"augmentation {p['augment']}, seeds {p['seeds']}{' (QUICK smoke settings)' if p['quick'] else ''}, "
        f"device {', '.join(p.get('device') or ['?'])}; teacher: {p.get('teacher_epochs')} epochs, seed 0, "
        f"on {t.get('device') or '?'}. "
        f"Test accuracy of the checkpoint with the best validation accuracy; mean +- sample std over seeds. "
        "Peak memory: deployed student, per image, fp32 (RED blocks included; training-only modules excluded). "
        "Time ratio: mean training time / vanilla student's"
        f"{' (runs trained ' + str(p['jobs']) + ' at a time, so times are indicative)' if p['jobs'] > 1 else ''}.",
        "",
        "| rank | method | test acc % (mean +- std) | runs | peak KiB (live) | peak KiB (layer) | params | FLOPs | time ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| - | teacher | {t['test_acc']:.2f} | 1 | {_kib(t['peak_bytes_live'])} | {_kib(t['peak_bytes_layer'])} | "
        f"{_count(t['params'], 1e6, 'M')} | {_count(t['flops'], 1e6, 'M')} | - |",
    ]
    for r in sorted(result["methods"], key=lambda r: r["rank"]):
        ratio = "-" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}"
        name = {"red": "**RED**", "red_kd": "**RED + KD**", "student_plus": "student+"}.get(r["method"], r["method"])
        lines.append(
            f"| {r['rank']} | {name} | {r['acc_mean']:.2f} +- {r['acc_std']:.2f} | {len(r['test_acc'])} | "
            f"{_kib(r['peak_bytes_live'])} | {_kib(r['peak_bytes_layer'])} | {_count(r['params'], 1e6, 'M')} | "
            f"{_count(r['flops'], 1e6, 'M')} | {ratio} |"
        )
    v = result["verdict"]
    lines += ["", "## Verdict", ""]
    if "red_rank" in v:
        within = "within" if v["red_within_1std_of_best"] else "NOT within"
        lines.append(f"- RED ranks {v['red_rank']} of {len(result['methods'])} (best: {v['best']}); "
                     f"{within} one standard deviation of the best.")
    if "red_kd_rank" in v:
        lines.append(f"- RED + KD ranks {v['red_kd_rank']}; RED + KD >= RED: {'yes' if v.get('red_kd_ge_red') else 'NO'}.")
    if "red_minus_student_plus" in v:
        d = v["red_minus_student_plus"]
        lines.append(f"- RED - student+ (paired by seed; student+: RED blocks, every alpha 0): "
                     f"{d['mean']:+.2f} ± {d['std']:.2f} points over {len(d['per_seed'])} seeds.")
    if v.get("red_gap_recovered") is not None:
        lines.append(f"- RED recovers {100 * v['red_gap_recovered']:.0f}% of the teacher / vanilla-student accuracy gap.")
    if result.get("failures"):
        lines += ["", "Runs that did not finish (retried by the next call; listed here so a missing method is never silent):", ""]
        lines += [f"- {f['method']} seed {f['seed']}: {f['error']}" for f in result["failures"]]
    lines += ["", "Method options used (everything else: the method's defaults, see "
              "`src/redistill/distill/baselines/__init__.py`):", ""]
    for name, opts in p["method_options"].items():
        lines.append(f"- `{name}`: {json.dumps(opts) if opts else 'defaults'}")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs peak memory (live convention), one point per method, like the paper's Figure 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    t = result["teacher"]
    if t.get("peak_bytes_live"):
        ax.plot(t["peak_bytes_live"] / 1024, t["test_acc"], "s", color="black", label="teacher")
        ax.annotate("teacher", (t["peak_bytes_live"] / 1024, t["test_acc"]), xytext=(6, -4), textcoords="offset points")
    rows = [r for r in result["methods"] if r.get("peak_bytes_live")]
    # a diverged method would squash the others into one pixel row: list it instead
    vanilla = next((r["acc_mean"] for r in rows if r["method"] == "vanilla"), None)
    floor = (vanilla - 15) if vanilla is not None else -math.inf
    shown = [r for r in rows if r["acc_mean"] >= floor]
    hidden = [r for r in rows if r["acc_mean"] < floor]
    for r in shown:
        red = r["method"] in ("red", "red_kd")
        color = "C3" if red else ("C7" if r["method"] == "vanilla" else "C0")
        ax.errorbar(r["peak_bytes_live"] / 1024, r["acc_mean"], yerr=r["acc_std"], fmt="o", capsize=3, color=color,
                    markersize=7 if red else 5)
    # students share (almost) one peak: spread the labels over the plot in accuracy order
    if shown:
        ordered = sorted(shown, key=lambda r: r["acc_mean"])
        top = t["test_acc"] if t.get("test_acc") is not None else ordered[-1]["acc_mean"]
        lo, hi = ordered[0]["acc_mean"], top
        step = (hi - lo) / max(1, len(ordered) - 1)
        for i, r in enumerate(ordered):
            x = r["peak_bytes_live"] / 1024
            label = {"red": "RED", "red_kd": "RED + KD"}.get(r["method"], r["method"])
            ax.annotate(f"{label} {r['acc_mean']:.1f}", (x, r["acc_mean"]), xytext=(x * 1.35, lo + i * step),
                        fontsize=8, arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.6},
                        color="C3" if r["method"] in ("red", "red_kd") else "black", va="center")
    if hidden:
        note = "below the axis: " + ", ".join(f"{r['method']} {r['acc_mean']:.1f}%" for r in hidden)
        ax.text(0.98, 0.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.3")
    ax.set_xscale("log")
    ax.set_xlabel("peak activation memory per image, deployed model (KiB, live convention, log scale)")
    ax.set_ylabel("test accuracy (%)")
    p = result["protocol"]
    ax.set_title(f"{p['dataset']}: {p['student']} distilled from {p['teacher']}")
    ax.grid(True, which="both", alpha=0.3)
    xmin, xmax = ax.get_xlim()
    ax.set_xlim(xmin, xmax * 2.5)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_results(args: argparse.Namespace, proto: Protocol, t_summary: dict, summaries: list[dict]) -> dict:
    """Aggregate and write the JSON, Markdown and PNG files; returns the JSON content."""
    result = aggregate(t_summary, summaries, args.methods)
    _, _, runs = plan(args)
    first = {}
    for method, _, cfg, _ in runs:
        first.setdefault(method, cfg)
    any_cfg = next(iter(first.values()))
    result["protocol"] = {
        "dataset": args.dataset,
        "teacher": proto.teacher,
        "student": proto.student,
        "epochs": any_cfg["run"]["epochs"],
        "teacher_epochs": t_summary.get("epochs"),
        "batch_size": any_cfg["data"]["batch_size"],
        "train_images": any_cfg["data"].get("subset") or "all",
        "optim": any_cfg["optim"],
        "schedule": any_cfg["schedule"]["name"],
        "augment": any_cfg["data"]["augment"],
        "seeds": list(range(args.seeds)),
        "quick": bool(args.quick),
        "jobs": args.jobs,
        "device": sorted({s.get("device", "?") for s in summaries}),
        "method_options": {m: (c.get("distill") or {}).get("options", {}) for m, c in first.items()},
    }
    result["failures"] = getattr(args, "failures", [])
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"compare_{args.dataset}{'_quick' if args.quick else ''}"
    (out / f"{stem}.json").write_text(json.dumps({**result, "runs": summaries}, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(result))
    plot(result, out / f"{stem}.png")
    print(f"wrote {out / stem}.{{json,md,png}}", flush=True)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(PROTOCOLS))
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help="comma-separated methods (default: all); 'vanilla' is the student without a teacher")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--quick", action="store_true", help="smoke settings: 1200 images, 1 epoch (results *_quick.*)")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: the protocol's)")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--subset", type=int, default=None, help="use this many training images (before the val split)")
    parser.add_argument("--data-root", default=None, help="data set folder (default: the loader's)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (processes)")
    parser.add_argument("--runs", default=None, help="run directories (default: runs/compare_<dataset>, git-ignored)")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop after this many seconds from the start, teacher included; unfinished runs resume next time")
    parser.add_argument("--prune", action="store_true", help="delete checkpoints of finished student runs")
    parser.add_argument("--report-only", action="store_true", help="write the results from finished runs only")
    args = parser.parse_args(argv)
    args.started = time.monotonic()  # --budget-s counts from here (the teacher included)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from redistill.distill.base import list_methods
    from redistill.errors import UserError, did_you_mean

    known = ["vanilla", *EXTRA_ARMS, *list_methods()]
    for m in args.methods:
        if m not in known:
            raise UserError(f"unknown method '{m}'{did_you_mean(m, known)}; known: {', '.join(known)}")
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if args.runs is None:
        args.runs = str(HERE.parent / "runs" / f"compare_{args.dataset}{'_quick' if args.quick else ''}")
    return args


def main(argv: list[str] | None = None) -> int:
    from redistill.errors import UserError

    try:
        args = parse_args(argv)
        if args.report_only:
            proto, teacher, runs = plan(args)
            t_summary = finished(teacher["dir"], teacher["config"]["run"]["epochs"])
            if t_summary is None:
                raise UserError(f"no finished teacher run in {teacher['dir']}")
            summaries = [{**s, "bench_method": m, "seed": seed} for m, seed, cfg, d in runs
                         if (s := finished(d, cfg["run"]["epochs"])) is not None]
        else:
            proto, t_summary, summaries = run_all(args)
        if not summaries:
            raise UserError("no finished student runs to report")
        result = write_results(args, proto, t_summary, summaries)
        print(to_markdown({**result}))
    except UserError as err:
        print(f"compare: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
