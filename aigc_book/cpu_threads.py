"""PyTorch's CPU thread count, following the machine's load, so a busy core does not stall training.

Introduced in chapter 0, section "CPU or GPU".

PyTorch splits a large CPU operation over ``torch.get_num_threads()`` OpenMP threads and waits for
the slowest. When another program holds one of those cores, the thread that shares it runs only
when the operating system gives it a time slice, and every operation waits for it; meanwhile the
threads that finished early spin, burning the core the other program (or a second training) needs.
``benchmarks/contention.py`` measures what this costs: on a 2-core CPU, a second training beside
the first made each step of the chapters' small model up to about a hundred times slower in our
runs (it varies from run to run), and one busy core made it about twice as slow.

The remedy here needs no environment variables: about once a second, from a hook that PyTorch runs
before every optimiser step (so every training loop follows the load, the book's or the reader's
own) and from the book's evaluation and generation loops (:func:`check_cpu_load`), count how many
cores *other* processes used since the last look (all CPU time on the cores this process may use,
minus this process's own) and give PyTorch the cores that are left, never fewer than one and never
more than it started with. Two trainings side by side then take one core each instead of fighting
over both.

The price: a floating-point sum split over a different number of threads is added in a different
order, so a run whose thread count changed differs from a quiet run in the last bits (about 1e-7
per step). Set ``AIGC_CPU_THREADS=N`` to fix the count at N and keep runs bit-for-bit repeatable.
"""

from __future__ import annotations

import os
import time

import psutil
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

THREADS_ENV_VAR = "AIGC_CPU_THREADS"
CHECK_EVERY_S = 1.0  # how often the load is looked at; a look costs about 0.1 ms
# Other processes' use up to 0.4 of a core is ignored: background noise (a browser, the Jupyter
# server) stays below it, a busy program or a second training does not.
IGNORED_LOAD = 0.4


def threads_for_load(n_cores: int, others_busy: float, max_threads: int) -> int:
    """How many threads to use when other processes keep ``others_busy`` of ``n_cores`` cores busy.

    >>> threads_for_load(2, 0.1, 2), threads_for_load(2, 1.0, 2), threads_for_load(8, 2.0, 8)
    (2, 1, 6)
    """
    return max(1, min(max_threads, int(n_cores - others_busy + IGNORED_LOAD)))


def _fixed_threads() -> int | None:
    value = os.environ.get(THREADS_ENV_VAR, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV_VAR}={value!r}: expected a whole number of threads, at least 1")
    return int(value)


class LoadFollower:
    """Looks at the machine's load at most every ``every_s`` seconds and sets PyTorch's thread count."""

    def __init__(self, every_s: float = CHECK_EVERY_S):
        self.every_s = every_s
        self.max_threads = torch.get_num_threads()
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        if self.cores is not None and max(self.cores) >= len(psutil.cpu_times(percpu=True)):
            self.cores = None  # CPU numbering we cannot match: count every core
        self._process = psutil.Process()
        self._last = self._sample()
        self.history: list[tuple[float, int]] = []  # (others' busy cores, threads chosen) per look

    def _sample(self) -> tuple[float, float, float]:
        per_cpu = psutil.cpu_times(percpu=True)
        if self.cores is not None:
            per_cpu = [per_cpu[i] for i in self.cores]
        busy = sum(sum(t) - t.idle - getattr(t, "iowait", 0.0) for t in per_cpu)
        own = sum(self._process.cpu_times()[:2])  # user + system, all threads of this process
        return time.monotonic(), busy, own

    @property
    def n_cores(self) -> int:
        return len(self.cores) if self.cores is not None else len(psutil.cpu_times(percpu=True))

    def __call__(self, *_hook_args) -> None:
        now = time.monotonic()
        if now - self._last[0] < self.every_s:
            return
        sample = self._sample()
        wall, busy, own = (b - a for a, b in zip(self._last, sample))
        if wall <= 0:
            return
        self._last = sample
        others = max(0.0, (busy - own) / wall)
        threads = threads_for_load(self.n_cores, others, self.max_threads)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.history.append((round(others, 2), threads))


_follower: LoadFollower | None = None
_handle = None


def follow_cpu_load() -> LoadFollower | None:
    """Let PyTorch's CPU thread count follow the machine's load from now on (idempotent).

    Called by :func:`aigc_book.get_device` when it picks the CPU. With ``AIGC_CPU_THREADS=N`` set,
    fixes the count at N instead and returns ``None``.
    """
    global _follower, _handle
    fixed = _fixed_threads()
    if fixed is not None:
        stop_following_cpu_load()
        torch.set_num_threads(fixed)
        return None
    if _follower is None:
        _follower = LoadFollower()
        _handle = register_optimizer_step_pre_hook(_follower)
    return _follower


def check_cpu_load() -> None:
    """Look at the load now if it is time (and following was started): for loops with no optimiser
    step, such as evaluation and generation. Costs a comparison when it is not time."""
    if _follower is not None:
        _follower()


def stop_following_cpu_load() -> None:
    """Remove the hook and give PyTorch back the thread count it started with."""
    global _follower, _handle
    if _handle is not None:
        _handle.remove()
        torch.set_num_threads(_follower.max_threads)
    _follower, _handle = None, None
