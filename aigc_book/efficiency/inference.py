"""Making decoding cheaper: batching, the KV cache, int8 weights and bfloat16, each measured.

Introduced in chapter 6, section "Making inference faster". Decoding one token reads every weight
once and does only ``2 N`` FLOPs per token with them, so at small batch it is memory-bound (the
roofline of the same chapter): a batch of ``B`` rows reads the weights once for ``B`` tokens, and
throughput grows almost linearly with ``B`` until the arithmetic becomes the limit.

* :func:`throughput_vs_batch`: tokens/s and ms per decoding step with the KV cache, per batch size.
* :func:`compare_kv_cache`: tokens/s with and without the cache (Pope et al. 2022, arXiv:2211.05102,
  §2, discuss its memory cost) and the cache's bytes, ``2 * n_layer * B * n_head * max_len *
  head_dim * bytes`` (keys and values).
* :func:`quantize_int8` / :func:`compare_int8`: dynamic int8 quantisation of the Linear layers
  (weights stored as int8 with a scale, activations quantised on the fly per batch; Jacob et al.
  2018, arXiv:1712.05877, for the affine scheme): size, speed and held-out loss before and after.
* :func:`compare_dtypes`: float32 against bfloat16 (autocast, and bf16 weights).

int8 backend. PyTorch's own ``torch.ao.quantization.quantize_dynamic`` (fbgemm kernels, CPU only) is
the default. It emits a DeprecationWarning ("torch.ao.quantization is deprecated ... please migrate to
torchao"): :func:`compare_int8` records it in its result. We tried torchao 0.18 beside torch 2.13
(CPU): it installs and its ``Int8DynamicActivationInt8WeightConfig`` runs, but on this CPU it was
slower than float32 for one-token decoding (2.6 ms vs 0.4 ms per step of a 4x128 GPT) and 2 to 5
times slower than fbgemm on batches, and once installed ``transformers`` imports it and prints
warnings about its missing CUDA extensions; so it is only an option here (``backend="torchao"``).

Tied embeddings. A GPT's output layer shares its matrix with the token embedding. Quantising the
head would give it its own int8 copy and silently untie it (both would then be stored); so
:func:`quantize_int8` quantises every ``nn.Linear`` *except* those whose weight is shared with
another module: the head stays float32 and tied, like the embedding it is.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from aigc_book.checks import check_int
from aigc_book.efficiency.timing import time_call
from aigc_book.training.evaluation import lm_loss

__all__ = [
    "throughput_vs_batch",
    "compare_kv_cache",
    "kv_cache_bytes",
    "quantize_int8",
    "model_bytes",
    "compare_int8",
    "compare_dtypes",
]

BACKENDS = ("torch", "torchao")


# ----------------------------------------------------------------------------- checks and helpers


def _check_fits(model, prompt_len: int, new_tokens: int) -> None:
    check_int("prompt_len", prompt_len, 1)
    check_int("new_tokens", new_tokens, 1)
    if prompt_len + new_tokens > model.config.block_size:
        raise ValueError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the context "
                         f"(block_size={model.config.block_size}): use fewer tokens")


def _prompt(model, batch_size: int, prompt_len: int, device: torch.device) -> torch.Tensor:
    """``(B, T)`` random token ids, the same for every call (seeded CPU generator)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=g).to(device)


def _timer(device: torch.device, repeats: int, min_seconds: float):
    return lambda fn: time_call(fn, repeats=repeats, min_seconds=min_seconds, device=device)


def _greedy(model, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> torch.Tensor:
    """``(B, new_tokens)`` greedy tokens: with the cache one token per pass, without it the whole sequence."""
    tokens = []
    if use_cache:
        cache = model.new_kv_cache(prompt.size(0), prompt.size(1) + new_tokens)
        logits = model(prompt, kv_cache=cache).logits[:, -1]  # (B, V)
    else:
        seq = prompt
        logits = model(seq).logits[:, -1]
    for i in range(new_tokens):
        token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        tokens.append(token)
        if i == new_tokens - 1:
            break
        if use_cache:
            logits = model(token, kv_cache=cache).logits[:, -1]
        else:
            seq = torch.cat([seq, token], dim=1)  # (B, T + i + 1)
            logits = model(seq).logits[:, -1]
    return torch.cat(tokens, dim=1)


def _decode_steps(model, cache, start: int, token: torch.Tensor, steps: int) -> None:
    """``steps`` one-token passes from a cache holding ``start`` positions (cropped back first)."""
    cache.crop(start)
    for _ in range(steps):
        token = model(token, kv_cache=cache).logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)


# ----------------------------------------------------------------------------- batching and the cache


def throughput_vs_batch(model, batch_sizes: Sequence[int], new_tokens: int, device, prompt_len: int = 16,
                        repeats: int = 3, min_seconds: float = 0.05) -> list[dict]:
    """Greedy decoding with the KV cache at each batch size: one dict per size.

    Keys: ``batch_size``, ``prefill_ms`` (the prompt's one pass), ``ms_per_step`` (one new token for
    every row), ``tokens_per_s`` (``batch_size * 1000 / ms_per_step``). Each timing is the best of
    ``repeats`` (:func:`~aigc_book.efficiency.timing.time_call`). The model is moved to ``device``
    (in place) and run in eval mode, which is restored.
    """
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or not batch_sizes:
        raise TypeError(f"batch_sizes must be a non-empty sequence of ints, got {batch_sizes!r}")
    for b in batch_sizes:
        check_int("every batch size", b, 1)
    _check_fits(model, prompt_len, new_tokens)
    device = torch.device(device)
    model, timed = model.to(device), _timer(device, repeats, min_seconds)
    with _eval(model), torch.inference_mode():
        return [_batch_timing(model, b, prompt_len, new_tokens, device, timed) for b in batch_sizes]


def _batch_timing(model, batch_size: int, prompt_len: int, new_tokens: int, device, timed) -> dict:
    """One row of :func:`throughput_vs_batch`."""
    prompt = _prompt(model, batch_size, prompt_len, device)
    cache = model.new_kv_cache(batch_size, prompt_len + new_tokens)
    prefill = timed(lambda: (cache.reset(), model(prompt, kv_cache=cache)))
    first = prompt[:, -1:]  # any token will do: the cost does not depend on which
    ms = 1000 * timed(lambda: _decode_steps(model, cache, prompt_len, first, new_tokens)) / new_tokens
    return {"batch_size": batch_size, "prefill_ms": 1000 * prefill, "ms_per_step": ms,
            "tokens_per_s": 1000 * batch_size / ms}


def kv_cache_bytes(cache) -> int:
    """Bytes held by a :class:`~aigc_book.layers.kv_cache.KVCache` (its key and value tensors)."""
    return cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()


def compare_kv_cache(model, new_tokens: int, device, batch_size: int = 1, prompt_len: int = 16,
                     repeats: int = 3, min_seconds: float = 0.05) -> dict:
    """Greedy generation of ``new_tokens`` tokens with and without the KV cache.

    Returns ``with_cache_tokens_per_s``, ``without_cache_tokens_per_s``, ``speedup``, ``same_tokens``
    (the cache must not change the tokens), ``cache_bytes`` (the :class:`KVCache` for ``prompt_len +
    new_tokens`` positions) and ``cache_bytes_per_token`` (``2 * n_layer * n_embd * bytes`` per row).
    Without the cache every step runs the whole sequence again: quadratic work instead of linear.
    """
    check_int("batch_size", batch_size, 1)
    _check_fits(model, prompt_len, new_tokens)
    device = torch.device(device)
    model, timed = model.to(device), _timer(device, repeats, min_seconds)
    prompt = _prompt(model, batch_size, prompt_len, device)
    with _eval(model), torch.inference_mode():
        same = torch.equal(_greedy(model, prompt, new_tokens, True), _greedy(model, prompt, new_tokens, False))
        with_cache = timed(lambda: _greedy(model, prompt, new_tokens, True))
        without = timed(lambda: _greedy(model, prompt, new_tokens, False))
        cache = model.new_kv_cache(batch_size, prompt_len + new_tokens)
    tokens = batch_size * new_tokens
    return {
        "with_cache_tokens_per_s": tokens / with_cache,
        "without_cache_tokens_per_s": tokens / without,
        "speedup": without / with_cache,
        "same_tokens": same,
        "cache_bytes": kv_cache_bytes(cache),
        "cache_bytes_per_token": kv_cache_bytes(cache) // (batch_size * (prompt_len + new_tokens)),
    }


@contextlib.contextmanager
def _eval(model: nn.Module):
    """The model in eval mode (no dropout) inside the block, its mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- int8


def _untied_linear_names(model: nn.Module) -> set[str]:
    """Names of the ``nn.Linear`` modules whose weight no other module shares (a tied head is left out)."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and counts[id(m.weight)] == 1}


def quantize_int8(model: nn.Module, backend: str = "torch") -> nn.Module:
    """A copy of ``model`` whose untied ``nn.Linear`` layers compute in int8 (dynamic quantisation).

    ``backend="torch"``: ``torch.ao.quantization.quantize_dynamic`` (qint8 weights with one scale per
    matrix, activations quantised per batch; fbgemm kernels, CPU only; deprecated in favour of
    torchao, see the module docstring). ``backend="torchao"``: torchao's
    ``Int8DynamicActivationInt8WeightConfig`` (per-channel weights, per-token activations; CPU or CUDA),
    if installed. A Linear whose weight is shared (a tied output head) stays float32 and tied.
    The copy is in eval mode; ``model`` is unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    names = _untied_linear_names(model)
    if not names:
        raise ValueError("the model has no untied nn.Linear layer to quantise")
    device = next(model.parameters()).device
    quantized = copy.deepcopy(model).eval()  # deepcopy keeps a tied pair tied
    if backend == "torch":
        if device.type != "cpu":
            raise ValueError(f"torch's dynamic int8 kernels run on the CPU only, the model is on {device}: "
                             f"quantise model.cpu(), or use backend='torchao'")
        return torch.ao.quantization.quantize_dynamic(quantized, names, dtype=torch.qint8, inplace=True)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as err:
        raise RuntimeError("backend='torchao' needs torchao (pip install torchao)") from err
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in names)
    return quantized


def model_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` in bytes (a tied tensor is stored once)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def compare_int8(model, val_tokens: torch.Tensor, device, *, backend: str = "torch", batch_size: int = 8,
                 max_tokens: int | None = 4096, repeats: int = 3, min_seconds: float = 0.05) -> dict:
    """float32 against int8 (:func:`quantize_int8`): size, speed and held-out loss.

    ``val_tokens``: held-out text as :func:`~aigc_book.training.evaluation.lm_loss` reads it, a 1-D
    stream or ``(N, L)`` whole sequences. Returns ``backend``, ``device`` (where both ran: the CPU for
    ``backend="torch"``, whatever ``device`` is), ``bytes_fp32``/``bytes_int8`` (:func:`model_bytes`),
    ``forward_ms_*`` (one forward pass over ``batch_size`` windows of ``block_size`` tokens, or the
    first ``batch_size`` sequences), ``decode_ms_*`` (one token with the KV cache after half a window,
    batch 1), ``loss_*`` and ``perplexity_*`` (``lm_loss``; a stream only up to ``max_tokens``), and
    ``warnings``: the first line of each distinct warning quantisation raised. ``model`` is not
    changed (both sides are copies).
    """
    check_int("batch_size", batch_size, 1)
    windows = _timing_windows(val_tokens, batch_size, model.config.block_size)  # (B, T)
    run_on = torch.device("cpu") if backend == "torch" else torch.device(device)
    fp32 = copy.deepcopy(model).to(run_on).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = quantize_int8(fp32, backend)
    notes = list(dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught))
    windows, half = windows.to(run_on), windows.size(1) // 2
    timed = _timer(run_on, repeats, min_seconds)
    out = {"backend": backend, "device": str(run_on)}
    for name, m in (("fp32", fp32), ("int8", int8)):
        with torch.inference_mode():
            out[f"forward_ms_{name}"] = 1000 * timed(lambda m=m: m(windows))
            cache = m.new_kv_cache(1, windows.size(1))
            m(windows[:1, :half], kv_cache=cache)
            token = windows[:1, half:half + 1]
            out[f"decode_ms_{name}"] = 1000 * timed(lambda m=m, c=cache, t=token: _decode_steps(m, c, half, t, 1))
        loss = lm_loss(m, val_tokens, max_tokens=max_tokens if val_tokens.dim() == 1 else None)
        out[f"loss_{name}"], out[f"perplexity_{name}"] = loss, math.exp(loss)
        out[f"bytes_{name}"] = model_bytes(m)
    out["warnings"] = notes
    return out


def _timing_windows(val_tokens, batch_size: int, block_size: int) -> torch.Tensor:
    """``(batch_size, T)`` token windows to time a forward pass on: cut from a stream, or the first sequences."""
    if not isinstance(val_tokens, torch.Tensor) or val_tokens.dim() not in (1, 2):
        raise ValueError("val_tokens must be a tensor of token ids: a 1-D held-out stream or (N, L) sequences")
    if val_tokens.dim() == 1:
        if len(val_tokens) < batch_size * block_size + 1:
            raise ValueError(f"val_tokens holds {len(val_tokens)} tokens; the timing batch needs "
                             f"batch_size * block_size + 1 = {batch_size * block_size + 1}")
        return val_tokens[: batch_size * block_size].view(batch_size, block_size)  # (B, T)
    if val_tokens.size(0) < batch_size or val_tokens.size(1) < 3:
        raise ValueError(f"val_tokens has shape {tuple(val_tokens.shape)}; the timing batch needs "
                         f"batch_size={batch_size} sequences of at least 3 tokens")
    return val_tokens[:batch_size, :block_size]  # (B, T)


# ----------------------------------------------------------------------------- bfloat16


def compare_dtypes(model, device, *, batch_size: int = 8, seq_len: int | None = None, repeats: int = 3,
                   min_seconds: float = 0.05) -> list[dict]:
    """float32 against bfloat16 for one forward pass and one decoding step: one dict per variant.

    Variants: ``float32``; ``bf16 autocast`` (``torch.autocast``: matrix products in bf16, weights kept
    in float32 and cast on the fly); ``bf16 weights`` (a bf16 copy of the model: half the bytes to
    read). Keys: ``variant``, ``forward_ms`` (``batch_size`` x ``seq_len`` tokens, default
    ``block_size``), ``decode_ms`` (one token with the KV cache after ``seq_len // 2``, batch 1) and
    ``max_abs_logit_diff`` from float32. On a CUDA GPU bf16 runs on tensor cores. On a CPU it depends
    on the instructions: without AVX512-BF16 or AMX (most laptops) bf16 matrix products are emulated
    and usually *slower* than float32; with them (the book's AMD EPYC test machine has AVX512-BF16)
    a batched forward pass ran about twice as fast, while a one-token decoding step, bound by
    overheads, did not gain. At the book's sizes one decoding step is bound by per-operation
    overheads on a GPU too, so bf16 helps the batched forward pass far more than decoding.
    The model is moved to ``device`` (in place) and restored to its mode.
    """
    check_int("batch_size", batch_size, 1)
    T = model.config.block_size if seq_len is None else seq_len
    check_int("seq_len", T, 2)
    if T > model.config.block_size:
        raise ValueError(f"seq_len={T} exceeds the context (block_size={model.config.block_size})")
    device = torch.device(device)
    model, timed = model.to(device), _timer(device, repeats, min_seconds)
    x = _prompt(model, batch_size, T, device)
    half = copy.deepcopy(model).to(torch.bfloat16)
    variants = (("float32", model, False), ("bf16 autocast", model, True), ("bf16 weights", half, False))
    rows, reference = [], None
    with _eval(model), _eval(half), torch.inference_mode():
        for name, m, autocast in variants:
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with ctx:
                logits = m(x).logits.float()
                forward = timed(lambda m=m: m(x))
                cache = m.new_kv_cache(1, T)
                m(x[:1, : T // 2], kv_cache=cache)
                decode = timed(lambda m=m, c=cache: _decode_steps(m, c, T // 2, x[:1, T // 2:T // 2 + 1], 1))
            reference = logits if reference is None else reference
            rows.append({"variant": name, "forward_ms": 1000 * forward, "decode_ms": 1000 * decode,
                         "max_abs_logit_diff": (logits - reference).abs().max().item()})
    return rows

