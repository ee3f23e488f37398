"""Data-parallel scaling on this machine: one process against two, and what gloo's all-reduce costs.

    python benchmarks/data_parallel.py                      # the book's baby GPT, 2 processes, CPU
    python benchmarks/data_parallel.py --layers 2 --embd 32 --block 32 --batch 8   # a tiny, fast one
    python benchmarks/data_parallel.py --device cuda --world-size 2                 # 2 GPUs, nccl

Chapter 6, section "When one machine is not enough". The model, schedule and per-process batch are
those of ``benchmarks/train_gpt.py`` (4 layers, 128 wide, context 64, batch 12) unless overridden.
Each process trains with the book's :class:`~aigc_book.training.trainer.Trainer`
(:func:`aigc_book.efficiency.data_parallel.data_parallel_steps`): rank 0 alone with one thread, then all
ranks with DistributedDataParallel and one thread each (``cores // world_size``), alternating
``--rounds`` times so that a change in the machine's load hits both alike. A third run, one process
with all the cores, shows what the same cores give as threads instead of processes.

Reported (one JSON line): ms per step and tokens/s for 1 and ``p`` processes at the same
per-process batch, and for ``p`` independent trainings side by side (what sharing the machine costs
without any communication), the scaling efficiency ``throughput(p) / (p * throughput(1))``, the all-reduce of
one step's float32 gradients (bytes per process by the ring formula, measured ms), gloo's bus
bandwidth measured on larger buffers, and the time the formula
(:func:`aigc_book.efficiency.data_parallel.allreduce_seconds`) predicts from that bandwidth, beside the
measured one. Timings on a shared machine are indicative: run it twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from aigc_book.efficiency.data_parallel import (  # noqa: E402
    allreduce_seconds,
    data_parallel_steps,
    measure_allreduce,
    run_in_processes,
)
from aigc_book.models.transformer import TransformerConfig  # noqa: E402

BANDWIDTH_SIZES = (2**18, 2**20, 2**22)  # float32 numbers: 1, 4 and 16 MB


def bench_worker(device: torch.device, config: TransformerConfig, batch: int, steps: int, rounds: int,
                 sizes: tuple[int, ...]) -> dict | None:
    """Inside each process: the training timings, then all-reduces of growing buffers."""
    result = data_parallel_steps(device, config, batch=batch, steps=steps, rounds=rounds)
    sweep = [measure_allreduce(n, device, iters=5) for n in sizes]
    if result is not None:
        result["bandwidth_sweep"] = [{"mb": round(m["bytes"] / 2**20, 2), "ms": round(1000 * m["seconds"], 3),
                                      "bus_gb_per_s": round(m["bus_bandwidth"] / 1e9, 3)} for m in sweep]
        result["bus_bandwidth"] = max(m["bus_bandwidth"] for m in sweep)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--embd", type=int, default=128)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--batch", type=int, default=12, help="windows per process and step")
    parser.add_argument("--steps", type=int, default=10, help="steps per phase and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    config = TransformerConfig(vocab_size=65, block_size=args.block, n_layer=args.layers, n_head=args.heads,
                               n_embd=args.embd)
    p = args.world_size
    t0 = time.perf_counter()
    run = run_in_processes(bench_worker, p, args=(config, args.batch, args.steps, args.rounds, BANDWIDTH_SIZES),
                           device=args.device)[0]
    # One process with every core as threads (on a CPU): the same hardware, split the other way.
    whole = None
    if args.device == "cpu":
        whole = run_in_processes(data_parallel_steps, 1,
                                 args=(config, args.batch, args.steps, 0, 1, False), device="cpu")[0]
    predicted = allreduce_seconds(run["params"], 4, p, run["bus_bandwidth"])
    result = {
        "device": run["device"],
        "world_size": p,
        "config": {"layers": args.layers, "heads": args.heads, "embd": args.embd, "block": args.block},
        "params": run["params"],
        "batch_per_process": args.batch,
        "global_batch": run["global_batch"],
        "grads_match": run["grads_match"],
        "weights_identical": run["weights_identical"],
        "threads_per_process": run["threads_per_process"],
        "ms_per_step_1": run["ms_per_step_1"],
        "ms_per_step_side_by_side": run["ms_per_step_side_by_side"],
        f"ms_per_step_{p}": run[f"ms_per_step_{p}"],
        "tokens_per_s_1": run["tokens_per_s_1"],
        f"tokens_per_s_{p}": run[f"tokens_per_s_{p}"],
        "efficiency": run["efficiency"],
        "ms_per_step_1_process_all_threads": whole["ms_per_step_1"] if whole else None,
        "threads_all": whole["threads_per_process"] if whole else None,
        "allreduce_bytes_per_step": run["allreduce_bytes_per_step"],
        "allreduce_ms_measured": run["allreduce_ms"],
        "allreduce_ms_predicted": round(1000 * predicted, 3),
        "allreduce_share_of_step": round(run["allreduce_ms"] / run[f"ms_per_step_{p}"], 3),
        "bus_bandwidth_gb_per_s": round(run["bus_bandwidth"] / 1e9, 3),
        "bandwidth_sweep": run["bandwidth_sweep"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
