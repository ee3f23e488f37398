"""Chapter 6's data-parallel checks and measurements: the all-reduce's cost, DDP and FSDP checked, scaling.

Introduced in chapter 6, section "When one machine is not enough". The trainer's own plumbing
(torchrun's variables, the process group, DDP, Ctrl-C) is :mod:`aigc_book.training.distributed`;
this module measures and checks what it does.

**Its cost.** A ring all-reduce of ``N`` numbers of ``b`` bytes over ``p`` processes sends, from every
process, ``2 (p - 1) / p * N * b`` bytes (a reduce-scatter, then an all-gather, each ``(p-1)/p``;
Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for clusters of workstations",
J. Parallel Distrib. Comput. 69(2); NCCL's documentation and nccl-tests' ``PERFORMANCE.md`` use the
same factor to turn a measured time into a "bus bandwidth"): :func:`allreduce_bytes_per_rank`,
:func:`allreduce_seconds`, and :func:`measure_allreduce` to put a measured number beside them.

**DDP's claim.** :func:`ddp_gradients_match` checks numerically that DDP's averaged gradient is the
gradient of one process on all the micro-batches together.

**FSDP** (fully sharded data parallel; Zhao et al. 2023, arXiv:2304.11277, after ZeRO, Rajbhandari
et al. 2020, arXiv:1910.02054) keeps only ``1/p`` of every parameter, gradient and optimizer moment
on each process and gathers a layer's weights just before it runs. :func:`fsdp_matches_ddp` trains
one step with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) and with DDP from the same
start and compares the weights; it runs on CPUs over gloo with PyTorch 2.13.

**Trying it from a notebook.** :func:`data_parallel_demo` starts ``p`` processes with
``torch.multiprocessing`` (a few seconds) and returns the gradient check, ms per step with one and
with ``p`` processes, the scaling efficiency and the all-reduce's size and time. Spawned processes
import the function they run, so it must live in a module (as :func:`run_in_processes` requires),
not in a notebook cell.
"""

from __future__ import annotations

import dataclasses
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from aigc_book.checks import check_int, check_number, is_number
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.training.distributed import (
    DistEnv,
    process_device,
    process_group,
    rank_seed,
    threads_per_process,
    world,
    wrap_ddp,
)
from aigc_book.training.objectives import causal_lm_batch, causal_lm_loss
from aigc_book.training.trainer import TrainConfig, Trainer

__all__ = [
    "allreduce_bytes_per_rank",
    "allreduce_seconds",
    "measure_allreduce",
    "run_in_processes",
    "ddp_gradients_match",
    "fsdp_matches_ddp",
    "data_parallel_steps",
    "data_parallel_demo",
    "fsdp_demo",
]


# ---- communication cost --------------------------------------------------------------------------
def allreduce_bytes_per_rank(n_params: int, bytes_per_element: float, world_size: int) -> float:
    """Bytes each process sends in a ring all-reduce of ``n_params`` numbers: ``2 (p-1)/p * N * b``.

    The ring (Patarasuk & Yuan 2009) first reduce-scatters (each process ends with the sum of one
    ``1/p`` slice, after sending ``(p-1)/p`` of the data) and then all-gathers the slices (another
    ``(p-1)/p``). No all-reduce can send less per process; one process sends nothing.

    >>> allreduce_bytes_per_rank(1_000_000, 4, 2), allreduce_bytes_per_rank(1_000_000, 4, 1)
    (4000000.0, 0.0)
    """
    check_int("n_params", n_params, 0)
    check_number("bytes_per_element", bytes_per_element)
    check_int("world_size", world_size, 1)
    return 2.0 * (world_size - 1) / world_size * n_params * bytes_per_element


def allreduce_seconds(n_params: int, bytes_per_element: float, world_size: int, bandwidth_bytes_per_s: float,
                      latency_s: float = 0.0) -> float:
    """Time of one ring all-reduce: :func:`allreduce_bytes_per_rank` over the per-process bandwidth, plus
    ``2 (p-1)`` message latencies (the ring's steps; the alpha-beta model).

    ``bandwidth_bytes_per_s`` is what one process can send per second, what nccl-tests calls the *bus*
    bandwidth (e.g. about 450e9 for an H100's NVLink; a 100 Gbit/s network card gives 12.5e9).

    >>> allreduce_seconds(1_000_000, 4, 2, 1e9)
    0.004
    """
    check_number("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    if not is_number(latency_s) or not (latency_s >= 0):
        raise ValueError(f"latency_s must be a number >= 0, got {latency_s!r}")
    sent = allreduce_bytes_per_rank(n_params, bytes_per_element, world_size)
    return sent / bandwidth_bytes_per_s + 2 * (world_size - 1) * latency_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_allreduce(numel: int, device: torch.device | str = "cpu", *, iters: int = 10, warmup: int = 2,
                      dtype: torch.dtype = torch.float32) -> dict:
    """Time ``dist.all_reduce`` of ``numel`` numbers in the current process group (every rank must call it).

    Returns ``seconds`` (the median over ``iters``, the slowest rank's), ``bytes`` (the buffer),
    ``bytes_per_rank`` (what the ring formula says each rank sends) and ``bus_bandwidth``
    (``bytes_per_rank / seconds``, nccl-tests' "busbw": the number to give :func:`allreduce_seconds`).
    """
    check_int("numel", numel, 1)
    check_int("iters", iters, 1)
    if not dist.is_initialized():
        raise RuntimeError("measure_allreduce needs a process group: call it inside run_in_processes or torchrun")
    device = torch.device(device)
    buf = torch.ones(numel, dtype=dtype, device=device)
    times = []
    for i in range(warmup + iters):
        dist.barrier()  # start together, so the time is the all-reduce's, not a late rank's
        _sync(device)
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    seconds = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the step waits for the slowest rank
    seconds = float(seconds)
    size = numel * buf.element_size()
    sent = allreduce_bytes_per_rank(numel, buf.element_size(), dist.get_world_size())
    return {"seconds": seconds, "bytes": size, "bytes_per_rank": sent,
            "bus_bandwidth": sent / seconds if sent else float("nan")}


# ---- running p processes from Python --------------------------------------------------------------
def _spawned(rank: int, world_size: int, store: str, out_dir: str, device_type: str, fn: Callable, args: tuple):
    """Body of each process :func:`run_in_processes` starts (module level, so spawn can import it)."""
    env = DistEnv(rank, world_size, rank, world_size)
    torch.set_num_threads(threads_per_process(world_size))
    device = process_device(env, device_type)
    with process_group(env, device, init_method=f"file://{store}"):
        result = fn(device, *args)
    with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


def run_in_processes(fn: Callable, world_size: int = 2, args: tuple = (), device: str = "cpu") -> list:
    """Run ``fn(device, *args)`` in ``world_size`` new processes joined in one process group (gloo on a
    CPU, nccl with ``device="cuda"``: one GPU each); returns their results, rank 0's first.

    ``fn`` must be importable (defined in a module, not in a notebook cell or ``__main__`` of an
    interactive session): the processes are started with ``spawn`` and import it by name. Each
    process uses ``cores // world_size`` CPU threads. A failure in any process raises here with its
    traceback.
    """
    check_int("world_size", world_size, 1)
    if torch.device(device).type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="aigc-dp-") as tmp:
        store = str(Path(tmp) / "store")  # a FileStore: no free port to find
        mp.spawn(_spawned, args=(world_size, store, tmp, torch.device(device).type, fn, tuple(args)),
                 nprocs=world_size, join=True)
        results = []
        for rank in range(world_size):
            with open(Path(tmp) / f"rank{rank}.pkl", "rb") as f:  # written just now by our own processes
                results.append(pickle.load(f))
    return results


# ---- checks the chapter runs ----------------------------------------------------------------------
def _tiny_config():
    return TransformerConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=32)


def _random_batch(config, batch: int, seed: int, device: torch.device) -> dict:
    """``batch`` windows of random tokens (their content does not matter for these checks)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(config.vocab_size, (batch, config.block_size + 1), generator=g)
    return {"idx": ids[:, :-1].to(device), "targets": ids[:, 1:].to(device)}  # (B, T) each


def _build_gpt(config, seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(seed)
    return GPT(dataclasses.replace(config, dropout=0.0)).to(device=device, dtype=dtype)


def ddp_gradients_match(device: torch.device, config=None, batch: int = 4, seed: int = 0,
                        dtype: torch.dtype = torch.float64) -> dict:
    """One DDP backward, each rank on its own micro-batch, against one process on all of them together.

    Call inside a process group (:func:`run_in_processes`). Rank 0 recomputes, without DDP, the
    gradient of the mean loss over the concatenated micro-batches (the ranks' batches are drawn from
    :func:`rank_seed`, so rank 0 can rebuild them). Returns, on every rank: ``max_abs_diff`` (DDP vs
    combined batch), ``max_abs_diff_own_batch`` (DDP vs rank 0's batch alone: large, so the check can
    fail), ``grads_match`` (``torch.allclose`` at ``rtol=1e-9, atol=1e-12`` in float64) and ``dtype``.
    """
    config = config or _tiny_config()
    rank, ws = world()
    batches = [_random_batch(config, batch, rank_seed(seed, r), device) for r in range(ws)]
    model = _build_gpt(config, seed, device, dtype)
    ddp = wrap_ddp(model, device)
    causal_lm_loss(ddp, batches[rank]).backward()
    result = [None]
    if rank == 0:
        ddp_grads = [p.grad for p in model.parameters()]
        reference = _build_gpt(config, seed, device, dtype)
        reference.load_state_dict(model.state_dict())
        combined = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}  # (ws * B, T)
        causal_lm_loss(reference, combined).backward()
        alone = _build_gpt(config, seed, device, dtype)
        alone.load_state_dict(model.state_dict())
        causal_lm_loss(alone, batches[0]).backward()

        def max_diff(other: nn.Module) -> float:
            return max(float((a - b.grad).abs().max()) for a, b in zip(ddp_grads, other.parameters()))

        ok = all(torch.allclose(a, b.grad, rtol=1e-9, atol=1e-12) for a, b in zip(ddp_grads, reference.parameters()))
        result = [{"grads_match": bool(ok) if dtype == torch.float64 else None, "max_abs_diff": max_diff(reference),
                   "max_abs_diff_own_batch": max_diff(alone), "dtype": str(dtype)}]
    dist.broadcast_object_list(result, src=0)
    return result[0]


def _flat_full_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one vector, gathering FSDP's shards (DTensors) into full tensors."""
    parts = [p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in model.parameters()]
    return torch.cat([t.reshape(-1) for t in parts])


def _local_numel(model: nn.Module) -> int:
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())


def fsdp_matches_ddp(device: torch.device, config=None, batch: int = 4, seed: int = 0, steps: int = 1,
                     lr: float = 1e-3, dtype: torch.dtype = torch.float64) -> dict:
    """``steps`` AdamW steps with FSDP2 (``fully_shard`` on every block, then the whole GPT) and with DDP,
    from the same weights on the same per-rank batches; call inside a process group.

    Returns, on every rank: ``max_abs_diff`` between the full weights of the two (float64: expect about
    1e-15), ``max_abs_change`` (how far the step moved the weights, so the comparison means something),
    ``params_full`` and ``params_per_rank_fsdp`` (what one FSDP rank stores: about ``1/p`` of the model).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    config = config or _tiny_config()
    rank, ws = world()
    ddp_model = _build_gpt(config, seed, device, dtype)
    start = _flat_full_params(ddp_model).clone()
    fsdp_model = _build_gpt(config, seed, device, dtype)
    mesh = init_device_mesh(device.type, (ws,))
    for block in fsdp_model.transformer.h:
        fully_shard(block, mesh=mesh)  # each block's weights are gathered just before it runs
    fully_shard(fsdp_model, mesh=mesh)  # the rest: embeddings (tied to the head), final norm
    ddp = wrap_ddp(ddp_model, device)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=lr, foreach=False) for m in (ddp_model, fsdp_model)]
    for step in range(steps):
        data = _random_batch(config, batch, rank_seed(seed + step, rank), device)
        for model, opt in zip((ddp, fsdp_model), optimizers):
            causal_lm_loss(model, data).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    a, b = _flat_full_params(ddp_model), _flat_full_params(fsdp_model)
    return {"max_abs_diff": float((a - b).abs().max()), "max_abs_change": float((a - start).abs().max()),
            "params_full": int(a.numel()), "params_per_rank_fsdp": _local_numel(fsdp_model), "dtype": str(dtype)}


def data_parallel_steps(device: torch.device, config=None, batch: int = 8, steps: int = 8, seed: int = 0,
                        rounds: int = 2, check_gradients: bool = True) -> dict | None:
    """Time the book's :class:`~aigc_book.training.trainer.Trainer` with one process and with all of them;
    call inside a process group. Returns the measurements on rank 0, ``None`` elsewhere.

    Each of ``rounds`` rounds has three phases of ``steps`` steps: rank 0 trains alone (the others
    wait at a barrier): ``ms_per_step_1``; every rank trains its own model side by side, without
    talking: ``ms_per_step_side_by_side`` (what sharing the machine costs: cores, memory bandwidth);
    every rank trains with DDP on its own micro-batches of ``batch`` windows: ``ms_per_step_<p>``
    (sharing plus communication). Alternating the phases makes a change in the machine's load hit all
    alike. Per-step times are rank 0's medians over all but each phase's first step. Also measured:
    the all-reduce of a gradient-sized float32 buffer, and whether every rank ends with bitwise the
    same weights.
    """
    config = config or _tiny_config()
    rank, ws = world()
    out = {"world_size": ws, "batch": batch, "global_batch": batch * ws, "block": config.block_size}
    if check_gradients:
        out.update(ddp_gradients_match(device, config, batch=2, seed=seed))
    data = torch.randint(config.vocab_size, (20_000,), generator=torch.Generator().manual_seed(seed))

    def batch_fn(split, generator):
        return causal_lm_batch(data, batch, config.block_size, generator)

    cfg = TrainConfig(steps=rounds * steps, lr=1e-3, warmup_steps=0, seed=seed, progress=False)

    def trainer(distributed: bool | None) -> Trainer:
        torch.manual_seed(seed)
        return Trainer(GPT(config), batch_fn, causal_lm_loss, cfg, device=device, eval_fn=lambda m: {},
                       distributed=distributed)

    alone = trainer(False) if rank == 0 else None
    beside = trainer(False)
    together = trainer(None)  # DDP whenever the group has more than one process
    for r in range(rounds):
        if alone is not None:
            alone.train(until=(r + 1) * steps)
        dist.barrier()
        beside.train(until=(r + 1) * steps)
        dist.barrier()
        together.train(until=(r + 1) * steps)

    def median_ms(t: Trainer) -> float:
        ms = t.history["ms"]
        return statistics.median(m for i, m in enumerate(ms) if i % steps)  # skip each phase's first step

    n_params = sum(p.numel() for p in together.model.parameters() if p.requires_grad)
    reduce = measure_allreduce(n_params, device, iters=5)
    flat = _flat_full_params(together.model)
    copies = [torch.zeros_like(flat) for _ in range(ws)]
    dist.all_gather(copies, flat)
    if rank != 0:
        return None
    ms1, ms_p = median_ms(alone), median_ms(together)
    tokens = batch * config.block_size
    out.update({
        "params": n_params,
        "ms_per_step_1": round(ms1, 3),
        "ms_per_step_side_by_side": round(median_ms(beside), 3),
        f"ms_per_step_{ws}": round(ms_p, 3),
        "tokens_per_s_1": round(tokens * 1000 / ms1, 1),
        f"tokens_per_s_{ws}": round(ws * tokens * 1000 / ms_p, 1),
        "efficiency": round(ms1 / ms_p, 3),  # throughput(p) / (p * throughput(1)) = ms1 / ms_p
        "allreduce_bytes_per_step": allreduce_bytes_per_rank(n_params, 4, ws),
        "allreduce_ms": round(1000 * reduce["seconds"], 3),
        "allreduce_bus_bandwidth": reduce["bus_bandwidth"],
        "weights_identical": all(torch.equal(copies[0], c) for c in copies[1:]),
        "threads_per_process": torch.get_num_threads(),
        "device": str(device),
    })
    return out


def data_parallel_demo(world_size: int = 2, steps: int = 8, config=None, batch: int = 8, seed: int = 0,
                       rounds: int = 2, device: str = "cpu") -> dict:
    """Start ``world_size`` processes and return :func:`data_parallel_steps`'s measurements (a dict):
    ``grads_match``, ``max_abs_diff``, ``ms_per_step_1``, ``ms_per_step_<p>``, ``tokens_per_s_1``,
    ``tokens_per_s_<p>``, ``efficiency`` (``throughput(p) / (p * throughput(1))``),
    ``allreduce_bytes_per_step`` (per rank, ring formula, float32 gradients), ``allreduce_ms``
    (measured), ``weights_identical`` and the settings. Default: a 2-layer, 32-wide GPT, about 10 s on
    a 2-core CPU, most of it starting the processes.
    """
    check_int("steps", steps, 2)
    check_int("rounds", rounds, 1)
    check_int("batch", batch, 1)
    args = (config, batch, steps, seed, rounds)
    return run_in_processes(data_parallel_steps, world_size, args=args, device=device)[0]


def fsdp_demo(world_size: int = 2, config=None, steps: int = 1, device: str = "cpu") -> dict:
    """Start ``world_size`` processes and return rank 0's :func:`fsdp_matches_ddp` (a few seconds)."""
    check_int("steps", steps, 1)
    return run_in_processes(fsdp_matches_ddp, world_size, args=(config, 4, 0, steps), device=device)[0]
