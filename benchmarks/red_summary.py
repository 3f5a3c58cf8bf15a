"""Every Fashion-MNIST protocol result in one table: the share of the teacher / vanilla-student gap RED recovers.

Reads the ``benchmarks/results/fashion_mnist*.json`` files that ``benchmarks/fashion_mnist.py``
wrote and the ``paper_regime*.json`` ones of ``benchmarks/paper_regime.py`` (``--quick`` smoke runs
are left out) and writes ``benchmarks/results/red_summary.{json,md,png}``: one row per protocol call
(its setting, the mean test accuracies, the gap share of RED and, where the call trained them, of KD
and RED + KD; where it trained student+, the paired differences RED - vanilla, RED - student+ and
student+ - vanilla), and a bar chart of those shares against the 50% target.
Nothing is trained; rerun it after a new protocol call.

    python benchmarks/red_summary.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET = 0.5  # the target: RED recovers at least half of the gap
FULL_SPLIT = 54_000
NEEDED = ("subset", "red_weights", "argv")  # settings written by fashion_mnist.py since --red-weights


class StaleResults(Exception):
    """A results file written before the settings this summary needs were recorded."""


def describe(settings: dict, groups: dict) -> dict[str, str]:
    """The columns that tell one protocol call from another."""
    model = groups["red"]["model"]
    student = f"{model['name']} [{','.join(map(str, model['strides']))}]"
    if model.get("stem_kernel", 3) != 3:
        student += f", {model['stem_kernel']}x{model['stem_kernel']} stem"
    changes = [settings["setting"]] if settings.get("setting") else []  # paper_regime.py names its setting
    if settings.get("teacher_model"):  # older files have no such key: the configs' teacher
        changes.append(f"teacher `{settings['teacher_model']}`")
    for o in settings["overrides"]:
        key, _, value = o.partition("=")
        changes.append(f"translated ({value} x {value} canvas)" if key == "data.canvas" else f"`{o}`")
    if settings["red_weights"]:
        changes.append("RED loss {:g} CE + {:g} mean(alpha L)".format(*settings["red_weights"]))
    images = settings.get("train_images") or settings["subset"] or FULL_SPLIT
    return {
        "student": student,
        "train images": f"{images:,}",
        "epochs (teacher / student)": (f"{settings['teacher_epochs']} / " if not settings["teacher"] else "shared / ")
        + str(settings["student_epochs"]),
        "change": ", ".join(changes) or "-",
    }


def load(results: Path) -> list[dict]:
    """One record per protocol results file, sorted by name."""
    rows = []
    for path in sorted([*results.glob("fashion_mnist*.json"), *results.glob("paper_regime*.json")]):
        data = json.loads(path.read_text())
        settings = data.get("settings", {})
        if "groups" not in data or "gap_recovered" not in data or settings.get("quick"):
            continue  # another script's file, or a smoke run
        missing = [k for k in NEEDED if k not in settings]
        if missing:
            raise StaleResults(f"{path.name} lacks {', '.join(missing)} in its settings (written by an "
                             "older benchmarks/fashion_mnist.py): rerun the command on its first line of "
                             f"{path.with_suffix('.md').name}; finished runs are reused")
        g = data["groups"]
        rows.append({
            "file": path.stem,
            **describe(settings, g),
            "seeds": len(settings["seeds"]),
            "acc": {k: g[k]["test_acc_mean"] for k in g},
            # one shared teacher run has no spread over seeds
            "acc_std": {k: None if k == "teacher" and data.get("shared_teacher") else g[k]["test_acc_std"]
                        for k in g},
            "gap": dict(data["gap_recovered_by_group"]),
            "gap_per_seed": data["gap_recovered_per_seed"],
            # only calls with --student-plus have them (mean, std, per_seed of each paired difference)
            "differences": data.get("differences") or {},
            "peak_reduction": min(data["peak_reduction_live"], data["peak_reduction_layer"]),
            "command": f"python {settings.get('script', 'benchmarks/fashion_mnist.py')} " + " ".join(settings["argv"]),
            # which KD runs the row shows: a call that reused another call's runs shows the same ones
            "kd_runs": sorted(str(v.get("run_dir")) for k, v in data.get("runs", {}).items() if k.startswith("kd_s")),
        })
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _acc(row: dict, kind: str) -> str:
    if kind not in row["acc"]:
        return "-"
    std = row["acc_std"][kind]
    return f"{row['acc'][kind]:.2f}" + ("" if std is None or row["seeds"] < 2 else f" ± {std:.2f}")


def _diff(row: dict, label: str) -> str:
    """A paired difference with its spread over seeds (none shown for one seed: it has no spread)."""
    d = row["differences"].get(label)
    if d is None:
        return "-"
    return f"{d['mean']:+.2f}" + (f" ± {d['std']:.2f}" if row["seeds"] > 1 else " (1 seed)")


def write(rows: list[dict], results: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results.mkdir(parents=True, exist_ok=True)
    js = results / "red_summary.json"
    js.write_text(json.dumps({"target": TARGET, "rows": rows}, indent=2) + "\n")

    met = [r["file"] for r in rows if r["gap"].get("red") is not None and r["gap"]["red"] >= TARGET]
    kd_rows = [r for r in rows if "kd" in r["gap"]]
    plus_rows = [r for r in rows if r["differences"]]
    # The student+ columns appear once a call trained student+; older rows show "-" there.
    plus_head = " | student+ | RED - vanilla | RED - student+ | student+ - vanilla" if plus_rows else ""
    plus_rule = "---:|---:|---:|---:|" if plus_rows else ""
    least = min((r["peak_reduction"] for r in rows), default=4.0)
    paper = any(r["file"].startswith("paper_regime") for r in rows)
    scripts = "`benchmarks/fashion_mnist.py`" + (" and `benchmarks/paper_regime.py`" if paper else "")
    lines = [
        "# RED on Fashion-MNIST: every protocol result",
        "",
        "`python benchmarks/red_summary.py`",
        "",
        f"One row per {scripts} results file (its own file has the command, per-seed "
        "figures and memory). Test accuracy %, mean ± sample std over seeds. *Gap share*: (student - vanilla) / "
        "(teacher - vanilla) of the means, the share of the teacher / vanilla-student gap a distiller recovers "
        f"(target for RED: >= {100 * TARGET:.0f}%). Every student here has a peak at least {least:.0f}x "
        "smaller than its teacher's."
        + (" *RED - vanilla* etc.: paired differences in test accuracy points, mean of the per-seed differences ± "
           "their sample std over seeds; student+ is the student with RED blocks and RED's loss weights, every "
           "alpha 0 (the authors' control: RED - student+ isolates the distillation loss)." if plus_rows else ""),
        "",
        "| results file | student | train images | epochs (teacher / student) | change | seeds | teacher | vanilla "
        "| RED | RED gap share (per seed) | KD gap share | RED + KD gap share" + plus_head + " |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + plus_rule,
    ]
    for r in rows:
        per_seed = ", ".join(_pct(x) for x in r["gap_per_seed"])
        lines.append(
            f"| `{r['file']}` | {r['student']} | {r['train images']} | {r['epochs (teacher / student)']} | "
            f"{r['change']} | {r['seeds']} | {_acc(r, 'teacher')} | {_acc(r, 'vanilla')} | {_acc(r, 'red')} | "
            f"**{_pct(r['gap'].get('red'))}** ({per_seed}) | {_pct(r['gap'].get('kd'))} | "
            f"{_pct(r['gap'].get('red_kd'))} |"
            + (f" {_acc(r, 'student_plus')} | {_diff(r, 'RED - vanilla')} | {_diff(r, 'RED - student+')} | "
               f"{_diff(r, 'student+ - vanilla')} |" if plus_rows else "")
        )
    lines += [
        "",
        f"- RED meets the >= {100 * TARGET:.0f}% target in {len(met)} of {len(rows)} settings"
        + (f": {', '.join(met)}." if met else "."),
        f"- RED's gap share ranges from {_pct(min(r['gap']['red'] for r in rows))} to "
        f"{_pct(max(r['gap']['red'] for r in rows))}." if rows else "- No protocol results yet.",
    ]
    if kd_rows:
        better = sum(r["gap"]["kd"] > r["gap"]["red"] for r in kd_rows)
        sets = len({tuple(r["kd_runs"]) for r in kd_rows})
        lines.append(f"- Where plain logit KD ran on the same recipe ({len(kd_rows)} settings, {sets} distinct sets of KD "
                     f"runs: a call that reused another's runs shows them again), it recovers more than RED in {better}.")
    if plus_rows:
        beats = [r["file"] for r in plus_rows
                 if r["differences"]["RED - vanilla"]["beyond_spread"] and r["differences"]["RED - student+"]["beyond_spread"]]
        lines.append(f"- Where student+ ran ({len(plus_rows)} settings), RED beats both vanilla and student+ by more "
                     f"than the seeds' spread in {len(beats)}" + (f": {', '.join(beats)}." if beats else "."))
    png = results / "red_summary.png"
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.6))
    names = [r["file"].removeprefix("fashion_mnist").lstrip("_") or "full" for r in rows]
    ys = range(len(rows))
    for i, (kind, label) in enumerate((("red", "RED"), ("kd", "KD"), ("red_kd", "RED + KD"))):
        vals = [100 * r["gap"][kind] if r["gap"].get(kind) is not None else None for r in rows]
        if all(v is None for v in vals):
            continue
        ax.barh([y + 0.27 * (i - 1) for y, v in zip(ys, vals) if v is not None],
                [v for v in vals if v is not None], height=0.26, label=label, color=f"C{i}")
    ax.axvline(100 * TARGET, color="k", ls="--", lw=1, label="target (RED)")
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("share of the teacher / vanilla-student gap recovered (%)")
    ax.set_title("Fashion-MNIST protocol results (mean over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    lines += ["", f"![gap share per setting]({png.name})", ""]
    md = results / "red_summary.md"
    md.write_text("\n".join(lines))
    return [js, md, png]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the fashion_mnist*.json files and output")
    args = p.parse_args(argv)
    try:
        rows = load(args.results)
    except StaleResults as err:
        print(f"red_summary.py: error: {err}", file=sys.stderr)
        return 2
    for path in write(rows, args.results):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
