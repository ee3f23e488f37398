"""A decoder-only GPT: the causal :class:`~aigc_book.models.transformer.Transformer` plus an output head.

Introduced in chapter 2, section "The block and the whole GPT"; trained in chapter 3. The layout
and parameter names follow GPT-2 (and nanoGPT), so :mod:`aigc_book.models.hf_gpt2` converts weights
to and from Hugging Face's ``GPT2LMHeadModel`` without renaming, and :mod:`aigc_book.models.io`
saves and loads it as ``config.json`` plus ``model.safetensors``.

Attention weights for inspection (the chapter's explorer): ``model.attention_maps(idx)`` returns a
``(n_layer, B, n_head, T, T)`` tensor computed with the written-out attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.checks import is_int
from aigc_book.generation.config import GenerationConfig
from aigc_book.generation.search import generate
from aigc_book.layers.block import init_gpt2_weights
from aigc_book.layers.checks import check_token_ids
from aigc_book.layers.kv_cache import KVCache
from aigc_book.models.accounting import flops_per_token
from aigc_book.models.io import PretrainedMixin
from aigc_book.models.transformer import Transformer, TransformerConfig

__all__ = ["GPT", "CausalLMOutput"]


@dataclass
class CausalLMOutput:
    """What :meth:`GPT.forward` returns. Unpacks like nanoGPT's pair: ``logits, loss = model(idx, targets)``.

    Attributes:
        logits: ``(B, T, vocab_size)``.
        loss: mean cross-entropy over the positions whose target is not -100 (None without targets).
        last_hidden_state: ``(B, T, C)`` final hidden states, what value and reward heads read.
        attentions: with ``output_attentions``, one ``(B, n_head, T, T_k)`` tensor per layer.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    def __iter__(self):
        return iter((self.logits, self.loss))

    def __getitem__(self, i):
        return (self.logits, self.loss)[i]


class GPT(PretrainedMixin, nn.Module):
    """Decoder-only Transformer language model (GPT-2 layout).

    ``forward(idx, targets=None, **options) -> CausalLMOutput`` (unpacks as ``logits, loss``):

    * ``idx``: ``(B, T)`` token ids, ``T <= block_size``, values in ``[0, vocab_size)``.
    * ``targets``: ``(B, T)`` next-token ids or None; positions equal to ``-100`` are ignored.
    * keyword-only options, passed to :meth:`Transformer.forward`: ``attn_mask`` (replaces the
      causal mask), ``padding_mask``, ``position_ids``, ``inputs_embeds`` (instead of ``idx``),
      ``kv_cache``, ``prefix_kv``, ``output_attentions``.
    """

    config_class = TransformerConfig

    @staticmethod
    def min_parameters(config: TransformerConfig) -> int:
        """A lower bound on the parameter count (the four projection matrices of every block), so a
        saved config that asks for far more than its weights file holds is refused before building."""
        return 12 * config.n_layer * config.n_embd**2

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"GPT expects a TransformerConfig, got {type(config).__name__}")
        if not config.causal:
            raise ValueError("a GPT is a decoder: TransformerConfig.causal must be True")
        self.config = c = config
        self.transformer = Transformer(c, init_weights=False)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        init_gpt2_weights(self, c.n_layer)
        if c.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight  # one (V, C) matrix, two roles

    # ----------------------------------------------------------------------------- forward

    def forward(
        self, idx: torch.Tensor | None = None, targets: torch.Tensor | None = None, **options
    ) -> CausalLMOutput:
        out = self.transformer(idx, **options)
        logits = self.lm_head(out.last_hidden_state)  # (B, T, V)
        loss = None
        if targets is not None:
            B, T = logits.shape[:2]
            if tuple(targets.shape) != (B, T):
                raise ValueError(
                    f"targets must have the shape of the input (B, T) = {(B, T)}, got {tuple(targets.shape)}"
                )
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T), ignore_index=-100)
        return CausalLMOutput(logits, loss, out.last_hidden_state, out.attentions)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights of every layer and head: ``(n_layer, B, n_head, T, T)``.

        Runs the written-out attention (the fused kernel never forms the weights) in eval mode. Row
        ``i`` of map ``[layer, b, head]`` is how query ``i`` spreads its attention over the keys.
        """
        was_training = self.training
        self.eval()
        try:
            out = self.transformer(idx, attn_mask=attn_mask, output_attentions=True)
        finally:
            self.train(was_training)
        return torch.stack(out.attentions)

    def _last_logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``(B, V)`` logits of the last position of ``idx``."""
        return self.lm_head(self.transformer(idx, kv_cache=cache).last_hidden_state[:, -1])

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty :class:`KVCache` for this model (on its device and dtype), ``block_size`` positions by default."""
        c, ref = self.config, self.transformer.wte.weight
        return KVCache(
            c.n_layer, batch_size, c.n_head, max_len or c.block_size, c.head_dim, device=ref.device, dtype=ref.dtype
        )

    # ----------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        on_token=None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` ``(B, T)`` and return ``(B, T + max_new_tokens)``.

        ``temperature=0`` is greedy decoding (always the most probable token); otherwise tokens are
        *sampled* from ``softmax(logits / temperature)``, restricted to the ``top_k`` most probable
        if given. Runs in eval mode (no dropout) and restores the mode afterwards.

        With ``use_cache`` each step feeds only the newest token and reads the earlier keys and
        values from a :class:`KVCache`. Once the context is full (``block_size`` tokens), the
        window slides and the cache is rebuilt from the last ``block_size`` tokens every step, which
        is exactly what happens without the cache, so both paths give the same tokens.

        ``on_token``, if given, is called with each new ``(B,)`` column of tokens as soon as it is
        chosen, to stream the text out.

        This is :func:`aigc_book.generation.generate` (chapter 4) with a
        :class:`~aigc_book.generation.config.GenerationConfig` of ``do_sample = temperature > 0``;
        that config adds top-p, min-p, the repetition penalty, eos tokens and beam search.
        """
        check_token_ids(idx, self.config.vocab_size)  # a prompt longer than the context is cropped
        if not is_int(max_new_tokens) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        sample = temperature != 0
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, use_cache=use_cache,
                                  temperature=float(temperature) if sample else 1.0, top_k=top_k if sample else None)
        return generate(self, idx, config, generator=generator, on_token=on_token).sequences

    # ----------------------------------------------------------------------------- accounting

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (a tied matrix counted once).

        With ``exclude_embeddings`` the token and position embeddings (and an untied output
        matrix) are left out: this is the "non-embedding" N of Kaplan et al. (2020, §2.1), about
        ``12 * n_layer * n_embd**2``.
        """
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            params.pop(id(self.transformer.wte.weight), None)
            params.pop(id(self.lm_head.weight), None)
            for p in self.transformer.wpe.parameters():  # learned positions only
                params.pop(id(p), None)
        return sum(p.numel() for p in params.values())

    def parameter_counts(self) -> dict[str, int]:
        """Parameters by component: embeddings, attention, feed-forward, layer norms, output head."""
        counts = {
            "token embedding": self.transformer.wte.weight.numel(),
            "position embedding": 0,
            "attention": 0,
            "feed-forward": 0,
            "layer norms": 0,
            "output head (untied)": 0,
        }
        counts["position embedding"] = sum(p.numel() for p in self.transformer.wpe.parameters())
        for block in self.transformer.h:
            counts["attention"] += sum(p.numel() for p in block.attn.parameters())
            counts["feed-forward"] += sum(p.numel() for p in block.mlp.parameters())
            counts["layer norms"] += sum(p.numel() for m in (block.ln_1, block.ln_2) for p in m.parameters())
        for norm in (self.transformer.ln_f, self.transformer.ln_emb):
            counts["layer norms"] += sum(p.numel() for p in norm.parameters()) if norm is not None else 0
        if not self.config.tie_weights:
            counts["output head (untied)"] = self.lm_head.weight.numel()
        return counts

    def flops_per_token(
        self, seq_len: int | None = None, training: bool = False, *, output_layer: bool = False,
        full_attention: bool = False,
    ) -> float:
        """Approximate FLOPs per token, following Kaplan et al. (2020, arXiv:2001.08361, §2.1, Table 1).

        Forward pass: ``2 N + 2 n_layer n_ctx n_embd`` with N the non-embedding parameters and
        ``n_ctx`` the context length (``seq_len``, default ``block_size``); the second term is
        attention's scores and weighted sum. Training (forward + backward) is three times that,
        hence the familiar ``C ≈ 6 N D``. Embedding look-ups and the output projection are left
        out, as in Kaplan et al.; unlike their ``12 n_layer n_embd**2``, N here also counts biases
        and LayerNorm gains, as if they were weights (chapter 2 measures the difference).

        * ``output_layer``: add the output projection, ``2 n_embd vocab_size`` per token (three
          times that for training).
        * ``full_attention``: count the scores ``QK^T`` and the weighted sum ``AV`` over the full
          ``T x T`` table, ``4 n_layer T n_embd`` forward, as ``FlopCounterMode`` and the
          written-out (math) attention do, instead of Kaplan's ``2 n_layer n_ctx n_embd``; for
          training that is PaLM's attention term ``12 L H Q T`` (Chowdhery et al. 2022,
          arXiv:2204.02311, App. B). With both options the count matches the counter within 5%
          for widths of 32 and more and ``T <= 2 n_embd`` (tested;
          :func:`aigc_book.efficiency.flops.flops_differences` names each gap exactly).

        What causal masking saves: query ``i`` may see only keys ``0..i``, so only ``T (T + 1) / 2``
        of the ``T^2`` scores matter; Kaplan's term is that causal average. The written-out
        attention computes the whole table and then masks it, so it executes the full count. A
        flash kernel works in tiles and skips the tiles wholly above the diagonal, so it executes
        roughly the causal half plus the diagonal tiles
        (:func:`aigc_book.efficiency.flops.causal_tile_fraction`), while the counter's formula for
        it still reports the full table, and its backward pass recomputes ``QK^T`` (five products
        instead of four). Neither count includes softmax, GELU or LayerNorm.

        The formula itself is :func:`aigc_book.models.accounting.flops_per_token`, a function of the
        config; this method passes it this model's actual non-embedding parameter count.
        """
        n = self.num_parameters(exclude_embeddings=True)
        return float(flops_per_token(self.config, seq_len, training, output_layer=output_layer,
                                     full_attention=full_attention, n_params=n))
