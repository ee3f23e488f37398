"""Changing a built model from the outside: wrap or replace any of its ``nn.Linear`` layers.

Introduced in chapter 2, section "The block and the whole GPT". LoRA, adapters and quantisation
(chapters 4 and 6) all start the same way: find some linear layers by name and put a wrapper around
each. Every projection in the book's models is an ``nn.Linear`` called as a module, so swapping the
module swaps the computation; no model code changes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

__all__ = ["replace_linear"]


def replace_linear(model: nn.Module, wrap: Callable[[str, nn.Linear], nn.Module], patterns=("*",)) -> list[str]:
    """Replace every ``nn.Linear`` whose qualified name matches one of ``patterns`` (shell-style,
    e.g. ``"*.attn.c_attn"``) by ``wrap(name, linear)``; returns the replaced names.

    A layer that shares its weight with another module (GPT-2's tied ``lm_head``) is replaced
    like any other: the wrapper receives the original layer and can keep using its weight.
    Raises ``ValueError`` if nothing matches, so a typo in a pattern cannot go unnoticed.
    """
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not targets:
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"no nn.Linear matches {list(patterns)}; the linear layers are e.g. {linear[:4]}")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, wrap(name, module))
    return [name for name, _ in targets]
