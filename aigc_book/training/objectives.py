"""Pretraining objectives: how each builds its batches, and the loss it minimises.

Introduced in chapter 3, section "Five objectives on one corpus". Each objective is a pair:
a *batch function* (token ids -> model inputs, targets, masks) and a *loss function*
``loss_fn(model, batch) -> scalar tensor`` that :class:`aigc_book.training.trainer.Trainer` calls.

===========================  =================================================================
objective                    what is predicted from what
===========================  =================================================================
causal LM (GPT)              every token from the tokens before it (Radford et al. 2018)
masked LM (BERT)             15% selected tokens from the whole corrupted sequence; of those
                             80% -> [MASK], 10% -> random token, 10% unchanged (Devlin et al. 2019)
next-sentence prediction     is segment B the true continuation of A? 50/50 (Devlin et al. 2019);
                             RoBERTa found it can be dropped (Liu et al. 2019)
permutation LM (XLNet)       every token from the tokens *earlier in a sampled factorisation
                             order*; the sequence itself is not shuffled (Yang et al. 2019)
span corruption (T5)         15% of tokens, in spans of mean length 3, from the text with each
                             span replaced by a sentinel (Raffel et al. 2020)
===========================  =================================================================

Targets use ``-100`` for "no loss here" (PyTorch's ``ignore_index``). Boolean attention masks are
True where a query may attend to a key, broadcastable to ``(B, n_head, T, T)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100

__all__ = [
    "IGNORE",
    "SpecialTokens",
    "cross_entropy_written_out",
    "causal_lm_batch",
    "sequence_lm_batch",
    "causal_lm_loss",
    "mask_tokens",
    "EncoderForPretraining",
    "mlm_batch",
    "nsp_batch",
    "mlm_loss",
    "mlm_nsp_loss",
    "sample_factorization_ranks",
    "two_stream_mask",
    "plm_batch",
    "two_stream_logits",
    "plm_loss",
    "random_spans_noise_mask",
    "span_corrupt",
    "span_corruption_batch",
    "prefix_lm_mask",
    "span_corruption_loss",
]


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens appended after a base vocabulary of ``n_regular`` symbols."""

    n_regular: int
    n_sentinels: int = 8

    @property
    def mask(self) -> int:
        return self.n_regular

    @property
    def cls(self) -> int:
        return self.n_regular + 1

    @property
    def sep(self) -> int:
        return self.n_regular + 2

    @property
    def sentinels(self) -> list[int]:
        return list(range(self.n_regular + 3, self.n_regular + 3 + self.n_sentinels))

    @property
    def vocab_size(self) -> int:
        return self.n_regular + 3 + self.n_sentinels

    def names(self) -> list[str]:
        """Display strings for the special ids, in id order (append to the base ``itos``)."""
        return ["␣", "|", "‖"] + [chr(0x2460 + i) for i in range(self.n_sentinels)]  # ␣=[MASK] |=[CLS] ‖=[SEP] ①②…


def _generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        raise ValueError("pass a torch.Generator: objectives never draw from the global RNG")
    return generator


# ---------------------------------------------------------------------------------------------
# Causal language modelling (GPT)
# ---------------------------------------------------------------------------------------------


def cross_entropy_written_out(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Mean of :math:`-\log \mathrm{softmax}(z_t)_{y_t}` over positions whose target is not -100.

    The same number as ``F.cross_entropy(..., ignore_index=-100)``, spelled out for the chapter.
    """
    logp = logits.log_softmax(dim=-1)  # (..., V)
    keep = targets != IGNORE
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (...,)
    return -(picked * keep).sum() / keep.sum().clamp(min=1)


def causal_lm_batch(data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator) -> dict:
    """Random windows of a long 1-D token stream: ``x = data[i:i+T]``, ``y = data[i+1:i+T+1]``.

    The target at position t is the input at t + 1: the model learns
    :math:`p(x_{t+1} \\mid x_{\\le t})` for every t of every window at once.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D token stream, got shape {tuple(data.shape)}")
    if len(data) < block_size + 1:
        raise ValueError(f"data has {len(data)} tokens; need at least block_size + 1 = {block_size + 1}")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=_generator(generator))
    offsets = torch.arange(block_size)
    x = data[ix[:, None] + offsets]  # (B, T)
    y = data[ix[:, None] + offsets + 1]  # (B, T)
    return {"idx": x, "targets": y}


def sequence_lm_batch(seqs: torch.Tensor, batch_size: int, generator: torch.Generator) -> dict:
    """Causal-LM batch from whole sequences (``(N, T + 1)``, each starting with BOS): rows drawn at random."""
    rows = torch.randint(len(seqs), (batch_size,), generator=_generator(generator))
    s = seqs[rows]
    return {"idx": s[:, :-1], "targets": s[:, 1:]}


def causal_lm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy (nats/token) of a model with ``forward(idx, targets) -> (logits, loss)``."""
    _, loss = model(batch["idx"], targets=batch["targets"])
    return loss


# ---------------------------------------------------------------------------------------------
# Masked language modelling and next-sentence prediction (BERT)
# ---------------------------------------------------------------------------------------------


def mask_tokens(
    tokens: torch.Tensor,
    special: SpecialTokens,
    generator: torch.Generator,
    select_prob: float = 0.15,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    protected: tuple[int, ...] = (),
    random_low: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: returns ``(inputs, labels)``.

    Each position not in ``protected`` (and not a special token) is *selected* with probability
    ``select_prob``. A selected position becomes ``[MASK]`` with probability ``mask_prob``, a token
    drawn uniformly from ``[random_low, n_regular)`` with probability ``random_prob``, and stays as it
    is otherwise. ``labels`` hold the original token at selected positions and -100 elsewhere, so
    the loss is computed on the selected positions only (also the unchanged ones: the model cannot
    tell which inputs were left alone, so it must model every input token).
    """
    g = _generator(generator)
    if not 0 < select_prob < 1 or mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1:
        raise ValueError(f"bad rates: select={select_prob}, mask={mask_prob}, random={random_prob}")
    eligible = tokens < special.n_regular
    for p in protected:
        eligible &= tokens != p
    u = torch.rand(tokens.shape, generator=g)
    selected = eligible & (u < select_prob)
    v = torch.rand(tokens.shape, generator=g)
    to_mask = selected & (v < mask_prob)
    to_random = selected & (v >= mask_prob) & (v < mask_prob + random_prob)
    random_tokens = torch.randint(random_low, special.n_regular, tokens.shape, generator=g)
    inputs = torch.where(to_mask, torch.full_like(tokens, special.mask), tokens)
    inputs = torch.where(to_random, random_tokens, inputs)
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE))
    return inputs, labels


class EncoderForPretraining(nn.Module):
    """A bidirectional encoder with BERT's two heads.

    * MLM head: hidden ``(B, T, C)`` -> token logits ``(B, T, V)``, its matrix tied to the input
      embedding (as in BERT), plus a bias.
    * NSP head: the hidden state at position 0 (the ``[CLS]`` token) -> 2 logits (0 = random, 1 = next).

    ``encoder`` is a bidirectional :class:`aigc_book.models.transformer.Transformer` (``causal=False``).
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        V, C = encoder.wte.weight.shape
        self.mlm_bias = nn.Parameter(torch.zeros(V))
        self.nsp_head = nn.Linear(C, 2)

    def forward(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None):
        h = self.encoder(idx, padding_mask=padding_mask).last_hidden_state  # (B, T, C)
        token_logits = h @ self.encoder.wte.weight.T + self.mlm_bias  # (B, T, V)
        nsp_logits = self.nsp_head(h[:, 0])  # (B, 2)
        return token_logits, nsp_logits


def mlm_batch(seqs: torch.Tensor, batch_size: int, special: SpecialTokens, generator: torch.Generator,
              protected: tuple[int, ...] = (0,), **mask_kwargs) -> dict:
    """MLM-only batch from whole sequences: rows drawn at random, then :func:`mask_tokens`."""
    g = _generator(generator)
    rows = torch.randint(len(seqs), (batch_size,), generator=g)
    x = seqs[rows]
    inputs, labels = mask_tokens(x, special, g, protected=protected, **mask_kwargs)
    return {"idx": inputs, "mlm_labels": labels, "original": x}


def nsp_batch(seqs: torch.Tensor, batch_size: int, special: SpecialTokens, generator: torch.Generator,
              mlm: bool = True, next_prob: float = 0.5, **mask_kwargs) -> dict:
    """``[CLS] A [SEP] B [SEP]`` pairs for next-sentence prediction (with MLM on top when ``mlm``).

    ``seqs`` is ``(N, 1 + 2L)``: a BOS then two halves of length L. A is a row's first half; B is
    that row's second half with probability ``next_prob`` (label 1) or the second half of a
    different random row (label 0).
    """
    g = _generator(generator)
    n, length = seqs.shape
    if (length - 1) % 2 or length < 3:
        raise ValueError(f"rows must be BOS + two equal halves, got length {length}")
    half = (length - 1) // 2
    rows = torch.randint(n, (batch_size,), generator=g)
    is_next = torch.rand(batch_size, generator=g) < next_prob
    other = (rows + torch.randint(1, n, (batch_size,), generator=g)) % n  # always a different row
    a = seqs[rows, 1 : 1 + half]
    b = torch.where(is_next[:, None], seqs[rows, 1 + half :], seqs[other, 1 + half :])
    col = lambda v: torch.full((batch_size, 1), v, dtype=seqs.dtype)  # noqa: E731
    x = torch.cat([col(special.cls), a, col(special.sep), b, col(special.sep)], dim=1)  # (B, 2L + 3)
    batch = {"idx": x, "nsp_labels": is_next.long(), "original": x}
    if mlm:
        batch["idx"], batch["mlm_labels"] = mask_tokens(x, special, g, **mask_kwargs)
    else:
        batch["mlm_labels"] = torch.full_like(x, IGNORE)
    return batch


def mlm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Cross-entropy on the selected positions only (labels != -100)."""
    token_logits, _ = model(batch["idx"])
    return F.cross_entropy(token_logits.flatten(0, 1), batch["mlm_labels"].flatten(), ignore_index=IGNORE)


def mlm_nsp_loss(model: nn.Module, batch: dict, nsp_weight: float = 1.0) -> torch.Tensor:
    """BERT's pretraining loss: MLM cross-entropy + ``nsp_weight`` x NSP binary cross-entropy."""
    token_logits, nsp_logits = model(batch["idx"])
    loss = F.cross_entropy(nsp_logits, batch["nsp_labels"]) * nsp_weight
    if (batch["mlm_labels"] != IGNORE).any():
        loss = loss + F.cross_entropy(token_logits.flatten(0, 1), batch["mlm_labels"].flatten(), ignore_index=IGNORE)
    return loss


# ---------------------------------------------------------------------------------------------
# Permutation language modelling (XLNet)
# ---------------------------------------------------------------------------------------------


def sample_factorization_ranks(
    batch_size: int, length: int, generator: torch.Generator, n_fixed: int = 0
) -> torch.Tensor:
    """``rank[b, i]`` = where position i comes in a uniformly random factorisation order.

    The first ``n_fixed`` positions (e.g. a BOS) keep ranks ``0..n_fixed-1``: they come first and are
    never predicted. The *sequence* is not reordered: a rank only says who may see whom.
    """
    g = _generator(generator)
    keys = torch.rand(batch_size, length, generator=g)
    keys[:, :n_fixed] = -1.0 - torch.arange(n_fixed, 0, -1, dtype=keys.dtype)  # smallest keys, in order
    order = keys.argsort(dim=1)  # order[b, r] = the position predicted r-th
    return order.argsort(dim=1)  # (B, T) inverse permutation


def two_stream_mask(rank: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, 1, 2T, 2T)`` mask for XLNet's two streams run as one sequence of length 2T.

    Rows/columns ``0..T-1`` are the *content* stream (token + position), ``T..2T-1`` the *query*
    stream (position + a [MASK] embedding, no content). With ``r`` the ranks:

    * content i sees content j iff ``r[j] <= r[i]`` (itself included: it is not predicted from here);
    * query i sees content j iff ``r[j] < r[i]`` — never its own content, so it cannot copy the
      answer — and sees its own query slot (which holds only its position);
    * content never sees query slots.

    Because every layer's queries read the previous layer's keys and values, this is exactly the
    two-stream attention of Yang et al. (2019, §2.3) with shared weights.
    """
    B, T = rank.shape
    ri, rj = rank[:, :, None], rank[:, None, :]  # (B, T, 1), (B, 1, T)
    cc = rj <= ri  # (B, T, T)
    qc = rj < ri
    qq = torch.eye(T, dtype=torch.bool).expand(B, T, T)
    top = torch.cat([cc, torch.zeros_like(cc)], dim=2)  # (B, T, 2T)
    bottom = torch.cat([qc, qq], dim=2)  # (B, T, 2T)
    return torch.cat([top, bottom], dim=1)[:, None]  # (B, 1, 2T, 2T)


def plm_batch(
    seqs: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    predict_fraction: float = 1.0,
    identity_order: bool = False,
) -> dict:
    """PLM batch: whole sequences (BOS first, never predicted), sampled ranks, targets.

    With ``predict_fraction < 1`` only the last fraction of each order is predicted (XLNet's
    *partial prediction*, their K = 1 / predict_fraction); earlier tokens act as context.
    ``identity_order`` gives ranks 0..T-1: left-to-right, i.e. ordinary causal LM.
    """
    g = _generator(generator)
    rows = torch.randint(len(seqs), (batch_size,), generator=g)
    x = seqs[rows]
    B, T = x.shape
    if identity_order:
        rank = torch.arange(T).expand(B, T).clone()
    else:
        rank = sample_factorization_ranks(B, T, g, n_fixed=1)
    n_pred = max(1, int(round((T - 1) * predict_fraction)))
    predicted = rank >= T - n_pred
    targets = torch.where(predicted, x, torch.full_like(x, IGNORE))
    return {"idx": x, "rank": rank, "targets": targets}


def two_stream_logits(model: nn.Module, idx: torch.Tensor, rank: torch.Tensor, query_token: int) -> torch.Tensor:
    """Query-stream logits ``(B, T, V)`` of a :class:`aigc_book.models.gpt.GPT` run as XLNet's two streams.

    The content stream is the usual input (token + position). The query stream at position i holds
    the embedding of ``query_token`` (a [MASK] id) plus position i's encoding, so positions keep
    their encodings and the prediction for i depends on *where* i is, never on *what* is there.
    Both streams go through the same blocks in one pass of length 2T under :func:`two_stream_mask`.
    Needs ``2T`` only in the attention, not in the position table (positions are 0..T-1 twice).
    """
    B, T = idx.shape
    content = model.transformer.wte(idx)  # (B, T, C)
    query = model.transformer.wte(torch.full_like(idx, query_token))  # (B, T, C): same vector everywhere
    positions = torch.arange(T, device=idx.device).repeat(2)  # 0..T-1 for each stream
    out = model(
        inputs_embeds=torch.cat([content, query], dim=1),
        position_ids=positions,
        attn_mask=two_stream_mask(rank).to(idx.device),
    )
    return out.logits[:, T:]  # (B, T, V): the query stream only


def plm_loss(model: nn.Module, batch: dict, query_token: int | None = None) -> torch.Tensor:
    """Cross-entropy of the query stream on the predicted positions.

    ``query_token`` defaults to ``batch["query_token"]``.
    """
    q = batch["query_token"] if query_token is None else query_token
    logits = two_stream_logits(model, batch["idx"], batch["rank"], q)
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE)


# ---------------------------------------------------------------------------------------------
# Span corruption (T5)
# ---------------------------------------------------------------------------------------------


def random_spans_noise_mask(
    length: int, generator: torch.Generator, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> torch.Tensor:
    """T5's noise mask: ``round(length * density)`` noise tokens in ``round(noise / mean)`` spans.

    The noise tokens and the kept tokens are each split into that many non-empty runs at random
    cut points, and the runs alternate (kept first), as in T5's ``random_spans_noise_mask``.
    """
    g = _generator(generator)
    n_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    n_spans = max(int(round(n_noise / mean_span_length)), 1)
    n_keep = length - n_noise
    if n_spans > n_keep:
        raise ValueError(f"length {length} too short for {n_spans} spans")

    def segment(n_items: int) -> torch.Tensor:  # random composition of n_items into n_spans parts
        cuts = torch.randperm(n_items - 1, generator=g)[: n_spans - 1] + 1
        edges = torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([n_items])])
        return edges.diff()

    noise_lengths, keep_lengths = segment(n_noise), segment(n_keep)
    mask = torch.zeros(length, dtype=torch.bool)
    pos = 0
    for k, n in zip(keep_lengths.tolist(), noise_lengths.tolist()):
        pos += k
        mask[pos : pos + n] = True
        pos += n
    return mask


def span_corrupt(
    tokens: torch.Tensor, noise_mask: torch.Tensor, sentinels: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with each noise span replaced by one sentinel; targets listing ``sentinel_k span_k``.

    >>> span_corrupt(torch.tensor([5, 6, 7, 8, 9]), torch.tensor([0, 1, 1, 0, 1]).bool(), [100, 101, 102])
    (tensor([  5, 100,   8, 101]), tensor([100,   6,   7, 101,   9, 102]))
    """
    starts = noise_mask & ~torch.cat([torch.tensor([False]), noise_mask[:-1]])
    n_spans = int(starts.sum())
    if n_spans + 1 > len(sentinels):
        raise ValueError(f"{n_spans} spans need {n_spans + 1} sentinels, only {len(sentinels)} given")
    span_id = starts.cumsum(0) - 1  # which span each noise token belongs to
    sent = torch.tensor(sentinels, dtype=tokens.dtype)
    keep_or_start = ~noise_mask | starts
    inputs = torch.where(starts, sent[span_id.clamp(min=0)], tokens)[keep_or_start]
    pieces = []
    for k in range(n_spans):
        pieces += [sent[k : k + 1], tokens[noise_mask & (span_id == k)]]
    targets = torch.cat(pieces + [sent[n_spans : n_spans + 1]])  # a final sentinel closes the list
    return inputs, targets


def prefix_lm_mask(total: int, prefix: int) -> torch.Tensor:
    """Boolean ``(total, total)``: the first ``prefix`` positions see each other, the rest are causal."""
    m = torch.ones(total, total, dtype=torch.bool).tril()
    m[:prefix, :prefix] = True
    return m


def span_corruption_batch(
    seqs: torch.Tensor,
    batch_size: int,
    special: SpecialTokens,
    generator: torch.Generator,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> dict:
    """T5's objective for a decoder-only model: ``inputs [SEP] targets`` with a prefix-LM mask.

    T5 itself is an encoder-decoder; here the corrupted input is read bidirectionally as a prefix
    (up to and including ``[SEP]``) and the targets are generated causally after it, with loss on the
    targets only. ``seqs`` rows are BOS + tokens; the BOS is kept in front of the input.
    With a fixed length, every row has the same input and target lengths, so no padding is needed.
    """
    g = _generator(generator)
    rows = torch.randint(len(seqs), (batch_size,), generator=g)
    xs, ys = [], []
    for r in rows.tolist():
        body = seqs[r, 1:]
        noise = random_spans_noise_mask(len(body), g, noise_density, mean_span_length)
        inp, tgt = span_corrupt(body, noise, special.sentinels)
        prefix = torch.cat([seqs[r, :1], inp, torch.tensor([special.sep])])
        full = torch.cat([prefix, tgt])
        xs.append(full[:-1])
        ys.append(torch.cat([torch.full((len(prefix) - 1,), IGNORE), tgt]))
    x, y = torch.stack(xs), torch.stack(ys)
    n_prefix = int((y[0] == IGNORE).sum()) + 1  # positions 0..n_prefix-1 are the prefix incl. [SEP]
    return {"idx": x, "targets": y, "attn_mask": prefix_lm_mask(x.size(1), n_prefix), "n_prefix": n_prefix}


def span_corruption_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Cross-entropy on the target list only, under the prefix-LM mask."""
    _, loss = model(batch["idx"], targets=batch["targets"], attn_mask=batch["attn_mask"])
    return loss
