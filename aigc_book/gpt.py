"""A decoder-only GPT: config, model, KV-cached generation, parameter and FLOP accounting.

Introduced in chapter 2, section "The block and the whole GPT"; trained in chapter 3. The layout
and parameter names follow GPT-2 (and nanoGPT), so :mod:`aigc_book.hf_gpt2` converts weights to
and from Hugging Face's ``GPT2LMHeadModel`` without renaming.

Attention weights for inspection (the chapter's explorer): ``model.attention_maps(idx)`` returns a
``(n_layer, B, n_head, T, T)`` tensor computed with the written-out attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.attention import KVCache, RotaryEmbedding, check_attention_mask, sinusoidal_encoding
from aigc_book.transformer import (
    POS_ENCODINGS,
    LayerNorm,
    TransformerBlock,
    check_token_ids,
    init_gpt2_weights,
)

__all__ = ["GPTConfig", "GPT"]


@dataclass
class GPTConfig:
    """Everything that fixes a GPT's shape.

    Attributes:
        vocab_size: number of token ids (``V``).
        block_size: the context length: the longest sequence the model accepts (``T_max``).
        n_layer, n_head, n_embd: depth, heads per layer, width ``C`` (``C % n_head == 0``).
        dropout: on embeddings, attention weights and residual branches (training only).
        bias: biases in the Linear layers and LayerNorms (GPT-2: True).
        pos_encoding: ``"learned"`` (GPT-2), ``"sinusoidal"`` (Vaswani et al.) or ``"rope"`` (Su et al.).
        norm_first: pre-LN blocks (GPT-2) or post-LN (the 2017 Transformer).
        tie_weights: the output projection shares the token embedding matrix (GPT-2: True).
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
    tie_weights: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"embedding size n_embd={self.n_embd} is not divisible by the number of heads "
                f"n_head={self.n_head}; each head gets n_embd / n_head dimensions"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"GPTConfig.pos_encoding must be one of {POS_ENCODINGS}, got {self.pos_encoding!r}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(
                f"rotary position encoding needs an even head dimension, got n_embd/n_head = "
                f"{self.n_embd}/{self.n_head} = {self.n_embd // self.n_head}"
            )
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2 != 0:
            raise ValueError(f"sinusoidal encoding needs an even n_embd, got {self.n_embd}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class GPT(nn.Module):
    """Decoder-only Transformer language model (GPT-2 layout).

    ``forward(idx, targets=None, attn_mask=None) -> (logits, loss)``:

    * ``idx``: ``(B, T)`` token ids, ``T <= block_size``, values in ``[0, vocab_size)``.
    * ``targets``: ``(B, T)`` next-token ids or None; positions equal to ``-100`` are ignored.
      ``loss`` is the mean cross-entropy over the other positions (None without targets).
    * ``attn_mask``: optional boolean mask (True = may attend) or additive float mask,
      broadcastable to ``(B, n_head, T, T)``. It **replaces** the causal mask, so pass a causal
      structure yourself if you want one (XLNet-style permutation masks use this).
    * ``logits``: ``(B, T, vocab_size)``.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList(
                TransformerBlock(c.n_embd, c.n_head, c.dropout, c.bias, norm_first=c.norm_first, causal=True)
                for _ in range(c.n_layer)
            ),
            ln_f=LayerNorm(c.n_embd, bias=c.bias),
        ))
        if c.pos_encoding == "learned":
            self.transformer["wpe"] = nn.Embedding(c.block_size, c.n_embd)
        elif c.pos_encoding == "sinusoidal":
            self.register_buffer("pe", sinusoidal_encoding(c.block_size, c.n_embd), persistent=False)
        self.rope = RotaryEmbedding(c.head_dim, c.block_size) if c.pos_encoding == "rope" else None
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        init_gpt2_weights(self, c.n_layer)
        if c.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight  # one (V, C) matrix, two roles

    # ----------------------------------------------------------------------------- forward

    def _hidden(self, idx: torch.Tensor, attn_mask=None, kv_cache: KVCache | None = None,
                attn_store: list | None = None) -> torch.Tensor:
        """Final hidden states ``(B, T, C)`` for ``idx``; positions start at ``kv_cache.length``."""
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos_encoding == "learned":
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))  # (T, C) broadcast
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pe[start:start + T].to(x.dtype)
        else:
            rope = self.rope(start, T, dtype=x.dtype)  # (T, hs) each
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, rope, kv_cache, i, attn_store)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None):
        check_token_ids(idx, self.config.vocab_size, self.config.block_size)
        B, T = idx.shape
        if attn_mask is not None:
            check_attention_mask(attn_mask, (B, self.config.n_head), T, T)
        logits = self.lm_head(self._hidden(idx, attn_mask))  # (B, T, V)
        loss = None
        if targets is not None:
            if tuple(targets.shape) != (B, T):
                raise ValueError(f"targets must have the shape of idx {(B, T)}, got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights of every layer and head: ``(n_layer, B, n_head, T, T)``.

        Runs the written-out attention (the fused kernel never forms the weights). Row ``i`` of
        map ``[layer, b, head]`` is how query ``i`` spreads its attention over the keys.
        """
        check_token_ids(idx, self.config.vocab_size, self.config.block_size)
        was_training = self.training
        self.eval()
        store: list[torch.Tensor] = []
        try:
            self._hidden(idx, attn_mask, attn_store=store)
        finally:
            self.train(was_training)
        return torch.stack(store)

    # ----------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` ``(B, T)`` and return ``(B, T + max_new_tokens)``.

        ``temperature=0`` is greedy decoding (always the most probable token); otherwise tokens are
        *sampled* from ``softmax(logits / temperature)``, restricted to the ``top_k`` most probable
        if given. Runs in eval mode (no dropout) and restores the mode afterwards.

        With ``use_cache`` each step feeds only the newest token and reads the earlier keys and
        values from a :class:`KVCache`. Once the context is full (``block_size`` tokens), the
        window slides and the cache is rebuilt from the last ``block_size`` tokens every step, which
        is exactly what happens without the cache, so both paths give the same tokens.
        """
        c = self.config
        prompt_len = idx.size(1) if isinstance(idx, torch.Tensor) and idx.dim() == 2 else 0
        check_token_ids(idx, c.vocab_size, max(c.block_size, prompt_len))  # long prompts are cropped
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():  # a little faster than no_grad for the many small steps
                out = self._generate(idx, max_new_tokens, temperature, top_k, use_cache, generator)
        finally:
            self.train(was_training)
        return out.clone()  # a normal tensor again, usable as input to training

    def _generate(self, idx, max_new_tokens, temperature, top_k, use_cache, generator):
        c = self.config
        B = idx.size(0)
        out = torch.empty(B, idx.size(1) + max_new_tokens, dtype=idx.dtype, device=idx.device)
        out[:, :idx.size(1)] = idx
        n = idx.size(1)
        if max_new_tokens == 0:
            return out
        cache = None
        if use_cache:
            dtype = self.transformer.wte.weight.dtype
            cache = KVCache(c.n_layer, B, c.n_head, c.block_size, c.head_dim, device=idx.device, dtype=dtype)
            logits = self.lm_head(self._hidden(out[:, max(0, n - c.block_size):n], kv_cache=cache)[:, -1])
        for step in range(max_new_tokens):
            if not use_cache:
                logits = self.lm_head(self._hidden(out[:, max(0, n - c.block_size):n])[:, -1])  # (B, V)
            out[:, n] = self._next_token(logits, temperature, top_k, generator)
            n += 1
            if use_cache and step < max_new_tokens - 1:
                if cache.length < c.block_size:
                    logits = self.lm_head(self._hidden(out[:, n - 1:n], kv_cache=cache)[:, -1])
                else:  # the window slides: rebuild the cache from the last block_size tokens
                    cache.reset()
                    logits = self.lm_head(self._hidden(out[:, n - c.block_size:n], kv_cache=cache)[:, -1])
        return out

    @staticmethod
    def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
        """``(B, V)`` logits -> ``(B,)`` next token ids (greedy if temperature is 0)."""
        if temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, [-1]]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)

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
            if "wpe" in self.transformer:
                params.pop(id(self.transformer.wpe.weight), None)
        return sum(p.numel() for p in params.values())

    def parameter_counts(self) -> dict[str, int]:
        """Parameters by component: embeddings, attention, feed-forward, layer norms, output head."""
        counts = {"token embedding": self.transformer.wte.weight.numel(), "position embedding": 0,
                  "attention": 0, "feed-forward": 0, "layer norms": 0, "output head (untied)": 0}
        if "wpe" in self.transformer:
            counts["position embedding"] = self.transformer.wpe.weight.numel()
        for block in self.transformer.h:
            counts["attention"] += sum(p.numel() for p in block.attn.parameters())
            counts["feed-forward"] += sum(p.numel() for p in block.mlp.parameters())
            counts["layer norms"] += sum(p.numel() for m in (block.ln_1, block.ln_2) for p in m.parameters())
        counts["layer norms"] += sum(p.numel() for p in self.transformer.ln_f.parameters())
        if not self.config.tie_weights:
            counts["output head (untied)"] = self.lm_head.weight.numel()
        return counts

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> float:
        """Approximate FLOPs per token, following Kaplan et al. (2020, §2.1, Table 1).

        Forward pass: ``2 N + 2 n_layer n_ctx n_embd`` with N the non-embedding parameters and
        ``n_ctx`` the context length (``seq_len``, default ``block_size``); the second term is
        attention's scores and weighted sum. Training (forward + backward) is three times that,
        hence the familiar ``C ≈ 6 N D`` (FACTS.md §B; the PaLM paper's appendix B uses the same
        count, with ``6N + 12 L H Q T``). Embedding look-ups and the output projection are left
        out, as in Kaplan et al.
        """
        c = self.config
        n_ctx = c.block_size if seq_len is None else seq_len
        forward = 2 * self.num_parameters(exclude_embeddings=True) + 2 * c.n_layer * n_ctx * c.n_embd
        return float(3 * forward if training else forward)
