"""Accounting next to the model: Kaplan's parameter and FLOP counts, from a config alone.

Introduced in chapter 2, section "Counting FLOPs" (chapter 6, section "Counting FLOPs" checks it
against PyTorch's counter in :mod:`aigc_book.efficiency.flops`). Kaplan et al. (2020,
arXiv:2001.08361, §2.1, Table 1) count ``2 N + 2 n_layer n_ctx d_model`` FLOPs per token forward and
three times that for training (hence ``C ≈ 6 N D``), N the non-embedding parameters.
:meth:`aigc_book.models.gpt.GPT.flops_per_token` calls :func:`flops_per_token` with the model's own N.
"""

from __future__ import annotations

from aigc_book.checks import check_int
from aigc_book.models.transformer import TransformerConfig

__all__ = ["non_embedding_parameters", "flops_per_token"]


def _check_config(config) -> None:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")


def non_embedding_parameters(config: TransformerConfig) -> int:
    """Kaplan's N for a GPT built from ``config``: every parameter but the embeddings and output matrix.

    Per block: four weight matrices (``12 C^2``), biases (``9 C``) and two LayerNorms (``2 C`` gains,
    ``2 C`` biases); plus one final LayerNorm. Without ``bias`` only the gains remain. Equals
    ``GPT(config).num_parameters(exclude_embeddings=True)`` (tested), without building the model.
    """
    _check_config(config)
    c, b = config.n_embd, int(config.bias)
    per_block = 12 * c * c + 9 * b * c + 2 * (1 + b) * c
    return config.n_layer * per_block + (1 + b) * c


def flops_per_token(
    config: TransformerConfig,
    seq_len: int | None = None,
    training: bool = False,
    *,
    output_layer: bool = False,
    full_attention: bool = False,
    n_params: int | None = None,
) -> int:
    """FLOPs per token of a GPT with this config, after Kaplan et al. (2020, arXiv:2001.08361, Table 1).

    Forward: ``2 N + 2 n_layer T C`` with N the non-embedding parameters (``n_params``, default
    :func:`non_embedding_parameters`), ``T = seq_len`` (default ``block_size``; any length is
    accepted, so a config can be evaluated beyond its own context) and ``C = n_embd``. Training
    (forward + backward) is three times the forward count.

    * ``output_layer``: add the output projection, ``2 C n_vocab`` (Kaplan's "De-embed", left out
      of his total).
    * ``full_attention``: count ``QK^T`` and ``AV`` over the whole ``T x T`` table,
      ``4 n_layer T C``, as PyTorch's ``FlopCounterMode`` and the written-out attention do, instead of
      Kaplan's ``2 n_layer T C``, the causal average (query ``i`` needs only ``i + 1`` keys). See
      :meth:`aigc_book.models.gpt.GPT.flops_per_token` for what a fused kernel executes.

    N includes biases and LayerNorm gains at 2 FLOPs each although they multiply no matrix; the
    counter does not count them (see :func:`aigc_book.efficiency.flops.flops_differences`).
    """
    _check_config(config)
    t = config.block_size if seq_len is None else check_int("seq_len", seq_len)
    n = non_embedding_parameters(config) if n_params is None else check_int("n_params", n_params)
    attention = (4 if full_attention else 2) * config.n_layer * t * config.n_embd
    forward = 2 * n + attention + (2 * config.n_embd * config.vocab_size if output_layer else 0)
    return 3 * forward if training else forward
