"""Timing a piece of code honestly on a shared machine: warm up, repeat, keep the best.

Introduced in chapter 2, section "The cost of attention"; the scripts in ``benchmarks/`` use the
same helpers, and chapter 6 measures everything else with them.
"""

from __future__ import annotations

import time

import torch

from aigc_book.layers.attention import attention_fused, attention_reference

__all__ = ["time_call", "attention_timings"]



def time_call(fn, *, repeats: int = 3, min_seconds: float = 0.1, device=None) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` in seconds, after one warm-up call.

    Each repeat runs ``fn`` enough times to last at least ``min_seconds`` and reports the mean;
    the best repeat is returned because other processes only ever make a run slower. On CUDA the
    device is synchronised around each timing.
    """
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / n)
    return best

def attention_timings(seq_len: int, batch: int = 1, n_head: int = 8, head_dim: int = 64,
                      device=None, dtype=torch.float32, backward: bool = False, repeats: int = 3,
                      min_seconds: float = 0.1) -> dict[str, float]:
    """Seconds per causal self-attention call, written-out vs fused, at one sequence length.

    With ``backward=True`` each call is forward plus backward (gradients of q, k, v).
    """
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (batch, n_head, seq_len, head_dim)
    q, k, v = (
        torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_(backward) for _ in range(3)
    )
    out = {}
    for name, attend in (("written-out", attention_reference), ("fused", attention_fused)):
        if backward:

            def fn(attend=attend):
                attend(q, k, v, is_causal=True).sum().backward()
        else:

            def fn(attend=attend):
                with torch.no_grad():
                    attend(q, k, v, is_causal=True)

        out[name] = time_call(fn, repeats=repeats, min_seconds=min_seconds, device=device)
    return out
