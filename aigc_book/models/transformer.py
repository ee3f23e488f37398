"""One configuration and one stack for every Transformer in the book: decoder or encoder by a flag.

Introduced in chapter 2, section "The block and the whole GPT". :class:`Transformer` is token
embeddings, positions (:mod:`aigc_book.layers.positions`), ``n_layer`` blocks and a final
LayerNorm. With ``causal=True`` it is the body of a GPT (:class:`aigc_book.models.gpt.GPT` adds the
output head); with ``causal=False`` it is a bidirectional encoder, the body of BERT (chapter 3 puts
its MLM and NSP heads on it). The two differ by that flag and the mask it implies, nothing else.

The later chapters plug in here without editing this file:

* ``position_ids``: explicit positions, ``(T,)`` or ``(B, T)`` (permutation LM; left-padded batches);
* ``inputs_embeds``: embeddings instead of token ids (prompt tuning prepends trained vectors);
* ``prefix_kv``: extra keys and values for every layer (prefix tuning);
* ``last_hidden_state`` in the output: the final hidden states for value, reward and other heads;
* every projection is an ``nn.Linear`` called as a module, so
  :func:`aigc_book.layers.surgery.replace_linear` can wrap any of them (LoRA, adapters);
* ``kv_cache``: a :class:`~aigc_book.layers.kv_cache.KVCache` that can be reordered and copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aigc_book.checks import is_int
from aigc_book.layers.attention import check_attention_mask
from aigc_book.layers.block import LayerNorm, TransformerBlock, init_gpt2_weights
from aigc_book.layers.checks import check_heads, check_index_range, check_token_ids
from aigc_book.layers.kv_cache import KVCache
from aigc_book.layers.positions import POS_ENCODINGS, make_positions

__all__ = ["TransformerConfig", "Transformer", "TransformerOutput", "position_ids_from_padding"]


@dataclass(frozen=True)
class TransformerConfig:
    """Everything that fixes a Transformer's shape.

    Attributes:
        vocab_size: number of token ids (``V``).
        block_size: the context length: positions run over ``0 .. block_size - 1``.
        n_layer, n_head, n_embd: depth, heads per layer, width ``C`` (``C % n_head == 0``).
        dropout: on embeddings, attention weights and residual branches (training only).
        bias: biases in the Linear layers and LayerNorms (GPT-2: True).
        pos_encoding: ``"learned"`` (GPT-2, BERT), ``"sinusoidal"`` (Vaswani et al.) or ``"rope"`` (Su et al.).
        norm_first: pre-LN blocks with a final LayerNorm (GPT-2), or post-LN blocks with a LayerNorm
            on the embeddings instead (BERT; the 2017 Transformer's block order).
        causal: a decoder (each token sees only the past) or a bidirectional encoder.
        tie_weights: a language-model head shares the token embedding matrix (GPT-2: True).
    """

    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    pos_encoding: str = "learned"
    norm_first: bool = True
    causal: bool = True
    tie_weights: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive int, got {value!r}")
        check_heads(self.n_embd, self.n_head)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"{type(self).__name__}.pos_encoding must be one of {POS_ENCODINGS}, got {self.pos_encoding!r}"
            )
        if self.pos_encoding == "rope" and self.head_dim % 2 != 0:
            raise ValueError(
                f"rotary position encoding needs an even head dimension, got n_embd/n_head = "
                f"{self.n_embd}/{self.n_head} = {self.head_dim}"
            )
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2 != 0:
            raise ValueError(f"sinusoidal encoding needs an even n_embd, got {self.n_embd}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def position_ids_from_padding(padding_mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` positions that start at 0 at each row's first real token (left padding).

    Padded slots get position 0; they are hidden by the padding mask anyway.

    >>> position_ids_from_padding(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    tensor([[0, 0, 0, 1],
            [0, 1, 2, 3]])
    """
    real = padding_mask.long()
    return (real.cumsum(dim=1) - 1).clamp(min=0) * real


@dataclass
class TransformerOutput:
    """What :meth:`Transformer.forward` returns.

    Attributes:
        last_hidden_state: ``(B, T, C)`` after the final LayerNorm (pre-LN) or the last block (post-LN).
        attentions: with ``output_attentions``, one ``(B, n_head, T, T_k)`` weight tensor per layer.
    """

    last_hidden_state: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None


class Transformer(nn.Module):
    """Embeddings, positions, ``n_layer`` blocks and a final LayerNorm; causal or bidirectional.

    Parameter names follow GPT-2 (``wte``, ``wpe``, ``h.N.attn.c_attn``, ``ln_f``), so a GPT's
    ``transformer.*`` weights convert to Hugging Face without renaming.
    """

    def __init__(self, config: TransformerConfig, *, init_weights: bool = True):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"{type(self).__name__} expects a TransformerConfig, got {type(config).__name__}")
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.h = nn.ModuleList(
            TransformerBlock(c.n_embd, c.n_head, c.dropout, c.bias, norm_first=c.norm_first, causal=c.causal)
            for _ in range(c.n_layer)
        )
        # Pre-LN ends in a LayerNorm; post-LN blocks already end in one and normalise the embeddings.
        self.ln_f = LayerNorm(c.n_embd, bias=c.bias) if c.norm_first else None
        self.ln_emb = None if c.norm_first else LayerNorm(c.n_embd, bias=c.bias)
        # Registered after the blocks: GPT-2's initialisation order (token embedding, blocks,
        # positions), which keeps every seeded model of the book's first edition unchanged.
        self.wpe = make_positions(c.pos_encoding, c.block_size, c.n_embd, c.n_head)
        if init_weights:  # a model that wraps the stack (a GPT) initialises itself, heads included
            init_gpt2_weights(self, c.n_layer)

    def forward(
        self,
        idx: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        output_attentions: bool = False,
    ) -> TransformerOutput:
        """Hidden states of token ids ``idx`` ``(B, T)`` (or of ``inputs_embeds`` ``(B, T, C)``).

        * ``position_ids``: ``(T,)`` or ``(B, T)``, each in ``[0, block_size)``; default
          ``start .. start + T - 1`` with ``start`` the cache length (0 without a cache).
        * ``padding_mask``: ``(B, T_k)``, **True (or 1) for real tokens**, False for padding (Hugging
          Face's ``attention_mask``); ``T_k`` counts cached and new tokens. Padded keys are hidden;
          the causal mask still applies.
        * ``attn_mask``: boolean (True = may attend) or additive float, broadcastable to
          ``(B, n_head, T, T_k)``. It **replaces** the causal mask (XLNet's two streams, a prefix
          LM); a ``padding_mask`` is combined with it.
        * ``kv_cache``: store this step's keys and values and attend to the earlier ones.
        * ``prefix_kv``: one ``(keys, values)`` pair per layer, each ``(B or 1, n_head, P, head_dim)``,
          seen by every query (prefix tuning).
        * ``output_attentions``: also return every layer's attention weights (written-out attention).
        """
        c = self.config
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of idx (token ids) and inputs_embeds (embeddings)")
        if idx is not None:
            check_token_ids(idx, c.vocab_size)
            x = self.wte(idx)  # (B, T, C)
        else:
            x = inputs_embeds
            if x.dim() != 3 or x.size(-1) != c.n_embd or x.size(1) == 0 or x.size(0) == 0:
                raise ValueError(
                    f"inputs_embeds must have shape (B, T, {c.n_embd}) with B, T >= 1, got {tuple(x.shape)}"
                )
        B, T = x.shape[:2]
        start = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            if start + T > c.block_size:
                raise ValueError(
                    f"sequence length {start + T} is longer than the context: block_size={c.block_size}; "
                    f"crop the input to its last {c.block_size - start} tokens"
                )
            position_ids = torch.arange(start, start + T, device=x.device)
        else:
            if tuple(position_ids.shape) not in ((T,), (B, T)):
                raise ValueError(
                    f"position_ids must have shape (T,) = ({T},) or (B, T) = {(B, T)}, got {tuple(position_ids.shape)}"
                )
            check_index_range(position_ids, c.block_size, f"position_ids (block_size={c.block_size})")
        t_k = start + T
        mask = self._mask(attn_mask, padding_mask, B, T, t_k)
        is_causal = c.causal and attn_mask is None
        if prefix_kv is not None and len(prefix_kv) != c.n_layer:
            raise ValueError(f"prefix_kv needs one (keys, values) pair per layer: {c.n_layer}, got {len(prefix_kv)}")

        x = self.drop(self.wpe.add(x, position_ids))
        rope = self.wpe.rotary(position_ids, dtype=x.dtype)  # None unless rotary
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        attentions = []
        for i, block in enumerate(self.h):
            x = block(
                x,
                attn_mask=mask,
                is_causal=is_causal,
                rope=rope,
                kv_cache=kv_cache,
                layer_idx=i,
                prefix_kv=None if prefix_kv is None else prefix_kv[i],
                need_weights=output_attentions,
            )
            if output_attentions:
                x, weights = x
                attentions.append(weights)
        if kv_cache is not None:
            kv_cache.advance(T)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return TransformerOutput(x, tuple(attentions) if output_attentions else None)

    def _mask(self, attn_mask, padding_mask, B, T, t_k):
        """One mask from an explicit ``attn_mask`` and a ``padding_mask`` (or None for neither)."""
        if attn_mask is not None:
            check_attention_mask(attn_mask, (B, self.config.n_head), T, t_k)
        if padding_mask is None:
            return attn_mask
        if tuple(padding_mask.shape) != (B, t_k):
            raise ValueError(
                f"padding_mask must have shape (B, T_k) = {(B, t_k)} (True for real tokens, cached ones "
                f"included), got {tuple(padding_mask.shape)}"
            )
        keys = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, T_k): hide padded keys
        if attn_mask is None:
            return keys
        if attn_mask.dtype == torch.bool:
            return attn_mask & keys
        return attn_mask.masked_fill(~keys, float("-inf"))
