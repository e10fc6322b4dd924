"""Several training processes with torch.distributed, as `torchrun` starts them.

    torchrun --nproc_per_node 2 -m train.dog_emotion train ...      # make train-ddp NPROC=2

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them a run is one process and nothing
here does anything. The backend is gloo on CPUs and NCCL on CUDA GPUs (one GPU per process).
Only the CPU/gloo path was tested on the machine this was written on.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from train.common import DeviceError, resolve_device


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that evaluates, prints and writes files."""
        return self.rank == 0


def setup(device_name: str) -> Processes:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(device=device)
    if device.type == "mps":
        raise DeviceError("several processes on MPS are not supported by torch.distributed; use one")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # a long timeout: the other ranks wait at a barrier while rank 0 decodes a large data set or
        # records a teacher bank
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=3))
    return Processes(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def gather(obj, procs: Processes) -> list:
    """Every rank's `obj`, in rank order (on every rank): e.g. each rank's generator state."""
    if procs.world == 1:
        return [obj]
    out = [None] * procs.world
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(values: list[float], procs: Processes) -> list[float]:
    """Element-wise sum over ranks of a few numbers (e.g. loss sums and counts for the epoch log)."""
    if procs.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=procs.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_rank_first(procs: Processes):
    """Rank 0 runs the block first (it writes a cache: decoded images, a teacher bank), the other
    ranks after it (they read what it wrote)."""
    if not procs.main:
        barrier()
    yield
    if procs.main:
        barrier()


def teardown() -> None:
    """Leave the process group at the end of a run that ended normally on every rank.

    The ranks wait for each other first: the others finish while rank 0 still evaluates and writes,
    and a rank destroying the group while its peer still held it aborted once in CI (SIGABRT,
    "terminate called without an active exception"). Not called after an error: the other ranks
    would wait at the barrier for the whole timeout; torchrun stops them when the failed rank exits.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
