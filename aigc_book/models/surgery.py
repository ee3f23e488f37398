"""Changing a built GPT's shape: more token ids for a vocabulary that grew.

Introduced in chapter 4, section "Instruction following": fine-tuning a base model in the chat
template adds special tokens (``<|user|>``, ``<|end|>``, ...) after the base's ids, so its token
embedding (and the output head) needs one new row each. The pretrained rows keep their values, so
the model still reads and predicts the base's tokens as before. (Wrapping layers without changing
shapes, as LoRA does, is :mod:`aigc_book.layers.surgery`.)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from aigc_book.checks import is_int

__all__ = ["grow_vocabulary"]


@torch.no_grad()
def grow_vocabulary(model: nn.Module, vocab_size: int) -> nn.Module:
    """Give a GPT (or a bare Transformer) ``vocab_size`` token ids, keeping the old rows; in place.

    New rows of the embedding (and of an untied output matrix) start at the *mean* of the old rows,
    a choice that keeps the model's first predictions close to the pretrained ones (Hewitt 2021,
    "Initializing new word embeddings for pretrained language models"). A tied output head stays
    tied. ``model.config`` is replaced by a copy with the new ``vocab_size`` (configs are frozen).
    """
    body = model.transformer if hasattr(model, "transformer") else model
    old = body.wte.weight
    V, C = old.shape
    if not is_int(vocab_size) or vocab_size < V:
        raise ValueError(f"vocab_size must be an int >= the current {V} (rows are only added), got {vocab_size!r}")
    if vocab_size == V:
        return model
    new = nn.Embedding(vocab_size, C, device=old.device, dtype=old.dtype)
    new.weight[:V] = old
    new.weight[V:] = old.mean(0)
    head = getattr(model, "lm_head", None)
    tied = head is not None and head.weight is old
    body.wte = new
    if head is not None:
        if tied:
            head.weight = new.weight
        else:
            grown = nn.Linear(C, vocab_size, bias=head.bias is not None, device=old.device, dtype=old.dtype)
            grown.weight[:V] = head.weight
            grown.weight[V:] = head.weight.mean(0)
            if head.bias is not None:
                grown.bias[:V] = head.bias
                grown.bias[V:] = head.bias.mean()
            model.lm_head = grown
    # The configs are frozen: the grown model gets new ones (shared if model and body shared one).
    old_config = body.config
    body.config = dataclasses.replace(old_config, vocab_size=vocab_size)
    if hasattr(model, "config") and model is not body:
        same = model.config is old_config
        model.config = body.config if same else dataclasses.replace(model.config, vocab_size=vocab_size)
    return model
