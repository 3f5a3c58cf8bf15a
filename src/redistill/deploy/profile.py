"""onnxruntime on CPU: inference, the measured peak of its memory arena, and latency.

The measured peak comes from the profiler's per-node memory fields. With the arena on and the
memory pattern off, every tensor is allocated from the arena when its node runs and returned when
its last reader is done, so ``mem_bytes_requested_in_use`` after a node is the bytes its live tensors asked for,
``mem_bytes_in_use`` the arena chunks holding them (the arena hands out a whole free chunk when
splitting it would leave a small remainder) and ``mem_in_use_peak`` the highest in-use has been
(kernel workspace such as im2col buffers included).
What was in use before the first node (initializer copies, small constants) is subtracted. The
input fed by the caller lives outside the arena and is not counted.

Which tensors are live at a node is worked out from the graph onnxruntime optimised (saved from the
session) and the node order the profiler recorded: a tensor is live from the node that writes it to
its last reader.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

# Level used for memory: fusions (Conv+Relu, ...) but not the NCHWc layout of ORT_ENABLE_ALL,
# which pads channels to blocks of 8/16 and so measures a different tensor layout than the analyzer's.
MEMORY_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
LATENCY_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def session(path: Path, threads: int = 1, level=LATENCY_LEVEL, profile_dir: Path | None = None,
            optimized: Path | None = None) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (and one inter-op thread); ``optimized``: where to
    save the graph onnxruntime runs."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    if profile_dir is not None:
        so.enable_profiling = True
        so.enable_mem_pattern = False  # allocate per node, so the arena follows tensor lifetimes
        so.enable_cpu_mem_arena = True
        so.profile_file_prefix = str(profile_dir / "ort_profile")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """The first output of ``sess`` on ``x`` (fed to its first input)."""
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@dataclass
class NodeMemory:
    """One executed node: its live tensor bytes after it ran, and its own peak (workspace included)."""

    index: int
    name: str
    op: str
    in_use: int  # arena chunks in use (a chunk can be larger than the tensor it holds)
    requested: int  # bytes the live tensors asked for
    peak: int  # highest in-use while it ran (only known where it raised the running peak)
    outputs: list = field(default_factory=list)  # [(element type, shape)]


@dataclass
class LiveTensor:
    """A tensor live at a node: which node wrote it, its element type and bytes."""

    producer: str
    op: str
    dtype: str
    bytes: int


@dataclass
class MeasuredMemory:
    """The onnxruntime arena over one run."""

    peak_bytes: int  # highest in-use, kernel workspace included, minus ``base_bytes``
    tensor_peak_bytes: int  # highest bytes requested by live tensors at a node boundary
    base_bytes: int  # in use before the first node
    peak_node: str
    nodes: list[NodeMemory]
    tensor_peak_node: str = ""  # where ``tensor_peak_bytes`` is reached
    live_at_tensor_peak: list[LiveTensor] = field(default_factory=list)  # in node order


def measure_memory(path: Path, x: np.ndarray, level=MEMORY_LEVEL) -> MeasuredMemory:
    """Run ``path`` once on ``x`` with the profiler on and read the arena's memory fields.

    ``level``: the graph optimisation; the default keeps the analyzer's tensor layout, ``LATENCY_LEVEL``
    measures the graph as it is deployed (NCHWc convolutions, which need no im2col workspace).
    """
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads=1, level=level, profile_dir=Path(tmp), optimized=Path(tmp) / "opt.onnx")
        run(sess, x)
        events = json.loads(Path(sess.end_profiling()).read_text())
        graph = onnx.load(str(Path(tmp) / "opt.onnx"), load_external_data=False).graph
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
               and "mem_bytes_in_use" in e.get("args", {})]
    if not kernels:
        raise RuntimeError("onnxruntime's profile has no memory fields (a build without memory profiling)")
    first = kernels[0]["args"]
    base = int(first["mem_bytes_in_use"]) - int(first["mem_in_use_delta"])
    base_req = int(first["mem_bytes_requested_in_use"]) - int(first["mem_requested_in_use_delta"])
    nodes, running = [], base
    for i, e in enumerate(kernels):
        a = e["args"]
        peak = int(a["mem_in_use_peak"])
        own = peak if peak > running else int(a["mem_bytes_in_use"])
        running = max(running, peak)
        outputs = [(k, v) for d in a.get("output_type_shape", []) for k, v in d.items()]
        nodes.append(NodeMemory(i, e["name"].removesuffix("_kernel_time"), a["op_name"],
                                int(a["mem_bytes_in_use"]) - base, int(a["mem_bytes_requested_in_use"]) - base_req,
                                own - base, outputs))
    peak_node = max(nodes, key=lambda n: n.peak)
    tensor_node = max(nodes, key=lambda n: n.requested)
    return MeasuredMemory(peak_node.peak, tensor_node.requested, base, peak_node.name, nodes,
                          tensor_node.name, live_tensors(graph, nodes, tensor_node.index))


_BYTES = {"float": 4, "float16": 2, "double": 8, "int8": 1, "uint8": 1, "int32": 4, "int64": 8, "bool": 1}


def live_tensors(graph, nodes: list[NodeMemory], at: int) -> list[LiveTensor]:
    """The tensors live while node ``at`` runs: written at or before it, read at or after it (or outputs)."""
    by_name = {n.name: n for n in graph.node}
    order = [by_name.get(n.name) for n in nodes]
    last: dict[str, int] = {}
    for i, node in enumerate(order):
        for name in node.input if node is not None else ():
            last[name] = i
    outputs = {o.name for o in graph.output}
    live = []
    for i, (node, mem) in enumerate(zip(order[:at + 1], nodes[:at + 1])):
        if node is None:
            continue
        for name, (dtype, shape) in zip(node.output, mem.outputs):
            if last.get(name, -1) >= at or name in outputs:
                size = int(np.prod(shape)) * _BYTES.get(dtype, 4)
                live.append(LiveTensor(node.name, node.op_type, dtype, size))
    return live


@dataclass
class Latency:
    """Batch-1 CPU latency over repeated runs, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int


def measure_latency(path: Path, x: np.ndarray, runs: int = 50, warmup: int = 5, threads: int = 1) -> Latency:
    """Median and 10th-90th percentile spread of ``runs`` timed runs on one image (``x[:1]``)."""
    sess = session(path, threads=threads)
    x1 = np.ascontiguousarray(x[:1])
    for _ in range(warmup):
        run(sess, x1)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(sess, x1)
        times.append(1e3 * (time.perf_counter() - t0))
    q = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    return Latency(statistics.median(times), q[0], q[-1], runs, threads)


def file_size(path: Path) -> int:
    return os.path.getsize(path)
