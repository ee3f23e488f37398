"""The trainer's data-parallel plumbing: where this process stands in a torchrun job, DDP, Ctrl-C.

Introduced in chapter 6, section "When one machine is not enough".

**Data parallelism** (数据并行): ``p`` processes each hold a full copy of the model, each draws its
*own* micro-batch, and after the backward pass the gradients are averaged across processes, so that
every copy takes the same optimizer step, as if one process had trained on the ``p`` micro-batches
together (the effective, or global, batch is ``batch * p``; Goyal et al. 2017, arXiv:1706.02677).
PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel` (DDP; Li et al. 2020, arXiv:2006.15704)
does the averaging during the backward pass, bucket by bucket, with an *all-reduce* (全归约) over
``gloo`` (CPU) or ``nccl`` (CUDA). This module holds only what :class:`~aigc_book.training.trainer.Trainer`
and the command line need to train that way; chapter 6's checks and measurements of it (the
all-reduce's cost, DDP against one big batch, FSDP against DDP, the scaling demo) are in
:mod:`aigc_book.efficiency.data_parallel`.

The same command line, more processes::

    python -m aigc_book train-gpt --text FILE ...                              # one process
    torchrun --nproc_per_node 2 -m aigc_book train-gpt --text FILE ...        # two, on this machine

``torchrun`` starts the processes and gives each ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (:func:`torchrun_env` reads them). On two
machines, run on each (``i`` = 0 or 1; ``host:port`` = an address of the first machine that both
can reach)::

    torchrun --nnodes 2 --node_rank i --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint host:port \\
        -m aigc_book train-gpt --text FILE ...

Nothing else changes: the ranks meet at the rendezvous endpoint, and DDP's all-reduce then crosses
the network (where it is slowest, which :func:`aigc_book.efficiency.data_parallel.allreduce_seconds`
lets one estimate). The multi-node form is documented, not tested here.

Threads: ``p`` processes on one CPU share its cores; each gets ``cores // local_world_size`` threads
(:func:`threads_per_process`) unless ``AIGC_CPU_THREADS`` fixes the count, and
:mod:`aigc_book.cpu_threads` may lower it further when the machine is busy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistEnv",
    "torchrun_env",
    "rank_seed",
    "threads_per_process",
    "process_device",
    "backend_for",
    "process_group",
    "world",
    "wrap_ddp",
    "SigintRecorder",
]

THREADS_ENV_VAR = "AIGC_CPU_THREADS"  # as in aigc_book.cpu_threads: a fixed thread count wins


# ---- where this process stands ------------------------------------------------------------------
@dataclass(frozen=True)
class DistEnv:
    """One process's place in a job: its global ``rank`` of ``world_size``, and its ``local_rank`` of
    the ``local_world_size`` processes on this machine (which picks its GPU)."""

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1

    def __post_init__(self) -> None:
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank {self.rank} of {self.world_size}")
        if not (1 <= self.local_world_size <= self.world_size and 0 <= self.local_rank < self.local_world_size):
            raise ValueError(f"need 0 <= local_rank < local_world_size <= world_size, got local rank "
                             f"{self.local_rank} of {self.local_world_size} (world {self.world_size})")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0


def torchrun_env(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """This process's :class:`DistEnv` when torchrun (or any launcher setting its variables) started
    it; ``None`` for a plain ``python`` process. Malformed variables raise ValueError."""
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: start the processes with torchrun "
                         "(torchrun --nproc_per_node N -m aigc_book ...)")
    values = {}
    for key, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", None)):
        raw = env.get(key, default if default is not None else env["WORLD_SIZE"])
        try:
            values[key] = int(raw)
        except ValueError:
            raise ValueError(f"{key}={raw!r}: expected a whole number") from None
    return DistEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s data and dropout: ``seed`` itself on rank 0 (so rank 0 draws what one
    process would), otherwise a number mixed from both by NumPy's ``SeedSequence``, so that no rank's
    stream is another run's (``seed + rank`` would make rank 1 of seed 7 rank 0 of seed 8)."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if rank == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1, dtype=np.uint32)[0])


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_process(local_world_size: int, cores: int | None = None) -> int:
    """CPU threads for each of ``local_world_size`` processes sharing ``cores`` cores (default: the cores
    this process may use): ``max(1, cores // local_world_size)``, so that they do not fight over cores.

    >>> threads_per_process(2, cores=2), threads_per_process(2, cores=16), threads_per_process(4, cores=2)
    (1, 8, 1)
    """
    if local_world_size < 1:
        raise ValueError(f"local_world_size must be >= 1, got {local_world_size}")
    return max(1, (_cores() if cores is None else cores) // local_world_size)


def process_device(env: DistEnv, device: torch.device | str) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` (one GPU per process) or the CPU.

    Raises ValueError for a device that data parallelism cannot use here (MPS; a CUDA index other
    than the local rank; fewer GPUs than processes on this machine)."""
    device = torch.device(device)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"{device}: data-parallel training runs on cpu (gloo) or cuda (nccl)")
    if device.index is not None and device.index != env.local_rank:
        raise ValueError(f"{device}: each process uses the GPU of its local rank; pass cuda without an index")
    count = torch.cuda.device_count()
    if env.local_world_size > count:
        raise ValueError(f"{env.local_world_size} processes on this machine but {count} GPU(s): "
                         f"use --nproc_per_node {count} or fewer")
    return torch.device("cuda", env.local_rank)


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA tensors, ``gloo`` for CPU tensors."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device, init_method: str = "env://"):
    """Join the job's default process group for the block, and always leave it (also on errors)."""
    device = torch.device(device)
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # NCCL binds this process to its GPU at once
    dist.init_process_group(backend_for(device), init_method=init_method, rank=env.rank,
                            world_size=env.world_size, **kwargs)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """``model`` in DistributedDataParallel: rank 0's weights are broadcast to every rank now, and
    gradients are averaged across ranks during each backward pass."""
    device = torch.device(device)
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class SigintRecorder:
    """While active, Ctrl-C (SIGINT) is recorded in ``requested`` instead of raising.

    Data-parallel ranks must stop together: a rank that raised KeyboardInterrupt in the middle of a
    step would leave the others waiting in an all-reduce. So each rank only records the signal, the
    ranks agree at the end of the step (one small all-reduce), and all stop after the same step.
    Outside the main thread (where handlers cannot be set) it records nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> SigintRecorder:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._record)
        return self

    def _record(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
