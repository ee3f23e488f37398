"""LayerNorm, the feed-forward block and the Transformer block, with GPT-2's initialisation.

Introduced in chapter 2, section "The block and the whole GPT". The stack of blocks (decoder or
encoder) is :class:`aigc_book.models.transformer.Transformer`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.layers.attention import MultiHeadAttention

__all__ = ["LayerNorm", "FeedForward", "TransformerBlock", "init_gpt2_weights"]


class LayerNorm(nn.Module):
    r"""Layer normalisation :math:`\gamma \odot (x-\mu)/\sqrt{\sigma^2+\epsilon} + \beta` with an optional bias.

    Statistics are over the last (feature) dimension of each token (Ba et al. 2016). PyTorch's
    ``nn.LayerNorm`` cannot drop only the bias, hence this small module (as in nanoGPT).
    """

    def __init__(self, ndim: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class FeedForward(nn.Module):
    """Position-wise MLP ``Linear(C, 4C) -> GELU -> Linear(4C, C) -> dropout``.

    GELU uses the tanh approximation, as GPT-2 does (``gelu_new`` in Hugging Face). Parameter
    names ``c_fc``/``c_proj`` follow GPT-2.
    """

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True, hidden: int | None = None):
        super().__init__()
        hidden = 4 * n_embd if hidden is None else hidden
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class TransformerBlock(nn.Module):
    """Attention then feed-forward, each wrapped in a residual connection and a LayerNorm.

    * pre-LN (``norm_first=True``, GPT-2): ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``
    * post-LN (``norm_first=False``, the 2017 Transformer and BERT):
      ``x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))``

    ``causal=True`` for a decoder block, ``False`` for an encoder block.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 norm_first: bool = True, causal: bool = True, fused: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = LayerNorm(n_embd, bias=bias)
        self.attn = MultiHeadAttention(n_embd, n_head, dropout=dropout, bias=bias, causal=causal, fused=fused)
        self.ln_2 = LayerNorm(n_embd, bias=bias)
        self.mlp = FeedForward(n_embd, dropout=dropout, bias=bias)

    def forward(self, x: torch.Tensor, *, need_weights: bool = False, **attn_kwargs):
        """``x``: ``(B, T, C)`` -> ``(B, T, C)`` (and the attention weights with ``need_weights``).

        Keyword arguments go to :meth:`MultiHeadAttention.forward` (masks, rope, cache, prefix).
        """
        if self.norm_first:
            a = self.attn(self.ln_1(x), need_weights=need_weights, **attn_kwargs)
            a, weights = a if need_weights else (a, None)
            x = x + a
            x = x + self.mlp(self.ln_2(x))
        else:
            a = self.attn(x, need_weights=need_weights, **attn_kwargs)
            a, weights = a if need_weights else (a, None)
            x = self.ln_1(x + a)
            x = self.ln_2(x + self.mlp(x))
        return (x, weights) if need_weights else x


def init_gpt2_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: weights N(0, 0.02), biases 0, and the residual projections
    (``*.c_proj.weight``) N(0, 0.02/sqrt(2·n_layer)) so the residual stream's variance does not
    grow with depth (Radford et al. 2019, §2.3)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
