"""``deploy``: a trained run (or any model) to a folded fp32 ONNX model, an int8 one, and a measured report.

Steps (numbered as in :func:`deploy`): 1. resolve the model and its data; 2. fold BatchNorm;
3. export ONNX and check it against PyTorch; 4. int8 with onnxruntime and torchao; 5. accuracy;
6. predicted and measured peak memory, size, FLOPs, latency; 7. write the report atomically.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from redistill.artifact import is_export, read_export_spec
from redistill.deploy import profile, quantize
from redistill.deploy.fold import fold_model
from redistill.deploy.onnx_export import export_onnx, node_modules
from redistill.deploy.report import DeployReport, compare_memory, write_report
from redistill.errors import UserError
from redistill.flops import count_flops, count_params
from redistill.memory import analyze_memory
from redistill.modelref import resolve_model
from redistill.train.data import build_datasets
from redistill.train.export import load_run_model
from redistill.util import parse_shape


TORCHAO_TEST_IMAGES = 1000


@dataclass
class DeployOptions:
    """Settings of one deployment.

    Attributes:
        input: input shape (``1x3x224x224``); taken from the run or export when None.
        int8: also quantize to int8 (onnxruntime, and torchao where it works).
        calib: calibration images, drawn from the training split (random inputs for a bare model).
        out: output directory (default ``RUN_DIR/deploy``, else ``deploy_out/<model>``).
        overwrite: replace an existing output directory.
        threads: onnxruntime intra-op threads for latency.
        runs: timed latency runs.
        test_limit: score at most this many test images (None: the whole split).
        parity_images: images for the ONNX-vs-PyTorch check.
        torchao: also run torchao's PT2E int8 flow.
        data_root: data set folder, if not where the run found it.
        trust_code: whether a run's model spec may import user code.
        name: model name in the report.
        quiet: no progress lines.
    """

    input: str | tuple | None = None
    int8: bool = True
    calib: int = 256
    out: Path | None = None
    overwrite: bool = False
    threads: int = 1
    runs: int = 50
    test_limit: int | None = None
    parity_images: int = 256
    torchao: bool = True
    data_root: str | None = None
    trust_code: bool = False
    name: str | None = None
    quiet: bool = False


@dataclass
class _Source:
    model: nn.Module
    name: str
    shape: tuple[int, ...]
    train: object = None  # training split, evaluation transform (calibration)
    test: object = None
    extra: dict = field(default_factory=dict)


def _run_dir(path: Path, opts: DeployOptions) -> _Source:
    if not any((path / n).is_file() for n in ("best.pt", "last.pt")):
        raise UserError(f"{path} has no finished checkpoint (best.pt or last.pt); train it first "
                        "(`redistill train CONFIG --out RUN_DIR`, or --resume to finish it)")
    model, cfg, info, minfo = load_run_model(path, trust_code=opts.trust_code)
    data = copy.deepcopy(cfg.data)
    data.workers = 0
    if opts.data_root is not None:
        data.root = opts.data_root
    splits = build_datasets(data)
    return _Source(model.cpu().eval(), opts.name or path.name, (1, info.in_channels, info.image_size, info.image_size),
                   _eval_view(splits.train, splits.test), splits.test, {"run_dir": str(path), "data": data.name})


def _eval_view(train, test):
    """The training subset seen through the evaluation transform (no augmentation for calibration)."""
    base = copy.copy(train.dataset)
    base.transform = (test.dataset if hasattr(test, "indices") else test).transform
    view = copy.copy(train)
    view.dataset = base
    return view


def _source(ref: str, opts: DeployOptions) -> _Source:
    path = Path(ref)
    if path.is_dir() and (path / "config.yaml").is_file():
        return _run_dir(path, opts)
    built = resolve_model(ref, trust_code=True)
    shape = opts.input
    if shape is None and is_export(path):
        shape = tuple(read_export_spec(path)[0].input_shape)
    if shape is None:
        raise UserError(f"model '{ref}' has no recorded input shape; pass --input, e.g. --input 1x3x224x224")
    shape = parse_shape(shape) if isinstance(shape, str) else tuple(int(s) for s in shape)
    return _Source(built.module.cpu().eval(), opts.name or built.info.name or ref, (1, *shape[1:]))


def _images(ds, n: int, seed: int = 0) -> torch.Tensor:
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return torch.stack([ds[i][0] for i in idx])


def _random(shape: tuple[int, ...], n: int, seed: int) -> torch.Tensor:
    return torch.randn((n, *shape[1:]), generator=torch.Generator().manual_seed(seed))


def _ort_logits(sess, x: torch.Tensor, batch: int) -> np.ndarray:
    fixed = sess.get_inputs()[0].shape[0]
    step = batch if not isinstance(fixed, int) else fixed
    return np.concatenate([profile.run(sess, x[i:i + step].numpy()) for i in range(0, len(x), step)])


def _accuracy(predict, test, limit: int | None, batch: int = 256) -> float:
    n = len(test) if limit is None else min(limit, len(test))
    correct = 0
    for start in range(0, n, batch):
        items = [test[i] for i in range(start, min(start + batch, n))]
        x = torch.stack([t[0] for t in items])
        y = np.array([t[1] for t in items])
        correct += int((predict(x).argmax(1) == y).sum())
    return 100.0 * correct / max(n, 1)


def _torch_predict(model: nn.Module):
    def predict(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(x).numpy()
    return predict


def _say(opts: DeployOptions, text: str) -> None:
    if not opts.quiet:
        print(text, flush=True)


def _out_dir(ref: str, src_is_run: bool, opts: DeployOptions) -> Path:
    if opts.out is not None:
        out = Path(opts.out)
    elif src_is_run:
        out = Path(ref) / "deploy"
    else:
        out = Path("deploy_out") / "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(ref).name or ref)
    if out.exists() and not opts.overwrite:
        raise UserError(f"output directory {out} exists; pass --overwrite to replace it or --out for another")
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot write {out}: it is a file")
    return out


def deploy(ref: str, opts: DeployOptions | None = None) -> DeployReport:
    """Deploy a run directory, export or model reference; see the module docstring.

    Args:
        ref: a run directory (its best checkpoint and data set), an export, or any model reference
            :func:`redistill.modelref.resolve_model` takes.
        opts: settings.
    Returns:
        The :class:`DeployReport` also written to ``out/report.{md,json}``.
    Raises:
        UserError: no finished checkpoint, no input shape, an op ONNX cannot express, a calibration
            count larger than the training split, an existing output directory.
    """
    opts = opts or DeployOptions()
    if opts.calib < 1:
        raise UserError(f"--calib must be >= 1, got {opts.calib}")
    if opts.runs < 1 or opts.threads < 1:
        raise UserError(f"--runs and --threads must be >= 1, got {opts.runs} and {opts.threads}")
    is_run = Path(ref).is_dir() and (Path(ref) / "config.yaml").is_file()
    out = _out_dir(ref, is_run, opts)
    # 1. the model, and its data when it is a run
    src = _source(ref, opts)
    if src.train is not None and opts.int8 and opts.calib > len(src.train):
        raise UserError(f"--calib {opts.calib} is larger than the training split ({len(src.train)} images); "
                        f"use --calib {len(src.train)} or fewer")
    probe = (_images(src.test, opts.parity_images, seed=1) if src.test is not None
             else _random(src.shape, min(opts.parity_images, 16), seed=1))
    example = probe[:1].clone()  # its own storage: the analyzer counts storages
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        report = _deploy_into(work, src, probe, example, opts)
        report.out_dir = str(out)
        write_report(work, report)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report


def _deploy_into(work: Path, src: _Source, probe: torch.Tensor, example: torch.Tensor, opts: DeployOptions) -> DeployReport:
    model = src.model
    # 2. BatchNorm folded into convolutions, checked against the unfolded model
    _say(opts, f"deploy {src.name}: folding BatchNorm ...")
    folded = fold_model(model, (probe[:8],))
    # 3. ONNX, checked against PyTorch on real images
    _say(opts, f"deploy {src.name}: exporting ONNX ...")
    fp32_path = export_onnx(folded.model, (probe[:2],), work / "model.onnx")
    with torch.no_grad():
        ref_logits = model(probe).numpy()
    sess32 = profile.session(fp32_path, threads=1)
    ort_logits = _ort_logits(sess32, probe, 256)
    parity = {"images": len(probe), "real_images": src.test is not None,
              "max_abs_diff": float(np.abs(ort_logits - ref_logits).max()),
              "top1_agreement": float((ort_logits.argmax(1) == ref_logits.argmax(1)).mean() * 100)}
    report = DeployReport(model=src.name, input_shape=list(src.shape), source=src.extra,
                          folded_pairs=len(folded.pairs), unfolded_bn=folded.unfolded_bn, bn_as_conv=folded.bn_as_conv,
                          fold_max_abs_diff=folded.max_abs_diff, parity_fp32=parity,
                          params=count_params(model), flops=count_flops(folded.model, example))
    variants = {"fp32": fp32_path}
    # 4. int8: onnxruntime static quantization, torchao PT2E where it works
    if opts.int8:
        _say(opts, f"deploy {src.name}: int8 calibration on {opts.calib} "
                   f"{'training images' if src.train is not None else 'random inputs'} ...")
        calib = _images(src.train, opts.calib) if src.train is not None else _random(src.shape, opts.calib, seed=2)
        report.calibration = {"images": len(calib), "split": "train" if src.train is not None else "random"}
        batches = [calib[i:i + 32].numpy() for i in range(0, len(calib), 32)]
        int8_path = quantize.quantize_onnx(fp32_path, work / "model.int8.onnx", batches)
        variants["int8"] = int8_path
        q_logits = _ort_logits(profile.session(int8_path, threads=1), probe, 256)
        report.parity_int8 = {"images": len(probe), "top1_agreement_with_fp32":
                              float((q_logits.argmax(1) == ort_logits.argmax(1)).mean() * 100),
                              "max_abs_diff_vs_fp32": float(np.abs(q_logits - ort_logits).max())}
        if opts.torchao:
            try:
                ao = quantize.quantize_torchao(folded.model, (example,), [c[None] for c in calib[:64]])
                report.torchao = {"ok": True, "calib_images": min(64, len(calib))}
                if src.test is not None:  # the converted graph runs image by image: score a share of the split
                    limit = min(TORCHAO_TEST_IMAGES, opts.test_limit or TORCHAO_TEST_IMAGES, len(src.test))
                    report.torchao["test_acc"] = _accuracy(_batch1(ao), src.test, limit)
                    report.torchao["test_images"] = limit
            except UserError as err:
                report.torchao = {"ok": False, "error": str(err)}
    # 5. accuracy on the test split
    if src.test is not None:
        _say(opts, f"deploy {src.name}: scoring the test split ...")
        report.accuracy = {"pytorch_fp32": _accuracy(_torch_predict(model), src.test, opts.test_limit),
                           "test_images": len(src.test) if opts.test_limit is None else min(opts.test_limit, len(src.test))}
        for key, path in variants.items():
            sess = profile.session(path, threads=1)
            report.accuracy[f"onnx_{key}"] = _accuracy(lambda x, s=sess: _ort_logits(s, x, 256), src.test, opts.test_limit)
    # 6. memory (predicted and measured), size, latency
    _say(opts, f"deploy {src.name}: memory and latency ...")
    x1 = example.numpy()
    modules = node_modules(fp32_path)
    for key, path in variants.items():
        predicted = analyze_memory(folded.model, example, dtype=key, convention="live", fold_bn=False)
        measured = profile.measure_memory(path, x1)
        deployed = profile.measure_memory(path, x1, level=profile.LATENCY_LEVEL)
        report.variants[key] = {
            "file": path.name, "file_bytes": profile.file_size(path),
            "predicted_peak_bytes": predicted.peak_bytes,
            "predicted_peak_at": f"{predicted.peak_op} in {predicted.peak_module or '(root)'}",
            "measured_peak_bytes": measured.peak_bytes,
            "measured_tensor_peak_bytes": measured.tensor_peak_bytes,
            "measured_peak_node": measured.peak_node,
            # the graph as it runs for latency (ORT_ENABLE_ALL): NCHWc kernels, no im2col workspace
            "deployed_peak_bytes": deployed.peak_bytes, "deployed_tensor_peak_bytes": deployed.tensor_peak_bytes,
            "deployed_peak_node": deployed.peak_node,
            "latency": vars(profile.measure_latency(path, x1, runs=opts.runs, threads=opts.threads)),
            "memory_comparison": compare_memory(predicted, measured, int(example.numel()), key, modules),
        }
    return report


def _batch1(module):
    """A predictor for a graph exported at batch 1: run image by image."""
    def predict(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([module(x[i:i + 1]) for i in range(len(x))]).numpy()
    return predict
