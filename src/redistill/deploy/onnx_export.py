"""``torch.onnx.export`` (the dynamo exporter) with errors that name the op and the module."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from redistill.errors import UserError

_OP = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'")
_TARGET = re.compile(r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]")


def export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, dynamic_batch: bool = True) -> Path:
    """Write ``model`` as ONNX to ``path``, the batch dimension dynamic when it can be.

    Raises:
        UserError: an op has no ONNX translation (the message names the op and its module).
    """
    model = model.eval()
    shapes = ({0: torch.export.Dim.DYNAMIC},) + tuple(None for _ in inputs[1:]) if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
            program = torch.export.export(model, inputs, dynamic_shapes=shapes, strict=False)
    except Exception as err:
        if dynamic_batch:  # a model that fixes its batch size (a reshape to a constant): export batch 1 as is
            return export_onnx(model, tuple(t[:1] for t in inputs), path, dynamic_batch=False)
        raise UserError(f"torch.export could not capture the model: {type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0]}") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, (), dynamo=True, verbose=False, optimize=True)
    except Exception as err:
        raise _unsupported(program, err) from err
    onnx_program.save(str(path))
    global_pools(path)
    return path


def global_pools(path: Path) -> int:
    """Rewrite, in place, each ReduceMean over H and W of a 4-d tensor (keepdims) as GlobalAveragePool.

    The exporter writes ``adaptive_avg_pool2d(x, 1)`` and ``x.mean((2, 3), keepdim=True)`` as
    ReduceMean; the two ops compute the same numbers, but onnxruntime's quantizer has an int8 kernel
    only for GlobalAveragePool, so a ReduceMean would stay fp32 in the int8 model (its input held at
    4 bytes an element). Returns the number of nodes rewritten.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    if not any(n.op_type == "ReduceMean" for n in model.graph.node):
        return 0
    if not model.graph.value_info:  # ranks come from the shapes: infer them where the exporter wrote none
        model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.value_info, *graph.input, *graph.output)
             if v.type.tensor_type.HasField("shape")}
    count = 0
    for i, node in enumerate(graph.node):
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes") if len(node.input) < 2 else consts.get(node.input[1])
        if axes is None or attrs.get("keepdims", 1) != 1 or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        pool = onnx.helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
        pool.metadata_props.extend(node.metadata_props)
        graph.node[i].CopyFrom(pool)
        count += 1
    if count:
        onnx.save(model, str(path))
    return count


def node_modules(path: Path) -> dict[str, str]:
    """ONNX node name -> the module that produced it (the exporter's ``name_scopes`` metadata)."""
    import onnx

    out = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if scopes:
            names = ast.literal_eval(scopes)
            if len(names) >= 2:
                out[node.name] = names[-2]
    return out


def _unsupported(program, err: Exception) -> UserError:
    """A one-line error naming the op the exporter could not translate and the module calling it."""
    text = str(err)
    match = _OP.search(text) or _TARGET.search(text)
    if match is None:
        return UserError(f"ONNX export failed: {type(err).__name__}: {text.strip().splitlines()[0]}")
    op = match.group(1).removesuffix(".default")
    base = op.split(".")[-1]
    module = ""
    for node in program.graph.nodes:  # the op (or the aten op it was decomposed from) in the captured graph
        if node.op == "call_function" and base in str(node.target):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                module = list(stack.values())[-1][0]
            break
    where = f" in module '{module}'" if module else " in the model's own forward (no submodule)"
    return UserError(f"ONNX export failed: op '{op}'{where} has no ONNX translation; replace it with "
                     "supported ops or register an ONNX function for it")
