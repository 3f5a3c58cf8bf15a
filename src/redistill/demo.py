"""The main job: teacher, vanilla student and RED student on Fashion-MNIST.

``run_demo`` trains the three runs described by the demo configs (``configs/demo/``: the
paper-shaped pair at 56 px, a benchmarked protocol cut short), reuses runs that already finished, then
measures peak memory of the deployed models and writes a Markdown report with two
plots (per-layer footprint of teacher vs students; accuracy vs peak memory).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from redistill import results as report
from redistill.deploy import DeployOptions, deploy
from redistill.deploy import table as deploy_table
from redistill.errors import UserError
from redistill.memory import analyze_memory, plot_reports
from redistill.train import load_config, load_run_model, run_training
from redistill.train.config import config_differences
from redistill.util import read_yaml

# (run name, config file in the config directory, what the run is)
STAGES = (
    ("teacher", "teacher.yaml", "teacher"),
    ("vanilla", "student_vanilla.yaml", "student, no distillation"),
    ("red", "student_red.yaml", "student, RED distillation (pairs: auto)"),
)
SUMMARY = "summary.json"
# The benchmarked protocol the shipped demo configs cut short (tests/test_benchmark_fashion_mnist.py checks it).
PROTOCOL_RESULTS = "benchmarks/results/fashion_mnist_56_resize_wd0.md"


def default_config_dir() -> Path:
    """The quickstart configs shipped inside the package (``redistill/configs/demo``)."""
    return Path(str(resources.files("redistill") / "configs" / "demo"))


@dataclass
class DemoOptions:
    """Settings of one demo call.

    Attributes:
        out: directory holding the three run directories and the report.
        config_dir: directory with teacher.yaml, student_vanilla.yaml, student_red.yaml.
        overrides: dotted ``key=value`` overrides applied to all three configs
            (e.g. ``data.subset=2000``, ``run.epochs=1``, ``run.device=cuda``).
        overwrite: retrain every run even when a finished one exists.
        progress: show progress bars (stage lines are always printed).
        threads: torch CPU threads (None: torch's default, all cores).
        deploy: end by deploying the RED student (ONNX + int8, ``out/deploy_red``).
        deploy_test_limit: test images the deployment scores (None: the whole test split).
        deploy_calib: training images that calibrate int8.
    """

    out: Path = Path("demo_out")
    config_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    overwrite: bool = False
    progress: bool = True
    threads: int | None = None
    deploy: bool = True
    deploy_test_limit: int | None = 2000
    deploy_calib: int = 256


@dataclass
class DemoResult:
    """What the demo produced."""

    rows: list[report.ResultRow]
    table: str
    report_path: Path
    plots: list[Path]
    reused: list[str]
    trained: list[str]
    gap_recovered: float | None
    seconds: float
    deploy_table: str | None = None
    deploy_test_images: int | None = None  # how many test images the deployment scored
    deploy_dir: Path | None = None


def _say(opts: DemoOptions, text: str) -> None:
    # Stage lines are printed even without progress bars: they are the demo's log.
    print(text, flush=True)


def load_demo_configs(opts: DemoOptions) -> dict:
    """The three run configs, with ``opts.overrides`` applied and the RED run pointed at the teacher run.

    Returns:
        ``{"teacher": Config, "vanilla": Config, "red": Config}``.
    Raises:
        UserError: missing config directory/file, or configs that do not fit together.
    """
    cdir = Path(opts.config_dir) if opts.config_dir is not None else default_config_dir()
    if not cdir.is_dir():
        raise UserError(
            f"demo config directory not found: {cdir}; pass --configs DIR holding "
            + ", ".join(f for _, f, _ in STAGES)
        )
    overrides = list(opts.overrides)
    if not opts.progress:
        overrides.append("run.progress=false")
    cfgs = {}
    for name, fname, _ in STAGES:
        path = cdir / fname
        if not path.is_file():
            raise UserError(f"demo config missing: {path} (the demo needs {', '.join(f for _, f, _ in STAGES)})")
        extra = list(overrides)
        if name == "red":
            extra.append(f"model.teacher_checkpoint={Path(opts.out) / 'teacher'}")
        cfgs[name] = load_config(path, extra)
    teacher, red = cfgs["teacher"].model.student, cfgs["red"].model.teacher
    if red != teacher:
        raise UserError(
            f"{cdir / 'student_red.yaml'}: model.teacher is {red!r} but teacher.yaml trains {teacher!r}; make them equal"
        )
    if cfgs["red"].distill.method is None:
        raise UserError(f"{cdir / 'student_red.yaml'} has no distill.method; the demo needs distill.method: red")
    return cfgs


def run_stage(name: str, cfg, run_dir: Path, overwrite: bool = False) -> tuple[dict, str]:
    """Train one run, or reuse it when it already finished with the same config.

    Args:
        name: run name (for messages).
        cfg: its resolved config.
        run_dir: its directory.
        overwrite: retrain even when a finished run exists.
    Returns:
        ``(summary, status)`` with status "reused", "resumed" or "trained".
    Raises:
        UserError: the directory holds a run of a different config (named keys).
    """
    stored = run_dir / "config.yaml"
    # Only a directory where something was trained (a checkpoint) is worth keeping.
    if not overwrite and stored.is_file() and (run_dir / "last.pt").is_file():
        diffs = config_differences(cfg.to_dict(), read_yaml(stored, "stored run config") or {})
        if diffs:
            raise UserError(
                f"{run_dir} holds a {name} run with other settings ({'; '.join(diffs[:3])}); "
                "pass --overwrite to retrain it or --out to use another directory"
            )
        summary_path = run_dir / SUMMARY
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            if summary.get("epochs") == cfg.run.epochs:
                return summary, "reused"
        return run_training(cfg, run_dir, resume=True), "resumed"
    # Nothing worth keeping (or --overwrite): start over.
    used = run_dir.exists() and any(run_dir.iterdir())
    return run_training(cfg, run_dir, overwrite=used), "trained"


def result_row(name: str, summary: dict) -> report.ResultRow:
    """A results-table row from a run's ``summary.json`` (accuracies there are percent)."""
    model = summary.get("model")
    if isinstance(model, dict):
        strides = model.get("strides")
        model = model.get("name", "?") + (f" [{','.join(map(str, strides))}]" if strides else "")
    acc = summary.get("test_acc")
    return report.ResultRow(
        name=name,
        model=str(model),
        acc=None if acc is None else acc / 100.0,
        peak_live=summary.get("peak_bytes_live"),
        peak_layer=summary.get("peak_bytes_layer"),
        params=summary.get("params"),
        flops=summary.get("flops"),
        extra={"val_acc": summary.get("val_acc"), "train_time_s": summary.get("train_time_s")},
    )


def deployed_model(run_dir: Path):
    """The model a run ships (RED blocks in for a RED run), with its best weights, on CPU, in eval mode."""
    return load_run_model(run_dir)[0].cpu().eval()


def _schedule_text(cfg) -> str:
    d, r = cfg.data, cfg.run
    images = f"{d.subset} training images (data.subset)" if d.subset else "the full training split"
    val = f"{d.val_subset} held-out" if d.val_subset else f"{d.val_fraction:.0%} of the training set held out"
    return (
        f"{images}, validation on {val}, {r.epochs} epochs, batch {d.batch_size}, "
        f"{cfg.optim.name.upper()} lr {cfg.optim.lr} with a {cfg.schedule.name} schedule, seed {r.seed}"
    )


def _pair_lines(summary: dict) -> list[str]:
    lines = []
    for p in summary.get("pairs") or []:
        suffix = ":in" if p.get("side") == "in" else ""
        lines.append(
            f"- student `{p['student']}{suffix}` <-> teacher `{p['teacher']}{suffix}` "
            f"({p.get('distance', 'cosine')}, alpha {p.get('alpha', 1.0):g})"
        )
    return lines


def write_report(
    out: Path,
    rows: list[report.ResultRow],
    summaries: dict,
    cfgs: dict,
    plots: dict,
    gap: float | None,
    statuses: dict,
    shipped: bool = False,
) -> Path:
    """Write ``out/report.md`` and ``out/results.json``; returns the report path.

    ``shipped``: the runs use the shipped configs unchanged (the report then names the protocol they cut
    short).
    """
    cfg = cfgs["teacher"]
    lines = [
        "# ReDistill demo: Fashion-MNIST",
        "",
        f"A `{cfgs['teacher'].model.student}` teacher, the student `{cfgs['vanilla'].model.student}` "
        "(down-sampling moved into the stem, "
        "same total reduction) trained without distillation, and the same student trained with RED blocks "
        "against the frozen teacher (pairs proposed from resolutions).",
        "",
        f"**Schedule**: {_schedule_text(cfg)}. One seed of a reduced schedule (so that the demo fits in "
        "~15 minutes on a 2-core CPU): one seed does not separate RED from the vanilla student."
        + (f" These are the shipped configs: the recipe of the protocol whose 3 seeds (with student+ and KD arms, "
           f"30 epochs, validation on all 6,000 held-out images) are in `{PROTOCOL_RESULTS}`." if shipped else ""),
        "",
        "## Results",
        "",
        report.results_table(rows, markdown=True),
        "",
        "Test accuracy of the checkpoint with the best validation accuracy (the test set is used for nothing else). "
        "Peak activation memory per image (batch 1, fp32, BatchNorm folded) of the deployed model, RED blocks "
        "included: *live* = the largest sum of live tensors over the executed ops; *layer* = the paper's "
        "convention (largest input + output [+ live skip] of a layer). Reductions are against the teacher. "
        "FLOPs from `torch.utils.flop_counter` (a multiply-add counts 2).",
        "",
    ]
    if gap is not None:
        lines += [f"RED recovers **{100 * gap:.0f}%** of the teacher / vanilla-student accuracy gap.", ""]
    else:
        lines += ["The teacher is not more accurate than the vanilla student here, so no gap share is given.", ""]
    pair_lines = _pair_lines(summaries["red"])
    if pair_lines:
        lines += ["RED pairs:", "", *pair_lines, ""]
    lines += [
        "## Peak memory over the execution",
        "",
        f"![live bytes over execution]({plots['footprint'].name})",
        "",
        "## Accuracy vs peak memory",
        "",
        f"![accuracy vs peak memory]({plots['accuracy'].name})",
        "",
        "## Runs",
        "",
    ]
    for name, _, what in STAGES:
        s = summaries[name]
        lines.append(
            f"- {name} ({what}): `{s.get('run_dir')}`, {statuses[name]}, "
            f"training time {s.get('train_time_s', 0):.0f} s on {s.get('device')}, best epoch {s.get('best_epoch')}"
        )
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    results = {
        "rows": [vars(r) for r in rows],
        "gap_recovered": gap,
        "schedule": _schedule_text(cfg),
        "summaries": summaries,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return path


def run_demo(opts: DemoOptions | None = None, on_stage: Callable[[str, str], None] | None = None) -> DemoResult:
    """Run (or reuse) the three demo runs and write the report.

    Args:
        opts: demo settings (defaults: ``demo_out``, ``configs/demo``).
        on_stage: called as ``on_stage(name, status)`` after each run (for tests and UIs).
    Returns:
        A :class:`DemoResult` with the table, the report path and what was reused.
    Raises:
        UserError: bad configs, missing data, or an output directory holding other runs.
    """
    opts = opts or DemoOptions()
    start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if opts.threads is None and torch.get_num_threads() > 1 and load >= cores:
        # Several threads on cores other jobs also use wait for each other at every op (10x slower).
        _say(opts, f"note: the machine is busy (load {load:.1f} on {cores} cores); if training is slow, use --threads 1")
    out = Path(opts.out)
    cfgs = load_demo_configs(opts)
    out.mkdir(parents=True, exist_ok=True)
    summaries, statuses = {}, {}
    for i, (name, _, what) in enumerate(STAGES, 1):
        run_dir = out / name
        # A RED run distilled from an older teacher is stale once the teacher is retrained.
        overwrite = opts.overwrite or (name == "red" and statuses.get("teacher") != "reused")
        _say(opts, f"[{i}/{len(STAGES)}] {name}: {what} -> {run_dir}")
        t0 = time.perf_counter()
        summaries[name], statuses[name] = run_stage(name, cfgs[name], run_dir, overwrite=overwrite)
        s = summaries[name]
        _say(opts, f"[{i}/{len(STAGES)}] {name}: {statuses[name]} in {time.perf_counter() - t0:.0f} s, "
                   f"test acc {s['test_acc']:.2f}%")
        if on_stage is not None:
            on_stage(name, statuses[name])

    rows = [result_row(name, summaries[name]) for name, _, _ in STAGES]
    _say(opts, "analysing peak memory of the deployed models ...")
    reports = []
    for name, _, _ in STAGES:
        model = deployed_model(out / name)
        reports.append(analyze_memory(model, tuple(summaries[name]["input_shape"]), convention="live"))
    plots = {
        "footprint": plot_reports(reports, [f"{r.name} ({r.model})" for r in rows], out / "footprint.png"),
        "accuracy": report.plot_accuracy_vs_memory(
            rows, out / "accuracy_vs_memory.png", title="Fashion-MNIST demo: accuracy vs peak memory"
        ),
    }
    acc = {r.name: r.acc for r in rows}
    gap = report.gap_recovered(acc["teacher"], acc["vanilla"], acc["red"])
    shipped = opts.config_dir is None and not opts.overrides
    path = write_report(out, rows, summaries, cfgs, plots, gap, statuses, shipped=shipped)
    deployed = None
    if opts.deploy:
        _say(opts, f"deploying the RED student (BatchNorm folded, ONNX, int8) -> {out / 'deploy_red'} ...")
        deployed = deploy(str(out / "red"), DeployOptions(
            out=out / "deploy_red", overwrite=True, test_limit=opts.deploy_test_limit, calib=opts.deploy_calib, runs=20, torchao=False,
            quiet=True, name="red"))
    return DemoResult(
        rows=rows,
        table=report.results_table(rows),
        report_path=path,
        plots=list(plots.values()),
        reused=[n for n, s in statuses.items() if s == "reused"],
        trained=[n for n, s in statuses.items() if s != "reused"],
        gap_recovered=gap,
        seconds=time.perf_counter() - start,
        deploy_table=None if deployed is None else deploy_table(deployed),
        deploy_dir=None if deployed is None else Path(deployed.out_dir),
        deploy_test_images=None if deployed is None or not deployed.accuracy else deployed.accuracy["test_images"],
    )
