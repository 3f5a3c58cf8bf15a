"""Tables and plots for results: the demo report and the benchmark scripts.

Everything here works on plain numbers (dicts of run metrics), so it can be used on
fresh runs, on ``summary.json`` files read back from disk, or on aggregated seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redistill.util import KIB, fmt_bytes


@dataclass
class ResultRow:
    """One line of a results table: a model (or a group of seeds of it).

    Accuracies are fractions in [0, 1]; ``acc_std`` is None for a single run.
    Memory figures are bytes per image; None where unknown.
    """

    name: str
    model: str
    acc: float | None
    peak_live: int | None
    peak_layer: int | None
    params: int | None
    flops: int | None
    acc_std: float | None = None
    runs: int = 1
    extra: dict = field(default_factory=dict)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value).

    Args:
        values: at least one number.
    Returns:
        (mean, std).
    """
    if not values:
        raise ValueError("mean_std needs at least one value")
    vals = [float(v) for v in values]
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return statistics.fmean(vals), std


def gap_recovered(teacher_acc: float, vanilla_acc: float, distilled_acc: float) -> float | None:
    """Share of the teacher / vanilla-student accuracy gap that distillation recovers.

    Args:
        teacher_acc: accuracy of the teacher.
        vanilla_acc: accuracy of the student trained without distillation.
        distilled_acc: accuracy of the distilled student.
    Returns:
        (distilled - vanilla) / (teacher - vanilla), or None when the teacher is not
        better than the vanilla student (the share is undefined then).
    """
    gap = teacher_acc - vanilla_acc
    if gap <= 0:
        return None
    return (distilled_acc - vanilla_acc) / gap


def fmt_kib(nbytes: int | None) -> str:
    """Bytes as KiB with one decimal, no unit ('-' when unknown): the tables' KiB columns."""
    return fmt_bytes(nbytes, unit="KiB", suffix=False)


def fmt_count(n: int | None) -> str:
    """A large count in K/M/G units ('-' when unknown)."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def fmt_acc(acc: float | None, std: float | None = None) -> str:
    """Accuracy in percent, with '± std' when a std is given."""
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return "-"
    if std is None:
        return f"{100 * acc:.2f}"
    return f"{100 * acc:.2f} ± {100 * std:.2f}"


def fmt_ratio(reference: int | None, value: int | None) -> str:
    """'x4.00' = reference / value; '-' when either is unknown or zero."""
    if not reference or not value:
        return "-"
    return f"x{reference / value:.2f}"


TABLE_HEADERS = [
    "run",
    "model",
    "test acc %",
    "peak live KiB",
    "peak layer KiB",
    "reduction (live / layer)",
    "params",
    "FLOPs",
]


def table_cells(rows: Sequence[ResultRow], reference: ResultRow | None = None) -> list[list[str]]:
    """Format rows for :func:`format_table`; reductions are relative to ``reference``.

    Args:
        rows: the results.
        reference: the row peak-memory reductions are computed against (the teacher);
            defaults to the first row.
    Returns:
        one list of strings per row, matching :data:`TABLE_HEADERS`.
    """
    ref = reference if reference is not None else (rows[0] if rows else None)
    cells = []
    for r in rows:
        reduction = "-"
        if ref is not None:
            reduction = (
                f"{fmt_ratio(ref.peak_live, r.peak_live)} / {fmt_ratio(ref.peak_layer, r.peak_layer)}"
            )
        cells.append(
            [
                r.name,
                r.model,
                fmt_acc(r.acc, r.acc_std),
                fmt_kib(r.peak_live),
                fmt_kib(r.peak_layer),
                reduction,
                fmt_count(r.params),
                fmt_count(r.flops),
            ]
        )
    return cells


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Lay out a table as aligned plain text or as a Markdown table.

    Args:
        headers: column titles.
        rows: cell strings, one sequence per row, same length as ``headers``.
        markdown: Markdown pipe table instead of aligned columns.
    Returns:
        the table, without a trailing newline.
    """
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}: {row}")
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(h)), *(len(str(row[i])) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def results_table(rows: Sequence[ResultRow], markdown: bool = False, reference: ResultRow | None = None) -> str:
    """The standard results table (accuracy, peak memory, reduction, params, FLOPs)."""
    return format_table(TABLE_HEADERS, table_cells(rows, reference), markdown=markdown)


def _spread_labels(points: list[tuple[float, float]], gap: float = 0.05) -> list[float]:
    """The height of each point's label: its own, moved up just enough that labels of points at the same
    memory (within 2%) stand at least ``gap`` of the accuracy range apart (students of one size often
    differ by less than a label's height)."""
    if not points:
        return []
    ys = [y for _, y in points]
    step = gap * max(max(ys) - min(ys), 1.0)
    out = list(ys)
    order = sorted(range(len(points)), key=lambda k: (points[k][1], k))
    for n, k in enumerate(order):
        below = [out[j] for j in order[:n] if abs(points[j][0] - points[k][0]) <= 0.02 * points[k][0]]
        if below:
            out[k] = max(out[k], max(below) + step)
    return out


def plot_accuracy_vs_memory(rows: Sequence[ResultRow], path: str | Path, title: str | None = None) -> Path:
    """Scatter test accuracy against peak memory (live convention), one point per row.

    Rows with a std get error bars; each point is labelled with the row name.

    Args:
        rows: results with ``acc`` and ``peak_live`` set (others are skipped).
        path: PNG file to write.
        title: figure title.
    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    shown = [(i, r) for i, r in enumerate(rows) if r.acc is not None and r.peak_live is not None]
    label_y = _spread_labels([(r.peak_live / KIB, 100 * r.acc) for _, r in shown])
    for (i, r), ly in zip(shown, label_y):
        x, y = r.peak_live / KIB, 100 * r.acc
        yerr = None if r.acc_std is None else 100 * r.acc_std
        ax.errorbar(x, y, yerr=yerr, fmt="o", capsize=4, color=f"C{i}", label=f"{r.name} ({r.model})")
        ax.annotate(r.name, (x, ly), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xscale("log")
    xs = [r.peak_live / KIB for r in rows if r.acc is not None and r.peak_live is not None]
    if xs:  # room around the points, so labels at the extremes stay inside the axes
        ax.set_xlim(min(xs) / 1.4, max(xs) * 1.6)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 3.0, 5.0)))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.margins(y=0.15)
    ax.set_xlabel("peak activation memory per image, live convention (KiB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "accuracy vs peak memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
