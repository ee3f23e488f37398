"""Counting FLOPs: PyTorch's counter (with the CPU attention kernel it misses) and the formulas it checks.

Introduced in chapter 6, section "Counting FLOPs" (chapter 2, section "Counting FLOPs" derives the
same count for one small GPT). Two independent counts of the floating-point operations per token:

* **Measured**: :func:`count_flops` runs code under :class:`torch.utils.flop_counter.FlopCounterMode`,
  which counts ``2 m n p`` FLOPs for every ``(m, n) @ (n, p)`` product that actually runs and
  nothing else (no softmax, GELU, LayerNorm, bias or residual addition). With PyTorch 2.13 on a
  CPU it has no formula for the fused attention kernel ``aten._scaled_dot_product_flash_attention_for_cpu``
  and its backward, so attention silently counts zero; :func:`register_cpu_attention_flops` adds
  the formulas PyTorch uses for the CUDA kernels.
* **Formula**: :func:`aigc_book.models.accounting.flops_per_token` (it lives beside the model) is
  Kaplan et al. (2020, arXiv:2001.08361, Table 1): ``2 N + 2 n_layer n_ctx d_model`` per token
  forward, ``3x`` for training (hence ``6 N``), N the non-embedding parameters. Options add the
  output layer (``2 d_model n_vocab``, Kaplan's "De-embed") and count attention over the full
  ``T x T`` table (``4 n_layer T d_model``) as the counter and the written-out attention do; the
  training attention term is then ``12 n_layer T d_model``, PaLM's ``12 L H Q T`` (Chowdhery et al. 2022,
  arXiv:2204.02311, App. B).

:func:`flops_differences` puts the two side by side for a model and names every gap as an exact
integer per token; :func:`six_n_ratio` shows how far the ``6 N`` rule falls short as the context
grows, from a config alone (GPT-3's shape, :func:`gpt3_175b_config`, cannot be built here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from aigc_book.checks import check_int
from aigc_book.models.accounting import _check_config, flops_per_token, non_embedding_parameters
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig

__all__ = [
    "register_cpu_attention_flops",
    "count_flops",
    "count_flops_by_operator",
    "six_n_ratio",
    "gpt3_175b_config",
    "causal_tile_fraction",
    "elementwise_flops_per_token",
    "flops_differences",
]

CPU_ATTENTION = "_scaled_dot_product_flash_attention_for_cpu"


# ---------------------------------------------------------------------------------------------
# The measured count
# ---------------------------------------------------------------------------------------------


def _cpu_attention_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)  # QK^T and AV over the full table, mask or not


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)  # recomputes QK^T, then 4 products


def register_cpu_attention_flops() -> None:
    """Give :class:`FlopCounterMode` formulas for the CPU fused attention kernel and its backward.

    The formulas are PyTorch's own for the CUDA kernels (``sdpa_flop_count``: the two products
    ``QK^T`` and ``AV``; ``sdpa_backward_flop_count``: five products, the scores recomputed).
    Idempotent: an operator that already has a formula (registered earlier, by chapter 2 or by a
    later PyTorch) is left alone. A counter created before this call does not see the formulas.
    """
    formulas = {CPU_ATTENTION: _cpu_attention_forward, CPU_ATTENTION + "_backward": _cpu_attention_backward}
    for name, formula in formulas.items():
        try:
            op = getattr(torch.ops.aten, name)
        except AttributeError:  # an older or stripped-down PyTorch without this kernel
            continue
        if op not in flop_registry:
            register_flop_formula(op)(formula)


def _check_callable(fn) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be a function of no arguments, e.g. lambda: model(idx); got {type(fn).__name__}")


def _counter_run(fn: Callable[[], object]) -> FlopCounterMode:
    _check_callable(fn)
    register_cpu_attention_flops()  # before the counter is built: it copies the registry
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of every matrix product (and fused attention) that ``fn()`` runs, as PyTorch counts them."""
    return _counter_run(fn).get_total_flops()


def count_flops_by_operator(fn: Callable[[], object]) -> dict[str, int]:
    """The same count split by aten operator, e.g. ``{'addmm': ..., 'mm': ..., 'bmm': ...}``.

    Names drop the ``aten.`` prefix; an operator the counter has no formula for never appears.
    The values add up to :func:`count_flops` of the same call.
    """
    counts: dict[str, int] = {}
    for op, flops in _counter_run(fn).get_flop_counts().get("Global", {}).items():
        name = str(op).rsplit(".", 1)[-1]  # 'aten.addmm' -> 'addmm'
        counts[name] = counts.get(name, 0) + int(flops)
    return counts


# ---------------------------------------------------------------------------------------------
# The formula (:mod:`aigc_book.models.accounting` holds Kaplan's count itself)
# ---------------------------------------------------------------------------------------------


def six_n_ratio(
    config: TransformerConfig, seq_lens: Iterable[int], *, full_attention: bool = True, n_params: int | None = None
) -> list[float]:
    """Training FLOPs per token, attention and output layer included, divided by ``6 N``, per context length.

    ``1.0`` would mean the ``6 N`` rule (Kaplan et al. 2020, §2.1) is exact; the excess is
    ``(12 L T C + 6 C V) / 6 N`` with full attention (``6 L T C`` with the causal half), which
    grows linearly with the context ``T``. N is the non-embedding count unless ``n_params`` is given
    (e.g. ``175e9`` rounded for GPT-3, which includes its embeddings).
    """
    n = non_embedding_parameters(config) if n_params is None else check_int("n_params", n_params)
    lens = list(seq_lens)
    if not lens:
        raise ValueError("seq_lens is empty: give at least one context length")
    return [
        flops_per_token(config, t, training=True, output_layer=True, full_attention=full_attention, n_params=n)
        / (6 * n)
        for t in lens
    ]


def gpt3_175b_config(block_size: int = 2048) -> TransformerConfig:
    """GPT-3 175B's shape (Brown et al. 2020, arXiv:2005.14165, Table 2.1): 96 layers of width 12,288,
    96 heads of 128, vocabulary 50,257, context 2,048. A config only: the model is never built."""
    return TransformerConfig(vocab_size=50257, block_size=block_size, n_layer=96, n_head=96, n_embd=12288)


def causal_tile_fraction(seq_len: int, block_q: int = 128, block_k: int = 128) -> float:
    """Share of the full ``T x T`` score table a tiled causal attention kernel computes.

    FlashAttention-style kernels (Dao 2023, arXiv:2307.08691, §3.1.1) split queries into tiles of
    ``block_q`` rows and keys into tiles of ``block_k`` columns, skip every tile that lies wholly
    above the diagonal and compute the others in full, masking inside the diagonal tiles. So they
    compute about half the table plus the diagonal tiles: ``1/2 + block_q / (2 T)`` when the tiles
    are square and divide ``T``. The tile sizes vary by kernel and head size (128 x 128 and 64 x 64
    are common on GPUs; PyTorch's CPU kernel uses query tiles of 32 to 256 rows).
    """
    t = check_int("seq_len", seq_len)
    bq, bk = check_int("block_q", block_q), check_int("block_k", block_k)
    computed = 0
    for start in range(0, t, bq):
        end = min(start + bq, t)
        keys = min(t, math.ceil(end / bk) * bk)  # every key tile that reaches the tile's last query
        computed += (end - start) * keys
    return computed / (t * t)


# Per-element operation counts, a convention (a transcendental function counts as one FLOP).
SOFTMAX_PER_SCORE = 6  # scale, running max, subtract, exp, sum, divide
GELU_TANH_PER_ELEMENT = 9  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
LAYERNORM_PER_ELEMENT = 5  # mean, subtract, square, variance sum, normalise (+1 gain, +1 bias)


def elementwise_flops_per_token(config: TransformerConfig, seq_len: int | None = None) -> dict[str, int]:
    """A rough forward count of the element-wise work that neither the counter nor Kaplan counts.

    Softmax over the full ``T x T`` table (``SOFTMAX_PER_SCORE`` per score), the tanh GELU on the
    ``4 C`` hidden units, every LayerNorm (``2 n_layer + 1`` of them) and the residual additions. The
    per-element costs are conventions stated in this module, so treat the result as an order of
    magnitude, not a measurement.
    """
    _check_config(config)
    t = config.block_size if seq_len is None else check_int("seq_len", seq_len)
    c, n_layer = config.n_embd, config.n_layer
    norm = LAYERNORM_PER_ELEMENT + 1 + int(config.bias)
    return {
        "softmax": SOFTMAX_PER_SCORE * n_layer * config.n_head * t,
        "gelu": GELU_TANH_PER_ELEMENT * n_layer * 4 * c,
        "layernorm": norm * (2 * n_layer + 1) * c,
        "residual": 2 * n_layer * c,
    }


# ---------------------------------------------------------------------------------------------
# The two side by side
# ---------------------------------------------------------------------------------------------


@contextmanager
def _attention_path(model: nn.Module, fused: bool) -> Iterator[None]:
    """Switch every attention module to the fused kernel or the written-out formula, then restore."""
    modules = [m for m in model.modules() if hasattr(m, "fused") and hasattr(m, "n_head")]
    before = [m.fused for m in modules]
    for m in modules:
        m.fused = fused
    try:
        yield
    finally:
        for m, was in zip(modules, before):
            m.fused = was


def _training_step(model: nn.Module, idx: torch.Tensor, params: list[torch.Tensor]) -> Callable[[], object]:
    # autograd.grad, not backward(): the same products, and the model's .grad stays untouched
    return lambda: torch.autograd.grad(model(idx, idx).loss, params)


def flops_differences(model: nn.Module, seq_len: int | None = None, batch: int = 1) -> dict[str, int]:
    """Where the formula and PyTorch's counter differ for ``model``, each term in FLOPs per token.

    Runs the model (in eval mode, restored afterwards; ``.grad`` untouched) on ``batch`` random
    sequences of ``seq_len`` tokens (default ``block_size``) under :func:`count_flops`, with the
    written-out attention and with the fused kernel. Every value is an exact integer per token:

    * ``counted_forward``, ``counted_training``: the counter, written-out attention;
      ``counted_forward_fused``, ``counted_training_fused``: the counter, fused kernel.
    * ``formula_forward``, ``formula_training``: :func:`flops_per_token` with the output layer and
      full attention.
    * ``weight_matrices`` (``2 x`` the blocks' Linear weights), ``attention_full`` (``4 L T C``),
      ``output_layer`` (``2 C V``): the three kinds of product the counter sees.
    * ``biases_and_norms``: ``2 x`` the biases and LayerNorm parameters, counted by N as if they were
      weights; the counter counts only products (a bias added inside ``addmm`` is free).
    * ``embedding_lookups``: 0 in both counts: a look-up multiplies nothing, and the counter has no
      formula for ``aten.embedding`` (Kaplan's table lists ``4 C`` for it, left out of the total).
    * ``first_layer_input_grad_skipped``: ``3 x counted_forward - counted_training``; a backward pass
      skips the input gradient of a product whose input needs none. 0 in our GPT: the token
      embedding is trained, so every product's input needs its gradient.
    * ``attention_recompute``: ``counted_training_fused - counted_training``. The fused backward
      (PyTorch's ``sdpa_backward_flop_count``) counts five products where the written-out backward
      has four: it recomputes ``QK^T`` instead of storing the ``T x T`` weights (Dao et al. 2022,
      arXiv:2205.14135, §3.1), ``attention_full / 2`` in all.
    * ``causal_half``: what Kaplan's count leaves out of ``attention_full`` (the masked half).
    * ``elementwise_estimate``: :func:`elementwise_flops_per_token`, in neither count.

    Identities (tested): ``counted_forward == weight_matrices + attention_full + output_layer ==
    counted_forward_fused``; ``formula_forward == counted_forward + biases_and_norms``;
    ``counted_training == 3 * counted_forward - first_layer_input_grad_skipped``;
    ``counted_training_fused == counted_training + attention_recompute``.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be an aigc_book GPT, got {type(model).__name__}")
    c = model.config
    t = c.block_size if seq_len is None else check_int("seq_len", seq_len)
    if t > c.block_size:
        raise ValueError(f"seq_len {t} is longer than the model's context, block_size={c.block_size}")
    b = check_int("batch", batch)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter, so a training step computes no gradient")
    device = next(model.parameters()).device
    idx = torch.randint(c.vocab_size, (b, t), generator=torch.Generator().manual_seed(0)).to(device)  # (B, T)
    n_tok = b * t

    counted = {}
    was_training = model.training
    model.eval()
    try:
        for suffix, fused in (("", False), ("_fused", True)):
            with _attention_path(model, fused):
                by_op = count_flops_by_operator(lambda: model(idx))
                counted["counted_forward" + suffix] = sum(by_op.values())
                counted["counted_training" + suffix] = count_flops(_training_step(model, idx, params))
                if not fused:
                    counted["embedding_lookups"] = by_op.get("embedding", 0)
    finally:
        model.train(was_training)
    per_token = {k: v // n_tok for k, v in counted.items()}

    weights = sum(m.weight.numel() for m in model.transformer.h.modules() if isinstance(m, nn.Linear))
    n = model.num_parameters(exclude_embeddings=True)
    formula = flops_per_token(c, t, output_layer=True, full_attention=True, n_params=n)
    attention_full = 4 * c.n_layer * t * c.n_embd
    return {
        **per_token,
        "formula_forward": formula,
        "formula_training": 3 * formula,
        "weight_matrices": 2 * weights,
        "attention_full": attention_full,
        "output_layer": 2 * c.n_embd * c.vocab_size,
        "biases_and_norms": 2 * (n - weights),
        "first_layer_input_grad_skipped": 3 * per_token["counted_forward"] - per_token["counted_training"],
        "attention_recompute": per_token["counted_training_fused"] - per_token["counted_training"],
        "causal_half": attention_full // 2,
        "elementwise_estimate": sum(elementwise_flops_per_token(c, t).values()),
    }
