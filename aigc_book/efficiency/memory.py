"""Where the memory of one training step goes: parameters, gradients, optimiser state, activations.

Introduced in chapter 4, section "Comparing the methods" (chapter 6 reuses it for larger models).
Training memory is roughly

    parameters + gradients (trainable only) + optimiser state + activations saved for backward.

For AdamW in float32 the state is two moments per trainable parameter (``2 * 4`` bytes each) plus a
4-byte step counter per parameter tensor, so full fine-tuning pays ``4 + 4 + 8 = 16`` bytes per
parameter before any activation; LoRA and the other parameter-efficient methods pay gradients and
state only for their few trainable tensors (Hu et al. 2021, §4.2, report a 2/3 cut of GPT-3's VRAM).

Activations are measured, not estimated: :func:`training_memory` runs the forward pass under
:class:`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd keeps for the
backward pass. Several saved tensors often share one storage (a ReLU output saved by the ReLU and by
the next layer's matrix product, views of one buffer), so each storage is counted once; storages that
belong to parameters are not activations and are left out. The input batch is counted when a layer
saves it (the first Linear does, to compute its weight gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["TrainingMemory", "training_memory", "tensor_bytes"]


def tensor_bytes(tensors) -> int:
    """Bytes of the given tensors' elements (``numel * element_size``), each distinct tensor once."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@dataclass
class TrainingMemory:
    """Bytes used by one training step (see the module docstring for what each line counts).

    Attributes:
        parameters: every parameter, trainable or frozen, a tied tensor once.
        trainable_parameters: the trainable part of ``parameters``.
        gradients: the ``.grad`` tensors after ``backward`` (trainable parameters only).
        optimizer_state: every tensor in the optimiser's state after one ``step`` (AdamW: ``exp_avg``,
            ``exp_avg_sq`` and a scalar ``step`` per parameter tensor).
        activations: tensors saved for backward during the forward pass, one count per storage,
            parameters excluded.
        peak_cuda: ``torch.cuda.max_memory_allocated`` over the step on CUDA (allocator overheads,
            temporaries and the CUDA workspace included); None on other devices.
    """

    parameters: int
    trainable_parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    peak_cuda: int | None = None

    @property
    def total(self) -> int:
        """``parameters + gradients + optimizer_state + activations`` in bytes."""
        return self.parameters + self.gradients + self.optimizer_state + self.activations

    def as_dict(self, unit: int = 1) -> dict[str, float]:
        """Every field and the total, divided by ``unit`` (e.g. ``2**20`` for MiB)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["total"] = self.total
        return {k: v / unit for k, v in out.items()}


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return (t.device.type, t.device.index, s.data_ptr()), s.nbytes()


def training_memory(model: nn.Module, optimizer_factory: Callable, batch, loss_fn: Callable) -> TrainingMemory:
    """Run one training step of ``model`` and report the bytes it needed, by kind.

    Args:
        model: the model, on its device; its trainable parameters are those with ``requires_grad``.
            The step is real: the weights change, as in training (pass a copy to keep them).
        optimizer_factory: ``optimizer_factory(params) -> torch.optim.Optimizer`` for the list of
            trainable parameters, e.g. ``lambda ps: torch.optim.AdamW(ps, lr=1e-3)``.
        batch: whatever ``loss_fn`` takes, already on the model's device.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` (the convention of
            :class:`~aigc_book.training.trainer.Trainer`).

    Gradients are cleared before the step and again after the measurement.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(optimizer_factory) or not callable(loss_fn):
        raise TypeError("optimizer_factory and loss_fn must be callables: optimizer_factory(params) and "
                        "loss_fn(model, batch)")
    params = [p for _, p in model.named_parameters()]
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameter (requires_grad=True): nothing to train")
    device = params[0].device
    cuda = device.type == "cuda"
    for p in params:
        p.grad = None
    optimizer = optimizer_factory(trainable)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer_factory must return a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    param_storages = {_storage_key(p)[0] for p in params}
    saved: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key, nbytes = _storage_key(t)
        except (RuntimeError, NotImplementedError):  # a tensor without ordinary storage: not counted
            return t
        if key not in param_storages:
            saved[key] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    activations = sum(saved.values())
    loss.backward()
    gradients = tensor_bytes(p.grad for p in params if p.grad is not None)
    optimizer.step()
    state = tensor_bytes(v for s in optimizer.state.values() for v in s.values())
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    optimizer.zero_grad(set_to_none=True)
    return TrainingMemory(
        parameters=tensor_bytes(params),
        trainable_parameters=tensor_bytes(trainable),
        gradients=gradients,
        optimizer_state=state,
        activations=activations,
        peak_cuda=peak,
    )
