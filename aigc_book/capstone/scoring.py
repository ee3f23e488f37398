"""What the report card measures: bits per byte, an n-gram baseline, accuracy, and the FLOPs a stage spent.

Introduced in chapter 8, section "The report card".

* **Bits per byte** make models with different tokenizers comparable: the summed negative
  log-likelihood of a text in nats, divided by ``ln 2`` and by the text's UTF-8 bytes. A model
  that uses fewer, longer tokens is neither rewarded nor punished for it. The metric is used for
  this reason by Gao et al. (2020, "The Pile", arXiv:2101.00027, §3).
* The baseline is chapter 3's Witten–Bell n-gram model over bytes (:class:`~aigc_book.models.ngram.NGramLM`).
* :class:`FlopMeter` counts every forward pass of every :class:`~aigc_book.models.transformer.Transformer`
  while it is active, by a global forward hook, and prices each token with chapter 6's formula
  (:func:`aigc_book.models.accounting.flops_per_token`, output layer included, attention at the
  current context length). A forward pass under autograd is counted three times (forward plus a
  backward of twice its cost, Kaplan et al. 2020, arXiv:2001.08361, §2.1). So generation, scoring
  and training are all counted the same way, whichever model or trainer runs them.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from aigc_book.models.accounting import flops_per_token
from aigc_book.models.ngram import NGramLM
from aigc_book.models.transformer import Transformer
from aigc_book.tasks import instructions
from aigc_book.tasks.sft import generate_responses

__all__ = ["bits_per_byte", "ngram_bits_per_byte", "accuracy_by_kind", "FlopMeter"]


@torch.no_grad()
def bits_per_byte(model: nn.Module, tokenizer, text: str, *, batch_size: int = 16) -> float:
    """Bits per UTF-8 byte of ``text`` under ``model``, in non-overlapping windows of ``block_size``
    tokens (the first token of each window is context only: a slightly pessimistic estimate)."""
    if not text:
        raise ValueError("cannot measure bits per byte of an empty text")
    ids = torch.tensor(tokenizer.encode(text, allow_special=False))
    T = model.config.block_size
    n = (len(ids) - 1) // T
    if n < 1:
        raise ValueError(f"the text is {len(ids)} tokens long; it needs more than block_size = {T}")
    windows = ids[: n * T + 1].unfold(0, T + 1, T)  # (n, T + 1), neighbours share one token
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, predicted = 0.0, 0
    for rows in windows.split(batch_size):
        rows = rows.to(device)
        logits = model(rows[:, :-1]).logits.float()
        nats += nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
        predicted += rows[:, 1:].numel()
    model.train(was_training)
    covered = len(tokenizer.decode(ids[1 : n * T + 1].tolist()).encode("utf-8"))  # the predicted tokens' bytes
    return nats / math.log(2) / covered if predicted else math.nan


def _bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def ngram_bits_per_byte(train: str, held_out: dict[str, str], order: int = 5) -> dict[str, float]:
    """Bits per byte of each held-out text under an order-``order`` byte n-gram fitted on ``train``."""
    lm = NGramLM(order, 256).fit(_bytes(train)[None])
    return {name: lm.cross_entropy(_bytes(text)[None]) / math.log(2) for name, text in held_out.items()}


def accuracy_by_kind(model: nn.Module, tokenizer, prompts: Sequence[instructions.Instruction], *,
                     temperature: float = 0.0, seed: int = 0, max_new_tokens: int = 12) -> dict[str, float]:
    """Share of responses the checker accepts, overall (``"all"``) and per kind; greedy by default,
    sampled at ``temperature`` otherwise (with a generator seeded by ``seed``)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    responses = generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                   temperature=temperature, generator=generator)
    right: dict[str, list[bool]] = {}
    for prompt, response in zip(prompts, responses):
        right.setdefault(prompt.kind, []).append(instructions.check(prompt, response))
    every = [r for rs in right.values() for r in rs]
    return {"all": sum(every) / len(every), **{k: sum(v) / len(v) for k, v in sorted(right.items())}}


class FlopMeter:
    """Counts the FLOPs of every Transformer forward (and implied backward) pass while active.

    >>> from aigc_book.models.gpt import GPT
    >>> from aigc_book.models.transformer import TransformerConfig
    >>> gpt = GPT(TransformerConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    >>> with FlopMeter() as meter, torch.no_grad():
    ...     _ = gpt(torch.zeros(2, 8, dtype=torch.long))
    >>> meter.tokens, meter.flops == 2 * 8 * gpt.flops_per_token(8, output_layer=True)
    (16, True)
    """

    def __init__(self) -> None:
        self.flops = 0.0
        self.tokens = 0
        self._handle = None
        self._n_params: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _hook(self, module: nn.Module, args, kwargs, output) -> None:
        if not isinstance(module, Transformer):
            return
        x = args[0] if args else kwargs.get("idx")
        if x is None:
            x = kwargs.get("inputs_embeds")
        cache = kwargs.get("kv_cache")
        B, T = x.shape[:2]
        context = cache.length if cache is not None else T  # after the pass: the cache holds these tokens too
        c = module.config
        per_token = flops_per_token(c, context, output_layer=True, n_params=self._non_embedding(module))
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
        self.tokens += B * T
        self.flops += B * T * per_token * (3 if trains else 1)

    def _non_embedding(self, module: Transformer) -> int:
        if module not in self._n_params:  # the blocks and final norm: what chapter 6's N counts
            norms = [n for n in (module.ln_f, module.ln_emb) if n is not None]
            self._n_params[module] = sum(p.numel() for m in (module.h, *norms) for p in m.parameters())
        return self._n_params[module]

    def __enter__(self) -> FlopMeter:
        # A global hook (every module, filtered in _hook): it also sees models made while it is active.
        self._handle = nn.modules.module.register_module_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            # PyTorch 2.13's handle forgets the with_kwargs flag it registered; left behind, it makes every
            # later torch.compile(module) warn about global hooks that no longer exist.
            nn.modules.module._global_forward_hooks_with_kwargs.pop(self._handle.id, None)
            self._handle = None
