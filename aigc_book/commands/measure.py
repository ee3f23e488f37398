"""``python -m aigc_book measure``: this machine's peak FLOP/s, memory bandwidth, a GPT's MFU and decoding speed.

Introduced in chapter 6, section "Outside the notebook: `measure`". Usage::

    python -m aigc_book measure [--n-layer 4 --n-head 4 --n-embd 256 --block-size 128 --batch-size 8
                                 --vocab-size 512 --steps 5 --dtype float32|bfloat16 --compile
                                 --max-new-tokens 32 --peak FLOP/S --device D --no-progress]

The defaults (a 3.4M-parameter GPT) finish in about 6 s on a quiet 2-core CPU. On an H100, the size
the chapter quotes (1.3B parameters: the depth, width and context of Brown et al. 2020's GPT-3 XL,
arXiv:2005.14165, Table 2.1, with 16 heads of 128 dimensions) is::

    python -m aigc_book measure --device cuda --n-layer 24 --n-embd 2048 --n-head 16 --block-size 1024 \\
        --batch-size 8 --vocab-size 50304 --dtype bfloat16 --peak 989e12

``--peak`` is the FLOP/s that MFU divides by (989e12: an H100 SXM's dense BF16 datasheet peak); without
it the measured matrix-product peak is used. The stages, and the keys of the JSON object printed last,
are those of :func:`aigc_book.efficiency.measure.measure_machine`; a progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import math

import torch

from aigc_book.commands.options import add_flag, device_of
from aigc_book.efficiency.measure import MEASURE_DTYPES
from aigc_book.errors import UsageError

__all__ = ["SHARED", "add_arguments", "check_args", "interrupted", "run"]

SHARED = ("device", "progress")  # timings need no seed, and measure writes nothing
_SIZE_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size", "steps", "max_new_tokens")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-layer", type=int, default=4, help="layers of the GPT trained and decoded (default 4)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads per layer (default 4)")
    p.add_argument("--n-embd", type=int, default=256, help="width, a multiple of --n-head (default 256)")
    p.add_argument("--block-size", type=int, default=128, help="tokens per training sequence (default 128)")
    add_flag(p, "--batch-size", "--batch", type=int, default=8, help="sequences per training step (default 8)")
    p.add_argument("--vocab-size", type=int, default=512, help="vocabulary size (default 512; GPT-2: 50304)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps, the median reported (default 5)")
    add_flag(p, "--max-new-tokens", "--new-tokens", type=int, default=32,
             help="tokens decoded per speed measurement (default 32)")
    p.add_argument("--dtype", default="float32",
                   help="training precision: float32, or bfloat16 (autocast over float32 weights)")
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--peak", type=float, default=None,
                   help="FLOP/s to compute MFU against (e.g. 989e12, an H100 SXM's dense BF16 peak); "
                        "default: the measured matrix-product peak")


def _config(args):
    from aigc_book.models.transformer import TransformerConfig

    return TransformerConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                             n_head=args.n_head, n_embd=args.n_embd)


def check_args(args) -> torch.device:
    """Refuse every bad flag with one line (:class:`~aigc_book.errors.UsageError`); return the device."""
    from aigc_book.efficiency.hardware import bf16_supported
    from aigc_book.efficiency.memory import available_bytes, training_bytes
    from aigc_book.models.gpt import GPT

    for name in _SIZE_FLAGS:
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.n_embd % args.n_head:
        raise UsageError(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head} (each head gets "
                         f"n_embd / n_head dimensions)")
    if args.max_new_tokens >= args.block_size:
        raise UsageError(f"--max-new-tokens must be < --block-size ({args.block_size}): the prompt takes one "
                         f"position and the KV cache holds one context, got {args.max_new_tokens}")
    if args.dtype not in MEASURE_DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(MEASURE_DTYPES)}, got {args.dtype!r}")
    if args.peak is not None and not (math.isfinite(args.peak) and args.peak > 0):
        raise UsageError(f"--peak must be a finite number of FLOP/s > 0 (e.g. 989e12), got {args.peak}")
    device = device_of(args)
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: measure times cpu and cuda devices only")
    if args.dtype == "bfloat16" and not bf16_supported(device):
        raise UsageError(f"--dtype bfloat16: {device} has no bfloat16 support (CUDA needs an Ampere or later GPU); "
                         "use --dtype float32")
    with torch.device("meta"):  # count without allocating
        n_params = GPT(_config(args)).num_parameters()
    batch, block = args.batch_size, args.block_size
    need = training_bytes(n_params, args.n_layer, args.n_embd, args.n_head, block, batch, args.vocab_size)
    if args.dtype == "bfloat16":  # autocast keeps activations in 16 bits: half of training_bytes' float32 ones
        need -= args.n_layer * batch * block * (34 * args.n_embd + 5 * args.n_head * block)
    free = available_bytes(device)
    if free is not None and need > free:
        raise UsageError(f"--n-layer {args.n_layer} --n-embd {args.n_embd} --batch-size {batch} --block-size "
                         f"{block}: training needs about {need / 2**30:.1f} GiB ({n_params:,} parameters), "
                         f"but {device} has {free / 2**30:.1f} GiB free")
    return device


def run(args) -> dict:
    """Check every flag, then measure (:func:`aigc_book.efficiency.measure.measure_machine`)."""
    from aigc_book.efficiency.measure import measure_machine

    device = check_args(args)
    return measure_machine(_config(args), args.batch_size, device, steps=args.steps, dtype=args.dtype,
                           compile=args.compile, peak=args.peak, max_new_tokens=args.max_new_tokens,
                           progress=args.progress)


def interrupted(args) -> str:
    return "aigc-book: interrupted; measure writes nothing, run it again"
