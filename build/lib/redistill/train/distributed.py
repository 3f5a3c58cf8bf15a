"""Process-group helpers for ``torchrun --nproc_per_node N -m redistill train ...``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them training runs in one process and
every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), if any.

    Args:
        device_type: ``"cpu"`` or ``"cuda"``; picks the backend.
    Returns:
        The rank layout; ``world_size`` 1 when not launched by torchrun.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistEnv(rank, world_size, local_rank)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, initialised_here=True)


def close_distributed(env: DistEnv) -> None:
    if env.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_sum(env: DistEnv, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``values`` over all processes (a copy; the input is unchanged)."""
    values = values.clone()
    if env.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(env: DistEnv, obj):
    """Rank 0's ``obj`` on every process."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_buffers(env: DistEnv, module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over all processes.

    DDP keeps parameters in sync but each process's BN statistics last saw its own batches;
    averaging them at the end of an epoch makes every process hold the same model.
    """
    if not env.enabled:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(env.world_size)
