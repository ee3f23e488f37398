"""Cost of attention and of generation, measured on the current device.

    python benchmarks/attention.py [--quick] [--device cpu|cuda|mps]

Prints two tables, then (as its last line) one JSON object:

1. causal self-attention (batch 4, 8 heads of 64 dimensions, float32; ``--batch`` and ``--heads``
   change the shape) at sequence lengths 128 ... 2048: forward and forward+backward time of the written-out formula
   (``attention_reference``) and of the fused kernel (``attention_fused``, i.e. PyTorch's
   ``scaled_dot_product_attention``);
2. generation speed (tokens/s, greedy, batch 1) of the chapter's GPT (4 layers, 4 heads, width
   128, character vocabulary of 65, context 1024, random weights: speed does not depend on them)
   with and without the KV cache, at 256 and 512 new tokens after a 1-token prompt.

JSON keys: ``fused_speedup`` (length -> written-out time / fused time, forward),
``fused_speedup_fwd_bwd`` (the same for forward+backward), ``kv_cache_speedup_256``,
``kv_cache_speedup_512``, ``tokens_per_s``, the raw times and the device. Times are the best of
3 repeats (other processes only ever slow a run down); on a shared machine expect noise.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout

from aigc_book import get_device, seed_everything  # noqa: E402
from aigc_book.efficiency.timing import attention_timings  # noqa: E402
from aigc_book.models.gpt import GPT  # noqa: E402
from aigc_book.models.transformer import TransformerConfig  # noqa: E402

CHAPTER_GPT = dict(vocab_size=65, block_size=1024, n_layer=4, n_head=4, n_embd=128)


def generation_speed(model: GPT, new_tokens: int, use_cache: bool, device) -> float:
    """Tokens per second for greedy generation of ``new_tokens`` after a 1-token prompt."""
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    model.generate(prompt, 8, temperature=0, use_cache=use_cache)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    parser.add_argument("--quick", action="store_true", help="lengths 128..512 and 64/128 new tokens (for smoke tests)")
    parser.add_argument("--batch", type=int, default=4, help="sequences per attention call (default 4)")
    parser.add_argument("--heads", type=int, default=8, help="heads of 64 dimensions (default 8)")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    seed_everything(0)

    lengths = [128, 256, 512] if args.quick else [128, 256, 512, 1024, 2048]
    print(f"device: {device}   torch {torch.__version__}   threads: {torch.get_num_threads()}")
    shape = dict(batch=args.batch, n_head=args.heads, head_dim=64)
    print(
        f"\ncausal self-attention, batch {args.batch}, {args.heads} heads x 64 dims, float32 (ms per call, best of 3)"
    )
    header = (f"{'T':>6} | {'fwd written-out':>15} {'fwd fused':>10} {'speed-up':>8} | "
              f"{'f+b written-out':>15} {'f+b fused':>10} {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    fwd, fwd_bwd = {}, {}
    for T in lengths:
        fwd[T] = attention_timings(T, device=device, **shape)
        fwd_bwd[T] = attention_timings(T, device=device, backward=True, **shape)
        f, b = fwd[T], fwd_bwd[T]
        print(
            f"{T:>6} | {f['written-out'] * 1e3:>15.2f} {f['fused'] * 1e3:>10.2f} {f['written-out'] / f['fused']:>7.1f}x"
            f" | {b['written-out'] * 1e3:>15.2f} {b['fused'] * 1e3:>10.2f} {b['written-out'] / b['fused']:>7.1f}x"
        )

    model = GPT(TransformerConfig(**CHAPTER_GPT)).to(device).eval()
    token_counts = [64, 128] if args.quick else [256, 512]
    print(f"\ngeneration, chapter GPT ({model.num_parameters() / 1e6:.2f}M parameters), greedy, batch 1")
    print(f"{'new tokens':>10} | {'no cache tok/s':>14} {'KV cache tok/s':>14} {'speed-up':>8}")
    print("-" * 54)
    speed = {}
    for n in token_counts:
        speed[n] = {c: generation_speed(model, n, c, device) for c in (False, True)}
        print(f"{n:>10} | {speed[n][False]:>14.1f} {speed[n][True]:>14.1f} {speed[n][True] / speed[n][False]:>7.1f}x")

    result = {
        "device": str(device),
        "attention_shape": {**shape, "dtype": "float32", "causal": True},
        "fused_speedup": {str(T): round(fwd[T]["written-out"] / fwd[T]["fused"], 2) for T in lengths},
        "fused_speedup_fwd_bwd": {str(T): round(fwd_bwd[T]["written-out"] / fwd_bwd[T]["fused"], 2) for T in lengths},
        "forward_ms": {str(T): {k: round(v * 1e3, 3) for k, v in fwd[T].items()} for T in lengths},
        "forward_backward_ms": {str(T): {k: round(v * 1e3, 3) for k, v in fwd_bwd[T].items()} for T in lengths},
        "tokens_per_s": {
            str(n): {"no_cache": round(s[False], 1), "kv_cache": round(s[True], 1)} for n, s in speed.items()
        },
    }
    for n in token_counts:
        result[f"kv_cache_speedup_{n}"] = round(speed[n][True] / speed[n][False], 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
