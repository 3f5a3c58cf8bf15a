"""Deployment: BatchNorm folding, ONNX export, int8 quantization and a measured efficiency report.

Python API: ``report = deploy("runs/red", DeployOptions(int8=True))``; the CLI is ``redistill deploy``.
"""

from redistill.deploy.api import DeployOptions, deploy
from redistill.deploy.report import DeployReport, table, to_markdown

__all__ = ["DeployOptions", "DeployReport", "deploy", "table", "to_markdown"]
