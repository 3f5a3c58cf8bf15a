"""How much a RED target tells the student beyond what its input already shows.

For every pair of finished RED runs, on validation images, the cosine distance of the RED loss
(``1 - cos`` of channel-mean maps, docs/method.md s.4) between the teacher's map and:

- ``student``: the trained RED block's output (the RED loss the run reached, measured in eval mode);
- ``vanilla``: the same point of an undistilled student (``--vanilla``), no RED block (for a
  stem ``conv1`` that is the raw convolution output, before BatchNorm and ReLU, as for RED);
- ``input``: the input image itself, average-pooled to the pair's H x W (intensities, not
  normalised): a target any student gets for free;
- ``other image``: the teacher's map of another image (the previous one in the split);
- ``mean map``: the teacher's mean map over the images.

If ``input`` is already about as close as ``student``, the RED loss asks for little that the
input does not give; if ``other image`` and ``mean map`` are close too, the maps hardly differ
between images. Writes ``benchmarks/results/red_signal[_<tag>].{json,md,png}``.

    python benchmarks/red_signal.py --run runs/fashion_mnist_full/red_s0 \\
        --vanilla runs/fashion_mnist_full/vanilla_s0 --data-root data/fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
COLUMNS = ("student", "vanilla", "input", "other image", "mean map")


def cos_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image ``1 - cos`` of flattened (B, H, W) maps -> (B,)."""
    return 1.0 - F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


def _maps(model: torch.nn.Module, refs: list[str], images: torch.Tensor, what: str) -> dict[str, torch.Tensor]:
    from redistill.distill.hooks import capture

    with torch.no_grad(), capture(model, refs, what=what) as feats:
        model(images)
        return {ref: feats[ref].float().mean(dim=1) for ref in refs}


def analyze_run(run_dir: Path, vanilla_dir: Path | None, images: int, data_root: str | None) -> dict:
    """The distances of every pair of one RED run (see the module docstring)."""
    from redistill.distill.hooks import make_ref
    from redistill.errors import UserError
    from redistill.train.build import load_teacher
    from redistill.train.data import build_datasets, eval_loader
    from redistill.train.export import load_run_model

    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"--run {run_dir}: no finished run there (no summary.json)")
    summary = json.loads(summary_path.read_text())
    pairs = summary.get("pairs") or []
    if summary.get("method") not in ("red", "red_kd") or not pairs:
        raise UserError(f"--run {run_dir}: not a RED run (method {summary.get('method')!r}); give a RED student run")
    student, cfg, info, _ = load_run_model(run_dir)
    teacher = load_teacher(cfg, info).eval()
    vanilla = load_run_model(vanilla_dir)[0] if vanilla_dir is not None else None
    if data_root is not None:
        cfg.data.root = data_root
    cfg.data.val_subset = None
    splits = build_datasets(cfg.data)
    if splits.val is not None and images < len(splits.val):  # --images is "at most"
        cfg.data.val_subset = images
        splits = build_datasets(cfg.data)
    if splits.val is None:
        raise UserError(f"--run {run_dir}: its config holds out no validation images (data.val_fraction is 0)")
    loader = eval_loader(splits.val, cfg.data)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)

    s_refs = [f"{p['student']}.red_{p['side']}" for p in pairs]
    v_refs = [make_ref(p["student"], p["side"]) for p in pairs]
    t_refs = [make_ref(p["teacher"], p["side"]) for p in pairs]
    maps: dict[str, list[list[torch.Tensor]]] = {k: [[] for _ in pairs] for k in ("s", "v", "t", "x")}
    raws = []
    for x, _ in loader:
        s = _maps(student, s_refs, x, "student")
        t = _maps(teacher, t_refs, x, "teacher")
        v = _maps(vanilla, v_refs, x, "vanilla student") if vanilla is not None else None
        raw = (x * std + mean).mean(dim=1, keepdim=True)  # intensities in [0, 1], one channel
        raws.append(raw[:, 0])
        for i in range(len(pairs)):
            tm = t[t_refs[i]]
            maps["t"][i].append(tm)
            maps["s"][i].append(s[s_refs[i]])
            maps["x"][i].append(F.adaptive_avg_pool2d(raw, tm.shape[-2:]).squeeze(1))
            if v is not None:
                maps["v"][i].append(v[v_refs[i]])
    cat = {k: [torch.cat(m) if m else None for m in per_pair] for k, per_pair in maps.items()}
    for i, vm in enumerate(cat["v"]):
        if vm is not None and vm.shape != cat["t"][i].shape:
            raise UserError(f"--vanilla {vanilla_dir}: its map at '{v_refs[i]}' is {tuple(vm.shape[1:])}, the "
                            f"teacher's {tuple(cat['t'][i].shape[1:])}; give the undistilled run of the same student")
    count = len(cat["t"][0])
    rows = []
    for i in range(len(pairs)):
        tm = cat["t"][i]
        dist = {
            "student": cos_dist(cat["s"][i], tm),
            "vanilla": None if vanilla is None else cos_dist(cat["v"][i], tm),
            "input": cos_dist(cat["x"][i], tm),
            "other image": cos_dist(tm.roll(1, dims=0), tm),
            "mean map": cos_dist(tm.mean(0, keepdim=True).expand_as(tm), tm),
        }
        rows.append({"pair": f"{v_refs[i]} <-> {t_refs[i]}", "hw": list(tm.shape[-2:]),
                     **{c: None if d is None else d.mean().item() for c, d in dist.items()}})
    k = min(4, count)
    examples = {"image": torch.cat(raws)[:k], "input": cat["x"][0][:k], "teacher": cat["t"][0][:k],
                "student": cat["s"][0][:k]}
    return {"run": str(run_dir), "vanilla": None if vanilla_dir is None else str(vanilla_dir), "images": count,
            "val_acc": summary.get("val_acc"), "pairs": rows, "examples": examples}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def write_results(results: list[dict], args: argparse.Namespace) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = "red_signal" + (f"_{args.tag}" if args.tag else "")
    args.results.mkdir(parents=True, exist_ok=True)
    js = args.results / f"{stem}.json"
    runs = [{k: v for k, v in r.items() if k != "examples"} for r in results]
    js.write_text(json.dumps({"argv": args.argv, "runs": runs}, indent=2) + "\n")
    lines = [
        "# What the RED target adds to the input",
        "",
        f"`python benchmarks/red_signal.py {' '.join(args.argv)}`",
        "",
        "Mean cosine distance (1 - cos, the RED loss) between the teacher's channel-mean map and the map named by the "
        "column, on the run's validation images (eval mode). *student*: the trained RED block output; *vanilla*: the "
        "same point of an undistilled student (for `conv1`: the convolution output before BatchNorm, where the RED "
        "block sits); *input*: the image average-pooled to the pair's H x W; *other image*: the teacher's map of "
        "another image; *mean map*: the teacher's mean map over the images. Lower is closer.",
        "",
        "| run | pair | H x W | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in results:
        for p in r["pairs"]:
            lines.append(f"| `{r['run']}` | {p['pair']} | {p['hw'][0]} x {p['hw'][1]} | "
                         + " | ".join(_fmt(p[c]) for c in COLUMNS) + " |")
    lines += ["", f"Images per run: {', '.join(str(r['images']) for r in results)}.", "", f"![RED signal]({stem}.png)"]
    md = args.results / f"{stem}.md"
    md.write_text("\n".join(lines) + "\n")

    pairs = [(r, p) for r in results for p in r["pairs"]]
    ex = results[0]["examples"]
    k = ex["teacher"].shape[0]
    fig = plt.figure(figsize=(max(8, 1.6 * len(pairs) + 4), 7))
    grid = fig.add_gridspec(2, 1, height_ratios=[1.1, 1])
    ax = fig.add_subplot(grid[0])
    width = 0.8 / len(COLUMNS)
    for j, c in enumerate(COLUMNS):
        vals = [p[c] if p[c] is not None else 0.0 for _, p in pairs]
        ax.bar([i + (j - (len(COLUMNS) - 1) / 2) * width for i in range(len(pairs))], vals, width, label=c)
    ax.set_xticks(range(len(pairs)))
    ax.set_xticklabels([f"{Path(r['run']).name}\n{p['pair']}" for r, p in pairs], fontsize=7)
    ax.set_ylabel("1 - cos to the teacher's map")
    ax.legend(fontsize=7, ncol=len(COLUMNS))
    sub = grid[1].subgridspec(4, k)
    for col in range(k):
        for row, key in enumerate(("image", "input", "teacher", "student")):
            a = fig.add_subplot(sub[row, col])
            a.imshow(ex[key][col].numpy(), cmap="gray" if key in ("image", "input") else "magma")
            a.set_xticks([])
            a.set_yticks([])
            if col == 0:
                label = {"image": "image", "input": "pooled", "teacher": "teacher", "student": "RED out"}[key]
                a.text(-0.08, 0.5, label, transform=a.transAxes, ha="right", va="center", fontsize=7)
    ax.set_title(f"maps below: {results[0]['pairs'][0]['pair']}, {k} validation images of the first run", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.03, hspace=0.25)
    png = args.results / f"{stem}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [js, md, png]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, action="append", required=True, help="a finished RED run (repeatable)")
    p.add_argument("--vanilla", type=Path, action="append", default=None,
                   help="the undistilled student run to compare with each --run (repeat in the same order)")
    p.add_argument("--images", type=int, default=2000, help="validation images (default 2000)")
    p.add_argument("--data-root", default=None, help="data folder (default: the one in each run's config)")
    p.add_argument("--tag", default="", help="suffix of the results files")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.vanilla is not None and len(args.vanilla) != len(args.run):
        p.error(f"--vanilla given {len(args.vanilla)} times for {len(args.run)} --run; give one per run or none")
    return args


def main(argv: list[str] | None = None) -> int:
    from redistill.errors import UserError

    args = parse_args(argv)
    try:
        vanillas = args.vanilla or [None] * len(args.run)
        results = [analyze_run(r, v, args.images, args.data_root) for r, v in zip(args.run, vanillas)]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in write_results(results, args):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
