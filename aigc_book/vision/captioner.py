"""Two image captioners with one API: one attends over every patch, the other sees one pooled vector.

Introduced in chapter 7, section "A captioner with cross-attention"; the baseline in chapter 7,
section "A baseline that sees one vector"; the attention maps in chapter 7, section "Where the
decoder looks".

* :class:`Captioner` is an encoder–decoder Transformer (Vaswani et al. 2017, arXiv:1706.03762):
  a ViT-style :class:`~aigc_book.vision.patches.ImageEncoder` turns the picture into a memory of
  ``N`` patch vectors, and a decoder of :class:`~aigc_book.layers.cross_attention.DecoderBlock`\\ s
  (causal self-attention, cross-attention to the memory, feed-forward) predicts the caption one
  token at a time. Every token may look at every patch: "Show, Attend and Tell" (Xu et al. 2015,
  arXiv:1502.03044) with a Transformer in place of the LSTM.
* :class:`PooledCaptioner` is the baseline without attention over the image: the encoder's ``N``
  patch outputs are averaged into **one** vector, projected, and fed to a plain GPT decoder
  (:class:`~aigc_book.models.gpt.GPT`, no cross-attention) as an extra first input embedding, as
  "Show and Tell" fed its CNN feature to an LSTM (Vinyals et al. 2015, arXiv:1411.4555, §3.1).

Both have ``forward(images, tokens, targets=None) -> (logits, loss)``, ``decode(memory, tokens)``
and greedy ``generate(images, max_new_tokens, bos_id, eos_id)``, so the chapter trains and scores
them with the same code (:func:`caption_batch` and :func:`caption_loss` plug into
:class:`aigc_book.training.trainer.Trainer`). Generation encodes the pictures once and then
recomputes the decoder over the whole prefix at every step, without a KV cache: the captions are
about 8 tokens long, so a cache would save little and add code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.checks import is_int
from aigc_book.layers.block import LayerNorm, init_gpt2_weights
from aigc_book.layers.checks import check_heads, check_token_ids
from aigc_book.layers.cross_attention import DecoderBlock
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.vision.patches import ImageEncoder, check_patch_size

__all__ = [
    "CaptionerConfig",
    "CaptionerOutput",
    "Captioner",
    "PooledCaptioner",
    "caption_batch",
    "caption_loss",
]

IGNORE = -100  # a target equal to this (or to the config's pad_id) adds nothing to the loss


@dataclass(frozen=True)
class CaptionerConfig:
    """Everything that fixes a captioner's shape (both :class:`Captioner` and :class:`PooledCaptioner`).

    Attributes:
        vocab_size: number of token ids ``V`` (``CaptionTokenizer().vocab_size`` is 18).
        image_size, patch_size, channels: pictures are ``(channels, image_size, image_size)``, cut
            into ``(image_size / patch_size)^2`` patches.
        n_embd, n_head: width ``C`` and heads of every layer (``C % n_head == 0``).
        n_enc_layer, n_dec_layer: depth of the image encoder and of the caption decoder.
        max_len: longest token sequence the decoder reads (``<bos>`` included).
        dropout: on embeddings, attention weights and residual branches (training only).
        pad_id: the padding token; targets equal to it are ignored by the loss.
    """

    vocab_size: int
    image_size: int
    patch_size: int
    channels: int = 3
    n_embd: int = 64
    n_head: int = 4
    n_enc_layer: int = 2
    n_dec_layer: int = 2
    max_len: int = 16
    dropout: float = 0.0
    pad_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "image_size", "patch_size", "channels", "n_embd", "n_head", "n_enc_layer",
                     "n_dec_layer", "max_len"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive int, got {value!r}")
        check_patch_size(self.image_size, self.patch_size)
        check_heads(self.n_embd, self.n_head)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout!r}")
        if not is_int(self.pad_id) or not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"{type(self).__name__}.pad_id must be a token id in [0, {self.vocab_size}), "
                             f"got {self.pad_id!r}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class CaptionerOutput:
    """What a captioner's ``forward`` returns; unpacks as ``logits, loss``.

    Attributes:
        logits: ``(B, T, vocab_size)``, the next-token scores after each input token.
        loss: mean cross-entropy over targets that are neither ``pad_id`` nor -100 (None without targets).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None

    def __iter__(self):
        return iter((self.logits, self.loss))


class _CaptionModel(nn.Module):
    """What both captioners share: the image encoder, the loss, greedy generation, parameter counts."""

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        if not isinstance(config, CaptionerConfig):
            raise TypeError(f"{type(self).__name__} expects a CaptionerConfig, got {type(config).__name__}")
        self.config = c = config
        self.encoder = ImageEncoder(c.image_size, c.patch_size, c.channels, c.n_embd, c.n_head, c.n_enc_layer,
                                    c.dropout)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures ``(B, channels, S, S)`` -> memory ``(B, n_patches, n_embd)``."""
        return self.encoder(images)

    def decode(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, V)`` of the tokens ``(B, T)`` given the memory ``(B, N, C)``."""
        raise NotImplementedError

    def _check_tokens(self, tokens: torch.Tensor, batch: int) -> None:
        check_token_ids(tokens, self.config.vocab_size)
        if tokens.size(0) != batch:
            raise ValueError(f"tokens have batch size {tokens.size(0)} but there are {batch} images")
        if tokens.size(1) > self.config.max_len:
            raise ValueError(f"captions of {tokens.size(1)} tokens are longer than max_len={self.config.max_len}")

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """``images`` ``(B, ch, S, S)``, ``tokens`` ``(B, T)`` (``<bos>`` first) -> :class:`CaptionerOutput`.

        ``targets`` ``(B, T)``: the next token after each input token; ``pad_id`` and -100 are ignored.
        """
        logits = self.decode(self.encode(images), tokens)  # (B, T, V)
        loss = None
        if targets is not None:
            if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != tuple(tokens.shape):
                got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
                raise ValueError(f"targets must have the shape of tokens (B, T) = {tuple(tokens.shape)}, got {got}")
            targets = targets.masked_fill(targets == self.config.pad_id, IGNORE)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        return CaptionerOutput(logits, loss)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_new_tokens: int, bos_id: int,
                 eos_id: int | None = None) -> torch.Tensor:
        """Greedy captions: ``(B, 1 + n)`` ids, ``<bos>`` first, ``n <= max_new_tokens``.

        Each step appends the most probable next token of every row. After a row's ``eos_id`` it gets
        ``pad_id``; the loop stops early once every row has ended. Runs in eval mode (no dropout) and
        restores the mode. The pictures are encoded once; the decoder reruns on the whole prefix at
        each step (no KV cache: for ~8-token captions that costs little).
        """
        c = self.config
        if not is_int(max_new_tokens) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if max_new_tokens > c.max_len:
            raise ValueError(f"max_new_tokens={max_new_tokens} needs prefixes longer than max_len={c.max_len}")
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
            if value is not None and (not is_int(value)
                                      or not 0 <= value < c.vocab_size):
                raise ValueError(f"{name} must be a token id in [0, {c.vocab_size}), got {value!r}")
        was_training = self.training
        self.eval()
        try:
            memory = self.encode(images)  # (B, N, C), once
            seq = torch.full((images.size(0), 1), bos_id, dtype=torch.long, device=memory.device)  # (B, 1)
            done = torch.zeros(images.size(0), dtype=torch.bool, device=memory.device)
            for _ in range(max_new_tokens):
                nxt = self.decode(memory, seq)[:, -1].argmax(dim=-1)  # (B,)
                if eos_id is not None:
                    nxt = nxt.masked_fill(done, c.pad_id)
                    done = done | (nxt == eos_id)
                seq = torch.cat([seq, nxt[:, None]], dim=1)  # (B, t + 1)
                if eos_id is not None and bool(done.all()):
                    break
        finally:
            self.train(was_training)
        return seq

    def num_parameters(self) -> int:
        """Number of parameters, a tied matrix counted once."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


class Captioner(_CaptionModel):
    """Image encoder + a decoder of cross-attention blocks (encoder–decoder Transformer).

    Decoder layout (GPT-2 names): token embedding ``wte``, learned positions ``wpe``, ``n_dec_layer``
    pre-LN :class:`DecoderBlock`\\ s ``h``, final LayerNorm ``ln_f``, output head ``lm_head`` tied to
    ``wte``.
    """

    def __init__(self, config: CaptionerConfig):
        super().__init__(config)
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.max_len, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.h = nn.ModuleList(DecoderBlock(c.n_embd, c.n_head, c.dropout) for _ in range(c.n_dec_layer))
        self.ln_f = LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        # GPT-2's initialisation for the decoder (the encoder initialised itself for its own depth)
        init_gpt2_weights(nn.ModuleList([self.wte, self.wpe, self.h, self.lm_head]), c.n_dec_layer)
        self.lm_head.weight = self.wte.weight  # one (V, C) matrix, two roles

    def decode(self, memory: torch.Tensor, tokens: torch.Tensor, *, need_weights: bool = False):
        """Logits ``(B, T, V)``; with ``need_weights`` also one ``(B, n_head, T, N)`` cross-attention
        weight tensor per layer."""
        self._check_tokens(tokens, memory.size(0))
        T = tokens.size(1)
        x = self.drop(self.wte(tokens) + self.wpe.weight[:T])  # (B, T, C)
        maps = []
        for block in self.h:
            x = block(x, memory, need_weights=need_weights)
            if need_weights:
                x, w = x
                maps.append(w)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return (logits, maps) if need_weights else logits

    @torch.no_grad()
    def cross_attention_maps(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Where each token looks: ``(n_dec_layer, B, n_head, T, n_patches)``, each row summing to one.

        Row ``[layer, b, head, t]`` is how the query after token ``t`` spreads its attention over the
        patches (written-out attention, eval mode); :func:`aigc_book.vision.patches.patches_to_image_grid`
        turns it into a picture.
        """
        was_training = self.training
        self.eval()
        try:
            _, maps = self.decode(self.encode(images), tokens, need_weights=True)
        finally:
            self.train(was_training)
        return torch.stack(maps)


class PooledCaptioner(_CaptionModel):
    """The baseline: the mean of the patch outputs, projected, is the first input of a plain GPT.

    The decoder reads ``[v, wte(<bos>), wte(w_1), ...]`` with ``v = img_proj(mean_n memory_n)``
    (Show and Tell, Vinyals et al. 2015, arXiv:1411.4555); the output after ``v`` is dropped, so
    the logits line up with the tokens as in :class:`Captioner`. It never sees more than that one
    vector of the picture.
    """

    def __init__(self, config: CaptionerConfig):
        super().__init__(config)
        c = config
        self.img_proj = nn.Linear(c.n_embd, c.n_embd)
        self.decoder = GPT(TransformerConfig(vocab_size=c.vocab_size, block_size=c.max_len + 1,
                                             n_layer=c.n_dec_layer, n_head=c.n_head, n_embd=c.n_embd,
                                             dropout=c.dropout))
        init_gpt2_weights(self.img_proj, c.n_dec_layer)

    def image_vector(self, memory: torch.Tensor) -> torch.Tensor:
        """The one vector the decoder gets: ``img_proj(memory.mean(1))``, ``(B, C)``."""
        return self.img_proj(memory.mean(dim=1))  # (B, C)

    def decode(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        self._check_tokens(tokens, memory.size(0))  # the inputs_embeds path does not check them
        v = self.image_vector(memory)[:, None]  # (B, 1, C)
        x = torch.cat([v, self.decoder.transformer.wte(tokens)], dim=1)  # (B, 1 + T, C)
        return self.decoder(inputs_embeds=x).logits[:, 1:]  # (B, T, V): drop the output after v


def caption_batch(images: torch.Tensor, tokens: torch.Tensor, batch_size: int, generator: torch.Generator) -> dict:
    """A random batch for :class:`~aigc_book.training.trainer.Trainer`: rows drawn with replacement.

    ``tokens`` ``(N, L)`` are whole captions ``<bos> ... <eos> <pad>...``
    (:meth:`aigc_book.vision.shapes.CaptionTokenizer.batch`); the inputs are ``tokens[:, :-1]`` and
    the targets ``tokens[:, 1:]`` (padding there is ignored by the loss).
    """
    if images.size(0) != tokens.size(0):
        raise ValueError(f"need one caption per image: {images.size(0)} images, {tokens.size(0)} captions")
    if tokens.dim() != 2 or tokens.size(1) < 2:
        raise ValueError(f"tokens must be (N, L) with L >= 2 (<bos> and at least one more), got {tuple(tokens.shape)}")
    rows = torch.randint(images.size(0), (batch_size,), generator=generator)
    seq = tokens[rows]
    return {"images": images[rows], "tokens": seq[:, :-1], "targets": seq[:, 1:]}


def caption_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy of a captioner on a :func:`caption_batch` (a Trainer ``loss_fn``)."""
    return model(batch["images"], batch["tokens"], batch["targets"]).loss
