r"""Prompt tuning and prefix tuning: train a few vectors in front of a frozen GPT's input.

Introduced in chapter 4, section "Adapters, prefixes and prompts". Both wrap a frozen
:class:`~aigc_book.models.gpt.GPT` and expose the same ``forward(idx, targets=None)`` as the GPT,
returning logits for the real tokens only, so the chapter's training loop runs unchanged.

* **Prompt tuning** (Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient
  Prompt Tuning"): :math:`P` trained vectors :math:`E_p \in \mathbb{R}^{P \times C}` are put in front
  of the token embeddings, through the model's ``inputs_embeds`` seam:
  :math:`[E_p; \mathrm{wte}(x)]`. Trainable parameters: :math:`P C`.
* **Prefix tuning** (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
  Generation"): every layer gets :math:`P` trained keys and values in front of its own, through the
  ``prefix_kv`` seam; attention over :math:`[K_p; K]`, :math:`[V_p; V]`. Trainable parameters:
  :math:`P \cdot n_{layer} \cdot 2 C`. Li & Liang found direct optimisation unstable and
  *reparameterised* the prefix as :math:`\mathrm{MLP}(E'_p)` (``projection_hidden``): an embedding
  ``(P, C)`` and ``Linear(C, H) -> tanh -> Linear(H, n_layer 2 C)``; after training only the
  computed prefix is needed (:meth:`PrefixTuning.drop_projection`).

In both, the real tokens sit at positions ``P .. P + T - 1`` (the virtual tokens come first), so
``P + T <= block_size``. The prefix layout (one ``(P, n_layer * 2 * C)`` matrix, layer ``i`` keys at
block ``2i``, values at ``2i + 1``) and the parameter counts are those of ``peft``'s
``PromptTuningConfig`` and ``PrefixTuningConfig``; the tests compare logits with ``peft``.

Logits: ``peft`` returns ``P + T`` positions for prompt tuning and puts ``-100`` labels on the
virtual ones, so its last virtual position is trained to predict the first real token. Here the
virtual positions are dropped and ``targets`` line up with ``idx`` as for the GPT itself; the first
token is never a target (the book's sequences start with BOS, which needs no prediction).

Padding: ``padding_mask`` ``(B, T)`` is True for real tokens (left or right padding). The virtual
tokens are always visible, and positions count only real tokens, so a padded row gives the logits of
the unpadded one. Set ``targets`` to ``-100`` where no loss is wanted (padding, the question part).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.checks import is_int
from aigc_book.layers.checks import check_token_ids
from aigc_book.models.gpt import GPT, CausalLMOutput
from aigc_book.models.transformer import position_ids_from_padding

__all__ = ["PromptTuning", "PrefixTuning"]


def _check_wrapped(model, num_virtual_tokens: int) -> None:
    if not isinstance(model, GPT):
        raise TypeError(f"expected a GPT to wrap, got {type(model).__name__}")
    n = num_virtual_tokens
    block = model.config.block_size
    if not is_int(n) or not 1 <= n < block:
        raise ValueError(f"num_virtual_tokens must be an int in 1..{block - 1} (block_size - 1), got {n!r}")


def _sample_token_ids(vocab_size: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` token ids drawn uniformly, without repetition where the vocabulary allows."""
    if n <= vocab_size:
        return torch.randperm(vocab_size, generator=generator)[:n]
    return torch.randint(0, vocab_size, (n,), generator=generator)


def _init_token_ids(model: GPT, num_virtual_tokens: int, init, generator) -> torch.Tensor:
    """The token ids whose embeddings (or activations) start the virtual tokens."""
    if init == "vocab":
        return _sample_token_ids(model.config.vocab_size, num_virtual_tokens, generator)
    ids = torch.as_tensor(init)
    if ids.dtype not in (torch.int64, torch.int32) or tuple(ids.shape) != (num_virtual_tokens,):
        raise ValueError(f"init must be 'vocab', 'random' or {num_virtual_tokens} token ids (a 1-D integer tensor), "
                         f"got {init!r}")
    check_token_ids(ids[None], model.config.vocab_size)
    return ids.long()


class _VirtualTokens(nn.Module):
    """What both wrappers share: a frozen GPT, the input checks, and the loss on real tokens."""

    def __init__(self, model: GPT, num_virtual_tokens: int, freeze_base: bool):
        super().__init__()
        _check_wrapped(model, num_virtual_tokens)
        self.model = model
        self.config = model.config
        self.num_virtual_tokens = num_virtual_tokens
        if freeze_base:
            model.requires_grad_(False)

    def _check(self, idx: torch.Tensor, padding_mask: torch.Tensor | None) -> None:
        check_token_ids(idx, self.config.vocab_size)
        P, (B, T) = self.num_virtual_tokens, idx.shape
        if P + T > self.config.block_size:
            raise ValueError(f"{T} tokens plus {P} virtual tokens exceed block_size={self.config.block_size}: "
                             f"pass at most {self.config.block_size - P} tokens")
        if padding_mask is not None and tuple(padding_mask.shape) != (B, T):
            raise ValueError(f"padding_mask must have the shape of idx (B, T) = {(B, T)}, got "
                             f"{tuple(padding_mask.shape)}")

    @staticmethod
    def _loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        if targets is None:
            return None
        B, T = logits.shape[:2]
        if tuple(targets.shape) != (B, T):
            raise ValueError(f"targets must have the shape of idx (B, T) = {(B, T)}, got {tuple(targets.shape)}")
        return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-100)


class PromptTuning(_VirtualTokens):
    """A frozen GPT with ``num_virtual_tokens`` trained input embeddings in front of every sequence.

    Args:
        model: the GPT to adapt (frozen unless ``freeze_base=False``).
        num_virtual_tokens: ``P``, the soft prompt's length.
        init: ``"vocab"`` (embeddings of ``P`` random vocabulary tokens, Lester et al.'s best start),
            ``"random"`` (normal, with the embedding matrix's standard deviation) or ``P`` token ids
            whose embeddings start the prompt (e.g. the class names).
        generator: for the random start.

    ``forward(idx, targets=None, *, padding_mask=None) -> CausalLMOutput`` with logits ``(B, T, V)``
    for the real tokens. The trained vectors are ``self.prompt`` ``(P, C)``.
    """

    def __init__(self, model: GPT, num_virtual_tokens: int, *, init="vocab", generator: torch.Generator | None = None,
                 freeze_base: bool = True):
        super().__init__(model, num_virtual_tokens, freeze_base)
        wte = model.transformer.wte.weight
        P, C = num_virtual_tokens, model.config.n_embd
        if isinstance(init, str) and init == "random":
            start = torch.randn(P, C, generator=generator) * wte.detach().std().cpu()
        else:
            start = wte.detach()[_init_token_ids(model, P, init, generator).to(wte.device)]
        self.prompt = nn.Parameter(start.to(device=wte.device, dtype=wte.dtype).clone())  # (P, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                padding_mask: torch.Tensor | None = None) -> CausalLMOutput:
        self._check(idx, padding_mask)
        P, B = self.num_virtual_tokens, idx.size(0)
        tokens = self.model.transformer.wte(idx)  # (B, T, C)
        x = torch.cat([self.prompt.expand(B, -1, -1).to(tokens.dtype), tokens], dim=1)  # (B, P + T, C)
        full_mask = position_ids = None
        if padding_mask is not None:
            full_mask = torch.cat([padding_mask.new_ones(B, P), padding_mask], dim=1)  # (B, P + T)
            position_ids = position_ids_from_padding(full_mask)  # the prompt at 0 .. P-1, then real tokens
        out = self.model(inputs_embeds=x, padding_mask=full_mask, position_ids=position_ids)
        logits = out.logits[:, P:]  # (B, T, V): the logits at virtual positions predict nothing we train
        return CausalLMOutput(logits, self._loss(logits, targets), out.last_hidden_state[:, P:], None)


class PrefixTuning(_VirtualTokens):
    """A frozen GPT with ``num_virtual_tokens`` trained keys and values in front of every layer's own.

    Args:
        model: the GPT to adapt (frozen unless ``freeze_base=False``).
        num_virtual_tokens: ``P``, the prefix length.
        projection_hidden: ``None`` trains the prefix directly (``P * n_layer * 2 * C`` parameters);
            an int ``H`` trains it through Li & Liang's MLP ``Linear(C, H) -> tanh -> Linear(H, n_layer 2 C)``
            on a ``(P, C)`` embedding.
        init: without projection, ``"vocab"`` (the keys and values the frozen model computes for ``P``
            random tokens, Li & Liang's "initialise with real words"), ``"random"`` (standard normal,
            as ``peft``) or ``P`` token ids; with projection, only ``"random"`` (PyTorch's defaults).
        generator: for the random start.

    ``forward(idx, targets=None, *, padding_mask=None) -> CausalLMOutput`` with logits ``(B, T, V)``.
    """

    def __init__(self, model: GPT, num_virtual_tokens: int, *, projection_hidden: int | None = None,
                 init="vocab", generator: torch.Generator | None = None, freeze_base: bool = True):
        super().__init__(model, num_virtual_tokens, freeze_base)
        c = model.config
        P, width = num_virtual_tokens, c.n_layer * 2 * c.n_embd
        ref = model.transformer.wte.weight
        kw = dict(device=ref.device, dtype=ref.dtype)
        self.embedding = self.transform = None
        if projection_hidden is not None:
            if not is_int(projection_hidden) or projection_hidden < 1:
                raise ValueError(f"projection_hidden must be a positive int or None, got {projection_hidden!r}")
            if not (isinstance(init, str) and init == "random"):
                raise ValueError("with projection_hidden the prefix starts from PyTorch's default "
                                 "initialisation: pass init='random'")
            self.embedding = nn.Parameter(torch.randn(P, c.n_embd, generator=generator).to(**kw))  # (P, C)
            self.transform = nn.Sequential(nn.Linear(c.n_embd, projection_hidden, **kw), nn.Tanh(),
                                           nn.Linear(projection_hidden, width, **kw))
            self.prefix = None
            return
        if isinstance(init, str) and init == "random":
            start = torch.randn(P, width, generator=generator)
        else:
            start = self._activations(_init_token_ids(model, P, init, generator).to(ref.device))
        self.prefix = nn.Parameter(start.to(**kw).clone())  # (P, n_layer * 2 * C)

    @torch.no_grad()
    def _activations(self, ids: torch.Tensor) -> torch.Tensor:
        """``(P, n_layer * 2 * C)``: the keys and values the frozen model computes for ``ids``, in prefix layout."""
        c = self.config
        cache = self.model.new_kv_cache(1, max_len=ids.numel())
        self.model(ids[None], kv_cache=cache)
        kv = torch.stack([cache.k[:, 0], cache.v[:, 0]], dim=1)  # (L, 2, nh, P, hd)
        return kv.reshape(2 * c.n_layer, c.n_head, -1, c.head_dim).permute(2, 0, 1, 3).reshape(ids.numel(), -1)

    def prefix_matrix(self) -> torch.Tensor:
        """The ``(P, n_layer * 2 * C)`` prefix (computed through the MLP with a projection)."""
        return self.prefix if self.transform is None else self.transform(self.embedding)

    def prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One ``(keys, values)`` pair per layer, each ``(1, n_head, P, head_dim)``, for the ``prefix_kv`` seam."""
        c = self.config
        P = self.num_virtual_tokens
        kv = self.prefix_matrix().view(P, 2 * c.n_layer, c.n_head, c.head_dim).permute(1, 2, 0, 3)  # (2L, nh, P, hd)
        return [(kv[2 * i, None], kv[2 * i + 1, None]) for i in range(c.n_layer)]

    @torch.no_grad()
    def drop_projection(self) -> None:
        """Replace the MLP by the prefix it computes now (what inference needs; Li & Liang 2021, §4.3)."""
        if self.transform is None:
            raise ValueError("this prefix has no projection to drop")
        self.prefix = nn.Parameter(self.prefix_matrix().detach().clone())
        self.embedding = self.transform = None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                padding_mask: torch.Tensor | None = None) -> CausalLMOutput:
        self._check(idx, padding_mask)
        P, T = self.num_virtual_tokens, idx.size(1)
        if padding_mask is None:
            position_ids = torch.arange(P, P + T, device=idx.device)
        else:
            position_ids = P + position_ids_from_padding(padding_mask)  # (B, T)
        out = self.model(idx, padding_mask=padding_mask, position_ids=position_ids, prefix_kv=self.prefix_kv())
        return CausalLMOutput(out.logits, self._loss(out.logits, targets), out.last_hidden_state, None)
