r"""A Transformer made of attention layers only: the toy model in which induction heads are found.

Introduced in chapter 4, section "In-context learning and induction heads". Elhage et al. (2021),
"A Mathematical Framework for Transformer Circuits", study Transformers with no MLP blocks, because
their output is then a sum of paths through attention heads: a one-layer model can only implement
"skip-trigrams" (``A ... B -> C`` read from a single attended token), while in a two-layer model a
head of the second layer can build its query or key from the output of a first-layer head
("K-composition"), which is what an **induction head** needs: a first-layer *previous-token head*
writes "the token before me was ``A``" into position ``j``, and a second-layer head whose query is
the current token ``A`` finds that position and copies its token ``B`` (``[A][B] ... [A] -> [B]``).

The residual stream here is the plain sum of Elhage et al.'s path expansion:

.. math::

    x_0 = W_E[t] + W_{pos}[p], \qquad x_{l+1} = x_l + \sum_h \mathrm{head}_{l,h}(\mathrm{LN}(x_l)),
    \qquad \text{logits} = W_U\,\mathrm{LN}(x_L)

with the LayerNorms optional (``layer_norm=False`` drops them, as Elhage et al.'s analysis
does). The heads are :class:`aigc_book.layers.attention.MultiHeadAttention`, the book's one
attention layer; the model returns the same :class:`~aigc_book.models.gpt.CausalLMOutput` as the GPT
and has the same ``attention_maps``, so every score in :mod:`aigc_book.incontext.induction` works on
either model.

The defaults are the settings with which induction heads formed within a few hundred steps in all
of our runs on :func:`~aigc_book.incontext.induction.repeated_tokens` (``V = 32``, ``T = 32``,
``L = 12``, AdamW at ``2e-3``, 8 seeds): LayerNorm on, rotary positions and weights drawn with
standard deviation 0.05. Without LayerNorm no run formed induction heads within 1,000 steps; with
GPT-2's 0.02 the plateau lasted about twice as long; with learned positions 7 of 8 seeds formed
clean induction heads (the eighth a weaker circuit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.checks import is_int, is_number
from aigc_book.layers.attention import MultiHeadAttention
from aigc_book.layers.block import LayerNorm, init_gpt2_weights
from aigc_book.layers.checks import check_heads, check_token_ids
from aigc_book.layers.positions import POS_ENCODINGS, make_positions
from aigc_book.models.gpt import CausalLMOutput

__all__ = ["AttentionOnlyConfig", "AttentionOnlyTransformer"]


@dataclass(frozen=True)
class AttentionOnlyConfig:
    """Shape of an attention-only Transformer.

    Attributes:
        vocab_size: number of token ids ``V``.
        block_size: the longest sequence (positions ``0 .. block_size - 1``).
        n_layer: attention layers (1 cannot form an induction head, 2 can).
        n_head, n_embd: heads per layer and the residual width ``C`` (``C % n_head == 0``).
        layer_norm: a pre-LayerNorm before each layer and before the unembedding.
        pos_encoding: ``"rope"`` (default; queries and keys carry relative positions, Su et al. 2021),
            ``"learned"`` or ``"sinusoidal"`` (see :mod:`aigc_book.layers.positions`).
        init_std: standard deviation of the initial weights (GPT-2: 0.02); the output projections
            of the heads get ``init_std / sqrt(2 n_layer)``, as in GPT-2.
    """

    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    layer_norm: bool = True
    pos_encoding: str = "rope"
    init_std: float = 0.05

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive int, got {value!r}")
        check_heads(self.n_embd, self.n_head)
        if not is_number(self.init_std) or not self.init_std > 0:
            raise ValueError(f"{type(self).__name__}.init_std must be a positive number, got {self.init_std!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"{type(self).__name__}.pos_encoding must be one of {POS_ENCODINGS}, got {self.pos_encoding!r}"
            )
        if self.pos_encoding == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"rotary positions need an even head dimension, got n_embd/n_head = {self.head_dim}")
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2 != 0:
            raise ValueError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class AttentionOnlyTransformer(nn.Module):
    """Token and position embeddings, ``n_layer`` residual attention layers, an unembedding; no MLPs.

    ``forward(idx, targets=None, *, output_attentions=False) -> CausalLMOutput`` (unpacks as
    ``logits, loss``), like :class:`aigc_book.models.gpt.GPT`:

    * ``idx``: ``(B, T)`` token ids, ``T <= block_size``;
    * ``targets``: ``(B, T)`` next-token ids or None (``-100`` is ignored);
    * ``output_attentions``: also return each layer's ``(B, n_head, T, T)`` attention weights.

    Weights start as GPT-2's (N(0, 0.02), or N(0, ``init_std``)); the attention projections have no biases and the
    unembedding is not tied to the embedding (the circuits of Elhage et al. read them separately).
    """

    def __init__(self, config: AttentionOnlyConfig):
        super().__init__()
        if not isinstance(config, AttentionOnlyConfig):
            raise TypeError(f"{type(self).__name__} expects an AttentionOnlyConfig, got {type(config).__name__}")
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = make_positions(c.pos_encoding, c.block_size, c.n_embd, c.n_head)
        self.h = nn.ModuleList(MultiHeadAttention(c.n_embd, c.n_head, bias=False) for _ in range(c.n_layer))
        self.ln = nn.ModuleList(LayerNorm(c.n_embd) for _ in range(c.n_layer + 1)) if c.layer_norm else None
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        init_gpt2_weights(self, c.n_layer)
        if c.init_std != 0.02:  # GPT-2's scheme with another scale
            for p in self.parameters():
                if p.dim() == 2:
                    p.data.mul_(c.init_std / 0.02)

    def _norm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x if self.ln is None else self.ln[i](x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                output_attentions: bool = False) -> CausalLMOutput:
        c = self.config
        check_token_ids(idx, c.vocab_size)
        B, T = idx.shape
        if T > c.block_size:
            raise ValueError(f"sequence length {T} is longer than the context: block_size={c.block_size}")
        position_ids = torch.arange(T, device=idx.device)
        x = self.wpe.add(self.wte(idx), position_ids)  # (B, T, C): the residual stream
        rope = self.wpe.rotary(position_ids, dtype=x.dtype)  # None unless rotary
        attentions = []
        for i, attn in enumerate(self.h):
            out = attn(self._norm(i, x), rope=rope, need_weights=output_attentions)
            if output_attentions:
                out, weights = out  # weights: (B, n_head, T, T)
                attentions.append(weights)
            x = x + out  # each layer adds the sum of its heads' outputs to the stream
        x = self._norm(c.n_layer, x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            if tuple(targets.shape) != (B, T):
                raise ValueError(
                    f"targets must have the shape of the input (B, T) = {(B, T)}, got {tuple(targets.shape)}"
                )
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-100)
        return CausalLMOutput(logits, loss, x, tuple(attentions) if output_attentions else None)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights of every layer and head, ``(n_layer, B, n_head, T, T)``, in eval mode
        (the same layout as :meth:`aigc_book.models.gpt.GPT.attention_maps`)."""
        was_training = self.training
        self.eval()
        try:
            out = self(idx, output_attentions=True)
        finally:
            self.train(was_training)
        return torch.stack(out.attentions)
