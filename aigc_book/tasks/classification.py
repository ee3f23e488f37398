"""Sequence classification on the bracket language, with labels a program decides.

Introduced in chapter 4, section "Tasks with known answers". Each property below is a function of
the token ids, so every label is right and the best possible accuracy is 100%:

==================  ==============================================  ==========================
property            label                                           classes
==================  ==============================================  ==========================
``max_depth``       deepest nesting reached (the stack's height)    ``<=1``, ``2``, ``>=3``
``dominant_type``   the bracket type opened most often (no ties)    ``(``, ``[``, ``{``, ``<``
``corrupted``       well formed, or one token changed so that it    ``clean``, ``corrupted``
                    no longer is (a wrong closer, a word that
                    does not agree, ...)
``open_type``       the type of the innermost bracket still open    ``(``, ``[``, ``{``, ``<``
                    at the end (sequences that end at depth 0 are
                    not drawn)
==================  ==============================================  ==========================

``open_type`` is what a pretrained language model of this language must track anyway: the next
closer and the agreeing words depend on it. The other three need something pretraining did not ask for.

:func:`make_classification_data` draws balanced classes with a seeded generator and splits them
into train and validation sets with no sequence in both. :class:`SequenceClassifier` puts a linear
head on a chapter 3 model's ``last_hidden_state``: the last token's state for a GPT (only the last
position has seen the whole sequence), position 0 or the mean for a bidirectional encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.checks import is_int
from aigc_book.tasks.metrics import accuracy
from aigc_book.text.languages import BracketLanguage

__all__ = [
    "PROPERTIES",
    "ClassificationData",
    "make_classification_data",
    "SequenceClassifier",
    "classification_loss",
    "classification_accuracy",
]


def _depths(lang: BracketLanguage, row: np.ndarray) -> np.ndarray:
    """Stack height after each token of a row."""
    step = np.isin(row, lang.open_ids).astype(np.int64) - np.isin(row, lang.close_ids)
    return np.cumsum(step)


def _max_depth(lang: BracketLanguage, row: np.ndarray) -> int:
    return int(min(max(_depths(lang, row).max(), 1), 3)) - 1  # <=1 -> 0, 2 -> 1, >=3 -> 2


def _dominant_type(lang: BracketLanguage, row: np.ndarray) -> int | None:
    counts = np.array([(row == i).sum() for i in lang.open_ids])
    best = counts.max()
    if best == 0 or (counts == best).sum() > 1:
        return None  # no bracket, or a tie: no single answer
    return int(counts.argmax())


def _open_type(lang: BracketLanguage, row: np.ndarray) -> int | None:
    openers, closers = set(lang.open_ids.tolist()), set(lang.close_ids.tolist())
    stack: list[int] = []
    for tok in row.tolist():
        if tok in openers:
            stack.append(tok)
        elif tok in closers:
            stack.pop()
    return stack[-1] - int(lang.open_ids[0]) if stack else None  # depth 0 at the end: no answer


@dataclass(frozen=True)
class _Property:
    classes: Callable[[BracketLanguage], tuple[str, ...]]
    label: Callable[[BracketLanguage, np.ndarray], int | None] | None  # None: built by corruption


PROPERTIES: dict[str, _Property] = {
    "max_depth": _Property(lambda lang: ("<=1", "2", ">=3"), _max_depth),
    "dominant_type": _Property(lambda lang: tuple(lang.itos[i] for i in lang.open_ids), _dominant_type),
    "corrupted": _Property(lambda lang: ("clean", "corrupted"), None),
    "open_type": _Property(lambda lang: tuple(lang.itos[i] for i in lang.open_ids), _open_type),
}


@dataclass
class ClassificationData:
    """Balanced, labelled sequences in two splits.

    Attributes:
        train_x, val_x: ``(N, length + 1)`` token ids, each row BOS first.
        train_y, val_y: ``(N,)`` class indices.
        classes: the class names, in index order.
        property: which property labels them.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]
    property: str

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"`` or ``"val"``."""
        if name == "train":
            return self.train_x, self.train_y
        if name == "val":
            return self.val_x, self.val_y
        raise ValueError(f"split must be 'train' or 'val', got {name!r}")

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict:
        """Random rows of a split: ``{"idx": (B, T), "labels": (B,)}`` (a Trainer's ``batch_fn``)."""
        x, y = self.split(split)
        if generator is None:
            raise ValueError("pass a torch.Generator: batches never draw from the global RNG")
        rows = torch.randint(len(x), (batch_size,), generator=generator)
        return {"idx": x[rows], "labels": y[rows]}


def _corrupt(lang: BracketLanguage, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Change one token (not the BOS) to another regular symbol so that the row is no longer well formed."""
    for _ in range(100):
        out = row.copy()
        t = int(rng.integers(1, len(row)))
        out[t] = (row[t] - 1 + rng.integers(1, lang.vocab_size - 1)) % (lang.vocab_size - 1) + 1  # never itself or BOS
        if not lang.is_well_formed(out):
            return out
    raise RuntimeError("could not corrupt a sequence in 100 tries")  # unreachable for the book's languages


def make_classification_data(prop: str, *, n_per_class: int, length: int, seed: int,
                             lang: BracketLanguage | None = None, val_fraction: float = 0.25) -> ClassificationData:
    """Sample sequences, label them by ``prop`` and keep ``n_per_class`` of each class.

    Args:
        prop: a key of :data:`PROPERTIES`.
        n_per_class: examples per class in both splits together.
        length: tokens after the BOS in each sequence.
        seed: seeds the one ``numpy`` generator that draws everything.
        lang: the language (default :class:`BracketLanguage` with its default settings).
        val_fraction: share of each class held out for validation (the splits stay balanced).

    Sequences are distinct across the whole set, so no validation row is also a training row. A
    class too rare to fill at this ``length`` raises a ValueError that says which.
    """
    if prop not in PROPERTIES:
        raise ValueError(f"unknown property {prop!r}; choose one of {sorted(PROPERTIES)}")
    if not is_int(n_per_class) or n_per_class < 2:
        raise ValueError(f"n_per_class must be an int >= 2 (one for each split), got {n_per_class!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    lang = lang or BracketLanguage()
    rng = np.random.default_rng(seed)
    spec = PROPERTIES[prop]
    classes = spec.classes(lang)
    K = len(classes)
    buckets: list[list[np.ndarray]] = [[] for _ in range(K)]
    seen: set[bytes] = set()
    for _ in range(50):
        if all(len(b) >= n_per_class for b in buckets):
            break
        chunk = lang.sample(max(256, 2 * K * n_per_class), length, rng=rng).numpy()
        for row in chunk:
            if spec.label is None:  # corrupted: a coin decides, then the row is corrupted or not
                label = int(rng.integers(2))
                row = _corrupt(lang, row, rng) if label else row
            else:
                label = spec.label(lang, row)
            key = row.tobytes()
            if label is None or len(buckets[label]) >= n_per_class or key in seen:
                continue
            seen.add(key)
            buckets[label].append(row)
    short = [classes[k] for k in range(K) if len(buckets[k]) < n_per_class]
    if short:
        raise ValueError(f"class {short[0]!r} of {prop!r} is too rare at length {length} to draw {n_per_class} "
                         "examples: use longer sequences or fewer examples per class")
    n_val = max(1, min(n_per_class - 1, round(n_per_class * val_fraction)))
    parts = {"train": ([], []), "val": ([], [])}
    for k, rows in enumerate(buckets):
        for name, chunk in (("val", rows[:n_val]), ("train", rows[n_val:])):
            parts[name][0].extend(chunk)
            parts[name][1].extend([k] * len(chunk))
    out = []
    for name in ("train", "val"):
        x, y = np.stack(parts[name][0]), np.array(parts[name][1])
        order = rng.permutation(len(y))
        out += [torch.from_numpy(x[order]), torch.from_numpy(y[order])]
    return ClassificationData(*out, classes=classes, property=prop)


def _stack(model: nn.Module) -> nn.Module:
    """The Transformer inside a GPT (``.transformer``) or a chapter 3 pretraining encoder (``.encoder``)."""
    for name in ("transformer", "encoder"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    return model


class SequenceClassifier(nn.Module):
    """A linear head on a pooled ``last_hidden_state``: ``(B, T)`` ids -> ``(B, n_classes)`` logits.

    Args:
        backbone: a :class:`~aigc_book.models.gpt.GPT` (its ``transformer`` is used, the LM head is
            not), a :class:`~aigc_book.models.transformer.Transformer`, or chapter 3's
            :class:`~aigc_book.training.objectives.EncoderForPretraining` (its ``encoder``).
        n_classes: number of classes.
        pool: ``"last"`` (the last real token: what a causal model must use), ``"first"`` (position
            0, BERT's ``[CLS]``; our sequences start with BOS) or ``"mean"`` over real tokens.
            ``"first"`` on a causal model is refused: position 0 sees only itself.
    """

    POOLS = ("last", "first", "mean")

    def __init__(self, backbone: nn.Module, n_classes: int, *, pool: str = "last") -> None:
        super().__init__()
        body = _stack(backbone)
        if not hasattr(body, "config") or not hasattr(body, "wte"):
            raise TypeError(f"backbone must be a GPT or a Transformer, got {type(backbone).__name__}")
        if pool not in self.POOLS:
            raise ValueError(f"pool must be one of {self.POOLS}, got {pool!r}")
        if pool == "first" and body.config.causal:
            raise ValueError("pool='first' on a causal model reads a position that has seen only itself; "
                             "use pool='last' or 'mean'")
        if not is_int(n_classes) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        self.backbone, self.pool = backbone, pool  # one registered module: no duplicate state_dict keys
        ref = body.wte.weight  # the head lives on the backbone's device, in its dtype
        self.head = nn.Linear(body.config.n_embd, n_classes, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def body(self) -> nn.Module:
        """The Transformer stack that produces ``last_hidden_state`` (a GPT's ``transformer``)."""
        return _stack(self.backbone)

    def forward(self, idx: torch.Tensor, *, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``padding_mask``: ``(B, T)``, True on real tokens, for right-padded rows."""
        h = self.body(idx, padding_mask=padding_mask).last_hidden_state  # (B, T, C)
        B, T, _ = h.shape
        real = torch.ones(B, T, dtype=torch.bool, device=h.device) if padding_mask is None else padding_mask.bool()
        if self.pool == "first":
            pooled = h[:, 0]
        elif self.pool == "last":
            last = real.long().sum(1).clamp(min=1) - 1  # (B,) index of the last real token
            pooled = h[torch.arange(B, device=h.device), last]
        else:
            w = real.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
            pooled = (h * w).sum(1) / w.sum(1).clamp(min=1)
        return self.head(pooled)  # (B, n_classes)


def classification_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Cross-entropy of ``model(idx) -> (B, K)`` logits against ``batch["labels"]`` ``(B,)``."""
    logits = model(batch["idx"], padding_mask=batch.get("padding_mask"))
    labels = batch["labels"]
    if labels.dim() != 1 or labels.size(0) != logits.size(0):
        raise ValueError(f"labels must have shape (B,) = ({logits.size(0)},), got {tuple(labels.shape)}")
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def classification_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> float:
    """Fraction of rows of ``x`` whose arg-max class is ``y`` (eval mode, restored afterwards)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        preds = torch.cat([model(xb.to(device)).argmax(-1).cpu() for xb in x.split(batch_size)])
    finally:
        model.train(was_training)
    return accuracy(preds, y)
