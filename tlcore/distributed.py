"""Scale-out through torch.distributed: `torchrun --nproc-per-node N -m tlcore run ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE above 1 the
run joins the process group (NCCL on CUDA, gloo on CPU), trains with
DistributedDataParallel, reduces its metrics across processes, and only rank
0 writes the run folder.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from tlcore.errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True in a multi-process run."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True for the one process that writes files and prints."""
        return self.rank == 0


def setup(device: torch.device) -> Distributed:
    """Join the process group when torchrun started several processes; a no-op otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    place = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized() and device.type == "cuda":
        torch.cuda.set_device(place.local_rank)  # before NCCL starts, so its communicator binds to this GPU
        dist.init_process_group("nccl", device_id=torch.device("cuda", place.local_rank))
    elif not dist.is_initialized():
        dist.init_process_group("gloo")
    return place


def local_device(device: torch.device, place: Distributed) -> torch.device:
    """On CUDA, each process takes the GPU of its local rank."""
    if place.enabled and device.type == "cuda":
        torch.cuda.set_device(place.local_rank)
        return torch.device("cuda", place.local_rank)
    return device


def wrap(model: nn.Module, place: Distributed, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the parameters that train now.

    Called again whenever the trainable set changes (unfreezing): DDP fixes
    its gradient buckets at construction, while the optimizer's groups stay
    as they are.
    """
    if not place.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_batchnorm(module: nn.Module, place: Distributed, device: torch.device, *, enabled: bool) -> nn.Module:
    """``--sync-bn``: BatchNorm layers that compute their statistics over every process's batch.

    A no-op for single-process runs. The converted layers keep their
    parameters (the same objects) and state-dict keys; torch implements the
    synchronisation for GPUs only.
    """
    if not enabled or not place.enabled:
        return module
    if device.type != "cuda":
        raise ConfigError(f"--sync-bn needs CUDA devices; this run uses {device.type} (torch's SyncBatchNorm is GPU-only)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def no_sync(model: nn.Module, place: Distributed, *, skip: bool):
    """A context in which DDP does not exchange gradients (micro-batches before the last of a step)."""
    if skip and place.enabled and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def max_across(values: dict[str, float | None], place: Distributed, device: torch.device) -> dict[str, float | None]:
    """The largest value of each entry over all processes (peak memory: the busiest process counts)."""
    if not place.enabled:
        return values
    keys = [key for key, value in values.items() if value is not None]
    packed = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    return {**values, **dict(zip(keys, packed.tolist(), strict=True))}


def sum_across(values: list[torch.Tensor | float | int], place: Distributed, device: torch.device) -> list[float]:
    """Add numbers over all processes (one collective); returns plain floats."""
    packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    if place.enabled:
        dist.all_reduce(packed)
    return packed.tolist()


def any_across(flag: bool, place: Distributed, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any: a step skipped by one must be skipped by all.

    DDP exchanges gradients in ``backward``; a process that skips it while the
    others do not would leave them waiting for it.
    """
    if not place.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


STOP_CHECK_STEPS = 16  # how often processes agree on a stop: a host synchronisation each time


def stop_agreed(requested: bool, step: int, place: Distributed, device: torch.device) -> bool:
    """Whether to stop at this step boundary (Ctrl-C or SIGTERM seen by this process, or by any).

    A single process stops at once. Processes of a distributed run reach
    their signals at different steps; they decide together, every
    STOP_CHECK_STEPS steps, so all of them stop after the same step.
    """
    if not place.enabled:
        return requested
    return step % STOP_CHECK_STEPS == 0 and any_across(requested, place, device)


def broadcast_flag(flag: bool, place: Distributed, device: torch.device) -> bool:
    """Rank 0's decision (early stopping), shared with every process."""
    if not place.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def sync_buffers(model: nn.Module, place: Distributed) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics).

    DDP broadcasts buffers at the start of each forward, so after the last
    training step each process holds the statistics of its own last batch;
    validation and checkpoints must all see the same ones.
    """
    if not place.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def teardown(place: Distributed) -> None:
    """Leave the process group."""
    if place.enabled and dist.is_initialized():
        dist.destroy_process_group()
