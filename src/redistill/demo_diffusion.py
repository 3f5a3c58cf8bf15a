"""The diffusion demo: a tiny DDPM UNet teacher, its vanilla x2 student and its RED x2 student on
Fashion-MNIST (32 px), with sample grids side by side.

``run_diffusion_demo`` trains (or reuses) the three runs of ``configs/demo_diffusion/`` on a reduced
schedule, draws the same seeded DDIM samples from each run's EMA denoiser, and writes a Markdown
report: denoising loss, peak memory in both conventions, parameters, FLOPs per denoising step,
sampling time and the three grids. FID is not computed here (``benchmarks/diffusion.py`` does).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from redistill.demo import DemoOptions, load_demo_configs, run_stage
from redistill.diffusion import sample_images, save_grid
from redistill.results import format_table
from redistill.train.diffusion_task import noise_schedule
from redistill.train.sampling import load_denoiser
from redistill.util import fmt_bytes

STAGES = (
    ("teacher", "teacher (strides [1,2,2,2])"),
    ("vanilla", "x2 student, no distillation"),
    ("red", "x2 student, RED distillation (pairs: auto)"),
)
SAMPLES, DDIM_STEPS, SAMPLE_SEED = 36, 50, 0


def default_config_dir() -> Path:
    """The diffusion demo configs shipped inside the package (``redistill/configs/demo_diffusion``)."""
    return Path(str(resources.files("redistill") / "configs" / "demo_diffusion"))


@dataclass
class DiffusionDemoResult:
    """What the diffusion demo produced."""

    rows: list[dict]
    table: str
    report_path: Path
    grids: dict[str, Path]
    reused: list[str]
    seconds: float


def _row(name: str, what: str, summary: dict, sample_s: float, teacher: dict | None) -> dict:
    model = summary.get("model")
    if isinstance(model, dict):
        model = model.get("name", "?") + f" [{','.join(map(str, model.get('strides', [])))}]"
    row = {
        "name": name, "what": what, "model": str(model), "val_loss": summary.get("val_loss"),
        "test_loss": summary.get("test_loss"), "peak_bytes_live": summary["peak_bytes_live"],
        "peak_bytes_layer": summary["peak_bytes_layer"], "params": summary["params"],
        "flops_per_step": summary["flops"], "sample_s_per_image": sample_s,
        "train_time_s": summary.get("train_time_s"),
    }
    ref = teacher or row
    row["reduction_live"] = ref["peak_bytes_live"] / row["peak_bytes_live"]
    row["reduction_layer"] = ref["peak_bytes_layer"] / row["peak_bytes_layer"]
    return row


def rows_table(rows: list[dict], markdown: bool = False) -> str:
    """The demo's table: denoising loss, peak memory (both conventions), size, FLOPs, sampling time."""
    headers = ["run", "model", "test denoising MSE", "peak live", "peak layer", "reduction (live/layer)",
               "params", "FLOPs / step", "DDIM s / image"]
    cells = [[
        r["name"], r["model"], f"{r['test_loss']:.4f}", fmt_bytes(r["peak_bytes_live"], unit="KiB"),
        fmt_bytes(r["peak_bytes_layer"], unit="KiB"), f"{r['reduction_live']:.2f}x / {r['reduction_layer']:.2f}x",
        f"{r['params']:,}", f"{r['flops_per_step'] / 1e6:.1f} M", f"{r['sample_s_per_image']:.3f}",
    ] for r in rows]
    return format_table(headers, cells, markdown=markdown)


def _side_by_side(grids: dict[str, Path], titles: dict[str, str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 4.4))
    for ax, (name, grid) in zip(axes, grids.items()):
        ax.imshow(Image.open(grid), cmap="gray")
        ax.set_title(titles[name], fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_diffusion_demo(opts: DemoOptions | None = None) -> DiffusionDemoResult:
    """Run (or reuse) the three diffusion demo runs, sample them and write ``report.md``.

    Args:
        opts: demo settings (``config_dir`` defaults to ``configs/demo_diffusion``; ``out`` to
            ``demo_out``).
    Returns:
        A :class:`DiffusionDemoResult`.
    Raises:
        UserError: bad configs, missing data, or an output directory holding other runs.
    """
    opts = opts or DemoOptions()
    if opts.config_dir is None:
        opts = DemoOptions(**{**vars(opts), "config_dir": default_config_dir()})
    start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    out = Path(opts.out)
    cfgs = load_demo_configs(opts)
    out.mkdir(parents=True, exist_ok=True)
    summaries, statuses, grids, rows = {}, {}, {}, []
    for i, (name, what) in enumerate(STAGES, 1):
        overwrite = opts.overwrite or (name == "red" and statuses.get("teacher") != "reused")
        print(f"[{i}/{len(STAGES)}] {name}: {what} -> {out / name}", flush=True)
        t0 = time.perf_counter()
        summaries[name], statuses[name] = run_stage(name, cfgs[name], out / name, overwrite=overwrite)
        print(f"[{i}/{len(STAGES)}] {name}: {statuses[name]} in {time.perf_counter() - t0:.0f} s, "
              f"test denoising MSE {summaries[name]['test_loss']:.4f}", flush=True)
    print(f"sampling {SAMPLES} images per run (DDIM, {DDIM_STEPS} steps, seed {SAMPLE_SEED}) ...", flush=True)
    for name, what in STAGES:
        model, cfg, info = load_denoiser(out / name)
        t0 = time.perf_counter()
        images = sample_images(model, noise_schedule(cfg.diffusion), SAMPLES, (info.in_channels, info.image_size,
                               info.image_size), sampler="ddim", steps=DDIM_STEPS, seed=SAMPLE_SEED,
                               batch_size=SAMPLES, progress=opts.progress)
        per_image = (time.perf_counter() - t0) / SAMPLES
        grids[name] = save_grid(images, out / f"samples_{name}.png", nrow=6)
        rows.append(_row(name, what, summaries[name], per_image, rows[0] if rows else None))
    side = _side_by_side(grids, {n: f"{n}: {w}" for n, w in STAGES}, out / "samples.png")
    path = _write_report(out, rows, cfgs, side, statuses)
    return DiffusionDemoResult(rows, rows_table(rows), path, grids,
                               [n for n, s in statuses.items() if s == "reused"], time.perf_counter() - start)


def _write_report(out: Path, rows: list[dict], cfgs: dict, side: Path, statuses: dict) -> Path:
    cfg = cfgs["teacher"]
    d, r = cfg.data, cfg.run
    steps = (d.subset // d.batch_size) * r.epochs if d.subset else None
    lines = [
        "# ReDistill diffusion demo: Fashion-MNIST (32 px)",
        "",
        f"A tiny `ddpm_unet` teacher (options {cfg.model.options}), its x2 student (head stride 2, last "
        "down-sample stride 1, a stride-2 transposed-conv tail) trained without distillation, and the same "
        "student trained with RED blocks against the frozen EMA teacher (loss L_diffusion + mean_k(alpha_k L_k)).",
        "",
        f"**Reduced schedule** (the demo fits in ~15 minutes on a 2-core CPU): {d.subset} training images padded "
        f"to 32 px, {r.epochs} epochs of batch {d.batch_size} ({steps} steps), Adam lr {cfg.optim.lr}, "
        f"EMA decay {cfg.diffusion.ema_decay}, T = {cfg.diffusion.timesteps}. Samples at this budget are rough "
        "shapes, not garments: the point is the pipeline and the memory figures; `benchmarks/diffusion.py` "
        "trains longer and measures FID / KID / precision / recall.",
        "",
        "## Results",
        "",
        rows_table(rows, markdown=True),
        "",
        "Test denoising MSE: the epsilon-prediction loss of the EMA model on held-out images at timesteps and "
        "noise fixed by `diffusion.eval_seed` (lower is better). Peak activation memory per image (fp32) of the "
        "deployed model (RED blocks included) for one denoising step: *live* = the largest sum of live tensors "
        "over the executed ops; *layer* = the paper's convention. FLOPs of one denoising step "
        "(`torch.utils.flop_counter`). Sampling time: DDIM, on this machine's CPU.",
        "",
        f"## Samples (DDIM {DDIM_STEPS} steps, seed {SAMPLE_SEED}, the same initial noise for every run)",
        "",
        f"![samples of teacher, vanilla student and RED student]({side.name})",
        "",
        "## Runs",
        "",
    ]
    lines += [f"- {row['name']}: `{out / row['name']}`, {statuses[row['name']]}, training "
              f"{row['train_time_s'] or 0:.0f} s" for row in rows]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "samples": SAMPLES, "ddim_steps": DDIM_STEPS,
                                                  "seed": SAMPLE_SEED}, indent=2) + "\n")
    return path
