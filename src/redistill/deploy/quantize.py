"""int8 post-training static quantization: onnxruntime (QOperator, per-channel) and torchao PT2E."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                      quantize_static)

from redistill.errors import UserError


class _Batches(CalibrationDataReader):
    """Feeds calibration images one batch at a time under the model's input name."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]):
        self._items = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)


def quantize_onnx(fp32: Path, out: Path, calib: Sequence[np.ndarray]) -> Path:
    """Quantize the ONNX model ``fp32`` to int8 at ``out``, calibrated on ``calib`` batches.

    Weights int8 per output channel, activations uint8 (the pair x86 CPUs run fast), operators
    replaced by their QLinear forms (QOperator), ranges from min/max over the calibration images.

    Raises:
        UserError: onnxruntime refuses the model (the message names the node).
    """
    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception:  # shape inference / optimisation is an aid; quantize the export as is
            pre = fp32
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(
                    str(pre), str(out), _Batches(name, calib), quant_format=QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                )
        except Exception as err:
            raise UserError(f"onnxruntime int8 quantization failed: {type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0]}") from err
    return out


def called_twice(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """Leaf modules that one forward calls more than once (a shared ``self.relu`` included)."""
    counts: dict[str, int] = {}
    handles = []
    for mname, mod in model.named_modules():
        if mname and not list(mod.children()):
            handles.append(mod.register_forward_pre_hook(
                lambda _m, _a, n=mname: counts.__setitem__(n, counts.get(n, 0) + 1)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return sorted(n for n, c in counts.items() if c > 1)


def quantize_torchao(model: nn.Module, inputs: tuple[torch.Tensor, ...], calib: Sequence[torch.Tensor]) -> nn.Module:
    """The PT2E flow of torchao with its X86 quantizer: export, observe ``calib``, convert.

    Returns:
        The converted graph module (quantize/dequantize around int8 weights and activations).
    Raises:
        UserError: a module is called twice in one forward (torchao annotates by module, so one
            set of ranges would serve two activations and its pattern matcher refuses the partition),
            or torchao fails (its cause, one line).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    twice = called_twice(model, inputs)
    if twice:
        raise UserError(f"module '{twice[0]}' is called more than once in one forward, so one set of int8 "
                        "ranges would serve two different activations; give each call its own module instance")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.export.export(model.eval(), inputs, strict=False).module()
            quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(graph, quantizer)
            with torch.no_grad():
                for batch in calib:
                    prepared(batch)
            return convert_pt2e(prepared)
    except Exception as err:
        raise UserError(f"torchao PT2E int8 quantization failed: {type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0]}") from err
