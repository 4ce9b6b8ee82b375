"""Data-parallel training across processes started by `torchrun`.

`torchrun --nproc-per-node N -m dmtcore add-task ...` starts N copies of the command; each reads
its rank from the environment torchrun sets. Every rank loads the same store and data, trains
on its share of every epoch (the gradients are averaged by DistributedDataParallel) and
validates on the whole validation split, so all ranks hold identical weights and metrics.
Only rank 0 takes the writer lock, writes the store and reports to MLflow; the other ranks wait
for its commit. Without torchrun there is one rank and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dmtcore.errors import InvalidValueError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """(rank, size) for samplers, None when training alone."""
        return (self.rank, self.size) if self.size > 1 else None

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def current_world() -> World:
    """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK, or a world of one."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise InvalidValueError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them): {exc}"
        ) from exc
    if size < 1 or not 0 <= rank < size:
        raise InvalidValueError(f"rank {rank} is outside a world of {size} processes")
    return World(rank, size, local_rank)


def join(device_type: str) -> World:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs); idempotent."""
    world = current_world()
    if world.size > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
    return world


def device_name(setting: str, world: World) -> str:
    """Under torchrun each rank takes its own GPU: 'auto'/'cuda' become 'cuda:LOCAL_RANK'."""
    if world.size > 1 and setting in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{world.local_rank}"
    return setting


def wrap(model: Any, world: World, device: Any) -> Any:
    """The module to run training steps through: DistributedDataParallel over the trainable
    parts (frozen parameters are not synchronised), or the model itself when alone.

    Some trainable parameters take no part in a step: jointly trained tasks take turns, and a
    task's first connections have no other source to weigh, so DDP must look for unused ones."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def sync_buffers(model: Any, world: World) -> None:
    """Give every rank rank 0's BatchNorm statistics: each rank's last step updated them with
    its own batch, and validation must see identical models everywhere."""
    if world.size == 1:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, 0)
