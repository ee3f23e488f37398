"""One run that measures this machine: peak FLOP/s, memory bandwidth, a GPT's MFU and decoding speed.

Introduced in chapter 6, section "Outside the notebook: `measure`"; ``python -m aigc_book measure``
(:mod:`aigc_book.commands.measure`) runs :func:`measure_machine` from the command line.

Stages: the float32 matrix-product peak, the bfloat16 one, the memory bandwidth of a large copy,
``steps`` timed AdamW steps of a fresh GPT (:func:`aigc_book.efficiency.hardware.training_mfu`), and
greedy decoding of ``max_new_tokens`` tokens at batch 1 with and without the KV cache.

Without ``peak`` the measured matrix-product peak in ``dtype`` is what MFU divides by (the best of
three measurements: the first stage's, and two by ``training_mfu`` before and after training), which
gives a higher MFU than a datasheet peak. On a CPU shared with other programs every number is
indicative, and a peak measured while the machine was busy can even make MFU exceed 1.

:func:`measure_machine` returns one flat dict: ``device``, ``threads``, ``matmul_n``,
``matmul_float32_flops``, ``matmul_bfloat16_flops``, ``bfloat16_speedup``, ``memory_bandwidth``,
``ridge_intensity`` (float32 peak over bandwidth, FLOP/byte), ``params``, ``flops_per_token``,
``train_ms_per_step``, ``train_tokens_per_s``, ``train_achieved_flops``, ``peak_flops``,
``peak_source`` (``"measured"`` or ``"--peak"``), ``mfu``, ``decode_tokens_per_s_cache``,
``decode_tokens_per_s_no_cache``, ``kv_cache_speedup``, ``dtype``, ``compiled``, ``wall_s``; on CUDA
also ``train_peak_memory_bytes``.
"""

from __future__ import annotations

import sys
import time

import torch

from aigc_book.models.transformer import TransformerConfig

__all__ = ["MEASURE_DTYPES", "decode_speeds", "measure_machine"]

MEASURE_DTYPES = ("float32", "bfloat16")


def decode_speeds(config: TransformerConfig, device: torch.device, *, max_new_tokens: int,
                  dtype: str = "float32") -> tuple[float, float]:
    """Greedy tokens/s at batch 1 with and without the KV cache (bf16 weights on CUDA with ``dtype="bfloat16"``)."""
    from aigc_book.efficiency.hardware import decode_speed
    from aigc_book.models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    if dtype == "bfloat16" and device.type == "cuda":
        model = model.to(torch.bfloat16)
    try:
        cached = decode_speed(model, device, new_tokens=max_new_tokens, use_cache=True)
        uncached = decode_speed(model, device, new_tokens=max_new_tokens, use_cache=False)
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return cached, uncached


def measure_machine(config: TransformerConfig, batch_size: int, device: torch.device, *, steps: int = 5,
                    dtype: str = "float32", compile: bool = False, peak: float | None = None,
                    max_new_tokens: int = 32, progress: bool = True) -> dict:
    """Measure ``device`` and a GPT of shape ``config`` on it; return a flat JSON-able dict (module docstring)."""
    from tqdm.auto import tqdm

    from aigc_book.efficiency.hardware import matmul_peak, memory_bandwidth, training_mfu

    start = time.perf_counter()
    stages = ["matmul float32", "matmul bfloat16", "bandwidth", "training", "decoding"]
    bar = tqdm(stages, file=sys.stderr, disable=not progress, desc="measure", leave=False, dynamic_ncols=True)
    out: dict = {"device": str(device)}
    try:
        bar.set_postfix_str(stages[0])
        out["matmul_n"] = 8192 if device.type == "cuda" else 1024
        out["matmul_float32_flops"] = matmul_peak(device, torch.float32, n=out["matmul_n"])
        bar.update(1)
        bar.set_postfix_str(stages[1])
        out["matmul_bfloat16_flops"] = matmul_peak(device, torch.bfloat16, n=out["matmul_n"])
        bar.update(1)
        bar.set_postfix_str(stages[2])
        out["memory_bandwidth"] = memory_bandwidth(device)
        bar.update(1)
        bar.set_postfix_str(stages[3])
        # Without peak, training_mfu measures the peak again before and after training; the best of
        # its and ours is kept, since a busy machine only ever makes a measurement lower.
        mfu = training_mfu(config, batch_size, device, steps=steps, dtype=dtype, compile=compile, peak=peak)
        best = mfu["peak_flops"]
        if peak is None:
            best = out[f"matmul_{dtype}_flops"] = max(best, out[f"matmul_{dtype}_flops"])
        out.update({
            "params": mfu["params"],
            "flops_per_token": mfu["flops_per_token"],
            "train_ms_per_step": mfu["ms_per_step"],
            "train_tokens_per_s": mfu["tokens_per_s"],
            "train_achieved_flops": mfu["achieved_flops"],
            "peak_flops": best,
            "peak_source": "--peak" if peak is not None else "measured",
            "mfu": mfu["achieved_flops"] / best,
        })
        out["bfloat16_speedup"] = out["matmul_bfloat16_flops"] / out["matmul_float32_flops"]
        out["ridge_intensity"] = out["matmul_float32_flops"] / out["memory_bandwidth"]
        if mfu["peak_memory_bytes"] is not None:
            out["train_peak_memory_bytes"] = mfu["peak_memory_bytes"]
        bar.update(1)
        bar.set_postfix_str(stages[4])
        cached, uncached = decode_speeds(config, device, max_new_tokens=max_new_tokens, dtype=dtype)
        out.update({"decode_tokens_per_s_cache": cached, "decode_tokens_per_s_no_cache": uncached,
                    "kv_cache_speedup": cached / uncached})
        bar.update(1)
    finally:
        bar.close()
    out.update({"dtype": dtype, "compiled": compile, "wall_s": time.perf_counter() - start,
                "threads": torch.get_num_threads()})  # at the end: the count follows the CPU load
    return out
