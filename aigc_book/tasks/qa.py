"""Extractive question answering, done right: the answer is a span of the context, found by two heads.

Introduced in chapter 4, section "Extractive question answering". The task, on the bracket language:

* **context**: a sequence of the language (BOS first);
* **question**: "where does *this* bracket close?". It is written into the input as a marker token
  (the sentinel ``①`` of :class:`~aigc_book.training.objectives.SpecialTokens`) placed just before
  the asked-about opening bracket;
* **answer**: the span from that opening bracket to its matching closer, both included.

The input is ``[CLS] context-with-marker [SEP]``, the layout of BERT's QA fine-tuning (Devlin et al.
2019, §4.2) with the question folded into the context. A bidirectional encoder
(``Transformer(causal=False)``) reads it; :class:`SpanHeads` maps each position's hidden state to a
*start* logit and an *end* logit; the loss is the mean of the cross-entropies of the true start
position and the true end position; :func:`best_span` decodes the highest-scoring span with
``start <= end < start + max_length``. Labels are *positions in the input*, integers in ``[0, T)``.

What the source article's script does wrong. Its BERT fine-tuning script (seed article 003, §5.2)
passes ``start_positions=q_tokens, end_positions=a_tokens``: the *token ids* of the question and of
the answer, each tokenized on its own and padded to 128. Positions are indices into the input
(which token starts the answer); token ids are vocabulary indices (which word it is). They are
different things, and the shapes are wrong too: ``(B, 128)`` instead of ``(B,)``, on which Hugging
Face's loss raises a ``RuntimeError`` (checked with transformers 5). The question never enters the
model at all (only the context is encoded), so no labels could make it answer a question. Its
evaluation reads ``outputs.logits``, which a QA model does not have (it has ``start_logits`` and
``end_logits``), and scores positions against answer token ids with scikit-learn's micro
precision/recall, a classification metric over unrelated numbers. SQuAD's metrics (Rajpurkar et
al. 2016) compare the *answer text*: exact match and bag-of-words F1 after normalisation
(:mod:`aigc_book.tasks.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.checks import is_int
from aigc_book.tasks.metrics import span_exact_match, span_f1, squad_scores
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.objectives import SpecialTokens

__all__ = ["QAData", "make_qa_data", "matching_closers", "SpanHeads", "qa_loss", "best_span", "span_text",
           "evaluate_qa"]


def matching_closers(lang: BracketLanguage, row) -> dict[int, int]:
    """``{opener position: closer position}`` for every bracket of ``row`` that closes within it."""
    opens, closes = set(lang.open_ids.tolist()), set(lang.close_ids.tolist())
    stack, out = [], {}
    for t, tok in enumerate(int(v) for v in row):
        if tok in opens:
            stack.append(t)
        elif tok in closes and stack:
            out[stack.pop()] = t
    return out


@dataclass
class QAData:
    """Questions about bracket sequences, as model inputs and labels.

    Attributes:
        idx: ``(N, T)`` inputs ``[CLS] context-with-marker [SEP]``, ``T = length + 4``.
        start_positions, end_positions: ``(N,)`` positions in ``idx`` of the answer's first and last token.
        span_mask: ``(N, T)`` True where an answer may start or end (context tokens only).
        special: the special-token ids (``special.vocab_size`` is the model's vocabulary size).
        marker: the id of the question marker.
    """

    idx: torch.Tensor
    start_positions: torch.Tensor
    end_positions: torch.Tensor
    span_mask: torch.Tensor
    special: SpecialTokens
    marker: int

    def __len__(self) -> int:
        return self.idx.size(0)

    def batch(self, batch_size: int, generator: torch.Generator) -> dict:
        """Random rows: ``idx``, ``start_positions``, ``end_positions``, ``span_mask``."""
        if generator is None:
            raise ValueError("pass a torch.Generator: batches never draw from the global RNG")
        rows = torch.randint(len(self), (batch_size,), generator=generator)
        return {"idx": self.idx[rows], "start_positions": self.start_positions[rows],
                "end_positions": self.end_positions[rows], "span_mask": self.span_mask[rows]}


def make_qa_data(n: int, *, length: int, seed: int, lang: BracketLanguage | None = None,
                 special: SpecialTokens | None = None) -> QAData:
    """``n`` questions on fresh sequences of ``length`` tokens (after the BOS), seeded by ``seed``.

    For each sequence one opening bracket whose closer lies inside the sequence is chosen uniformly
    (sequences without one are skipped). ``special`` defaults to ``SpecialTokens(lang.vocab_size)``,
    the vocabulary of chapter 3's encoders; its first sentinel is the marker.
    """
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not is_int(length) or length < 2:
        raise ValueError(f"length must be an int >= 2 (an opener and its closer), got {length!r}")
    lang = lang or BracketLanguage()
    special = special or SpecialTokens(lang.vocab_size)
    if special.n_regular != lang.vocab_size or special.n_sentinels < 1:
        raise ValueError("special must be SpecialTokens(lang.vocab_size) with at least one sentinel")
    marker = special.sentinels[0]
    rng = np.random.default_rng(seed)
    rows, starts, ends = [], [], []
    for _ in range(1000):
        if len(rows) >= n:
            break
        for ctx in lang.sample(2 * n, length, rng=rng).numpy():
            pairs = matching_closers(lang, ctx)
            if not pairs or len(rows) >= n:
                continue
            i = sorted(pairs)[int(rng.integers(len(pairs)))]
            j = pairs[i]
            rows.append(np.concatenate([[special.cls], ctx[:i], [marker], ctx[i:], [special.sep]]))
            starts.append(i + 2)  # [CLS] and the marker come before the opener
            ends.append(j + 2)
    if len(rows) < n:
        raise ValueError(f"length {length} too short: few sequences hold a closed bracket")
    idx = torch.from_numpy(np.stack(rows))
    span_mask = idx < lang.vocab_size
    span_mask[:, 1] = False  # the BOS after [CLS] is context but never an answer
    return QAData(idx, torch.tensor(starts), torch.tensor(ends), span_mask, special, marker)


class SpanHeads(nn.Module):
    """Start and end logits on top of an encoder: ``(B, T)`` ids -> two ``(B, T)`` tensors.

    One ``Linear(C, 2)`` reads every position's ``last_hidden_state``, as in BERT. Positions outside
    ``span_mask`` (special tokens, padding) get logit ``-inf``, so they are never predicted.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        if not hasattr(encoder, "config") or not hasattr(encoder, "wte"):
            raise TypeError(f"encoder must be a Transformer, got {type(encoder).__name__}")
        if encoder.config.causal:
            raise ValueError("extractive QA needs a bidirectional encoder (Transformer with causal=False): "
                             "a causal model's state at the start of the answer has not seen its end")
        self.encoder = encoder
        ref = encoder.wte.weight  # the heads live on the encoder's device, in its dtype
        self.qa_outputs = nn.Linear(encoder.config.n_embd, 2, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.qa_outputs.weight, std=0.02)
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(self, idx: torch.Tensor, *, padding_mask: torch.Tensor | None = None,
                span_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(idx, padding_mask=padding_mask).last_hidden_state  # (B, T, C)
        start, end = self.qa_outputs(h).unbind(-1)  # (B, T) each
        if span_mask is not None:
            if span_mask.shape != idx.shape:
                raise ValueError(f"span_mask must have the shape of idx {tuple(idx.shape)}, "
                                 f"got {tuple(span_mask.shape)}")
            start = start.masked_fill(~span_mask.bool(), float("-inf"))
            end = end.masked_fill(~span_mask.bool(), float("-inf"))
        return start, end


def qa_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """``(CE(start_logits, start) + CE(end_logits, end)) / 2`` (Devlin et al. 2019, §4.2; Hugging
    Face's ``BertForQuestionAnswering`` averages the two the same way)."""
    start_logits, end_logits = model(batch["idx"], span_mask=batch.get("span_mask"))
    B, T = start_logits.shape
    for name in ("start_positions", "end_positions"):
        pos = batch[name]
        if pos.shape != (B,) or pos.dtype != torch.long:
            raise ValueError(f"{name} must be a (B,) = ({B},) LongTensor of positions in the input, got "
                             f"{tuple(pos.shape)} {pos.dtype}: one index per example, not token ids")
        if bool(((pos < 0) | (pos >= T)).any()):
            raise ValueError(f"{name} must be positions in [0, {T}), got values from {int(pos.min())} "
                             f"to {int(pos.max())}")
    return (F.cross_entropy(start_logits, batch["start_positions"])
            + F.cross_entropy(end_logits, batch["end_positions"])) / 2


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, *, max_length: int,
              span_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The span maximising ``start_logits[i] + end_logits[j]`` with ``i <= j < i + max_length``.

    ``(B, T)`` logits -> ``(B,)`` start and ``(B,)`` end positions. Taking the two arg-maxes
    separately can give an end before the start; this search cannot. ``span_mask`` (True where an
    answer may lie) excludes the other positions.
    """
    if start_logits.shape != end_logits.shape or start_logits.dim() != 2:
        raise ValueError(f"start and end logits must both be (B, T), got {tuple(start_logits.shape)} "
                         f"and {tuple(end_logits.shape)}")
    if not is_int(max_length) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    B, T = start_logits.shape
    s, e = start_logits.float(), end_logits.float()
    if span_mask is not None:
        s = s.masked_fill(~span_mask.bool(), float("-inf"))
        e = e.masked_fill(~span_mask.bool(), float("-inf"))
    scores = s[:, :, None] + e[:, None, :]  # (B, T_start, T_end)
    i = torch.arange(T, device=s.device)
    allowed = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_length)  # (T, T)
    scores = scores.masked_fill(~allowed, float("-inf"))
    flat = scores.flatten(1).argmax(1)  # (B,)
    return flat // T, flat % T


def span_text(lang: BracketLanguage, idx: torch.Tensor, start: int, end: int, *, sep: str = " ") -> str:
    """The tokens ``idx[start..end]`` (inclusive) of one row, as text joined by ``sep`` (special tokens
    by their :meth:`~aigc_book.training.objectives.SpecialTokens.names`)."""
    if not 0 <= start <= end < len(idx):
        raise ValueError(f"need 0 <= start <= end < {len(idx)}, got start={start}, end={end}")
    names = lang.itos + SpecialTokens(lang.vocab_size).names()  # a span may cross the marker
    return sep.join(names[int(t)] for t in idx[start : end + 1])


@torch.no_grad()
def evaluate_qa(model: nn.Module, data: QAData, *, max_length: int, lang: BracketLanguage | None = None,
                batch_size: int = 256) -> dict[str, float]:
    """Exact match and F1 in percent: SQuAD's, on the answer text (tokens joined by spaces), and on
    token positions (:func:`~aigc_book.tasks.metrics.span_exact_match`, :func:`~aigc_book.tasks.metrics.span_f1`).

    SQuAD's normalisation drops punctuation, so brackets vanish from the text, and the word ``a``,
    an English article, is deleted too: on this language the text scores are lenient; the position
    scores are the ones to trust.
    """
    lang = lang or BracketLanguage()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        starts, ends = [], []
        for rows in torch.arange(len(data)).split(batch_size):
            s_log, e_log = model(data.idx[rows].to(device), span_mask=data.span_mask[rows].to(device))
            s, e = best_span(s_log, e_log, max_length=max_length, span_mask=data.span_mask[rows].to(device))
            starts.append(s.cpu())
            ends.append(e.cpu())
    finally:
        model.train(was_training)
    s, e = torch.cat(starts), torch.cat(ends)
    preds = [span_text(lang, row, int(a), int(b)) for row, a, b in zip(data.idx, s, e)]
    golds = [[span_text(lang, row, int(a), int(b))] for row, a, b in zip(data.idx, data.start_positions,
                                                                         data.end_positions)]
    text = squad_scores(preds, golds)
    return {"exact_match": text["exact_match"], "f1": text["f1"],
            "span_exact_match": 100.0 * span_exact_match(s, e, data.start_positions, data.end_positions),
            "span_f1": 100.0 * span_f1(s, e, data.start_positions, data.end_positions)}
