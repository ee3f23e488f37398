"""How training speed degrades when the machine is not quiet: fixed threads, passive OpenMP waiting, and ours.

    python benchmarks/contention.py            # about two minutes on a 2-core CPU
    python benchmarks/contention.py --steps 40 # quicker, noisier
    python benchmarks/contention.py --policies default "follow load"

A reader's laptop always has something else running. PyTorch's CPU kernels run on an OpenMP thread
pool whose idle threads, by default, spin on a core waiting for the next parallel region; when
another process holds that core, the spinning thread and the process fight over it and every
parallel region waits for the slower one. ``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep
instead (it must be set before PyTorch loads OpenMP, so each setting runs in a fresh worker process);
``GOMP_SPINCOUNT`` shortens the spinning. The book's answer, ``follow load``, is
:mod:`aigc_book.cpu_threads`: ``get_device()`` on the CPU lets the thread count follow the load.

Each worker times ``--steps`` training steps of the ``train-gpt`` default model (4 layers, 4 heads,
128 wide, context 64, batch 12; AdamW), or with ``--model chapter`` of the chapters' small GPT (2
layers, 64 wide, context 49, batch 32), and reports the median. Three conditions, one run:

* quiet: nothing else running;
* one busy core: a plain Python loop keeps one core busy;
* two trainings: a second identical worker trains at the same time.

Printed: ms per step for each policy and condition, and the slow-down against the quiet run of the
same policy. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# OpenMP settings tried, each in fresh processes: libgomp's default spins about 300,000 times before
# sleeping; GOMP_SPINCOUNT shortens that; PASSIVE sleeps at once.
POLICIES = {
    "default": {},
    "spincount=30000": {"GOMP_SPINCOUNT": "30000"},
    "spincount=3000": {"GOMP_SPINCOUNT": "3000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "follow load": {"AIGC_FOLLOW_LOAD": "1"},  # read by the worker, not by OpenMP
}


# (vocab, block, layers, heads, width, batch): the train-gpt defaults, and chapters 3-4's models
MODELS = {"train-gpt": (103, 64, 4, 4, 128, 12), "chapter": (29, 49, 2, 4, 64, 32)}


def worker(steps: int, model_name: str) -> None:
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: E402  (after the environment is final)

    from aigc_book.models.gpt import GPT
    from aigc_book.models.transformer import TransformerConfig
    from aigc_book.training.trainer import TrainConfig, configure_optimizer

    if os.environ.get("AIGC_FOLLOW_LOAD") == "1":
        from aigc_book.runtime import get_device

        get_device("cpu")  # what every chapter and the command line do: threads follow the load
    from aigc_book import cpu_threads
    torch.manual_seed(0)
    vocab, block, n_layer, n_head, n_embd, batch = MODELS[model_name]
    model = GPT(TransformerConfig(vocab, block, n_layer, n_head, n_embd))
    opt = configure_optimizer(model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, vocab, (batch, block))
    times = []
    for i in range(steps + 5):
        t0 = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 5:  # warm-up steps are not counted
            times.append(1000 * (time.perf_counter() - t0))
    follower = cpu_threads._follower
    print(json.dumps({"ms": statistics.median(times), "looks": follower.history if follower else None,
                      "times": [round(t) for t in times]}), flush=True)


def run_workers(policy: dict, steps: int, model: str, n: int, busy: bool) -> list[float]:
    unset = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "AIGC_FOLLOW_LOAD", "AIGC_CPU_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in unset} | policy
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        command = [sys.executable, __file__, "--worker", "--steps", str(steps), "--model", model]
        procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return [json.loads(p.communicate()[0].strip().splitlines()[-1])["ms"] for p in procs]
    finally:
        if hog:
            hog.kill()
            hog.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES),
                   help="which settings to measure (default: all)")
    p.add_argument("--model", choices=list(MODELS), default="train-gpt",
                   help="train-gpt: 4 layers, 128 wide, batch 12; chapter: 2 layers, 64 wide, batch 32")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.steps, args.model)
        return 0
    print(f"model: {args.model}   cores: {os.cpu_count()}   load average before: {os.getloadavg()}", flush=True)
    result = {}
    for label in args.policies:
        policy = POLICIES[label]
        quiet = run_workers(policy, args.steps, args.model, 1, busy=False)[0]
        busy = run_workers(policy, args.steps, args.model, 1, busy=True)[0]
        pair = statistics.mean(run_workers(policy, args.steps, args.model, 2, busy=False))
        result[label] = {"quiet_ms": round(quiet, 1), "busy_core_ms": round(busy, 1),
                         "two_trainings_ms": round(pair, 1), "busy_core_slowdown": round(busy / quiet, 2),
                         "two_trainings_slowdown": round(pair / quiet, 2)}
        r = result[label]
        print(f"{label:<18} quiet {quiet:7.1f} ms/step | one busy core {busy:7.1f} ({r['busy_core_slowdown']:.2f}x)"
              f" | two trainings {pair:7.1f} ({r['two_trainings_slowdown']:.2f}x)", flush=True)
    print(json.dumps({"model": args.model} | result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
