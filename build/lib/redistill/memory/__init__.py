"""Exact peak activation memory of any ``nn.Module`` (see :func:`analyze_memory`)."""

from redistill.memory.analyze import DTYPE_SIZES, analyze_memory, make_inputs
from redistill.memory.report import MemoryReport, fmt_bytes, plot_reports

__all__ = ["DTYPE_SIZES", "MemoryReport", "analyze_memory", "fmt_bytes", "make_inputs", "plot_reports"]
