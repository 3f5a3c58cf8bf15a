"""redistill: peak-memory analysis and Residual Encoded Distillation for CNNs."""

__version__ = "0.1.0"
