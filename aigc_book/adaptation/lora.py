r"""LoRA from scratch: a trained low-rank update beside a frozen weight matrix.

Introduced in chapter 4, section "LoRA". Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large
Language Models", keep a pretrained weight :math:`W \in \mathbb{R}^{d_{out} \times d_{in}}` frozen and
learn :math:`\Delta W = \frac{\alpha}{r} B A` with :math:`A \in \mathbb{R}^{r \times d_{in}}`,
:math:`B \in \mathbb{R}^{d_{out} \times r}` and a small rank :math:`r`:

.. math:: h = W x + b + \frac{\alpha}{r} B A\, \mathrm{dropout}(x)

:math:`A` starts like an ``nn.Linear`` weight (Kaiming-uniform, as ``peft`` and Microsoft's
``loralib`` do), :math:`B` at zero, so a fresh adapter leaves the model unchanged. After training,
:math:`\Delta W` can be added into :math:`W` (:meth:`LoRALinear.merge`, :func:`merge_lora`) and the
model runs at its original speed with its original layer types.

The layers are put in place with :func:`aigc_book.layers.surgery.replace_linear`; no model code
changes. Parameter names follow ``peft`` (``lora_A``, ``lora_B``, ``base_layer``), and the tests check
that this module computes what ``peft.tuners.lora.layer.Linear`` computes.
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from aigc_book.adaptation.freezing import freeze_all_but, name_patterns
from aigc_book.checks import is_int, is_number
from aigc_book.layers.surgery import replace_linear

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "lora_parameter_count", "target_patterns"]


def _check_rank(r: int, alpha: float, dropout: float) -> None:
    if not is_int(r) or r <= 0:
        raise ValueError(f"the LoRA rank r must be a positive int, got {r!r}")
    if not is_number(alpha) or alpha <= 0:
        raise ValueError(f"lora alpha must be a positive number (the update is scaled by alpha / r), got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora dropout must be in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    r"""A linear layer plus a trainable low-rank update: ``base(x) + (alpha / r) * B(A(dropout(x)))``.

    Args:
        base_layer: the frozen layer: an ``nn.Linear`` (weight ``(out, in)``) or, with
            ``fan_in_fan_out=True``, any module whose ``weight`` is stored ``(in, out)`` and which
            computes ``x @ weight + bias`` (GPT-2's ``Conv1D`` in Hugging Face).
        r: the rank of the update, ``r >= 1``.
        alpha: the scale numerator; the update is multiplied by ``alpha / r`` (Hu et al. 2021, §4.1:
            so that changing ``r`` needs no new learning rate).
        dropout: dropout on the input of the low-rank branch only (training only).
        fan_in_fan_out: the base weight is stored ``(in, out)``; :meth:`delta_weight` is then
            transposed to match it.

    ``lora_A`` is ``nn.Linear(in, r)`` and ``lora_B`` ``nn.Linear(r, out)``, both without bias, on
    the base layer's device and dtype. While merged, the forward pass is the base layer alone.
    """

    def __init__(self, base_layer: nn.Module, *, r: int = 8, alpha: float = 8.0, dropout: float = 0.0,
                 fan_in_fan_out: bool = False):
        super().__init__()
        _check_rank(r, alpha, dropout)
        weight = getattr(base_layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise TypeError(f"LoRALinear wraps a layer with a 2-D weight (nn.Linear or Conv1D), got "
                            f"{type(base_layer).__name__}")
        if isinstance(base_layer, nn.Linear) and fan_in_fan_out:
            raise ValueError("an nn.Linear stores its weight (out, in): use fan_in_fan_out=False "
                             "(fan_in_fan_out=True is for GPT-2's Conv1D, stored (in, out))")
        d_in, d_out = (weight.shape[0], weight.shape[1]) if fan_in_fan_out else (weight.shape[1], weight.shape[0])
        self.base_layer = base_layer
        self.r, self.alpha, self.fan_in_fan_out = r, float(alpha), fan_in_fan_out
        self.scaling = self.alpha / r
        self.in_features, self.out_features = d_in, d_out
        kw = dict(device=weight.device, dtype=weight.dtype)
        self.lora_A = nn.Linear(d_in, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, d_out, bias=False, **kw)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """``A`` Kaiming-uniform with ``a = sqrt(5)`` (``nn.Linear``'s default), ``B = 0``: a zero update."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        r""":math:`\Delta W = \frac{\alpha}{r} B A`, shaped like the base weight (``(out, in)``, or
        ``(in, out)`` with ``fan_in_fan_out``)."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, r) @ (r, in) -> (out, in)
        return delta.t() if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Add :math:`\\Delta W` into the base weight; the forward pass then skips the low-rank branch."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged: call unmerge() first")
        self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract :math:`\\Delta W` from the base weight again (exact up to float rounding)."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged: there is nothing to unmerge")
        self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (..., out)
        if self.merged:
            return result
        return result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling  # (..., in) -> (..., r) -> out

    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing ``W + ΔW`` (the base layer is left as it is)."""
        if not isinstance(self.base_layer, nn.Linear):
            raise TypeError(f"merged_linear() builds an nn.Linear from an nn.Linear base, got "
                            f"{type(self.base_layer).__name__}")
        base = self.base_layer
        w = base.weight
        out = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None, device=w.device,
                        dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w if self.merged else w + self.delta_weight())
            if base.bias is not None:
                out.bias.copy_(base.bias)
        out.weight.requires_grad_(w.requires_grad)
        if base.bias is not None:
            out.bias.requires_grad_(base.bias.requires_grad)
        return out

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, merged={self.merged}"


def target_patterns(target_modules) -> list[str]:
    """Shell patterns from ``peft``-style names: a bare name such as ``"c_attn"`` matches any module
    whose name ends in ``.c_attn``; a name with ``*``, ``?`` or ``[`` is used as it is."""
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    names = list(target_modules)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise ValueError(f"target_modules must be non-empty module names such as ['c_attn'], got {target_modules!r}")
    out = []
    for t in names:
        out += [t] if any(ch in t for ch in "*?[") else [t, f"*.{t}"]
    return out


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter) -> every name it has`` for tensors registered under more than one name."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {k: v for k, v in names.items() if len(v) > 1}


def apply_lora(model: nn.Module, *, target_modules=("c_attn",), r: int = 8, alpha: float = 8.0,
               dropout: float = 0.0, freeze_base: bool = True, also_train=()) -> list[str]:
    """Wrap the chosen ``nn.Linear`` layers of ``model`` in :class:`LoRALinear` and freeze the rest.

    Args:
        model: e.g. a :class:`~aigc_book.models.gpt.GPT`; changed in place.
        target_modules: ``peft``-style names (``"c_attn"`` is every block's fused q, k, v projection,
            the LoRA paper's choice of attention weights) or shell patterns (``"transformer.h.1.*"``).
        r, alpha, dropout: see :class:`LoRALinear`.
        freeze_base: leave only ``lora_A`` and ``lora_B`` trainable.
        also_train: parameter-name patterns that stay trainable too, e.g. ``["head.*"]`` for a new
            classification head (``peft``'s ``modules_to_save``).

    Returns the names of the wrapped layers. A layer whose weight is shared (GPT-2's ``lm_head``,
    tied to the token embedding) is refused: merging into it would change the embedding too.
    """
    _check_rank(r, alpha, dropout)
    patterns = target_patterns(target_modules)
    extra = name_patterns(also_train, "also_train")
    already = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)
               and any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if already:
        raise ValueError(f"these layers already have LoRA: {already}; merge_lora() them or use other targets")
    shared = _shared_weights(model)
    tied = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in shared
            and any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if tied:  # checked before anything changes
        raise ValueError(f"{tied[0]}.weight is shared with {shared[id(model.get_submodule(tied[0]).weight)]} "
                         f"(tied weights): merging LoRA into it would change the other use too; leave "
                         f"{tied[0]} out of target_modules")
    replaced = replace_linear(model, lambda name, linear: LoRALinear(linear, r=r, alpha=alpha, dropout=dropout),
                              patterns)
    if freeze_base:
        freeze_all_but(model, ["*.lora_A.*", "*.lora_B.*", "lora_A.*", "lora_B.*", *extra])
    return replaced


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``model`` by a plain ``nn.Linear`` holding ``W + ΔW``.

    Afterwards the model has its original module types and parameter names, so its ``state_dict``
    loads into a fresh model of the same class (``GPT.save_pretrained``/``from_pretrained`` work as
    for any GPT). Changes ``model`` in place and returns it.
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not found:
        raise ValueError("the model has no LoRA layers to merge (apply_lora() adds them)")
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.merged_linear())
    return model


def lora_parameter_count(d_in: int, d_out: int, r: int) -> int:
    """Trainable parameters LoRA adds to one ``d_in -> d_out`` layer: ``r * (d_in + d_out)``
    (against ``d_in * d_out`` for the full matrix)."""
    return r * (d_in + d_out)

