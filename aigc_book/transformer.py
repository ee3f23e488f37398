"""LayerNorm, the feed-forward block, the Transformer block and a bidirectional encoder stack.

Introduced in chapter 2, section "The block and the whole GPT". The decoder-only GPT built from
these blocks lives in :mod:`aigc_book.gpt`; the encoder here is what BERT-style models (chapter 3)
put their heads on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.attention import KVCache, MultiHeadAttention, RotaryEmbedding, sinusoidal_encoding

__all__ = ["LayerNorm", "FeedForward", "TransformerBlock", "TransformerEncoder", "init_gpt2_weights"]

POS_ENCODINGS = ("learned", "sinusoidal", "rope")


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

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, kv_cache: KVCache | None = None,
                layer_idx: int = 0, attn_store: list | None = None) -> torch.Tensor:
        """``x``: ``(B, T, C)`` -> ``(B, T, C)``. Arguments as in :class:`MultiHeadAttention`."""
        if self.norm_first:
            x = x + self.attn(self.ln_1(x), attn_mask, rope, kv_cache, layer_idx, attn_store)
            x = x + self.mlp(self.ln_2(x))
        else:
            x = self.ln_1(x + self.attn(x, attn_mask, rope, kv_cache, layer_idx, attn_store))
            x = self.ln_2(x + self.mlp(x))
        return x


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


def check_pos_encoding(pos_encoding: str) -> None:
    if pos_encoding not in POS_ENCODINGS:
        raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, got {pos_encoding!r}")


def check_token_ids(idx: torch.Tensor, vocab_size: int, block_size: int) -> None:
    """Raise a clear error for ids that are not a ``(B, T)`` integer tensor with ``T <= block_size``
    and values in ``[0, vocab_size)``."""
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        got = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise TypeError(f"token ids must be an integer tensor of shape (B, T), got {got}")
    if idx.dim() != 2:
        raise ValueError(f"token ids must have shape (B, T), got shape {tuple(idx.shape)}")
    T = idx.size(1)
    if T > block_size:
        raise ValueError(
            f"sequence length {T} is longer than the context: block_size={block_size}; "
            f"crop the input to its last {block_size} tokens"
        )
    if T == 0:
        raise ValueError("token ids are empty: expected at least one token per sequence")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"token ids must lie in [0, vocab_size) = [0, {vocab_size}), got values in [{lo}, {hi}]"
        )


class TransformerEncoder(nn.Module):
    """A bidirectional Transformer encoder: embeddings, ``n_layer`` non-causal blocks, a final LayerNorm.

    ``forward(idx, padding_mask=None, attn_mask=None) -> (B, T, C)`` hidden states. MLM/NSP heads
    (chapter 3) go on top; the token embedding is ``self.wte`` (for tying an MLM decoder to it).

    Args:
        pos_encoding: ``"learned"`` (BERT), ``"sinusoidal"`` (Vaswani et al.) or ``"rope"``.
        norm_first: pre-LN (default, with a final LayerNorm) or post-LN as in BERT (a LayerNorm
            on the embeddings instead of after the last block).

    Masks: ``padding_mask`` is ``(B, T)``, **True (or 1) for real tokens** and False for padding
    (the Hugging Face ``attention_mask`` convention); padded keys are hidden from every query.
    ``attn_mask`` (boolean True = may attend, broadcastable to ``(B, n_head, T, T)``) is combined
    with it.
    """

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128, dropout: float = 0.0, pos_encoding: str = "learned",
                 bias: bool = True, norm_first: bool = True):
        super().__init__()
        check_pos_encoding(pos_encoding)
        if n_embd % n_head != 0:
            raise ValueError(
                f"embedding size n_embd={n_embd} is not divisible by the number of heads n_head={n_head}"
            )
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.pos_encoding, self.norm_first = pos_encoding, norm_first
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd) if pos_encoding == "learned" else None
        if pos_encoding == "sinusoidal":
            self.register_buffer("pe", sinusoidal_encoding(block_size, n_embd), persistent=False)
        self.rope = RotaryEmbedding(n_embd // n_head, block_size) if pos_encoding == "rope" else None
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(
            TransformerBlock(n_embd, n_head, dropout, bias, norm_first=norm_first, causal=False)
            for _ in range(n_layer)
        )
        self.ln_emb = None if norm_first else LayerNorm(n_embd, bias=bias)
        self.ln_f = LayerNorm(n_embd, bias=bias) if norm_first else None
        init_gpt2_weights(self, n_layer)

    def forward(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, attn_store: list | None = None) -> torch.Tensor:
        check_token_ids(idx, self.vocab_size, self.block_size)
        B, T = idx.shape
        mask = attn_mask
        if padding_mask is not None:
            if tuple(padding_mask.shape) != (B, T):
                raise ValueError(
                    f"padding_mask must have shape (B, T) = {(B, T)} (True for real tokens), "
                    f"got {tuple(padding_mask.shape)}"
                )
            keys = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, T): hide padded keys
            if mask is None:
                mask = keys
            elif mask.dtype == torch.bool:
                mask = mask & keys
            else:
                mask = mask.masked_fill(~keys, float("-inf"))
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        elif self.pos_encoding == "sinusoidal":
            x = x + self.pe[:T].to(x.dtype)
        else:
            rope = self.rope(0, T, dtype=x.dtype)
        x = self.drop(x)
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        for i, block in enumerate(self.h):
            x = block(x, mask, rope, None, i, attn_store)
        return self.ln_f(x) if self.ln_f is not None else x
