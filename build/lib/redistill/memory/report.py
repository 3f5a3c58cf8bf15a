"""The result of a memory analysis: peak, where it happens, timeline, summaries, plots."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redistill.errors import UserError
from redistill.util import KIB, fmt_bytes


@dataclass
class OpEntry:
    index: int
    op: str
    module: str
    live_bytes: int
    produced_bytes: int
    layer: bool  # counted by the layer convention


@dataclass
class ModuleEntry:
    module: str
    type: str
    first_op: int
    last_op: int
    peak_bytes: int  # highest live bytes while it ran
    produced_bytes: int


@dataclass
class MemoryReport:
    """Peak activation memory of one model on one input.

    Attributes:
        peak_bytes: the peak under ``convention`` (parameters excluded).
        peak_index / peak_op / peak_module: where it happens (module = qualified name).
        peaks: the peak under each of the three conventions, same options.
        timeline: one entry per executed op.
        modules: one entry per top-level block (children of the root, and of root-level
            containers such as ``features`` or ``layer1``).
        param_bytes: parameters and buffers, reported separately.
        measured: filled by ``analyze_memory(..., measure=True)``.
    """

    model: str
    input_shape: list[int]
    dtype: str
    convention: str
    options: dict[str, Any]
    peak_bytes: int
    peak_index: int
    peak_op: str
    peak_module: str
    peaks: dict[str, int]
    param_bytes: int
    timeline: list[OpEntry] = field(default_factory=list)
    modules: list[ModuleEntry] = field(default_factory=list)
    measured: dict[str, Any] | None = None

    # -- text ----------------------------------------------------------------
    def summary_lines(self) -> list[str]:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        lines = [
            f"model {self.model}  input {'x'.join(map(str, self.input_shape))}  dtype {self.dtype}  ({opts})",
            f"peak ({self.convention}): {fmt_bytes(self.peak_bytes)} = {self.peak_bytes} bytes "
            f"at op {self.peak_index} {self.peak_op} in '{self.peak_module or '<root>'}'",
            "peaks: " + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.peaks.items())
            + f"; parameters {fmt_bytes(self.param_bytes)}",
        ]
        if self.measured:
            m = self.measured
            parts = [f"live op-boundary {fmt_bytes(m['live_boundary_peak'])}",
                     f"eager op-boundary {fmt_bytes(m['eager_boundary_peak'])}"]
            if m.get("cpu_allocator_peak") is not None:
                parts.append(f"CPU allocator {fmt_bytes(m['cpu_allocator_peak'])} "
                             f"(+{fmt_bytes(m['cpu_allocator_excess'])} over the fp32 live prediction)")
            if m.get("cuda_peak") is not None:
                parts.append(f"CUDA max_memory_allocated {fmt_bytes(m['cuda_peak'])}")
            lines.append("measured: " + ", ".join(parts))
        return lines

    def to_table(self, top: int | None = None) -> str:
        """Summary lines plus a per-module table (highest peaks first if ``top``)."""
        rows = sorted(self.modules, key=lambda m: -m.peak_bytes)[:top] if top else self.modules
        width = max([len(m.module) for m in rows] + [6])
        out = self.summary_lines() + ["", f"{'module':<{width}}  {'type':<22} {'ops':>9}  {'peak':>12}  {'produced':>12}"]
        for m in rows:
            mark = " <- peak" if m.first_op <= self.peak_index <= m.last_op else ""
            out.append(f"{m.module:<{width}}  {m.type[:22]:<22} {m.first_op:>4}-{m.last_op:<4}  "
                       f"{fmt_bytes(m.peak_bytes):>12}  {fmt_bytes(m.produced_bytes):>12}{mark}")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            write_text(path, text)
        return text

    # -- plot ------------------------------------------------------------------
    def plot(self, path: str | Path, others: list["MemoryReport"] | None = None,
             labels: list[str] | None = None) -> Path:
        """Live bytes over the execution, peak marked, module boundaries labelled."""
        return plot_reports([self, *(others or [])], labels, path)


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}; choose a writable path") from err


def plot_reports(reports: list[MemoryReport], labels: list[str] | None, path: str | Path) -> Path:
    """Draw one or more reports on one figure (x: execution progress, y: live KiB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    labels = labels or [r.model for r in reports]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for rep, label in zip(reports, labels):
        n = max(len(rep.timeline) - 1, 1)
        xs = [e.index / n for e in rep.timeline]
        ys = [e.live_bytes / KIB for e in rep.timeline]
        (line,) = ax.plot(xs, ys, lw=1.2, label=f"{label} (peak {fmt_bytes(rep.peak_bytes)})")
        ax.plot([rep.peak_index / n], [rep.peak_bytes / KIB], "o", color=line.get_color())
        ax.annotate(rep.peak_module or "<root>", (rep.peak_index / n, rep.peak_bytes / KIB),
                    textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
    first = reports[0]
    n = max(len(first.timeline) - 1, 1)
    step = max(1, len(first.modules) // 30)
    for m in first.modules[::step]:
        ax.axvline(m.first_op / n, color="0.85", lw=0.6, zorder=0)
        ax.text(m.first_op / n, 1.01, m.module, rotation=90, fontsize=6, va="bottom",
                transform=ax.get_xaxis_transform())
    ax.set_xlabel("execution progress (op index / number of ops)")
    ax.set_ylabel(f"live activation memory (KiB, {first.dtype})")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}; choose a writable path") from err
    finally:
        plt.close(fig)
    return path
