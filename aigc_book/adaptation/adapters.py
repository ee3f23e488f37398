r"""Bottleneck adapters: a small residual MLP after each sublayer of a frozen Transformer.

Introduced in chapter 4, section "Adapters, prefixes and prompts". Houlsby et al. (2019),
"Parameter-Efficient Transfer Learning for NLP", insert after the attention and after the
feed-forward sublayer of every block a module

.. math:: \mathrm{adapter}(h) = h + W_{up}\, f(W_{down} h + b_{down}) + b_{up}

with :math:`W_{down} \in \mathbb{R}^{m \times d}`, a bottleneck :math:`m \ll d` and a nonlinearity
:math:`f`; only the adapters (and, in the paper, the LayerNorms) train. Each adapter adds
:math:`2md + m + d` parameters (:func:`adapter_parameter_count`).

**Where it goes in.** The adapter acts on a sublayer's output *before* it joins the residual stream.
In our blocks that output is exactly what ``attn.c_proj`` and ``mlp.c_proj`` (the sublayers' output
projections) return, so :func:`apply_adapters` wraps those two ``nn.Linear`` layers with
:func:`aigc_book.layers.surgery.replace_linear`: ``AdapterAfter(c_proj)(x) = adapter(c_proj(x))``.
We chose this seam over forward hooks because the adapter then is an ordinary submodule: it shows in
``print(model)``, its weights are in ``state_dict()`` under readable names
(``transformer.h.0.attn.c_proj.adapter.down.weight``), it is traced by ``torch.compile``, and it
works unchanged with the KV cache, masks and attention weights (a hook on ``attn`` would have to
know that ``attn`` returns a pair when ``need_weights`` is set). The one difference from the paper:
the sublayer's residual dropout comes after the adapter here, before it there (no difference
without dropout, and none in evaluation).

**Initialisation.** ``init="zeros"`` (default) sets the up-projection to zero, so a fresh adapter is
exactly the identity; ``init="houlsby"`` is the paper's (§3.6): every weight from a normal with standard
deviation ``1e-2`` truncated at two deviations, biases zero, which is the identity up to
``|W_up f(W_down h)| <= m * 0.02 * max|f(W_down h)|`` per coordinate.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from aigc_book.adaptation.freezing import freeze_all_but, name_patterns
from aigc_book.checks import is_int
from aigc_book.layers.surgery import replace_linear

__all__ = ["BottleneckAdapter", "AdapterAfter", "apply_adapters", "adapter_parameter_count"]

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
_INITS = ("zeros", "houlsby")


class BottleneckAdapter(nn.Module):
    r"""``h + up(f(down(h)))``: down-project ``d -> m``, nonlinearity, up-project ``m -> d``, residual.

    Args:
        d: the width of the stream it acts on (``n_embd``).
        bottleneck: ``m``, the hidden width, ``m >= 1``.
        activation: ``"gelu"`` (default), ``"relu"`` or ``"tanh"``.
        init: ``"zeros"`` (up-projection zero: exactly the identity) or ``"houlsby"`` (near identity).
        device, dtype: of the new weights.
    """

    def __init__(self, d: int, bottleneck: int, *, activation: str = "gelu", init: str = "zeros",
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("d", d), ("bottleneck", bottleneck)):
            if not is_int(value) or value < 1:
                raise ValueError(f"adapter {name} must be a positive int, got {value!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.init = init
        self.down = nn.Linear(d, bottleneck, device=device, dtype=dtype)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, d, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Near-identity start (see the module docstring)."""
        std = 1e-2
        nn.init.trunc_normal_(self.down.weight, std=std, a=-2 * std, b=2 * std)
        if self.init == "zeros":
            nn.init.zeros_(self.up.weight)
        else:
            nn.init.trunc_normal_(self.up.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))  # (..., d) -> (..., m) -> (..., d)


class AdapterAfter(nn.Module):
    """``adapter(layer(x))``: a sublayer's output projection followed by its adapter.

    ``layer`` keeps its name inside the wrapper (``.layer``), the adapter is ``.adapter``.
    """

    def __init__(self, layer: nn.Linear, adapter: BottleneckAdapter):
        super().__init__()
        self.layer, self.adapter = layer, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.layer(x))


def adapter_parameter_count(d: int, bottleneck: int) -> int:
    """Parameters of one adapter: ``2 * m * d + m + d`` (two matrices and two biases)."""
    return 2 * bottleneck * d + bottleneck + d


def apply_adapters(model: nn.Module, *, bottleneck: int = 16, sublayers=("attn.c_proj", "mlp.c_proj"),
                   activation: str = "gelu", init: str = "zeros", train_layer_norms: bool = False,
                   freeze_base: bool = True, also_train=()) -> list[str]:
    """Insert a :class:`BottleneckAdapter` after the attention and feed-forward sublayers of every block.

    Args:
        model: a :class:`~aigc_book.models.gpt.GPT` (or a bare ``Transformer``); changed in place.
        bottleneck: the adapter width ``m``.
        sublayers: which output projections to follow, as name suffixes inside a block.
        activation, init: see :class:`BottleneckAdapter`.
        train_layer_norms: also train every LayerNorm, as Houlsby et al. did (adds
            ``2 * d`` per LayerNorm with bias).
        freeze_base: leave only the adapters (and the LayerNorms if asked) trainable.
        also_train: parameter-name patterns that stay trainable too, e.g. ``["head.*"]``.

    Returns the names of the wrapped projections (two per block by default).
    """
    if isinstance(sublayers, str):
        sublayers = [sublayers]
    if not sublayers or not all(isinstance(s, str) and s for s in sublayers):
        raise ValueError(f"sublayers must be name suffixes such as ['attn.c_proj'], got {sublayers!r}")
    patterns = [f"*.{s}" for s in sublayers]
    if not is_int(bottleneck) or bottleneck < 1:
        raise ValueError(f"adapter bottleneck must be a positive int, got {bottleneck!r}")
    extra = name_patterns(also_train, "also_train")
    already = [n for n, m in model.named_modules() if isinstance(m, AdapterAfter)]
    if already:
        raise ValueError(f"the model already has adapters after {already}")

    def wrap(name: str, linear: nn.Linear) -> AdapterAfter:
        w = linear.weight
        return AdapterAfter(linear, BottleneckAdapter(linear.out_features, bottleneck, activation=activation,
                                                      init=init, device=w.device, dtype=w.dtype))

    replaced = replace_linear(model, wrap, patterns)
    if freeze_base:
        norms = {n for n, m in model.named_modules() if "LayerNorm" in type(m).__name__} if train_layer_norms else set()
        freeze_all_but(model, lambda name, p: ".adapter." in f".{name}" or name.rpartition(".")[0] in norms
                       or any(fnmatch.fnmatchcase(name, pat) for pat in extra))
    return replaced
