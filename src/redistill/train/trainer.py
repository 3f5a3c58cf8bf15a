"""The training loop: one function, ``run_training(cfg, run_dir)``, for teachers, vanilla and
distilled students alike.

What a run directory holds, and the order its files are written in so that a kill at any point
leaves a directory that resumes exactly, is :mod:`redistill.train.rundir`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import sys
import time
import warnings
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from redistill.checkpoint import load_checkpoint, load_weights, rng_state, save_checkpoint, set_rng_state
from redistill.diffusion import make_ema
from redistill.distill import surgery_of
from redistill.errors import UserError
from redistill.flops import count_flops, count_params
from redistill.memory import analyze_memory
from redistill.train import distributed as dd
from redistill.train.build import build_distiller, load_teacher, pairs_to_data
from redistill.train.config import Config, load_config
from redistill.train.data import DataInfo, batch_mixer, build_datasets, eval_loader, set_epoch, train_loader
from redistill.train.optim import build_optimizer, build_scheduler
from redistill.train.preload import preloaded_loaders
from redistill.train.rundir import prepare_run_dir, run_dir_lock, write_atomic, write_metrics, writing
from redistill.train.stages import run_pre_stages
from redistill.train.diffusion_task import DiffusionTask
from redistill.train.task import ClassificationTask, Task
from redistill.util import pick_device

class _Divergence(Exception):
    pass


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# oneDNN's channels-last (nhwc) backward of a 1x1 convolution with a stride above 1 and fewer input
# channels (per group) than its channel block (8 with AVX2, 16 with AVX-512) writes past a workspace:
# heap corruption, a hang or wrong weight gradients (uxlfoundation/oneDNN issue 6035; reproduced here
# with the torch 2.14.1 CPU build: 4 -> 8 channels, stride 2, 16 px, batch 32 aborts or segfaults).
CL_CPU_MIN_CHANNELS = 16


def channels_last_cpu_hazard(model: nn.Module) -> str | None:
    """The first trainable convolution that channels-last training on the CPU must avoid, described.

    Returns:
        ``"name (1x1 conv, stride S, C input channels)"``, or None when the model has none.
    """
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.weight.requires_grad and m.kernel_size == (1, 1)
                and max(m.stride) > 1 and m.in_channels // m.groups < CL_CPU_MIN_CHANNELS):
            return f"{name} (1x1 conv, stride {max(m.stride)}, {m.in_channels // m.groups} input channels)"
    return None


def build_task(cfg: Config, info: DataInfo) -> Task:
    """The task a config names: classification (labels, CE) or diffusion (denoising)."""
    if cfg.task == "diffusion":
        return DiffusionTask(cfg.diffusion)
    return ClassificationTask(cfg.optim.label_smoothing, batch_mixer(cfg.data.augment, info.num_classes))


def progress_to_terminal() -> bool:
    """Whether progress bars go to a terminal (tqdm writes them to stderr)."""
    return sys.stderr.isatty()


class _Loop:
    """State of one training run; ``run_training`` drives it."""

    def __init__(self, cfg: Config, run_dir: Path, env: dd.DistEnv, device: torch.device, trust_code: bool = False):
        self.cfg, self.run_dir, self.env, self.device = cfg, run_dir, env, device
        self.use_cuda = device.type == "cuda"
        self.amp = cfg.run.amp and self.use_cuda
        # Channels-last on every device: also 1.10-1.63x faster training steps on the CPU
        # (benchmarks/results/cpu_channels_last.md), except where a oneDNN bug forbids it (below).
        self.channels_last = cfg.run.channels_last

        splits = build_datasets(cfg.data)
        self.info: DataInfo = splits.info
        pin = self.use_cuda
        if cfg.data.preload:
            self.train_loader, self.val_loader, self.test_loader = preloaded_loaders(
                splits, cfg.data, device, env.world_size, env.rank
            )
        else:
            self.train_loader = train_loader(splits.train, cfg.data, cfg.run.seed, env.world_size, env.rank, pin)
            self.val_loader = eval_loader(splits.val, cfg.data, pin) if splits.val is not None else None
            self.test_loader = eval_loader(splits.test, cfg.data, pin)
        if len(self.train_loader) == 0:
            raise UserError(
                f"the training split has {len(splits.train)} images, fewer than one batch of "
                f"{cfg.data.batch_size // env.world_size} per process; lower data.batch_size or raise data.subset"
            )
        self.task = build_task(cfg, self.info)

        teacher = load_teacher(cfg, self.info, trust_code=trust_code)
        self.distiller, self.student_info = build_distiller(cfg, self.info, self.task, teacher)
        self.distiller.to(device)
        hazard = channels_last_cpu_hazard(self.distiller) if self.channels_last and not self.use_cuda else None
        if hazard is not None:
            self.channels_last = False
            if env.is_main:
                print(f"note: training in NCHW, not channels-last (run.channels_last): {hazard} hits a oneDNN bug "
                      f"on the CPU in channels-last (1x1 strided convs need >= {CL_CPU_MIN_CHANNELS} input channels)",
                      file=sys.stderr, flush=True)
        if self.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.distiller
        if env.enabled:
            ids = [device.index] if self.use_cuda else None
            # Some methods leave modules idle in some steps (init-stage regressors): let DDP cope.
            unused = self.distiller.method is not None
            self.model = nn.parallel.DistributedDataParallel(self.distiller, device_ids=ids, find_unused_parameters=unused)
        self.optimizer = build_optimizer(cfg.optim, self.distiller.trainable_parameters())
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, self.steps_per_epoch, cfg.run.epochs)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        # The EMA averages the student after each step; it is what is validated and shipped.
        self.ema = make_ema(self.distiller.student, self.task.ema_decay) if self.task.ema_decay is not None else None
        self.epoch, self.best_val, self.best_epoch = 0, self.task.worst(), 0
        self.elapsed = 0.0  # training seconds of earlier sessions of a resumed run

    def shipped(self) -> nn.Module:
        """The network that is validated, reported and exported: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.distiller.student

    # -------------------------------------------------------------- checkpoints

    def state(self) -> dict:
        method = self.distiller.method
        return {
            "epoch": self.epoch,
            "model": self.distiller.student.state_dict(),
            "arch": self.student_info.spec,  # what the weights belong to (None for user factories)
            "surgery": surgery_of(self.distiller.student),
            "data_info": dataclasses.asdict(self.info),
            "method": method.state_dict() if method is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "rng": rng_state(),
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "elapsed": self.elapsed,
            "config": self.cfg.to_dict(),
        }

    def restore(self, path: Path) -> None:
        # Loaded on the CPU: RNG states must stay CPU tensors; weights and optimizer state are
        # copied to the model's device by load_state_dict.
        state = load_checkpoint(path, map_location="cpu")
        missing = [k for k in ("epoch", "model", "optimizer", "scheduler", "scaler", "rng") if k not in state]
        if missing:
            raise UserError(f"checkpoint {path} lacks {', '.join(missing)}; it cannot be resumed")
        recorded, built = state.get("arch"), self.student_info.spec
        if recorded is not None and built is not None and recorded != built:
            raise UserError(f"checkpoint {path} holds another architecture ({recorded}) than this run's ({built})")
        load_weights(self.distiller.student, state["model"], path, what="model")
        if self.distiller.method is not None:
            load_weights(self.distiller.method, state["method"], path, what="method")
        if self.ema is not None:
            if "ema" not in state:
                raise UserError(f"checkpoint {path} lacks the EMA weights this run keeps; it cannot be resumed")
            load_weights(self.ema, state["ema"], path, what="EMA")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise UserError(f"optimizer/scheduler state in {path} does not fit this run: {err}") from err
        set_rng_state(state["rng"])
        self.epoch, self.best_val, self.best_epoch = state["epoch"], state["best_val"], state["best_epoch"]
        self.elapsed = float(state.get("elapsed", 0.0))

    # -------------------------------------------------------------- one epoch

    def _check_finite(self, finite: torch.Tensor, names: list[str], values: torch.Tensor, step: int) -> None:
        ok = finite.float().reshape(1)
        if self.env.enabled:  # every process must learn of a divergence, or the others hang
            ok = dd.all_sum(self.env, ok) / self.env.world_size
        if float(ok) < 1.0:
            shown = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(names, values))
            raise _Divergence(f"loss is not finite at epoch {self.epoch + 1} step {step + 1} ({shown})")

    def train_epoch(self, writer) -> dict:
        cfg, env = self.cfg, self.env
        self.model.train()
        set_epoch(self.train_loader, cfg.run.seed, self.epoch)
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {self.epoch + 1}/{cfg.run.epochs}",
            # A bar only where someone watches it: to a file or a pipe it would write a frame per
            # refresh; there the one line per epoch printed below is the log.
            disable=not (cfg.run.progress and env.is_main and progress_to_terminal()),
            leave=False,
            dynamic_ncols=True,
        )
        # On CUDA, reading a loss back stalls the GPU queue, so the finiteness check and the
        # logging read the device-side running values every log_every steps (and at the last
        # step); on CPU reading is free and every step is checked before its update.
        check_every = cfg.run.log_every if self.use_cuda else 1
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        metric_sums: dict[str, torch.Tensor] = {}
        last_step = len(self.train_loader) - 1
        for step, batch in enumerate(bar):
            inputs, targets = self.task.prepare(batch, self.device, self.channels_last)
            inputs, targets = self.task.augment(inputs, targets)
            with autocast:
                outputs, terms = self.model(inputs, targets)
                loss = self.distiller.total_loss(terms)
            names = ["loss", *terms]
            values = torch.stack([loss.detach().float()] + [t.detach().float() for t in terms.values()])
            finite &= torch.isfinite(values).all()
            if (step + 1) % check_every == 0 or step == last_step:
                self._check_finite(finite, names, values, step)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(list(self.distiller.trainable_parameters()), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.distiller.student)
            with warnings.catch_warnings():
                # AMP skips the optimizer step while it calibrates its loss scale; the schedule
                # still follows the step count, which is what torch's warning is about.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                self.scheduler.step()

            n = self.task.batch_size(targets)
            for name, value in zip(names, values):
                sums[name] = sums.get(name, 0.0) + value * n
            for name, value in self.task.train_metrics(outputs, targets).items():
                metric_sums[name] = metric_sums.get(name, 0.0) + value
            seen += n
            global_step = self.epoch * self.steps_per_epoch + step + 1
            if writer is not None and global_step % cfg.run.log_every == 0:
                for name, value in zip(names, values.tolist()):
                    writer.add_scalar(f"step/{name}", value, global_step)
                writer.add_scalar("step/lr", self.optimizer.param_groups[0]["lr"], global_step)
            if env.is_main and cfg.run.progress and (step + 1) % check_every == 0:
                bar.set_postfix(loss=f"{values[0].item():.3f}", refresh=False)

        dd.average_buffers(env, self.distiller.student)
        if self.distiller.method is not None:
            dd.average_buffers(env, self.distiller.method)
        if self.ema is not None:
            dd.average_buffers(env, self.ema.module)
        names = list(sums) + list(metric_sums)
        values = [sums[k] for k in sums] + [metric_sums[k] for k in metric_sums]
        local = torch.stack([torch.as_tensor(v, device=self.device).double() for v in values]
                            + [torch.tensor(float(seen), device=self.device).double()])
        totals = dd.all_sum(env, local)
        seen_all = float(totals[-1])
        return {f"train/{k}": float(v) / seen_all for k, v in zip(names, totals[:-1])}


def model_figures(model: nn.Module, example) -> dict[str, Any]:
    """Peak memory (live and layer conventions, per image, fp32), parameters and FLOPs of a model.

    Args:
        model: the deployed network.
        example: its input for one image: a shape, a tensor, or a tuple of tensors (a
            denoiser's image and timestep).
    """
    model = model.eval()
    live = analyze_memory(model, example, convention="live")
    layer = analyze_memory(model, example, convention="layer")
    return {
        "peak_bytes_live": int(live.peak_bytes), "peak_bytes_layer": int(layer.peak_bytes),
        "peak_module_live": live.peak_module,
        "params": int(count_params(model)), "flops": int(count_flops(model, example)),
    }


def run_training(
    cfg: Union[Config, dict, str, Path], run_dir: Union[str, Path], resume: bool = False, overwrite: bool = False,
    trust_code: bool = False,
) -> dict:
    """Train the model a config describes and write the run directory.

    Args:
        cfg: a :class:`Config` (or anything :func:`load_config` accepts).
        run_dir: where config, metrics, checkpoints and the summary go.
        resume: continue from ``run_dir/last.pt`` (exactly: same weights as an uninterrupted run).
        overwrite: empty an existing run directory first (only one this project marked as a run).
        trust_code: let a teacher spec read from its checkpoint import user code.
    Returns:
        The content of ``summary.json``: ``val_acc`` (best, percent), ``test_acc`` (of the best
        checkpoint), ``peak_bytes_live`` / ``peak_bytes_layer`` (deployed model, per image, fp32),
        ``params``, ``flops``, ``train_time_s`` and more.
    Raises:
        UserError: bad config, missing data, an existing run directory without resume/overwrite,
            a bad checkpoint, or a loss that became NaN/inf (the last good checkpoint is kept).
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: pick one")
    cfg = cfg if isinstance(cfg, Config) else load_config(cfg)
    run_dir = Path(run_dir)
    device_type = "cuda" if cfg.run.device.startswith("cuda") or (cfg.run.device == "auto" and torch.cuda.is_available()) else "cpu"
    env = dd.init_distributed(device_type)
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    old_benchmark = torch.backends.cudnn.benchmark
    held = ExitStack()  # the run directory's lock, held by the main process until the end
    try:
        error = None
        if env.is_main:
            try:
                held.enter_context(run_dir_lock(run_dir))
                prepare_run_dir(run_dir, cfg, resume, overwrite)
            except UserError as err:
                error = str(err)
        error = dd.broadcast_object(env, error)
        if error is not None:
            raise UserError(error)
        if resume and (run_dir / "summary.json").is_file() and (run_dir / "last.pt").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
            if summary.get("epochs") == cfg.run.epochs:
                return summary
        if cfg.run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
            # warn_only: a few CUDA backward kernels (e.g. adaptive pooling) have no deterministic
            # version; a warning beats a crash in the middle of a long run.
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not cfg.run.deterministic
        _seed_everything(cfg.run.seed)
        device = pick_device(cfg.run.device, env.local_rank if env.enabled else None)
        return _train(cfg, run_dir, env, device, resume, trust_code)
    finally:
        held.close()
        torch.use_deterministic_algorithms(old_deterministic)
        torch.backends.cudnn.benchmark = old_benchmark
        dd.close_distributed(env)


def _train(cfg: Config, run_dir: Path, env: dd.DistEnv, device: torch.device, resume: bool, trust_code: bool) -> dict:
    loop = _Loop(cfg, run_dir, env, device, trust_code)
    last, best = run_dir / "last.pt", run_dir / "best.pt"
    resumed = resume and last.is_file()
    if resumed:
        loop.restore(last)
    metrics = run_dir / "metrics.jsonl"
    writer = None
    if env.is_main:
        with writing(metrics, last):
            write_metrics(metrics, keep_up_to=loop.epoch)
    if not resumed:
        try:
            run_pre_stages(loop, lambda record: write_metrics(metrics, record) if env.is_main else None)
        except FloatingPointError as err:
            raise UserError(f"training diverged: {err}; lower optim.lr") from err
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=loop.epoch * loop.steps_per_epoch + 1)
    started = time.perf_counter() - loop.elapsed
    try:
        while loop.epoch < cfg.run.epochs:
            epoch_start = time.perf_counter()
            try:
                record = loop.train_epoch(writer)
            except _Divergence as err:
                kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"
                raise UserError(f"training diverged: {err}; {kept}; lower optim.lr or set optim.grad_clip") from err
            loop.epoch += 1
            record = {"epoch": loop.epoch, "lr": loop.optimizer.param_groups[0]["lr"], **record}
            metric = f"val/{loop.task.metric}"
            if loop.val_loader is not None:
                val = loop.task.evaluate(loop.shipped(), loop.val_loader, device, loop.amp, loop.channels_last)
                record.update({f"val/{k}": v for k, v in val.items() if k != "count"})
            record["weights"] = loop.distiller.weights()
            record["time_s"] = time.perf_counter() - epoch_start
            improved = loop.val_loader is None or loop.task.better(record[metric], loop.best_val)
            if improved:
                loop.best_val = record.get(metric, loop.best_val)
                loop.best_epoch = loop.epoch
            loop.elapsed = time.perf_counter() - started
            if env.is_main:
                with writing(run_dir, last):
                    write_metrics(metrics, record)
                    for key, value in record.items():
                        if isinstance(value, (int, float)) and key != "epoch":
                            writer.add_scalar(key, value, loop.epoch * loop.steps_per_epoch)
                    state = loop.state()
                    # best before last: whatever last.pt records (best_epoch) is then on disk.
                    if improved:
                        save_checkpoint(best, state)
                    save_checkpoint(last, state)
                if cfg.run.progress:
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float))
                    tqdm.write(f"epoch {loop.epoch}/{cfg.run.epochs}: {shown}")
            dd.barrier(env)
    finally:
        if writer is not None:
            writer.close()
    train_time = time.perf_counter() - started
    return _finish(loop, run_dir, train_time)


def _finish(loop: _Loop, run_dir: Path, train_time: float) -> dict:
    cfg, env, device = loop.cfg, loop.env, loop.device
    # The reported model is the one chosen on validation data: the best checkpoint.
    best = run_dir / "best.pt"
    dd.barrier(env)
    if best.is_file():
        state = load_checkpoint(best)
        load_weights(loop.distiller.student, state["model"], best)
        if loop.ema is not None:
            load_weights(loop.ema, state["ema"], best, what="EMA")
    test_best = loop.task.evaluate(loop.shipped(), loop.test_loader, device, loop.amp, loop.channels_last)
    summary: dict[str, Any] = {}
    if env.is_main:
        method = loop.distiller.method
        deployed = method.deploy(loop.shipped()) if method is not None else loop.shipped()
        info = loop.info
        shape = (1, info.in_channels, info.image_size, info.image_size)
        figures = model_figures(_cpu_copy(deployed), loop.task.example_input(info.in_channels, info.image_size, batch=1))
        summary = {
            "run_dir": str(run_dir),
            "task": cfg.task,
            "metric": loop.task.metric,
            "model": loop.student_info.spec if loop.student_info.spec is not None else cfg.model.student,
            "method": cfg.distill.method,
            "pairs": pairs_to_data(loop.distiller.method),
            "data": info.name,
            "num_classes": info.num_classes,
            "input_shape": list(shape),
            "epochs": cfg.run.epochs,
            "best_epoch": loop.best_epoch,
            f"val_{loop.task.metric}": loop.best_val if loop.val_loader is not None else None,
            f"test_{loop.task.metric}": test_best[loop.task.metric],
            **figures,
            "train_time_s": train_time,
            "world_size": env.world_size,
            "device": str(device),
        }
        with writing(run_dir / "summary.json", run_dir / "last.pt"):
            write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return dd.broadcast_object(env, summary)


def _cpu_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().float().to(memory_format=torch.contiguous_format)
