r"""Repeated random tokens, the scores that find induction heads, and a training run that shows them form.

Introduced in chapter 4, section "In-context learning and induction heads". It follows Olsson et
al. (2022), "In-context Learning and Induction Heads", and Elhage et al. (2021), "A Mathematical
Framework for Transformer Circuits".

* **Data** (:func:`repeated_tokens`): uniform random tokens in which a random segment of ``L``
  tokens, starting at a random position ``s``, is copied to a later random position ``r >= s + L``.
  Outside the copy nothing can be predicted (the loss stays at :math:`\ln V`); inside it, every token
  but the first can be predicted by looking back: after ``A`` came ``B`` last time. With ``s`` and
  ``r`` random, no fixed position or offset solves it. (With ``seq_len = 2 L`` the only choice is
  ``s = 0, r = L``: "a random half repeated". There a one-layer model, which cannot form an
  induction head, learns to look back ``L - 1`` positions instead: in our run (``V = 32, T = 24``)
  its loss on the copy was 0.12 after 200 steps and 0.02 after 800, with a prefix-matching score of 0.99.)
* **Per-token loss** (:func:`per_token_loss`) and the loss on the copy against the loss on the
  segment's first occurrence (:func:`first_vs_repeat_loss`).
* **In-context learning score** (:func:`in_context_learning_score`). Olsson et al. define it as "the
  loss of the 500th token in the context minus the average loss of the 50th token in the context,
  averaged over dataset examples": negative when later tokens are predicted better, i.e. when the
  model uses its context. On repeated tokens the analogue is ``repeat - first`` loss.
* **Prefix-matching score** (:func:`prefix_matching_score`): on repeated random tokens, the
  attention a head pays from each token of the copy to the token *right after* that token's earlier
  occurrence, averaged (Olsson et al.'s test of an induction head: it attends to the token that
  induction says comes next).
* **Previous-token score** (:func:`previous_token_score`): the attention from each token to the one
  just before it, the first-layer heads that induction heads compose with (Elhage et al.).
* **Training** (:func:`train_induction`): logs all of the above over the steps, so that the sudden
  drop of the loss on the copy (Olsson et al.'s "phase change") can be plotted next to the scores.

Attention maps have the layout of ``GPT.attention_maps``: ``(n_layer, B, n_head, T, T)``; a single
layer's ``(B, n_head, T, T)`` works too. Scores come back per head: ``(n_layer, n_head)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.checks import check_int, is_int

__all__ = [
    "RepeatBatch",
    "repeated_tokens",
    "logits_of",
    "per_token_loss",
    "first_vs_repeat_loss",
    "in_context_learning_score",
    "mean_attention_to",
    "prefix_matching_score",
    "previous_token_score",
    "InductionLog",
    "train_induction",
    "phase_change_step",
]


# ---------------------------------------------------------------------------------------------
# Data: random tokens with one repeated segment
# ---------------------------------------------------------------------------------------------


@dataclass
class RepeatBatch:
    """A batch of random tokens in which ``tokens[b, r:r+L] == tokens[b, s:s+L]``.

    Attributes:
        tokens: ``(B, T)`` token ids.
        source_start: ``(B,)`` where each segment first occurs (``s``).
        repeat_start: ``(B,)`` where its copy starts (``r``, with ``r >= s + L`` and ``r + L <= T``).
        segment_len: ``L``, the length of the segment (the same for the whole batch).
    """

    tokens: torch.Tensor
    source_start: torch.Tensor
    repeat_start: torch.Tensor
    segment_len: int

    def induction_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(queries, keys)``, each ``(B, L)``: query ``r + k`` and the key an induction head attends
        to, ``s + k + 1``, the token that followed the earlier occurrence of token ``r + k``."""
        k = torch.arange(self.segment_len, device=self.tokens.device)  # (L,)
        queries = self.repeat_start[:, None] + k  # (B, L)
        keys = self.source_start[:, None] + k + 1  # (B, L); <= s + L <= r, never in the future
        return queries, keys


def repeated_tokens(batch_size: int, *, seq_len: int, segment_len: int, vocab_size: int,
                    generator: torch.Generator | None = None, device: torch.device | str | None = None) -> RepeatBatch:
    """Sample a :class:`RepeatBatch`: uniform random tokens with one random segment copied later.

    Args:
        batch_size: number of sequences ``B``.
        seq_len: sequence length ``T``; at least ``2 * segment_len``.
        segment_len: length ``L >= 2`` of the repeated segment (the copy's first token is
            unpredictable, the other ``L - 1`` are predictable by induction).
        vocab_size: tokens are drawn uniformly from ``0 .. vocab_size - 1``.
        generator: a seeded ``torch.Generator`` (CPU) for a reproducible batch.
        device: where the returned tensors live.

    The distance ``d = r - s`` is uniform on ``L .. T - L`` (a one-layer model could otherwise learn
    the most common offset instead of induction), then ``s`` is uniform on ``0 .. T - L - d``.
    """
    check_int("batch_size", batch_size)
    check_int("seq_len", seq_len)
    check_int("vocab_size", vocab_size)
    if not is_int(segment_len) or segment_len < 2:
        raise ValueError(f"segment_len must be an int >= 2 (one token to match, one to predict), got {segment_len!r}")
    if 2 * segment_len > seq_len:
        raise ValueError(
            f"a segment of {segment_len} tokens and its copy need seq_len >= {2 * segment_len}, got seq_len={seq_len}"
        )
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2 for random tokens to carry information, got {vocab_size}")
    g = generator
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len), generator=g)  # (B, T)
    # the distance d = r - s is uniform on L .. T - L, so no fixed offset finds the copy; then s is
    # uniform on the T - L - d + 1 starts that leave room for the copy
    d = torch.randint(segment_len, seq_len - segment_len + 1, (batch_size,), generator=g)  # (B,)
    room = seq_len - segment_len - d + 1  # (B,) >= 1
    s = (torch.rand(batch_size, generator=g) * room).long().clamp(max=room - 1)  # (B,)
    r = s + d  # (B,)
    pos = torch.arange(seq_len)
    offset = pos[None, :] - r[:, None]  # (B, T): k for positions r + k
    inside = (offset >= 0) & (offset < segment_len)
    source = torch.where(inside, s[:, None] + offset, pos[None, :])  # (B, T): where each token is read from
    tokens = tokens.gather(1, source)
    return RepeatBatch(tokens.to(device), s.to(device), r.to(device), segment_len)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def logits_of(out) -> torch.Tensor:
    """The ``(B, T, V)`` logits in whatever ``model(idx)`` returns: a tensor, an output with ``.logits``
    (the book's ``CausalLMOutput``, Hugging Face's outputs) or a ``(logits, ...)`` tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"model(idx) must return logits, an object with .logits, or (logits, ...); got {type(out).__name__}"
    )


@torch.no_grad()
def per_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy of every predicted token, ``(B, T - 1)``: column ``t - 1`` is the loss of token ``t``,
    :math:`-\ln p(x_t \mid x_{<t})`, in nats.

    ``model(idx)`` may return logits ``(B, T, V)`` or anything :func:`logits_of` reads. Runs in eval mode
    and restores the model's mode.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.size(1) < 2:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a (B, T) tensor with T >= 2, got {shape}")
    was_training = model.training
    model.eval()
    try:
        logits = logits_of(model(tokens[:, :-1]))  # (B, T-1, V)
    finally:
        model.train(was_training)
    B, T1, V = logits.shape
    targets = tokens[:, 1:]
    return F.cross_entropy(logits.float().reshape(B * T1, V), targets.reshape(-1), reduction="none").view(B, T1)


def _check_token_losses(token_losses: torch.Tensor) -> None:
    if not isinstance(token_losses, torch.Tensor) or token_losses.dim() != 2:
        shape = tuple(token_losses.shape) if isinstance(token_losses, torch.Tensor) else type(token_losses).__name__
        raise ValueError(f"token_losses must be (B, T - 1) as returned by per_token_loss, got {shape}")


def first_vs_repeat_loss(token_losses: torch.Tensor, batch: RepeatBatch) -> tuple[float, float]:
    """Mean loss on the segment's first occurrence and on its copy: ``(first, repeat)``.

    Both average tokens ``1 .. L - 1`` of their segment (the first token of each is unpredictable),
    so the two numbers cover the same count of equally random tokens: ``first`` stays near
    :math:`\\ln V` for any model, ``repeat`` falls towards 0 once the model copies from context.
    ``token_losses`` is :func:`per_token_loss`'s ``(B, T - 1)``.
    """
    _check_token_losses(token_losses)
    B, T1 = token_losses.shape
    if batch.tokens.shape != (B, T1 + 1):
        raise ValueError(
            f"token_losses {tuple(token_losses.shape)} do not belong to a batch of tokens "
            f"{tuple(batch.tokens.shape)}: expected (B, T - 1)"
        )
    k = torch.arange(1, batch.segment_len, device=token_losses.device)  # (L-1,) offsets inside the segment
    first = token_losses.gather(1, batch.source_start[:, None].to(token_losses.device) + k - 1)  # token s+k
    repeat = token_losses.gather(1, batch.repeat_start[:, None].to(token_losses.device) + k - 1)  # token r+k
    return first.mean().item(), repeat.mean().item()


def in_context_learning_score(token_losses: torch.Tensor, *, early: int, late: int) -> float:
    """Olsson et al. (2022): loss of token ``late`` minus loss of token ``early``, averaged over the batch.

    Their definition: "the loss of the 500th token in the context minus the average loss of the 50th
    token in the context, averaged over dataset examples" (so ``late=499, early=49`` counting from
    0). Negative means the model predicts later tokens better, by using what
    it has read.

    Args:
        token_losses: ``(B, T - 1)`` from :func:`per_token_loss` (column ``t - 1`` is token ``t``).
        early, late: token positions, counted from 0, with ``1 <= early < late <= T - 1``.
    """
    _check_token_losses(token_losses)
    n = token_losses.size(1)
    for name, t in (("early", early), ("late", late)):
        if not is_int(t) or not 1 <= t <= n:
            raise ValueError(f"{name} must be a token position in 1 .. {n} (token 0 has no prediction), got {t!r}")
    if early >= late:
        raise ValueError(f"early must come before late, got early={early}, late={late}")
    return (token_losses[:, late - 1] - token_losses[:, early - 1]).mean().item()


# ---------------------------------------------------------------------------------------------
# Attention scores
# ---------------------------------------------------------------------------------------------


def _check_attention(attn: torch.Tensor) -> None:
    if not isinstance(attn, torch.Tensor) or attn.dim() not in (4, 5) or attn.size(-1) != attn.size(-2):
        shape = tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__
        raise ValueError(
            f"attention maps must be (n_layer, B, n_head, T, T) as returned by attention_maps, or one "
            f"layer's (B, n_head, T, T); got {shape}"
        )


def mean_attention_to(attn: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    r"""Mean attention weight from ``queries`` to ``keys`` for every head.

    .. math:: \mathrm{score}_{l,h} = \frac{1}{BN}\sum_{b=1}^{B}\sum_{n=1}^{N} A_{l,b,h}[q_{b,n}, k_{b,n}]

    Args:
        attn: ``(n_layer, B, n_head, T, T)`` or ``(B, n_head, T, T)`` attention weights (rows: queries).
        queries, keys: ``(B, N)`` integer positions, one pair of positions per ``n``.

    Returns ``(n_layer, n_head)`` (or ``(n_head,)`` for one layer's maps), each value in ``[0, 1]``.
    """
    _check_attention(attn)
    B, T = attn.shape[-4], attn.shape[-1]
    if queries.shape != keys.shape or queries.dim() != 2 or queries.size(0) != B:
        raise ValueError(
            f"queries and keys must both be (B, N) with B={B}, got {tuple(queries.shape)} and {tuple(keys.shape)}"
        )
    for name, pos in (("queries", queries), ("keys", keys)):
        if pos.dtype.is_floating_point or pos.dtype == torch.bool:
            raise TypeError(f"{name} must be integer positions, got dtype {pos.dtype}")
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= T):
            raise ValueError(
                f"{name} must be positions in 0 .. {T - 1}, got values in {int(pos.min())} .. {int(pos.max())}"
            )
    n_head = attn.shape[-3]
    b = torch.arange(B, device=attn.device)[:, None]  # (B, 1)
    a = attn.movedim(-3, -1)  # (..., B, T, T, n_head)
    picked = a[..., b, queries.to(attn.device), keys.to(attn.device), :]  # (..., B, N, n_head)
    return picked.reshape(*attn.shape[:-4], -1, n_head).mean(dim=-2)


def prefix_matching_score(attn: torch.Tensor, batch: RepeatBatch) -> torch.Tensor:
    """Olsson et al.'s prefix-matching score of every head on repeated random tokens.

    The mean attention from each token ``r + k`` of the copy to ``s + k + 1``, the token right after
    that token's earlier occurrence (``k = 0 .. L - 1``). An induction head scores near 1; a head
    that spreads its attention uniformly over ``i + 1`` keys scores about ``1 / (i + 1)``.

    Args:
        attn: ``(n_layer, B, n_head, T, T)`` maps of ``batch.tokens`` (or one layer's ``(B, n_head, T, T)``).
        batch: the :class:`RepeatBatch` they were computed on.
    """
    _check_attention(attn)
    if attn.shape[-4] != batch.tokens.size(0) or attn.shape[-1] != batch.tokens.size(1):
        raise ValueError(
            f"attention maps {tuple(attn.shape)} do not match the batch's tokens {tuple(batch.tokens.shape)}: "
            f"expected (..., B, n_head, T, T)"
        )
    return mean_attention_to(attn, *batch.induction_pairs())


def previous_token_score(attn: torch.Tensor) -> torch.Tensor:
    """Mean attention from each token ``i >= 1`` to token ``i - 1``, per head (Elhage et al.'s
    previous-token head scores near 1). ``attn``: ``(n_layer, B, n_head, T, T)`` or ``(B, n_head, T, T)``."""
    _check_attention(attn)
    if attn.size(-1) < 2:
        raise ValueError("previous_token_score needs sequences of at least 2 tokens")
    sub = attn.diagonal(offset=-1, dim1=-2, dim2=-1)  # (..., B, n_head, T-1): A[i, i-1]
    return sub.mean(dim=-1).mean(dim=-2)  # (..., n_head)


# ---------------------------------------------------------------------------------------------
# Training with the scores logged
# ---------------------------------------------------------------------------------------------


@dataclass
class InductionLog:
    """What :func:`train_induction` records at every evaluation.

    Attributes:
        steps: the optimiser steps at which it evaluated (0 = before training).
        train_loss: the loss of every training batch (all tokens, nats); entry ``i`` is step ``i + 1``.
        first_loss, repeat_loss: :func:`first_vs_repeat_loss` on the fixed evaluation batch.
        icl_score: ``repeat_loss - first_loss`` (negative once the model learns from context).
        prefix_matching: ``(n_evals, n_layer, n_head)`` :func:`prefix_matching_score` per head.
        previous_token: ``(n_evals, n_layer, n_head)`` :func:`previous_token_score` per head.
        seconds: wall-clock time of the whole run.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    first_loss: list[float] = field(default_factory=list)
    repeat_loss: list[float] = field(default_factory=list)
    icl_score: list[float] = field(default_factory=list)
    prefix_matching: torch.Tensor | None = None
    previous_token: torch.Tensor | None = None
    seconds: float = 0.0


def train_induction(model: nn.Module, *, steps: int, batch_size: int = 32, lr: float = 2e-3,
                    seq_len: int = 32, segment_len: int = 12, eval_every: int = 20, eval_batch_size: int = 64,
                    weight_decay: float = 0.0, seed: int = 0, progress: bool = False) -> InductionLog:
    """Train ``model`` on :func:`repeated_tokens` with AdamW and log the loss and the head scores.

    The loss is the usual next-token cross-entropy over every position; nothing tells the model
    where the copy is. Every ``eval_every`` steps (and at steps 0 and ``steps``) it measures, on one
    fixed evaluation batch, the loss on the first occurrence and on the copy and each head's
    prefix-matching and previous-token scores.

    Args:
        model: a causal LM whose ``model(idx, targets)`` returns ``(logits, loss)`` (a
            :class:`~aigc_book.incontext.attention_only.AttentionOnlyTransformer` or a GPT) and that
            has ``attention_maps(idx)`` and ``config.vocab_size``.
        steps: optimiser steps.
        batch_size, lr, weight_decay: the AdamW run (constant learning rate).
        seq_len, segment_len: the data (see :func:`repeated_tokens`).
        eval_every, eval_batch_size: how often, and on how many sequences, to measure.
        seed: seeds the training batches and the evaluation batch (the model's own initialisation is
            the caller's: seed before building it).
        progress: show a tqdm bar.
    """
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_int("eval_every", eval_every)
    check_int("eval_batch_size", eval_batch_size)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not hasattr(model, "attention_maps") or not hasattr(getattr(model, "config", None), "vocab_size"):
        raise TypeError(
            "model must have attention_maps(idx) and config.vocab_size (an AttentionOnlyTransformer or a GPT)"
        )
    block = getattr(model.config, "block_size", seq_len)
    if seq_len > block:
        raise ValueError(f"seq_len={seq_len} is longer than the model's context block_size={block}")
    vocab = model.config.vocab_size
    device = next(model.parameters()).device
    data = dict(seq_len=seq_len, segment_len=segment_len, vocab_size=vocab, device=device)
    gen = torch.Generator().manual_seed(seed)
    eval_batch = repeated_tokens(eval_batch_size, generator=torch.Generator().manual_seed(seed + 10_000), **data)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    log, pm, pt = InductionLog(), [], []

    def evaluate(step: int) -> None:
        losses = per_token_loss(model, eval_batch.tokens)
        first, repeat = first_vs_repeat_loss(losses, eval_batch)
        attn = model.attention_maps(eval_batch.tokens)  # (n_layer, B, n_head, T, T)
        pm.append(prefix_matching_score(attn, eval_batch))
        pt.append(previous_token_score(attn))
        log.steps.append(step)
        log.first_loss.append(first)
        log.repeat_loss.append(repeat)
        log.icl_score.append(repeat - first)

    start = time.perf_counter()
    model.train()
    evaluate(0)
    iterator = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="training")
    for step in iterator:
        tokens = repeated_tokens(batch_size, generator=gen, **data).tokens
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.train_loss.append(loss.item())
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    log.prefix_matching = torch.stack(pm).cpu()
    log.previous_token = torch.stack(pt).cpu()
    log.seconds = time.perf_counter() - start
    return log


def phase_change_step(log: InductionLog, *, fraction: float = 0.5) -> int | None:
    """The first logged step at which the loss on the copy fell below ``fraction`` times the loss on
    the first occurrence (``None`` if it never did): where the phase change happened."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    for step, first, repeat in zip(log.steps, log.first_loss, log.repeat_loss):
        if repeat < fraction * first:
            return step
    return None
