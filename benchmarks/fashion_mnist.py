"""The full Fashion-MNIST protocol: teacher, vanilla x4 student and RED x4 student, 3 seeds.

Every run uses the 28 px Fashion-MNIST configs (``configs/fashion_mnist/``) with the reduced-schedule settings
lifted: the full training split (or ``--subset N`` images), more epochs (a converged teacher),
batch 256, one seed per run. The RED student of seed s is distilled from the teacher of seed s,
or with ``--teacher RUN_DIR`` every seed from one finished teacher run; ``--red-kd`` and ``--kd``
add RED + KD and plain logit-KD students on the same recipe, ``--student-plus`` the authors' student+
control (RED blocks inserted as in the RED arm, same loss weights, every RED alpha 0), reported with
the paired differences RED - vanilla, RED - student+ and student+ - vanilla. Results (mean +- std over seeds, the share
of the teacher / vanilla-student gap that RED recovers, each RED loss term's first and last
training value) go to ``benchmarks/results/fashion_mnist[_<tag>].{json,md,png}``.

Resumable: a run directory with a ``summary.json`` (same config) is reused, an interrupted
one resumed, so the protocol can be completed over several calls or moved to a GPU.

    python benchmarks/fashion_mnist.py --quick                       # local smoke run (CPU, minutes)
    python benchmarks/fashion_mnist.py --device cuda --jobs 6 --alphas 1 10 50 \\
        --data-root /path/to/fashion-mnist                           # full protocol on one GPU
    python benchmarks/fashion_mnist.py --device cpu --student-epochs 10 --jobs 2 \
        --teacher runs/compare_fashion_mnist/teacher                 # students only, one teacher
    python benchmarks/fashion_mnist.py ... --student cifar_resnet20:strides=2,1,2,1 --tag x2
    python benchmarks/fashion_mnist.py ... --subset 5000 --tag 5k     # STL10-sized training set
    python benchmarks/fashion_mnist.py ... --tag canvas48 data.canvas=48  # translated Fashion-MNIST
    python benchmarks/fashion_mnist.py ... --subset 5000 --out runs/fashion_mnist_5k --tag 5k_w1 \
        --red-weights 1 1                                            # RED loss CE + alpha * L_RED
    python benchmarks/fashion_mnist.py ... --teacher-model cifar_resnet20:strides=1,2,2,2 \
        --student cifar_resnet20:strides=4,1,2,1 --student-plus --tag 56_canvas data.canvas=56  # paper-shaped
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
KINDS = ("teacher", "vanilla", "red")
FASHION_TRAIN = 54_000  # training images once 10% are held out for validation
RED_KINDS = ("red", "red_kd")  # distilled from the teacher, RED blocks in the deployed student
# student+: RED blocks and loss weights as RED, every alpha 0. It still loads the teacher, which
# places the blocks (pairs: auto) and computes the terms it then weighs 0.
DISTILLED = RED_KINDS + ("kd", "student_plus")  # every kind that needs the teacher
WITH_BLOCKS = RED_KINDS + ("student_plus",)  # the kinds --red-weights applies to
# The optional groups: their name in the per-seed line and in their gap-share line.
EXTRA = {"student_plus": ("student+", "student+ (RED blocks, same loss weights, every RED alpha 0: no distillation)"),
         "red_kd": ("RED + KD", "RED + KD (Hinton KD on the logits added, T = 4)"),
         "kd": ("KD", "KD alone (Hinton KD on the logits, method `kd`, default ce 0.1 / kd 0.9, T = 4; no RED blocks)")}
CONFIG_FILES = {"teacher": "teacher.yaml", "vanilla": "student_vanilla.yaml", "red": "student_red.yaml",
                "red_kd": "student_red.yaml", "kd": "student_vanilla.yaml", "student_plus": "student_red.yaml"}
# The paired differences reported with --student-plus: (label, minuend, subtrahend).
DIFFERENCES = (("RED - vanilla", "red", "vanilla"), ("RED - student+", "red", "student_plus"),
               ("student+ - vanilla", "student_plus", "vanilla"))
QUICK_SIZES = (2000, 500, 2000)  # --quick: training, validation and test images


def _shown(path: Path) -> str:
    """A path as the results files name it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def kinds(args: argparse.Namespace) -> tuple[str, ...]:
    """Groups reported: teacher, vanilla, RED (student+ with ``--student-plus``, RED + KD with ``--red-kd``,
    KD alone with ``--kd``)."""
    return (KINDS + (("student_plus",) if args.student_plus else ()) + (("red_kd",) if args.red_kd else ())
            + (("kd",) if args.kd else ()))


def teacher_dir(args: argparse.Namespace, seed: int) -> Path:
    """The teacher run distilled by the students of ``seed``."""
    if args.teacher is not None:
        return args.teacher
    return (args.teachers or args.out) / f"teacher_s{seed}"


def weights_suffix(args: argparse.Namespace, kind: str) -> str:
    """``_w<task>-<distill>`` in the run names of RED kinds and student+ trained with ``--red-weights``."""
    if kind not in WITH_BLOCKS or not args.red_weights:
        return ""
    return f"_w{args.red_weights[0]:g}-{args.red_weights[1]:g}"


def protocol_overrides(args: argparse.Namespace, kind: str, seed: int) -> list[str]:
    """Dotted overrides turning a ``configs/fashion_mnist/`` config into one run of the protocol."""
    if args.quick:
        subset, val_subset, test_subset = args.quick_sizes
        epochs = 1
    else:
        subset, val_subset, test_subset = args.subset, None, None
        epochs = args.teacher_epochs if kind == "teacher" else args.student_epochs
    lr = args.lr if args.lr is not None else 0.1 * args.batch_size / 128  # linear scaling from the 128 recipe
    ov = [
        f"data.subset={'null' if subset is None else subset}",
        f"data.val_subset={'null' if val_subset is None else val_subset}",
        f"data.test_subset={'null' if test_subset is None else test_subset}",
        f"data.batch_size={args.batch_size}",
        f"data.eval_batch_size={max(args.batch_size, 512)}",
        f"data.workers={args.workers}",
        f"optim.lr={lr}",
        f"run.epochs={epochs}",
        f"run.seed={seed}",
        f"run.device={args.device}",
        "run.progress=false",
    ]
    if args.data_root:
        ov.append(f"data.root={args.data_root}")
    if kind != "teacher" and args.student:
        ov.append(f"model.student={args.student}")
    if kind == "teacher" and args.teacher_model:
        ov.append(f"model.student={args.teacher_model}")
    if kind in DISTILLED:
        ov.append(f"model.teacher_checkpoint={teacher_dir(args, seed)}")
        if args.teacher_model:  # the configs name the default teacher, which wins over the checkpoint's
            ov.append(f"model.teacher={args.teacher_model}")
    if kind in ("red_kd", "kd"):
        ov.append(f"distill.method={kind}")
    if kind in WITH_BLOCKS and args.red_weights:
        ov += [f"distill.options.w_task={args.red_weights[0]}", f"distill.options.w_distill={args.red_weights[1]}"]
    ov += list(args.overrides)
    if kind == "student_plus":  # last, so that no override of the call gives it a distillation weight
        ov.append("distill.options.alpha=0")
    return ov


def check_student_plus(summary: dict, name: str) -> None:
    """Refuse a student+ run any of whose RED pairs has a nonzero alpha (a config listing its own pairs)."""
    from redistill.errors import UserError

    alphas = [p.get("alpha") for p in summary.get("pairs") or []]
    if not alphas or any(a != 0 for a in alphas):
        raise UserError(f"{name}: student+ needs RED pairs with alpha 0, its pairs have alpha {alphas}; "
                        "give the pairs without their own alpha (distill.options.alpha sets them)")


def _run_one(config_path: str, overrides: list[str], run_dir: str, threads: int) -> tuple[str, dict, str, float]:
    """Train (or reuse) one run in a worker process."""
    import torch

    torch.set_num_threads(threads)
    from redistill.demo import run_stage
    from redistill.train import load_config

    start = time.perf_counter()
    cfg = load_config(config_path, overrides)
    summary, status = run_stage(Path(run_dir).name, cfg, Path(run_dir))
    return run_dir, summary, status, time.perf_counter() - start


def shared_teacher(path: Path, flag: str = "--teacher") -> dict:
    """The summary of a finished teacher run given with ``flag`` (``--teacher`` or ``--teachers``)."""
    from redistill.errors import UserError

    summary = path / "summary.json"
    if not summary.is_file() or not (path / "best.pt").is_file():
        raise UserError(f"{flag} {path}: no finished run there (summary.json and best.pt are needed); "
                        f"train it first or drop {flag}")
    return json.loads(summary.read_text())


def run_protocol(args: argparse.Namespace, config_files: dict[str, str] = CONFIG_FILES,
                 overrides=protocol_overrides) -> tuple[dict[str, dict], dict | None]:
    """Run every (kind, seed) run; RED runs start once their teacher finished.

    ``config_files`` names the config (in ``args.configs``) of each kind and ``overrides(args, kind, seed)``
    gives one run's dotted overrides: another protocol (``paper_regime.py``) passes its own.

    With ``args.alphas``, RED runs of the first seed try each alpha, the one with the best
    *validation* accuracy is kept and used for the other seeds (the test set chooses nothing);
    RED + KD runs use the alpha chosen for RED.

    Returns:
        (summaries by run name, with ``red_s<seed>`` naming the kept RED runs and
        ``teacher_s<seed>`` the teacher each seed used; the alpha selection record or None).
    """
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    red_kinds = [k for k in kinds(args) if k in RED_KINDS]

    def job(kind: str, seed: int, alpha: float | None = None):
        name = kind + ("" if alpha is None else f"_a{alpha:g}") + weights_suffix(args, kind) + f"_s{seed}"
        extra = [] if alpha is None else [f"distill.options.alpha={alpha}"]
        return str(args.configs / config_files[kind]), overrides(args, kind, seed) + extra, str(out / name), threads

    summaries: dict[str, dict] = {}
    first = args.seeds[0]
    sweep: dict[float, dict] = {}
    chosen: list[float] = []  # empty until the first seed's sweep is complete
    ready: list[int] = []  # seeds whose teacher is ready
    ctx = get_context("spawn")  # CUDA cannot be used in forked children
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        pending = {}

        def submit(kind: str, seed: int, alpha: float | None = None) -> None:
            pending[pool.submit(_run_one, *job(kind, seed, alpha))] = (kind, seed, alpha)

        def distill(seed: int) -> None:
            """Submit the RED runs of ``seed`` that can start now."""
            if not args.alphas:
                for kind in red_kinds:
                    submit(kind, seed)
            elif seed == first:
                for a in args.alphas:
                    submit("red", seed, a)
            elif chosen:
                for kind in red_kinds:
                    submit(kind, seed, chosen[0])

        def teacher_ready(seed: int) -> None:
            ready.append(seed)
            for kind in ("student_plus", "kd"):  # no alpha to choose: they do not wait for the sweep
                if kind in kinds(args):
                    submit(kind, seed)
            distill(seed)

        if args.teacher is not None:
            teacher = shared_teacher(args.teacher)
            for seed in args.seeds:
                summaries[f"teacher_s{seed}"] = teacher
            print(f"teacher: {args.teacher} (val acc {teacher['val_acc']:.2f}%, test acc "
                  f"{teacher['test_acc']:.2f}%), shared by every seed", flush=True)
        elif args.teachers is not None:
            for seed in args.seeds:
                summaries[f"teacher_s{seed}"] = shared_teacher(teacher_dir(args, seed), "--teachers")
        else:
            for seed in args.seeds:  # teachers first: the RED runs wait for them
                submit("teacher", seed)
        for seed in args.seeds:
            submit("vanilla", seed)
        if args.teacher is not None or args.teachers is not None:
            for seed in args.seeds:
                teacher_ready(seed)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                kind, seed, alpha = pending.pop(fut)
                run_dir, summary, status, secs = fut.result()
                name = Path(run_dir).name
                summaries[name] = summary
                print(f"{name}: {status} in {secs:.0f} s, val acc {summary['val_acc']:.2f}%, "
                      f"test acc {summary['test_acc']:.2f}%", flush=True)
                if kind == "teacher":
                    teacher_ready(seed)
                elif kind == "red" and alpha is not None and seed == first:
                    sweep[alpha] = summary
                    if len(sweep) == len(args.alphas):
                        chosen.append(max(args.alphas, key=lambda a: sweep[a]["val_acc"]))
                        print(f"alpha {chosen[0]:g} chosen on validation accuracy (seed {first})", flush=True)
                        summaries[f"red_s{first}"] = sweep[chosen[0]]
                        for k in red_kinds[1:]:
                            submit(k, first, chosen[0])
                        for s in ready:
                            if s != first:
                                distill(s)
                if kind in RED_KINDS and (alpha is None or (chosen and alpha == chosen[0])):
                    summaries[f"{kind}_s{seed}"] = summary
                if kind == "student_plus":
                    check_student_plus(summary, name)
                    summaries[f"student_plus_s{seed}"] = summary
    selection = None
    if args.alphas:
        selection = {"seed": first, "alphas": list(args.alphas), "chosen": chosen[0],
                     "val_acc": {f"{a:g}": sweep[a]["val_acc"] for a in args.alphas}}
    return summaries, selection


def aggregate(summaries: dict[str, dict], seeds: list[int], groups_: tuple[str, ...] = KINDS,
              shared_teacher: bool = False) -> dict:
    """Mean +- std per kind, per-seed gap shares and the gap share of the means.

    With ``shared_teacher`` every seed used one teacher run, counted once.
    """
    from redistill import results as report

    groups = {}
    for kind in groups_:
        runs = [summaries[f"{kind}_s{s}"] for s in (seeds[:1] if kind == "teacher" and shared_teacher else seeds)]
        acc_mean, acc_std = report.mean_std([r["test_acc"] for r in runs])
        val_mean, val_std = report.mean_std([r["val_acc"] for r in runs if r.get("val_acc") is not None] or [float("nan")])
        groups[kind] = {
            "model": runs[0]["model"],
            "test_acc_mean": acc_mean,
            "test_acc_std": acc_std,
            "test_acc": [r["test_acc"] for r in runs],
            "val_acc_mean": val_mean,
            "val_acc_std": val_std,
            "peak_bytes_live": runs[0]["peak_bytes_live"],
            "peak_bytes_layer": runs[0]["peak_bytes_layer"],
            "params": runs[0]["params"],
            "flops": runs[0]["flops"],
            "epochs": runs[0]["epochs"],
            "train_time_s_mean": report.mean_std([r["train_time_s"] for r in runs])[0],
            "device": runs[0].get("device"),
            "pairs": runs[0].get("pairs"),
        }
    t, v = groups["teacher"]["test_acc_mean"], groups["vanilla"]["test_acc_mean"]
    distilled = [k for k in groups_ if k in DISTILLED]
    differences = {}
    if "student_plus" in groups_:  # paired by seed: the seeds share teacher, split and data order
        for label, a, b in DIFFERENCES:
            per_seed = [summaries[f"{a}_s{s}"]["test_acc"] - summaries[f"{b}_s{s}"]["test_acc"] for s in seeds]
            mean, std = report.mean_std(per_seed)
            differences[label] = {"mean": mean, "std": std, "per_seed": per_seed, "beyond_spread": mean > std if len(per_seed) > 1 else None}
    return {
        "differences": differences,
        "groups": groups,
        "gap_recovered": report.gap_recovered(t, v, groups["red"]["test_acc_mean"]),
        "gap_recovered_per_seed": [
            report.gap_recovered(summaries[f"teacher_s{s}"]["test_acc"], summaries[f"vanilla_s{s}"]["test_acc"],
                                 summaries[f"red_s{s}"]["test_acc"])
            for s in seeds
        ],
        "gap_recovered_by_group": {k: report.gap_recovered(t, v, groups[k]["test_acc_mean"]) for k in distilled},
        "shared_teacher": shared_teacher,
        "peak_reduction_live": groups["teacher"]["peak_bytes_live"] / groups["red"]["peak_bytes_live"],
        "peak_reduction_layer": groups["teacher"]["peak_bytes_layer"] / groups["red"]["peak_bytes_layer"],
    }


def _rows(agg: dict):
    from redistill import results as report
    from redistill.demo import result_row

    rows = []
    for kind, g in agg["groups"].items():
        row = result_row(kind, {"model": g["model"], "test_acc": g["test_acc_mean"], "peak_bytes_live": g["peak_bytes_live"],
                                "peak_bytes_layer": g["peak_bytes_layer"], "params": g["params"], "flops": g["flops"]})
        row.acc_std = g["test_acc_std"] / 100.0 if len(g["test_acc"]) > 1 else None  # one shared teacher: no spread
        row.runs = len(g["test_acc"])
        rows.append(row)
    return rows


def red_terms(summary: dict) -> dict[str, list[float]]:
    """One run's RED loss terms, ``{term: [first-epoch, last-epoch training value]}``.

    Read from the run's ``metrics.jsonl``, or from ``summary["red_terms"]`` where a results file carried them
    (a run merged with ``--merge`` has no run folder here); empty for a run with neither.
    """
    if "red_terms" in summary:
        return summary["red_terms"]
    run_dir = Path(summary.get("run_dir") or "")
    metrics = (run_dir if run_dir.is_absolute() else REPO / run_dir) / "metrics.jsonl"
    if not summary.get("run_dir") or not metrics.is_file():
        return {}
    epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.startswith("{")]
    epochs = [e for e in epochs if "epoch" in e]
    return {key[6:]: [epochs[0][key], epochs[-1][key]] for key in (epochs[0] if epochs else []) if key.startswith("train/red/")}


def red_loss_trend(summaries: list[dict]) -> dict[str, tuple[float, float]]:
    """Each RED term's training value in the first and last epoch, mean over runs (those without one skipped)."""
    firsts: dict[str, list[float]] = {}
    lasts: dict[str, list[float]] = {}
    for summary in summaries:
        for key, (first, last) in red_terms(summary).items():
            firsts.setdefault(key, []).append(first)
            lasts.setdefault(key, []).append(last)
    return {k: (sum(firsts[k]) / len(firsts[k]), sum(lasts[k]) / len(lasts[k])) for k in firsts}


# The settings two calls must share for their seeds to be merged into one result (--merge).
MERGE_KEYS = ("quick", "batch_size", "teacher_epochs", "student_epochs", "teacher", "student", "teacher_model",
              "student_plus", "teachers", "overrides", "subset", "red_weights", "tag")


def merged_runs(args: argparse.Namespace) -> tuple[dict[str, dict], list[int], dict]:
    """The finished seeds of an earlier call's results file (``--merge FILE``), to be reported, not retrained.

    A seed is taken when the file holds every group of this call for it and the file's protocol settings
    (``MERGE_KEYS``) equal this call's. Returns (run summaries by name, the seeds taken, the file's settings).
    """
    from redistill.errors import UserError

    path = args.merge
    try:
        prior = json.loads(path.read_text())
        settings, runs = prior["settings"], prior["runs"]
    except FileNotFoundError:
        raise UserError(f"--merge {path}: no such file; give the results JSON of the earlier call "
                        "(benchmarks/results/fashion_mnist_<tag>.json)") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--merge {path}: not a results file of this script (JSON with 'settings' and 'runs'); "
                        "give benchmarks/results/fashion_mnist_<tag>.json") from None
    epochs = {"teacher_epochs": 1 if args.quick else args.teacher_epochs,
              "student_epochs": 1 if args.quick else args.student_epochs}
    here = {k: epochs.get(k, getattr(args, k, None)) for k in MERGE_KEYS}
    here.update(teacher=None if args.teacher is None else str(args.teacher),
                teachers=None if args.teachers is None else str(args.teachers))
    differ = [k for k in MERGE_KEYS if settings.get(k) != here[k]]
    if differ:
        k = differ[0]
        raise UserError(f"--merge {path}: its runs used {k} = {settings.get(k)!r}, this call {here[k]!r}; "
                        "merge only calls of the same protocol (or drop --merge)")
    groups = kinds(args)
    seeds = [s for s in args.seeds if s in settings.get("seeds", []) and all(f"{k}_s{s}" in runs for k in groups)]
    return {name: run for name, run in runs.items() if int(name.rsplit("_s", 1)[1]) in seeds}, seeds, settings


def result_lines(agg: dict, summaries: dict, seeds: list[int], rows) -> list[str]:
    """The Markdown shared by the protocols' results files: the results table, peak reduction, gap shares,
    per-seed accuracies, paired differences (with student+), RED loss trend and training times."""
    from redistill import results as report

    gap = agg["gap_recovered"]
    per_seed = ", ".join("-" if g is None else f"{100 * g:.0f}%" for g in agg["gap_recovered_per_seed"])
    g = agg["groups"]
    lines = [
        report.results_table(rows, markdown=True),
        "",
        "Test accuracy (%) of the best-validation checkpoint, mean ± sample std over seeds; peak activation memory "
        "per image (batch 1, fp32, BatchNorm folded) of the deployed models, RED blocks included.",
        "",
        f"- Peak memory, teacher / RED student: x{agg['peak_reduction_live']:.2f} (live), "
        f"x{agg['peak_reduction_layer']:.2f} (layer convention); target >= 4x: "
        f"{'met' if min(agg['peak_reduction_live'], agg['peak_reduction_layer']) >= 4 else 'NOT met'}.",
        "- Share of the teacher / vanilla-student gap RED recovers (from the means): "
        + ("undefined (teacher not better than the vanilla student)" if gap is None else
           f"**{100 * gap:.0f}%**; target >= 50%: {'met' if gap >= 0.5 else 'NOT met'}")
        + f"; per seed: {per_seed}.",
        f"- Per-seed test accuracies: teacher {g['teacher']['test_acc']}, vanilla {g['vanilla']['test_acc']}, "
        f"RED {g['red']['test_acc']}" + "".join(f", {EXTRA[k][0]} {g[k]['test_acc']}" for k in EXTRA if k in g) + ".",
    ]
    diffs = agg.get("differences") or {}
    if diffs:
        lines.append("- Paired differences (test accuracy points; mean of the per-seed differences ± their sample std "
                     "over seeds): " + "; ".join(
                         f"{label} **{d['mean']:+.2f}" + (f" ± {d['std']:.2f}" if len(d["per_seed"]) > 1 else "")
                         + "** (per seed "
                         + ", ".join(f"{x:+.2f}" for x in d["per_seed"]) + ")" for label, d in diffs.items()) + ".")
        flags = [diffs["RED - vanilla"]["beyond_spread"], diffs["RED - student+"]["beyond_spread"]]
        verdict = ("undefined: one seed has no spread" if None in flags else "**yes**" if all(flags) else "**no**")
        lines.append("- RED beats both vanilla and student+ by more than the seeds' spread (mean difference > its std): "
                     + verdict + ".")
    trend = red_loss_trend([summaries[f"red_s{s}"] for s in seeds])
    if trend:
        lines.append("- RED loss terms (training, mean over seeds), first -> last epoch: " + ", ".join(
            f"{k} {first:.4f} -> {last:.4f}" for k, (first, last) in trend.items()) + ".")
    lines.append("- Training time per run (mean): " + ", ".join(
        f"{k} {g[k]['train_time_s_mean'] / 60:.1f} min on {g[k]['device']}" for k in g) + ".")
    for kind in (k for k in EXTRA if k in g):
        share = agg["gap_recovered_by_group"][kind]
        lines.append(f"- Share of the gap {EXTRA[kind][1]} recovers: "
                     + ("undefined" if share is None else f"**{100 * share:.0f}%**") + ".")
    return lines


def results_stem(args: argparse.Namespace) -> str:
    """``fashion_mnist[_<tag>][_quick]``: the name of the results files and default run folder."""
    return "fashion_mnist" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")


def write_results(args: argparse.Namespace, agg: dict, summaries: dict, wall_s: float, selection: dict | None) -> list[Path]:
    """benchmarks/results/fashion_mnist[_quick].{json,md,png}."""
    from redistill import results as report

    stem = results_stem(args)
    args.results.mkdir(parents=True, exist_ok=True)
    rows = _rows(agg)
    png = report.plot_accuracy_vs_memory(
        rows, args.results / f"{stem}.png",
        title=f"Fashion-MNIST, mean ± std over {len(args.seeds)} seeds",
    )
    settings = {
        "quick": args.quick, "seeds": args.seeds, "batch_size": args.batch_size, "device": args.device,
        "teacher_epochs": agg["groups"]["teacher"]["epochs"], "student_epochs": agg["groups"]["red"]["epochs"],
        "teacher": None if args.teacher is None else str(args.teacher), "student": args.student,
        "teacher_model": args.teacher_model, "student_plus": args.student_plus,
        "teachers": None if args.teachers is None else str(args.teachers),
        "jobs": args.jobs, "overrides": args.overrides, "wall_s": wall_s,
        "subset": args.subset, "red_weights": args.red_weights, "tag": args.tag, "argv": args.argv,
        "devices": sorted({s.get("device", "?") for s in summaries.values()}),
    }
    if args.merged:
        settings["merged"] = args.merged
    # Each run's RED terms travel with its summary, so that a later --merge reports them without the run folder.
    terms = {name: red_terms(run) for name, run in summaries.items()}
    summaries = {name: {**run, "red_terms": terms[name]} if terms[name] else run for name, run in summaries.items()}
    data = {"settings": settings, **agg, "alpha_selection": selection, "runs": summaries}
    js = args.results / f"{stem}.json"
    js.write_text(json.dumps(data, indent=2) + "\n")

    canvas = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("data.canvas=")), None)
    canvas = None if canvas in (None, "null") else canvas
    others = [o for o in args.overrides if not o.startswith("data.canvas=")]
    g = agg["groups"]
    lines = [
        f"# Fashion-MNIST: teacher vs vanilla student vs RED student{' (QUICK smoke run, not a result)' if args.quick else ''}",
        "",
        f"`python benchmarks/fashion_mnist.py {' '.join(args.argv)}`".replace(" `", "`"),
        "",
        f"Configs `{_shown(args.configs)}/` with the protocol settings: "
        + ("a 2,000-image subset and 1 epoch (--quick)" if args.quick else
           ((f"a {args.subset:,}-image subset of the training split (--subset; the same images in every run; "
             "6,000 more held out for validation)" if args.subset else
             "the full training split (54,000 images; 6,000 held out for validation)")
            + ", the full 10,000-image test set"))
        + (f"; translated: every image at a fixed random place on a blank {canvas} x {canvas} square "
           f"(`data.canvas={canvas}`)" if canvas else "")
        + f", {settings['teacher_epochs']} teacher epochs and {settings['student_epochs']} student epochs, batch "
        f"{args.batch_size}, seeds {', '.join(map(str, args.seeds))}; "
        + (f"one teacher run (`{args.teacher}`, trained on {g['teacher']['device']}) is distilled by every seed. "
           if args.teacher is not None else "the distilled students of seed s learn from teacher seed s"
           + (f" (the finished `teacher_s<seed>` runs in `{args.teachers}`, not trained in this call). "
              if args.teachers is not None else ". "))
        + (f"Teacher: `{args.teacher_model}`. " if args.teacher_model else "")
        + (f"Student: `{args.student}`. " if args.student else "")
        + ("RED loss weights (--red-weights): w_task {:g}, w_distill {:g} (the configs' 0.5 / 0.5 replaced). "
           .format(*args.red_weights) if args.red_weights else "")
        + (f"Every run also takes {', '.join(f'`{o}`' for o in others)}. " if others else "")
        + f"Device(s): {', '.join(settings['devices'])}. Wall time of this call: {wall_s / 60:.1f} min "
        "(reused runs cost nothing)."
        + (f" Seed(s) {', '.join(map(str, args.merged['seeds']))} come from an earlier call of the same protocol, "
           f"merged from its results file (`--merge {args.merged['file']}`; that call's wall time "
           f"{args.merged['wall_s'] / 60:.1f} min)." if args.merged else ""),
        "",
    ]
    lines += result_lines(agg, summaries, args.seeds, rows)
    if selection is not None:
        tried = ", ".join(f"{a}: {v:.2f}%" for a, v in selection["val_acc"].items())
        lines.append(
            f"- RED alpha chosen on validation accuracy of seed {selection['seed']} (the test set chose nothing): "
            f"**{selection['chosen']:g}**; tried {tried}."
        )
    else:
        alphas = sorted({p["alpha"] for p in g["red"]["pairs"] or [] if p.get("alpha") is not None})
        lines.append(f"- RED alpha: {''.join(f'{a:g}, ' for a in alphas)}the one in {_shown(args.configs)}/student_red.yaml "
                     "(no selection in this call).")
    return [js, write_markdown(args.results / f"{stem}.md", lines, png), png]


def write_markdown(path: Path, lines: list[str], png: Path) -> Path:
    """Write (and print) a results file: ``lines``, then the accuracy-vs-memory figure ``png``."""
    text = "\n".join(lines + ["", f"![accuracy vs peak memory]({png.name})", ""])
    path.write_text(text)
    print(text)
    return path


def default_workers(jobs: int) -> int:
    """Data-loading processes per run when ``jobs`` runs share this machine's cores (0 on 1-2 cores)."""
    cores = os.cpu_count() or 1
    return max(1, min(6, cores // max(1, jobs) - 1)) if cores > 2 else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the installed one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--quick: 0 1)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (processes)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes per run")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=None, help="default: 0.1 * batch / 128")
    # 20 cosine epochs on the full split (about 4,200 steps at batch 256) keep the whole protocol
    # (11 runs with --alphas 1 10 50) short on one GPU; raise them if the teacher's validation
    # accuracy (metrics.jsonl) is still rising at the end.
    p.add_argument("--subset", type=int, default=None,
                   help="train every run on this many training images (default: all 54,000), e.g. 5000 for an "
                        "STL10-sized training set")
    p.add_argument("--teacher-epochs", type=int, default=20)
    p.add_argument("--student-epochs", type=int, default=20)
    p.add_argument("--alphas", type=float, nargs="+", default=None,
                   help="RED alphas to try on the first seed; the best on validation is used for all seeds")
    p.add_argument("--teacher", type=Path, default=None,
                   help="a finished teacher run directory distilled by every seed (no teacher is trained)")
    p.add_argument("--teachers", type=Path, default=None,
                   help="a folder of an earlier call with finished teacher_s<seed> runs, distilled seed by seed "
                        "(no teacher is trained), e.g. to try another student against the same teachers")
    p.add_argument("--student", default=None,
                   help="student spec for the vanilla and RED runs (default: the configs'), "
                        "e.g. cifar_resnet20:strides=4,1,1,1:stem_kernel=5")
    p.add_argument("--teacher-model", default=None,
                   help="teacher spec for the teacher runs, and the teacher the distilled runs rebuild (default: "
                        "the configs'), e.g. cifar_resnet20:strides=1,2,2,2")
    p.add_argument("--student-plus", action="store_true",
                   help="also train student+ (RED blocks as the RED arm, same loss weights, every alpha 0)")
    p.add_argument("--tag", default="", help="suffix of the results files and run folder (e.g. x2)")
    p.add_argument("--red-weights", type=float, nargs=2, metavar=("W_TASK", "W_DISTILL"), default=None,
                   help="loss weights of the RED students (default: the config's 0.5 0.5, the authors'); "
                        "the run names get _w<task>-<distill>, so teacher and vanilla runs are reused")
    p.add_argument("--red-kd", action="store_true", help="also train RED + KD students (one more group)")
    p.add_argument("--kd", action="store_true", help="also train KD students without RED (one more group)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 images, 1 epoch, seeds 0 1")
    p.add_argument("--configs", type=Path, default=REPO / "configs" / "fashion_mnist")
    p.add_argument("--out", type=Path, default=None, help="run directories (default: runs/fashion_mnist[_quick])")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--merge", type=Path, default=None, metavar="RESULTS_JSON",
                   help="take the finished seeds of an earlier call of the same protocol from its results file "
                        "(its run folders need not exist: e.g. another machine's), train only the other seeds")
    p.add_argument("--replot", type=Path, default=None, metavar="RESULTS_JSON",
                   help="redraw the accuracy-vs-memory figure of a results file written by this script "
                        "(the PNG next to it) and stop")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more config overrides for every run")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.subset is not None and (args.quick or not 1 <= args.subset <= FASHION_TRAIN):
        p.error(f"--subset must be 1..{FASHION_TRAIN:,} (the training images left after the validation split) "
                "and cannot be combined with --quick")
    if args.seeds is None:
        args.seeds = [0, 1] if args.quick else [0, 1, 2]
    args.quick_sizes = QUICK_SIZES
    if args.merge is not None and args.alphas:
        p.error("--merge takes finished seeds from an earlier call; it cannot be combined with --alphas "
                "(the alpha is chosen on the first seed's validation runs)")
    args.merged = None
    if args.teacher is not None and args.teachers is not None:
        p.error("--teacher (one run for every seed) and --teachers (one run per seed) exclude each other")
    if args.workers is None:
        args.workers = default_workers(args.jobs)
    if args.out is None:
        args.out = REPO / "runs" / results_stem(args)
    return args


def replot(path: Path) -> Path:
    """Redraw ``path``'s figure (``<stem>.png`` beside it) from its groups, without training anything."""
    from redistill import results as report
    from redistill.errors import UserError

    try:
        data = json.loads(path.read_text())
        groups, seeds = data["groups"], data["settings"]["seeds"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--replot {path}: not a results file of this script ({type(err).__name__}: {err}); "
                        "give a results JSON written by benchmarks/fashion_mnist.py") from None
    return report.plot_accuracy_vs_memory(_rows({"groups": groups}), path.with_suffix(".png"),
                                          title=f"Fashion-MNIST, mean ± std over {len(seeds)} seeds")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from redistill.errors import UserError

    if args.replot is not None:
        try:
            print(replot(args.replot))
        except UserError as err:
            print(f"fashion_mnist.py: error: {err}", file=sys.stderr)
            return 2
        return 0

    start = time.perf_counter()
    try:
        summaries, selection = {}, None
        if args.merge is not None:
            summaries, seeds, prior = merged_runs(args)
            args.merged = {"file": str(args.merge), "seeds": seeds, "wall_s": prior.get("wall_s", 0.0)}
            print(f"--merge {args.merge}: seed(s) {seeds or 'none'} taken from it", flush=True)
        todo = [s for s in args.seeds if not args.merged or s not in args.merged["seeds"]]
        if todo:
            trained, selection = run_protocol(argparse.Namespace(**{**vars(args), "seeds": todo}))
            summaries.update(trained)
    except UserError as err:
        print(f"fashion_mnist.py: error: {err}", file=sys.stderr)
        return 2
    agg = aggregate(summaries, args.seeds, kinds(args), shared_teacher=args.teacher is not None)
    write_results(args, agg, summaries, time.perf_counter() - start, selection)
    return 0


if __name__ == "__main__":
    sys.exit(main())
