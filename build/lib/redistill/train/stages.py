"""Extra training stages a method asks for before the main run (``DistillMethod.pre_stages()``):
FitNet hints, FSP / AB / FT initialisation. Each stage trains only its own parameters on its own
loss, with the run's optimizer settings at a constant learning rate.

Stages run once, at the start of a fresh run; the first epoch checkpoint already holds their
result, so a resumed run does not repeat them.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist

from redistill.train import distributed as dd
from redistill.train.data import set_epoch
from redistill.train.optim import build_optimizer

# Stage epochs draw their data order from epochs far from the main run's ones.
_STAGE_EPOCH_BASE = 1_000_000


def run_pre_stages(loop, log) -> None:
    """Run every pre-stage of the loop's method.

    Args:
        loop: the trainer's run state (distiller, loader, device, config, process layout).
        log: called with one record per stage epoch (``{"stage": name, "stage_epoch": e, ...}``).
    Raises:
        FloatingPointError: a stage loss that is not finite.
    """
    distiller, cfg, env = loop.distiller, loop.cfg, loop.env
    method = distiller.method
    if method is None:
        return
    autocast = torch.autocast("cuda", dtype=torch.float16) if loop.amp else nullcontext()
    for index, stage in enumerate(method.pre_stages()):
        params = [p for p in stage.parameters() if p.requires_grad]
        optimizer = build_optimizer(cfg.optim, params)
        scaler = torch.amp.GradScaler("cuda", enabled=loop.amp)
        distiller.train()
        for epoch in range(stage.epochs):
            set_epoch(loop.train_loader, cfg.run.seed, _STAGE_EPOCH_BASE * (index + 1) + epoch)
            sums: dict[str, float] = {}
            seen = 0
            for batch in loop.train_loader:
                inputs, targets = loop.task.prepare(batch, loop.device, loop.channels_last)
                with autocast:
                    # The main run's step, with the stage's terms and weights.
                    _, terms = distiller(inputs, targets, stage=stage)
                    loss = distiller.total_loss(terms, stage=stage)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"stage {stage.name} loss is not finite at epoch {epoch + 1}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if env.enabled:  # the stage runs outside DDP: average its gradients by hand
                    for p in params:
                        if p.grad is not None:
                            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                            p.grad.div_(env.world_size)
                scaler.step(optimizer)
                scaler.update()
                n = loop.task.batch_size(targets)
                for name, value in [("loss", loss), *terms.items()]:
                    sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
                seen += n
            dd.average_buffers(env, distiller.student)
            log({"stage": stage.name, "stage_epoch": epoch + 1, **{f"train/{k}": v / max(seen, 1) for k, v in sums.items()}})
