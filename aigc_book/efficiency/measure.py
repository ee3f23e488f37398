"""The ``measure`` command: this machine's peak FLOP/s, memory bandwidth, a GPT's MFU and decoding speed.

Introduced in chapter 6, section "Outside the notebook: `measure`". Usage::

    python -m aigc_book measure [--n-layer 4 --n-head 4 --n-embd 256 --block-size 128 --batch 8
                                 --vocab-size 512 --steps 5 --dtype float32|bfloat16 --compile
                                 --new-tokens 32 --peak FLOP/S --device D --no-progress]

The defaults (a 3.4M-parameter GPT) finish in about 6 s on a quiet 2-core CPU. On an H100, the size
the chapter quotes (1.3B parameters: the depth, width and context of Brown et al. 2020's GPT-3 XL,
arXiv:2005.14165, Table 2.1, with 16 heads of 128 dimensions) is::

    python -m aigc_book measure --device cuda --n-layer 24 --n-embd 2048 --n-head 16 --block-size 1024 \\
        --batch 8 --vocab-size 50304 --dtype bfloat16 --peak 989e12

``--peak`` is the FLOP/s that MFU divides by (989e12: an H100 SXM's dense BF16 datasheet peak);
without it the measured matrix-product peak in ``--dtype`` is used (the best of three measurements:
the first stage's, and two by :func:`~aigc_book.efficiency.hardware.training_mfu` before and after
training), which gives a higher MFU. On a CPU shared with other programs every number is indicative,
and a peak measured while the machine was busy can even make MFU exceed 1.

Stages (a progress bar on stderr, hidden by ``--no-progress``): the float32 matrix-product peak, the
bfloat16 one, the memory bandwidth of a large copy, ``--steps`` timed AdamW steps of a fresh GPT
(:func:`aigc_book.efficiency.hardware.training_mfu`), and greedy decoding of ``--new-tokens`` tokens at
batch 1 with and without the KV cache. :func:`cmd_measure` returns one flat dict, printed as the last
line of stdout in JSON: ``device``, ``threads``, ``matmul_n``, ``matmul_float32_flops``,
``matmul_bfloat16_flops``, ``bfloat16_speedup``, ``memory_bandwidth``, ``ridge_intensity`` (float32
peak over bandwidth, FLOP/byte), ``params``, ``flops_per_token``, ``train_ms_per_step``,
``train_tokens_per_s``, ``train_achieved_flops``, ``peak_flops``, ``peak_source`` (``"measured"`` or
``"--peak"``), ``mfu``, ``decode_tokens_per_s_cache``, ``decode_tokens_per_s_no_cache``,
``kv_cache_speedup``, ``dtype``, ``compiled``, ``wall_s``; on CUDA also ``train_peak_memory_bytes``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

__all__ = ["add_measure_arguments", "check_measure_args", "cmd_measure", "MEASURE_DTYPES"]

MEASURE_DTYPES = ("float32", "bfloat16")
_SIZE_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "batch", "vocab_size", "steps", "new_tokens")


def add_measure_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``measure`` flags to ``parser`` (a sub-command's parser); returns it."""
    p = parser
    p.add_argument("--n-layer", type=int, default=4, help="layers of the GPT trained and decoded (default 4)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads per layer (default 4)")
    p.add_argument("--n-embd", type=int, default=256, help="width, a multiple of --n-head (default 256)")
    p.add_argument("--block-size", type=int, default=128, help="tokens per training sequence (default 128)")
    p.add_argument("--batch", type=int, default=8, help="sequences per training step (default 8)")
    p.add_argument("--vocab-size", type=int, default=512, help="vocabulary size (default 512; GPT-2: 50304)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps, the median reported (default 5)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per speed measurement (default 32)")
    p.add_argument("--dtype", default="float32",
                   help="training precision: float32, or bfloat16 (autocast over float32 weights)")
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--peak", type=float, default=None,
                   help="FLOP/s to compute MFU against (e.g. 989e12, an H100 SXM's dense BF16 peak); "
                        "default: the measured matrix-product peak")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _usage_error():
    from aigc_book.errors import UsageError

    return UsageError


def check_measure_args(args) -> torch.device:
    """Refuse every bad flag with one line (:class:`aigc_book.cli.UsageError`); return the device."""
    from aigc_book.cli import available_bytes, training_bytes
    from aigc_book.efficiency.hardware import bf16_supported
    from aigc_book.runtime import get_device

    UsageError = _usage_error()
    for name in _SIZE_FLAGS:
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.n_embd % args.n_head:
        raise UsageError(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head} (each head gets "
                         f"n_embd / n_head dimensions)")
    if args.new_tokens >= args.block_size:
        raise UsageError(f"--new-tokens must be < --block-size ({args.block_size}): the prompt takes one position "
                         f"and the KV cache holds one context, got {args.new_tokens}")
    if args.dtype not in MEASURE_DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(MEASURE_DTYPES)}, got {args.dtype!r}")
    if args.peak is not None and not (math.isfinite(args.peak) and args.peak > 0):
        raise UsageError(f"--peak must be a finite number of FLOP/s > 0 (e.g. 989e12), got {args.peak}")
    try:
        device = get_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device: {err}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: measure times cpu and cuda devices only")
    if args.dtype == "bfloat16" and not bf16_supported(device):
        raise UsageError(f"--dtype bfloat16: {device} has no bfloat16 support (CUDA needs an Ampere or later GPU); "
                         "use --dtype float32")
    n_params = _parameter_count(args)
    need = training_bytes(n_params, args.n_layer, args.n_embd, args.n_head, args.block_size, args.batch,
                          args.vocab_size)
    if args.dtype == "bfloat16":  # autocast keeps activations in 16 bits: half of training_bytes' float32 ones
        tokens = args.batch * args.block_size
        need -= args.n_layer * tokens * (34 * args.n_embd + 5 * args.n_head * args.block_size)
    free = available_bytes(device)
    if free is not None and need > free:
        raise UsageError(f"--n-layer {args.n_layer} --n-embd {args.n_embd} --batch {args.batch} --block-size "
                         f"{args.block_size}: training needs about {need / 2**30:.1f} GiB ({n_params:,} parameters), "
                         f"but {device} has {free / 2**30:.1f} GiB free")
    return device


def _config(args):
    from aigc_book.models.transformer import TransformerConfig

    return TransformerConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                             n_head=args.n_head, n_embd=args.n_embd)


def _parameter_count(args) -> int:
    from aigc_book.models.gpt import GPT

    with torch.device("meta"):  # count without allocating
        return GPT(_config(args)).num_parameters()


def _decode_speeds(args, device: torch.device) -> tuple[float, float]:
    """Greedy tokens/s at batch 1 with and without the KV cache (bf16 weights on CUDA with --dtype bfloat16)."""
    from aigc_book.efficiency.hardware import decode_speed
    from aigc_book.models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(_config(args)).to(device).eval()
    if args.dtype == "bfloat16" and device.type == "cuda":
        model = model.to(torch.bfloat16)
    try:
        cached = decode_speed(model, device, new_tokens=args.new_tokens, use_cache=True)
        uncached = decode_speed(model, device, new_tokens=args.new_tokens, use_cache=False)
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return cached, uncached


def cmd_measure(args) -> dict:
    """Measure this machine and a GPT of the given size on it; return a flat JSON-able dict (module docstring)."""
    from tqdm.auto import tqdm

    from aigc_book.efficiency.hardware import matmul_peak, memory_bandwidth, training_mfu

    device = check_measure_args(args)
    start = time.perf_counter()
    stages = ["matmul float32", "matmul bfloat16", "bandwidth", "training", "decoding"]
    bar = tqdm(stages, file=sys.stderr, disable=args.no_progress, desc="measure", leave=False, dynamic_ncols=True)
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
        # Without --peak, training_mfu measures the peak again before and after training; the best of
        # its and ours is kept, since a busy machine only ever makes a measurement lower.
        mfu = training_mfu(_config(args), args.batch, device, steps=args.steps, dtype=args.dtype,
                           compile=args.compile, peak=args.peak)
        peak = mfu["peak_flops"]
        if args.peak is None:
            peak = out[f"matmul_{args.dtype}_flops"] = max(peak, out[f"matmul_{args.dtype}_flops"])
        out.update({
            "params": mfu["params"],
            "flops_per_token": mfu["flops_per_token"],
            "train_ms_per_step": mfu["ms_per_step"],
            "train_tokens_per_s": mfu["tokens_per_s"],
            "train_achieved_flops": mfu["achieved_flops"],
            "peak_flops": peak,
            "peak_source": "--peak" if args.peak is not None else "measured",
            "mfu": mfu["achieved_flops"] / peak,
        })
        out["bfloat16_speedup"] = out["matmul_bfloat16_flops"] / out["matmul_float32_flops"]
        out["ridge_intensity"] = out["matmul_float32_flops"] / out["memory_bandwidth"]
        if mfu["peak_memory_bytes"] is not None:
            out["train_peak_memory_bytes"] = mfu["peak_memory_bytes"]
        bar.update(1)
        bar.set_postfix_str(stages[4])
        cached, uncached = _decode_speeds(args, device)
        out.update({"decode_tokens_per_s_cache": cached, "decode_tokens_per_s_no_cache": uncached,
                    "kv_cache_speedup": cached / uncached})
        bar.update(1)
    finally:
        bar.close()
    out.update({"dtype": args.dtype, "compiled": args.compile, "wall_s": time.perf_counter() - start,
                "threads": torch.get_num_threads()})  # at the end: the count follows the CPU load
    return out
