"""Teacher, vanilla x2, RED x2 and student+ x2 DDPM UNets on Fashion-MNIST (32 px): FID, KID, precision,
recall, peak memory (both conventions), parameters, FLOPs per denoising step and sampling time per image.

student+ is the authors' control: the RED student's blocks and loss weights with every RED alpha 0, so
its blocks are trained by the diffusion loss alone; RED - student+ is what the distillation adds beyond
the blocks' own compute.

Three forms (each writes its own files under benchmarks/results/):

- ``--quick``: a tiny UNet, 512 images, 2 epochs, 64 DDIM samples per seed: checks the pipeline end to
  end in minutes on a CPU; its numbers say nothing about the method (diffusion_quick.{json,md}).
- default (CPU): a small UNet, 8192 images, 8 epochs, 500 DDIM samples per seed, 3 sampling seeds
  (diffusion.{json,md}); hours on a 2-core CPU, so it is resumable: every finished run, sample set and
  score is kept under ``--work`` and a rerun picks up where the last one stopped (kill it at any time).
- ``--gpu``: a wider UNet on all 54,000 training images, 6 epochs (2530 steps per arm), AMP, 2000 samples
  per seed, sized (an estimate, not a measurement) for under 10 minutes on one H200
  (diffusion_gpu.{json,md}). Not run by this project so far. Pass ``--features`` with an extractor file
  made beforehand (``redistill fid-extractor``), or its first call trains one on the CPU.

Every arm uses the same recipe, the same sampler (DDIM, eta 0), the same number of samples and the same
sampling seeds; the reference for FID / KID / precision / recall is as many Fashion-MNIST test images
(zero-padded to 32 px), drawn per seed. Features: the project's Fashion-MNIST classifier
(``redistill fid-extractor``; ``--features PATH`` to name the file).

    OMP_NUM_THREADS=1 python benchmarks/diffusion.py --quick [--features PATH]
    OMP_NUM_THREADS=1 python benchmarks/diffusion.py            # rerun until it reports "complete"
    python benchmarks/diffusion.py --gpu
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from redistill.demo import DemoOptions, load_demo_configs, run_stage
from redistill.demo_diffusion import default_config_dir
from redistill.diffusion import save_grid
from redistill.diffusion.metrics import load_samples
from redistill.train.fid import fid_report
from redistill.train.sampling import sample_run
from redistill.util import fmt_bytes

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = (("teacher", "teacher [1,2,2,2]"), ("vanilla", "x2 student, no distillation"),
        ("red", "x2 student, RED (pairs: auto, cosine, alpha 1)"),
        ("student_plus", "x2 student+, RED blocks, alpha 0 (no distillation)"))
GRID_TITLES = {"teacher": "teacher", "vanilla": "vanilla x2", "red": "RED x2", "student_plus": "student+ x2"}

_TINY = "{ch: 8, ch_mult: [1, 2, 2, 2], num_res_blocks: 1, attn: [1], dropout: 0.0, norm_groups: 4}"
_SMALL = "{ch: 16, ch_mult: [1, 2, 2, 2], num_res_blocks: 1, attn: [1], dropout: 0.0, norm_groups: 8}"
_WIDE = "{ch: 64, ch_mult: [1, 2, 2, 2], num_res_blocks: 2, attn: [1], dropout: 0.1, norm_groups: 32}"

FORMS = {
    "quick": {
        "label": "quick (pipeline check only: tiny UNet, 512 images, 2 epochs)",
        "overrides": [f"model.options={_TINY}", "data.subset=512", "data.val_subset=128", "data.test_subset=128",
                      "run.epochs=2", "diffusion.ema_decay=0.99"],
        "samples": 64, "steps": 20, "seeds": [0, 1], "batch": 64, "device": "cpu",
    },
    "cpu": {
        "label": "CPU (small UNet ch 16, 8192 images, 8 epochs)",
        "overrides": [f"model.options={_SMALL}", "data.subset=8192", "data.val_subset=512", "data.test_subset=512",
                      "run.epochs=8", "diffusion.ema_decay=0.998"],
        "samples": 500, "steps": 50, "seeds": [0, 1, 2], "batch": 100, "device": "cpu",
    },
    "gpu": {
        "label": "GPU (UNet ch 64, 2 res blocks, all 54,000 training images, 6 epochs, one H200)",
        "overrides": [f"model.options={_WIDE}", "data.subset=null", "data.val_subset=1000", "data.test_subset=1000",
                      "data.batch_size=128", "optim.lr=2e-4", "run.epochs=6", "run.device=cuda", "run.amp=true",
                      "run.channels_last=true", "diffusion.ema_decay=0.999", "schedule.warmup_epochs=1"],
        "samples": 2000, "steps": 100, "seeds": [0, 1, 2], "batch": 500, "device": "cuda",
    },
}


def _say(text: str) -> None:
    print(text, flush=True)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def train_arms(form: dict, work: Path) -> dict[str, dict]:
    """Train (or reuse / resume) the three runs; returns their summaries."""
    opts = DemoOptions(out=work, config_dir=default_config_dir(), overrides=list(form["overrides"]), progress=False)
    cfgs = load_demo_configs(opts)
    cfgs["student_plus"] = copy.deepcopy(cfgs["red"])
    cfgs["student_plus"].distill.options = {**cfgs["red"].distill.options, "alpha": 0.0}
    summaries, statuses = {}, {}
    for name, what in ARMS:
        overwrite = name in ("red", "student_plus") and statuses.get("teacher") not in (None, "reused")
        _say(f"{name}: {what}")
        t0 = time.perf_counter()
        summaries[name], statuses[name] = run_stage(name, cfgs[name], work / name, overwrite=overwrite)
        _say(f"{name}: {statuses[name]} ({time.perf_counter() - t0:.0f} s), test denoising MSE "
             f"{summaries[name]['test_loss']:.4f}")
    return summaries


def sample_and_score(form: dict, work: Path, features: Path | None) -> dict[str, list[dict]]:
    """Per arm and seed: DDIM samples (kept) and their scores (kept); returns the score records."""
    scores: dict[str, list[dict]] = {}
    for name, _ in ARMS:
        scores[name] = []
        for seed in form["seeds"]:
            out, record_path = work / name / f"samples_seed{seed}", work / name / f"score_seed{seed}.json"
            record = _json(record_path)
            if record is None:
                if not (out / "samples.pt").is_file():
                    _say(f"{name}: sampling {form['samples']} images, DDIM {form['steps']} steps, seed {seed}")
                    res = sample_run(work / name, out, n=form["samples"], sampler="ddim", steps=form["steps"],
                                     seed=seed, batch_size=form["batch"], device=form["device"], progress=False)
                    _write(work / name / f"timing_seed{seed}.json", {"seconds": res.seconds, "n": res.n})
                timing = _json(work / name / f"timing_seed{seed}.json") or {}
                result = fid_report(out, n=form["samples"], features=features, seed=seed)
                record = {"seed": seed, "sample_s_per_image": timing.get("seconds", float("nan")) / form["samples"],
                          **{k: result[k] for k in ("fid", "kid_mean", "kid_std", "precision", "recall", "n_real",
                                                     "n_fake", "features", "reference")}}
                _write(record_path, record)
            _say(f"{name} seed {seed}: FID {record['fid']:.2f}, KID {record['kid_mean']:.4f}, "
                 f"precision {record['precision']:.3f}, recall {record['recall']:.3f}")
            scores[name].append(record)
    return scores


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def aggregate(summaries: dict, scores: dict) -> list[dict]:
    rows = []
    for name, what in ARMS:
        s = summaries[name]
        recs = scores[name]
        rows.append({
            "name": name, "what": what, "model": s["model"], "pairs": len(s.get("pairs") or []),
            "test_denoising_mse": s["test_loss"],
            "peak_bytes_live": s["peak_bytes_live"], "peak_bytes_layer": s["peak_bytes_layer"],
            "params": s["params"], "flops_per_step": s["flops"], "train_time_s": s["train_time_s"],
            **{key: _stat([r[key] for r in recs]) for key in ("fid", "kid_mean", "precision", "recall",
                                                              "sample_s_per_image")},
        })
    return rows


def _spread(form: dict, *rows: dict) -> float | None:
    """The larger FID standard deviation over sampling seeds of ``rows`` (None with one seed)."""
    if len(form["seeds"]) < 2:
        return None
    return max(r["fid"]["std"] for r in rows if r["fid"]["std"] is not None)


def _answer(beyond: bool | None) -> str:
    return "yes" if beyond else "no" if beyond is not None else "unknown (one seed)"


def _pm(stat: dict, fmt: str) -> str:
    return fmt.format(stat["mean"]) + (f" ± {fmt.format(stat['std'])}" if stat["std"] is not None else "")


def write_results(form_name: str, form: dict, rows: list[dict], work: Path) -> Path:
    """benchmarks/results/diffusion[_form].{json,md}, the sample grids and the FID-vs-memory plot."""
    stem = "diffusion" if form_name == "cpu" else f"diffusion_{form_name}"
    RESULTS.mkdir(exist_ok=True)
    by = {r["name"]: r for r in rows}
    teacher, vanilla, red, plus = by["teacher"], by["vanilla"], by["red"], by["student_plus"]
    grids = {}
    for row in rows:  # the first 64 images of seed 0: the same initial noise for every arm
        images = load_samples(work / row["name"] / f"samples_seed{form['seeds'][0]}").float() / 127.5 - 1
        grids[row["name"]] = save_grid(images[:64], RESULTS / f"{stem}_samples_{row['name']}.png", nrow=8).name
    plot = _plot(rows, RESULTS / f"{stem}_fid_vs_memory.png", form["label"])
    reduction = {c: teacher[f"peak_bytes_{c}"] / vanilla[f"peak_bytes_{c}"] for c in ("live", "layer")}
    gap = vanilla["fid"]["mean"] - red["fid"]["mean"]
    spread = _spread(form, vanilla, red)
    plus_gap, plus_spread = plus["fid"]["mean"] - red["fid"]["mean"], _spread(form, plus, red)
    verdict = {
        "student_peak_4x_below_teacher": {c: reduction[c] >= 4.0 for c in reduction},
        "peak_reduction": reduction,
        "red_fid_below_vanilla_by": gap,
        "seed_spread_fid": spread,
        "red_beats_vanilla_beyond_seed_spread": (gap > spread) if spread is not None else None,
        "red_fid_below_student_plus_by": plus_gap,
        "seed_spread_fid_student_plus": plus_spread,
        "red_beats_student_plus_beyond_seed_spread": (plus_gap > plus_spread) if plus_spread is not None else None,
        "student_plus_fid_below_vanilla_by": vanilla["fid"]["mean"] - plus["fid"]["mean"],
    }
    data = {"form": form_name, "label": form["label"], "overrides": form["overrides"],
            "sampler": f"DDIM, {form['steps']} steps, eta 0", "samples_per_seed": form["samples"],
            "seeds": form["seeds"], "rows": rows, "verdict": verdict, "grids": grids, "plot": plot.name}
    _write(RESULTS / f"{stem}.json", data)
    lines = [
        f"# Diffusion benchmark: {form['label']}",
        "",
        f"Written by `benchmarks/diffusion.py{'' if form_name == 'cpu' else ' --' + form_name}`. Fashion-MNIST padded "
        f"to 32 px; every arm: the same recipe ({', '.join(form['overrides'])} on configs/demo_diffusion), "
        f"the EMA denoiser, DDIM {form['steps']} steps (eta 0), {form['samples']} samples per seed, seeds "
        f"{form['seeds']}; reference: as many Fashion-MNIST test images, drawn per seed. Mean ± std over the seeds.",
        "",
        "| arm | FID | KID | precision | recall | peak live | peak layer | params | FLOPs / step | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} ({r['what']}) | {_pm(r['fid'], '{:.2f}')} | {_pm(r['kid_mean'], '{:.4f}')} | "
            f"{_pm(r['precision'], '{:.3f}')} | {_pm(r['recall'], '{:.3f}')} | {fmt_bytes(r['peak_bytes_live'], unit='KiB')} | "
            f"{fmt_bytes(r['peak_bytes_layer'], unit='KiB')} | {r['params']:,} | {r['flops_per_step'] / 1e6:.1f} M | "
            f"{r['sample_s_per_image']['mean']:.4f} |")
    beyond = verdict["red_beats_vanilla_beyond_seed_spread"]
    beyond_plus = verdict["red_beats_student_plus_beyond_seed_spread"]
    lines += [
        "",
        "Peak memory: per image, fp32, one denoising step of the deployed model (RED blocks included); *live* = "
        "the largest sum of live tensors over the executed ops, *layer* = the paper's convention. FLOPs of one "
        "denoising step (`torch.utils.flop_counter`). s / image: DDIM sampling time per image on "
        f"{'the GPU' if form['device'] == 'cuda' else 'this CPU'}, batch {form['batch']}.",
        "",
        f"- student peak vs teacher: {reduction['live']:.2f}x (live), {reduction['layer']:.2f}x (layer); "
        f"target >= 4x: {'met' if all(verdict['student_peak_4x_below_teacher'].values()) else 'not met'}",
        f"- RED FID - vanilla FID = {-gap:+.2f} ({'RED better' if gap > 0 else 'RED not better'}); largest seed "
        f"spread (std) {spread if spread is None else f'{spread:.2f}'}: RED better beyond the spread: "
        + _answer(beyond),
        f"- RED FID - student+ FID = {-plus_gap:+.2f}; largest seed spread (std) "
        f"{plus_spread if plus_spread is None else f'{plus_spread:.2f}'}: RED better beyond the spread: "
        + _answer(beyond_plus)
        + f"; student+ FID - vanilla FID = {-verdict['student_plus_fid_below_vanilla_by']:+.2f}",
        "- one training run per arm: the spread is over sampling seeds only, not over training seeds",
        "",
        f"![FID vs peak memory]({plot.name})",
        "",
        "| " + " | ".join(GRID_TITLES[n] for n, _ in ARMS) + " |",
        "|" + "---|" * len(ARMS),
        "| " + " | ".join(f"![{n}]({grids[n]})" for n, _ in ARMS) + " |",
        "",
    ]
    if form_name == "quick":
        lines.insert(2, "**Pipeline check, not a result**: the UNet and the schedule are far too small for the scores "
                        "to say anything about RED.\n")
    path = RESULTS / f"{stem}.md"
    path.write_text("\n".join(lines))
    return path


def _plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        x = r["peak_bytes_live"] / 1024
        ax.errorbar([x], [r["fid"]["mean"]], yerr=[r["fid"]["std"] or 0], fmt="o", capsize=4)
        ax.annotate(r["name"], (x, r["fid"]["mean"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel("peak activation memory per image, live (KiB, log)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    form_arg = parser.add_mutually_exclusive_group()
    form_arg.add_argument("--quick", action="store_true", help="tiny pipeline check")
    form_arg.add_argument("--gpu", action="store_true", help="the H200 form (under 10 minutes)")
    parser.add_argument("--work", type=Path, default=None, help="runs and samples (default: runs/bench_diffusion/FORM)")
    parser.add_argument("--features", type=Path, default=None, help="FID feature extractor file (default: the cache)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "gpu" if args.gpu else "cpu"
    form = FORMS[name]
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path("runs") / "bench_diffusion" / name
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summaries = train_arms(form, work)
    scores = sample_and_score(form, work, args.features)
    path = write_results(name, form, aggregate(summaries, scores), work)
    _say(f"complete: {path} ({(time.perf_counter() - start) / 60:.1f} min this call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
