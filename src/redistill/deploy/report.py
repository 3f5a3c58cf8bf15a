"""The deployment report: predicted vs measured peak memory with the differences explained, as Markdown + JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redistill.deploy.profile import MeasuredMemory
from redistill.memory import MemoryReport
from redistill.results import format_table
from redistill.util import fmt_bytes

MAX_LISTED = 8  # per-op differences listed in the Markdown (all are in the JSON)
TOLERANCE = 0.10  # relative difference above which a predicted / measured pair is explained
_CONV_NODES = {"Conv", "FusedConv", "QLinearConv", "ConvInteger"}
_FUSED_INTO_CONV = {"relu.default", "relu_.default", "hardtanh.default", "hardtanh_.default", "clamp.default",
                    "sigmoid.default", "silu.default", "silu_.default"}


@dataclass
class DeployReport:
    """Everything measured about one deployed model (see docs/deploy.md)."""

    model: str
    input_shape: list[int]
    source: dict[str, Any]
    folded_pairs: int
    unfolded_bn: list[str]
    fold_max_abs_diff: float
    parity_fp32: dict[str, Any]
    params: int
    flops: int
    parity_int8: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    torchao: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # "fp32" / "int8" -> figures
    out_dir: str = ""
    bn_as_conv: list[str] = field(default_factory=list)  # of ``unfolded_bn``, those now depthwise 1x1 convs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_memory(predicted: MemoryReport, measured: MeasuredMemory, input_elems: int, dtype: str,
                   node_modules: dict[str, str]) -> dict[str, Any]:
    """Predicted (analyzer, ``live``) vs measured (onnxruntime arena) peak, explained per op where they differ.

    Convolutions are matched by module (``node_modules``: ONNX node name -> module, from the
    exporter's name scopes); at each, the analyzer's live bytes are set against the arena's bytes
    in use after the node.
    """
    elem = 1 if dtype == "int8" else 4
    pred, meas = predicted.peak_bytes, measured.peak_bytes
    rel = (meas - pred) / pred if pred else 0.0
    reasons: list[str] = []
    at_peak = next(n for n in measured.nodes if n.name == measured.peak_node)
    slack = max(n.in_use - n.requested for n in measured.nodes)
    workspace = measured.peak_bytes - at_peak.in_use
    if workspace > 0:
        reasons.append(f"node {measured.peak_node} holds {fmt_bytes(workspace)} of kernel workspace (im2col and "
                       "packing buffers) on top of the live tensors; the analyzer counts tensors only")
    if slack > TOLERANCE * max(pred, 1):
        reasons.append(f"the arena hands out whole chunks: up to {fmt_bytes(slack)} in use beyond what the live "
                       "tensors requested (the measured peak counts chunks, the tensor figure requests)")
    tensor_rel = (measured.tensor_peak_bytes - pred) / pred if pred else 0.0
    explained = abs(tensor_rel) <= TOLERANCE  # the rest is workspace and arena chunks, named above
    if tensor_rel > TOLERANCE and measured.live_at_tensor_peak:
        why, explained = _tensor_excess(predicted, measured, node_modules, dtype)
        reasons.append(why)
    if tensor_rel < -TOLERANCE and predicted.peak_op in _FUSED_INTO_CONV:
        reasons.append(f"the analyzer's peak is at {predicted.peak_op.split('.')[0]} in {predicted.peak_module}, "
                       "where its input and output are both live; onnxruntime fuses the activation into the "
                       "convolution (FusedConv), so that pair never coexists")
        explained = True
    first_conv = next((t for t in predicted.timeline if t.op == "convolution.default"), None)
    if tensor_rel < -TOLERANCE and first_conv is not None and first_conv.index == predicted.peak_index:
        reasons.append(f"the analyzer's peak includes the model input ({fmt_bytes(input_elems * elem)}); "
                       "the caller holds it outside the onnxruntime arena")
        explained = True
    per_op = []
    p_convs = [t for t in predicted.timeline if t.op == "convolution.default"]
    by_module = {node_modules.get(n.name.removesuffix("_quant")): n for n in measured.nodes if n.op in _CONV_NODES}
    matched = [(k, p, by_module[p.module]) for k, p in enumerate(p_convs) if p.module in by_module]
    if matched:
        for k, p, m in matched:
            d = (m.requested - p.live_bytes) / p.live_bytes if p.live_bytes else 0.0
            if abs(d) <= TOLERANCE:
                continue
            per_op.append({"conv": k, "module": p.module, "node": m.name, "predicted": p.live_bytes,
                           "measured": m.requested, "diff": d, "why": _why(k, p, m, predicted, input_elems * elem, elem)})
    else:
        reasons.append("no onnxruntime convolution carries a module name, so no per-op match is made")
    if abs(rel) > TOLERANCE and not reasons and not per_op:
        reasons.append("buffer lifetimes differ: onnxruntime frees a tensor after its last reader in its own node order")
    return {"predicted_bytes": pred, "measured_bytes": meas, "measured_tensor_bytes": measured.tensor_peak_bytes,
            "relative_diff": rel, "tensor_relative_diff": tensor_rel,
            "within_tolerance": abs(rel) <= TOLERANCE, "explained": abs(rel) <= TOLERANCE or explained,
            "reasons": reasons, "per_op": per_op}


# onnxruntime op -> the aten op name it carries out (as the analyzer's timeline names it)
_ATEN = {"Conv": "convolution", "FusedConv": "convolution", "QLinearConv": "convolution", "Mul": "mul",
         "QLinearMul": "mul", "Add": "add", "QLinearAdd": "add", "Sigmoid": "sigmoid", "QLinearSigmoid": "sigmoid",
         "Relu": "relu", "BatchNormalization": "batch_norm", "MaxPool": "max_pool", "AveragePool": "avg_pool",
         "GlobalAveragePool": "mean", "QLinearGlobalAveragePool": "mean", "Concat": "cat", "QLinearConcat": "cat"}


def _tensor_excess(predicted: MemoryReport, measured: MeasuredMemory, node_modules: dict[str, str],
                   dtype: str) -> tuple[str, bool]:
    """Why onnxruntime's live tensors at its tensor peak exceed the analyzer's peak, from the live set there.

    Returns:
        The reason, and whether the cause it names accounts for the excess (to within the tolerance).
    """
    live = measured.live_at_tensor_peak
    total = sum(t.bytes for t in live)
    module = {t.producer: node_modules.get(t.producer.removesuffix("_quant"), "") for t in live}
    listed = ", ".join(f"{t.op} `{module[t.producer] or t.producer}` {t.dtype} {fmt_bytes(t.bytes)}" for t in live)
    head = (f"at node {measured.tensor_peak_node} onnxruntime holds {len(live)} tensors ({fmt_bytes(total)}: "
            f"{listed})")
    slack = TOLERANCE * max(predicted.peak_bytes, 1)
    excess = measured.tensor_peak_bytes - predicted.peak_bytes
    if total > measured.tensor_peak_bytes + slack:  # the graph says more than the arena holds: in-place reuse
        return (f"at node {measured.tensor_peak_node} the tensors the graph keeps live ({fmt_bytes(total)}) exceed "
                f"what the arena holds ({fmt_bytes(measured.tensor_peak_bytes)}): onnxruntime reuses some buffers "
                "in place, so the live set does not say where the excess comes from", False)
    lag = measured.tensor_peak_bytes - total
    tail = (f"; the arena gets another {fmt_bytes(lag)} back only after this node (earlier nodes' inputs)"
            if lag > slack else "")
    floats = [t for t in live if dtype == "int8" and t.dtype in ("float", "double")]
    if floats:
        ops = sorted({t.op for t in floats} - {"DequantizeLinear", "QuantizeLinear"}) or ["DequantizeLinear"]
        # at 1 byte an element, as the analyzer counts them, these tensors would hold a quarter as much
        accounted = 0.75 * sum(t.bytes for t in floats) >= excess - slack
        return (head + f": {', '.join(ops)} {'has' if len(ops) == 1 else 'have'} no int8 kernel here, so "
                f"{'it runs' if len(ops) == 1 else 'they run'} in fp32 between a dequantize and a quantize node and "
                "the tensors there take 4 bytes an element where the analyzer counts 1" + tail, accounted)
    # The traced position of each live tensor's producer, matched by module and op kind; only where the
    # match is unambiguous (a module called twice, or an activation fused away, would make it a guess).
    kinds = [(e.index, e.module, e.op) for e in predicted.timeline]
    position = {}
    for t in live:
        kind = _ATEN.get(t.op, "")
        hits = [i for i, mod, op in kinds if kind and mod == module[t.producer] and op.startswith(kind)]
        if len(hits) == 1:
            position[t.producer] = hits[0]
    ranked = [t for t in live if t.producer in position]
    here = next((t for t in ranked if t.producer == measured.tensor_peak_node), None)
    ahead = [t for t in ranked if here is not None and position[t.producer] > position[here.producer]]
    if ahead:
        a = ahead[0]
        accounted = sum(t.bytes for t in ahead) >= excess - slack
        return (head + f": onnxruntime runs {a.op} `{module[a.producer]}` before {here.op} `{module[here.producer]}`, "
                "the reverse of the traced PyTorch order, so their outputs are live together; the analyzer follows "
                f"the traced order ({fmt_bytes(predicted.peak_bytes)})" + tail, accounted)
    return (head + f"; the traced order never holds more than {fmt_bytes(predicted.peak_bytes)}, and no op kept "
            "in fp32 or run out of the traced order was found among them" + tail, False)


def _why(k: int, p, m, predicted: MemoryReport, input_bytes: int, elem: int) -> str:
    """One reason for a per-convolution difference."""
    floats = [s for t, s in m.outputs if t == "float"]
    if elem == 1 and floats:
        return "onnxruntime keeps this node's output in fp32 (not quantized); the analyzer counts 1 byte an element"
    if k == 0 and m.requested < p.live_bytes:
        return f"the model input ({fmt_bytes(input_bytes)}) is live here for the analyzer, outside the arena for onnxruntime"
    after = predicted.timeline[p.index + 1] if p.index + 1 < len(predicted.timeline) else None
    if m.requested < p.live_bytes and after is not None and after.op in _FUSED_INTO_CONV:
        return "onnxruntime fused the following activation and reuses buffers differently around it"
    if m.requested > p.live_bytes:
        return "onnxruntime still holds a tensor the analyzer has freed (it frees after the node's readers, in its own node order)"
    return "onnxruntime freed a tensor earlier than the traced op order does (its node order differs)"


def summary_rows(report: DeployReport) -> list[list[str]]:
    """One row per variant (fp32, int8): the figures of the printed table."""
    rows = []
    for key, v in report.variants.items():
        cmp_ = v["memory_comparison"]
        acc = report.accuracy.get(f"onnx_{key}")
        lat = v["latency"]
        rows.append([
            key, "-" if acc is None else f"{acc:.2f}", fmt_bytes(v["predicted_peak_bytes"]),
            fmt_bytes(v["measured_peak_bytes"]), f"{100 * cmp_['relative_diff']:+.1f}%",
            fmt_bytes(v["deployed_peak_bytes"]), fmt_bytes(v["file_bytes"]), f"{lat['median_ms']:.2f} ({lat['p10_ms']:.2f}-{lat['p90_ms']:.2f})",
        ])
    return rows


HEADERS = ["variant", "test acc %", "predicted peak", "measured peak", "diff", "measured, as deployed", "file",
           "latency ms (p10-p90)"]


def table(report: DeployReport, markdown: bool = False) -> str:
    return format_table(HEADERS, summary_rows(report), markdown=markdown)


def to_markdown(report: DeployReport) -> str:
    """The report as Markdown: table, parity, memory explanations."""
    lat = next(iter(report.variants.values()))["latency"] if report.variants else {}
    lines = [f"# Deployment report: {report.model}", "",
             f"Input {'x'.join(map(str, report.input_shape))}; {report.params:,} parameters; "
             f"{report.flops:,} FLOPs (a multiply-add counts 2); {report.folded_pairs} BatchNorms folded"
             + (f", {len(report.unfolded_bn)} without a convolution to fold into "
                f"({', '.join(report.unfolded_bn[:5])}; as depthwise 1x1 convolutions: "
                f"{', '.join(report.bn_as_conv[:5]) or 'none'})" if report.unfolded_bn else "")
             + f" (folded vs unfolded outputs: max abs diff {report.fold_max_abs_diff:.2e}).", "",
             table(report, markdown=True), "",
             f"Latency: batch 1, {lat.get('runs')} timed runs after warm-up, onnxruntime CPU, "
             f"{lat.get('threads')} intra-op thread(s), graph optimisation ORT_ENABLE_ALL. "
             "Predicted peak: `redistill memory` (live convention, BatchNorm folded) at the variant's element size. "
             "Measured peak: onnxruntime's profiler (arena on, memory pattern off, one run, ORT_ENABLE_EXTENDED), "
             "highest bytes in use minus what was in use before the first node; *as deployed*: the same with "
             "ORT_ENABLE_ALL, the graph the latency is timed on (NCHWc convolutions: no im2col workspace, "
             "channels padded to blocks of 8 or 16).", ""]
    p = report.parity_fp32
    lines += [f"ONNX fp32 vs PyTorch on {p['images']} {'test images' if p['real_images'] else 'random inputs'}: "
              f"max abs logit difference {p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.2f}%."]
    if report.parity_int8:
        q = report.parity_int8
        c = report.calibration
        lines += [f"int8 (onnxruntime quantize_static, QOperator, per-channel weights) calibrated on {c['images']} "
                  f"{'training images' if c['split'] == 'train' else 'random inputs'}: top-1 agreement with fp32 "
                  f"{q['top1_agreement_with_fp32']:.2f}%."]
    if report.torchao:
        t = report.torchao
        lines += ["torchao PT2E (X86 quantizer): " + (f"converted; test accuracy {t['test_acc']:.2f}% on "
                  f"{t['test_images']} images." if t.get("ok") and "test_acc" in t else
                  "converted." if t.get("ok") else f"not available: {t['error']}")]
    if report.accuracy:
        a = report.accuracy
        lines += [f"PyTorch fp32 test accuracy {a['pytorch_fp32']:.2f}% on {a['test_images']} images."]
    lines += ["", "## Predicted vs measured peak", ""]
    for key, v in report.variants.items():
        c = v["memory_comparison"]
        verdict = "within 10%" if c["within_tolerance"] else "differs by more than 10%"
        lines += [f"**{key}**: predicted {fmt_bytes(c['predicted_bytes'])} (at {v['predicted_peak_at']}), measured "
                  f"{fmt_bytes(c['measured_bytes'])} (tensors alone {fmt_bytes(c['measured_tensor_bytes'])}, "
                  f"at node {v['measured_peak_node']}): {100 * c['relative_diff']:+.1f}%, {verdict}.", ""]
        lines += [f"- {r}" for r in c["reasons"]]
        for op in c["per_op"][:MAX_LISTED]:
            lines.append(f"- conv {op['conv']} `{op['module']}` (node {op['node']}): predicted {fmt_bytes(op['predicted'])}, "
                         f"measured {fmt_bytes(op['measured'])} ({100 * op['diff']:+.0f}%): {op['why']}")
        if len(c["per_op"]) > MAX_LISTED:
            lines.append(f"- ... {len(c['per_op']) - MAX_LISTED} more convolutions in report.json")
        lines.append("")
    return "\n".join(lines)


def write_report(folder: Path, report: DeployReport) -> None:
    """``report.md`` and ``report.json`` into ``folder``."""
    (folder / "report.md").write_text(to_markdown(report))
    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
