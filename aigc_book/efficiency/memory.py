"""Where the memory of one training step goes: parameters, gradients, optimiser state, activations.

Introduced in chapter 4, section "Comparing the methods"; chapter 6, section "Where the memory goes",
adds the formulas that predict each measured number, and section "Trading time for memory" the
activation count of a checkpointed model. Training memory is

    parameters + gradients (trainable only) + optimiser state + activations saved for backward.

For AdamW in float32 the state is two moments per trainable parameter (``2 * 4`` bytes each) plus a
4-byte step counter per parameter tensor, so full fine-tuning pays ``4 + 4 + 8 = 16`` bytes per
parameter before any activation; LoRA and the other parameter-efficient methods pay gradients and
state only for their few trainable tensors (Hu et al. 2021, §4.2, report a 2/3 cut of GPT-3's VRAM).
Mixed-precision training pays the same 16 bytes, arranged differently: 16-bit weights and gradients
(2 + 2) and a float32 master copy, momentum and variance (4 + 4 + 4) (Micikevicius et al. 2018,
arXiv:1710.03740; Rajbhandari et al. 2020, arXiv:1910.02054, §3.1): :func:`training_state_bytes`.

Activations are measured, not estimated: :func:`training_memory` runs the forward pass under
:class:`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd keeps for the
backward pass. Several saved tensors often share one storage (a ReLU output saved by the ReLU and by
the next layer's matrix product, views of one buffer), so each storage is counted once; storages that
belong to parameters are not activations and are left out. The input batch is counted when a layer
saves it (the first Linear does, to compute its weight gradient). :func:`activation_bytes` predicts
that number for the book's GPT exactly, term by term, and :func:`activation_reconciliation` sets the
terms beside the per-layer count of Korthikanti et al. (2022, arXiv:2205.05198, eq. 1).

Before a command trains anything, :func:`training_bytes` estimates one float32 step's memory from the
shape alone (no model is built) and :func:`available_bytes` reads what the device has free, so that a
model that cannot fit is refused in one line rather than after minutes.

The KV cache of generation (:func:`kv_cache_bytes`) is the other memory that grows with the
sequence; :data:`KV_CACHE_SHAPES` holds the shapes of two published models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from aigc_book.checks import check_int
from aigc_book.models.transformer import TransformerConfig

__all__ = [
    "available_bytes",
    "training_bytes",
    "TrainingMemory",
    "training_memory",
    "tensor_bytes",
    "SavedTensor",
    "saved_tensors",
    "OPTIMIZERS",
    "training_state_bytes",
    "activation_terms",
    "activation_bytes",
    "layer_activation_bytes",
    "korthikanti_activation_bytes",
    "activation_reconciliation",
    "kv_cache_bytes",
    "KVShape",
    "KV_CACHE_SHAPES",
    "lm_training_setup",
    "memory_by_precision",
]

INDEX_BYTES = 8  # token ids, targets and position ids are int64
LOW_PRECISION = (torch.bfloat16, torch.float16)


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
        parameter_copies: with ``autocast``, the 16-bit copies of weights that autocast made and the
            backward pass keeps (a matrix product saves its weight); None without autocast.
    """

    parameters: int
    trainable_parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    peak_cuda: int | None = None
    parameter_copies: int | None = None

    @property
    def total(self) -> int:
        """``parameters + gradients + optimizer_state + activations`` (+ ``parameter_copies``) in bytes."""
        return self.parameters + self.gradients + self.optimizer_state + self.activations + (self.parameter_copies or 0)

    def as_dict(self, unit: int = 1) -> dict[str, float]:
        """Every field and the total, divided by ``unit`` (e.g. ``2**20`` for MiB)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["total"] = self.total
        return {k: v / unit for k, v in out.items()}


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return (t.device.type, t.device.index, s.data_ptr()), s.nbytes()


class _ParameterCasts(TorchDispatchMode):
    """Records the storage of every copy made of a parameter (``aten._to_copy``): autocast's 16-bit weights.

    Autocast casts inside the dispatcher, below anything Python sees, so a dispatch mode is the
    one place that observes the cast with the parameter as its argument, trainable or frozen.
    """

    def __init__(self, param_storages: set):
        super().__init__()
        self.param_storages, self.copies = param_storages, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor):
            if _storage_key(args[0])[0] in self.param_storages:
                self.copies.add(_storage_key(out)[0])
        return out


def _check_autocast(autocast) -> None:
    if autocast is not None and autocast not in LOW_PRECISION:
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")


def _forward_context(device: torch.device, autocast, casts: _ParameterCasts | None):
    """The forward pass's context: nothing, or autocast plus the recorder of parameter casts."""
    stack = contextlib.ExitStack()
    if autocast is not None:
        stack.enter_context(casts)
        stack.enter_context(torch.autocast(device.type, dtype=autocast))
    return stack


def training_memory(
    model: nn.Module, optimizer_factory: Callable, batch, loss_fn: Callable, *, autocast: torch.dtype | None = None
) -> TrainingMemory:
    """Run one training step of ``model`` and report the bytes it needed, by kind.

    Args:
        model: the model, on its device; its trainable parameters are those with ``requires_grad``.
            The step is real: the weights change, as in training (pass a copy to keep them).
        optimizer_factory: ``optimizer_factory(params) -> torch.optim.Optimizer`` for the list of
            trainable parameters, e.g. ``lambda ps: torch.optim.AdamW(ps, lr=1e-3)``.
        batch: whatever ``loss_fn`` takes, already on the model's device.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` (the convention of
            :class:`~aigc_book.training.trainer.Trainer`).
        autocast: None (default: the model's own precision) or ``torch.bfloat16``/``torch.float16``
            to run the forward pass under ``torch.autocast`` on the model's device (mixed precision).
            The 16-bit weight copies autocast makes and the backward keeps are then reported apart,
            as ``parameter_copies``, not as activations.

    Gradients are cleared before the step and again after the measurement.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(optimizer_factory) or not callable(loss_fn):
        raise TypeError("optimizer_factory and loss_fn must be callables: optimizer_factory(params) and "
                        "loss_fn(model, batch)")
    _check_autocast(autocast)
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
    casts = _ParameterCasts(param_storages) if autocast is not None else None
    saved: dict[tuple, int] = {}
    copies: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key, nbytes = _storage_key(t)
        except (RuntimeError, NotImplementedError):  # a tensor without ordinary storage: not counted
            return t
        if casts is not None and key in casts.copies:
            copies[key] = nbytes
        elif key not in param_storages:
            saved[key] = nbytes
        return t

    with _forward_context(device, autocast, casts), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
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
        parameter_copies=sum(copies.values()) if autocast is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# What each operation saves
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedTensor:
    """One tensor an autograd node keeps for the backward pass.

    Attributes:
        op: the node's name, e.g. ``NativeLayerNormBackward0`` (the operation that saved it).
        name: the saved slot, e.g. ``input``, ``result1`` (LayerNorm's mean), ``logsumexp``.
        shape, dtype: of the saved tensor.
        nbytes: bytes of its storage.
        kind: ``"parameter"``, ``"parameter copy"`` (autocast's 16-bit weight) or ``"activation"``.
        first: True for the first sighting of its storage (sum ``nbytes`` over ``first`` activations to
            get :attr:`TrainingMemory.activations`).
    """

    op: str
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    kind: str
    first: bool


def _graph_nodes(root) -> list:
    """Every node reachable from ``root``, inputs before the nodes that use them (forward order)."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node is None:
            continue
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        stack.extend((child, False) for child, _ in reversed(node.next_functions))
    return order


def _saved_slots(node):
    """``(slot name, tensor)`` for each tensor a built-in operation's node saved (``_saved_*`` attributes)."""
    for attr in dir(node):
        if not attr.startswith("_saved_"):
            continue
        try:
            value = getattr(node, attr)
        except RuntimeError:  # already freed
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        for i, v in enumerate(values):
            if isinstance(v, torch.Tensor):
                yield attr[len("_saved_"):] + (f"[{i}]" if len(values) > 1 else ""), v


def saved_tensors(model: nn.Module, batch, loss_fn: Callable, *, autocast: torch.dtype | None = None
                  ) -> list[SavedTensor]:
    """Every tensor the forward pass of ``loss_fn(model, batch)`` saves, with the operation that saved it.

    Walks the autograd graph from the loss (no backward, no optimiser step) in forward order. Under
    ``autocast`` the table shows what stays in float32: LayerNorm's input and statistics, the
    attention's log-sum-exp, the log-probabilities of the loss. Custom ``autograd.Function`` nodes
    are not listed, and a model inside ``checkpointed_blocks`` is refused (reading a checkpointed
    block's saved tensors recomputes them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_autocast(autocast)
    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters")
    if any(getattr(m.forward, "checkpointed", False) for m in model.modules()):
        raise ValueError("saved_tensors cannot list a checkpointed model's tensors: reading them makes the "
                         "checkpoints recompute their blocks; measure it with training_memory instead")
    device = params[0].device
    param_storages = {_storage_key(p)[0] for p in params}
    casts = _ParameterCasts(param_storages) if autocast is not None else None
    with _forward_context(device, autocast, casts):
        loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        raise ValueError("loss_fn must return a tensor that depends on the model's trainable parameters")
    rows, seen = [], set()
    for node in _graph_nodes(loss.grad_fn):
        for slot, t in _saved_slots(node):
            key, nbytes = _storage_key(t)
            kind = ("parameter" if key in param_storages
                    else "parameter copy" if casts is not None and key in casts.copies else "activation")
            rows.append(SavedTensor(node.name(), slot, tuple(t.shape), t.dtype, nbytes, kind, key not in seen))
            seen.add(key)
    return rows


# ---------------------------------------------------------------------------------------------
# Parameters, gradients and optimiser state
# ---------------------------------------------------------------------------------------------

OPTIMIZERS = ("adamw", "sgd", "sgd_momentum")
STEP_COUNTER_BYTES = 4  # AdamW's per-tensor ``step`` is a float32 scalar


def training_state_bytes(
    n_params: int,
    *,
    param_bytes: int = 4,
    grad_bytes: int = 4,
    optimizer: str = "adamw",
    master_copy: bool = False,
    n_param_tensors: int = 0,
) -> dict[str, int]:
    """Bytes of the training state of ``n_params`` trainable parameters, by kind, and their total.

    * ``parameters``: ``n_params * param_bytes``; ``gradients``: ``n_params * grad_bytes``.
    * ``master parameters``: with ``master_copy`` (16-bit parameters), a float32 copy the optimiser
      updates (Micikevicius et al. 2018, arXiv:1710.03740, §3.1); the optimiser state is then
      float32 too, otherwise it has the parameters' precision (as ``torch.optim`` keeps it).
    * ``momentum`` (AdamW's ``exp_avg``; SGD's ``momentum_buffer``) and ``variance`` (``exp_avg_sq``).
    * ``step counters``: AdamW keeps one 4-byte float32 ``step`` per parameter *tensor*; pass
      ``n_param_tensors`` (``len(list(model.parameters()))``) to count them.

    Mixed-precision AdamW, ``param_bytes=2, grad_bytes=2, master_copy=True``, gives the
    ``2 + 2 + 12 = 16`` bytes per parameter of ZeRO (Rajbhandari et al. 2020, arXiv:1910.02054, §3.1);
    plain float32 AdamW gives ``4 + 4 + 8 = 16`` as well.
    """
    check_int("n_params", n_params, 0)
    check_int("n_param_tensors", n_param_tensors, 0)
    for name, value in (("param_bytes", param_bytes), ("grad_bytes", grad_bytes)):
        if value not in (1, 2, 4, 8):
            raise ValueError(f"{name} must be 1, 2, 4 or 8 bytes per element, got {value!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if master_copy and param_bytes >= 4:
        raise ValueError(f"master_copy keeps float32 weights beside 16-bit ones; param_bytes={param_bytes} "
                         f"needs none (use param_bytes=2)")
    state_bytes = 4 if master_copy else param_bytes
    out = {
        "parameters": n_params * param_bytes,
        "gradients": n_params * grad_bytes,
        "master parameters": n_params * 4 if master_copy else 0,
        "momentum": n_params * state_bytes if optimizer in ("adamw", "sgd_momentum") else 0,
        "variance": n_params * state_bytes if optimizer == "adamw" else 0,
        "step counters": n_param_tensors * STEP_COUNTER_BYTES if optimizer == "adamw" else 0,
    }
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------------------------
# Activations of the book's GPT
# ---------------------------------------------------------------------------------------------


def _check_activation_args(config, batch, seq_len, bytes_per_element, autocast_bytes) -> None:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    if config.dropout != 0.0:
        raise ValueError(f"the exact count is for dropout=0 (dropout saves masks, and on a CPU it makes the "
                         f"attention store its T x T weights); got dropout={config.dropout}")
    check_int("batch", batch, 1)
    check_int("seq_len", seq_len, 1)
    if seq_len > config.block_size:
        raise ValueError(f"seq_len={seq_len} is longer than the context, block_size={config.block_size}")
    if bytes_per_element not in (2, 4, 8):
        raise ValueError(f"bytes_per_element must be 2, 4 or 8 (the model's dtype), got {bytes_per_element!r}")
    if autocast_bytes not in (None, 2):
        raise ValueError(f"autocast_bytes must be None or 2 (bf16/fp16 autocast), got {autocast_bytes!r}")


def _layer_terms(config: TransformerConfig, n: int, e: int, lo: int) -> dict[str, int]:
    """Bytes one block saves for ``n = batch * seq_len`` tokens; ``e`` the model's element size, ``lo``
    the size of what runs in low precision (matrix-product inputs, attention; ``e`` without autocast)."""
    h, a = config.n_embd, config.n_head
    return {
        "LayerNorm inputs (x2)": 2 * n * h * e,  # the residual stream: float32 even under autocast
        "LayerNorm mean and 1/std (x2)": 2 * 2 * n * e,
        "attention input (to the q, k, v matrix)": n * h * lo,
        # one buffer, the q, k, v matrix's output; with RoPE only v is a view of it, and the whole buffer stays
        "queries, keys, values": 3 * n * h * lo,
        "rotated queries and keys (RoPE)": 2 * n * h * lo if config.pos_encoding == "rope" else 0,
        "attention log-sum-exp (fused kernel)": n * a * max(lo, 4),  # kept in at least float32
        "attention output (to the output matrix)": n * h * lo,
        "MLP input (to the first matrix)": n * h * lo,
        "GELU input": 4 * n * h * lo,
        "GELU output (to the second matrix)": 4 * n * h * lo,
    }


def _outside_terms(config: TransformerConfig, batch: int, seq_len: int, e: int, lo: int) -> dict[str, int]:
    """Bytes saved outside the blocks: embeddings, final LayerNorm, output head, loss."""
    n, h = batch * seq_len, config.n_embd
    return {
        "token ids (embedding)": n * INDEX_BYTES,
        "position ids (learned positions)": seq_len * INDEX_BYTES if config.pos_encoding == "learned" else 0,
        "RoPE cos and sin tables": 2 * seq_len * config.head_dim * e if config.pos_encoding == "rope" else 0,
        "final LayerNorm input": n * h * e,  # pre-LN: ln_f; post-LN: the LayerNorm on the embeddings
        "final LayerNorm mean and 1/std": 2 * n * e,
        "output head input": n * h * lo,
        "log-probabilities (cross-entropy)": n * config.vocab_size * e,
        "targets": n * INDEX_BYTES,
        "loss normaliser (0-dim)": e,
    }


def activation_terms(
    config: TransformerConfig,
    batch: int,
    seq_len: int,
    *,
    bytes_per_element: int = 4,
    autocast_bytes: int | None = None,
    checkpointed: bool = False,
) -> dict[str, int]:
    """What the book's GPT saves for backward in one causal-LM training step, term by term, in bytes.

    Read off :mod:`aigc_book.models.gpt` and :mod:`aigc_book.layers` with the fused attention on a
    CPU, ``dropout=0`` and targets in their own tensor (as :func:`causal_lm_batch` makes them);
    ``training_memory(...).activations`` measures the same number. Keys starting with ``"blocks: "``
    are one block's terms times ``n_layer``. Per block and token (``h = n_embd``, ``a = n_head``):

    * two LayerNorms save their input (``h``) and their mean and ``1/std`` (``2``);
    * the q, k, v matrix saves its input (``h``); the fused attention saves ``q, k, v`` (``3h``, one
      buffer), its output (``h``, which the output matrix saves too) and a log-sum-exp per head
      (``a``), never the ``T x T`` weights: its backward recomputes them;
    * the MLP saves its input (``h``), the GELU input (``4h``) and the GELU output (``4h``);

    that is ``16 h + 4 + a`` elements. The residual additions save nothing.

    Args:
        config: the GPT's shape (``dropout`` must be 0).
        batch, seq_len: ``B`` and ``T`` (``T <= block_size``).
        bytes_per_element: the model's dtype: 4 (float32), 8 (float64) or 2 (a model cast to 16 bits).
        autocast_bytes: 2 under bf16/fp16 autocast: the matrix products' inputs and the attention
            are then 16-bit, while the residual stream, LayerNorm and the loss stay at
            ``bytes_per_element`` (autocast runs them in float32).
        checkpointed: the blocks run under :func:`aigc_book.efficiency.checkpointing.checkpointed_blocks`:
            each keeps only its input (``h`` per token) and recomputes the rest in the backward pass.
            With RoPE the ``cos``/``sin`` tables are then held by the checkpoints' recomputation
            closures, not saved through autograd, so ``training_memory`` measures
            ``2 T head_dim`` elements less than this (true) count.

    On CUDA the kernels keep slightly different bookkeeping (the memory-efficient attention rounds
    its log-sum-exp up to a multiple of 32 positions; LayerNorm statistics of 16-bit inputs are
    float32), so the formula is exact on a CPU and close on a GPU.
    """
    _check_activation_args(config, batch, seq_len, bytes_per_element, autocast_bytes)
    e, lo, n = bytes_per_element, autocast_bytes or bytes_per_element, batch * seq_len
    if checkpointed:
        blocks = {"block inputs (checkpoints)": n * config.n_embd * e}
    else:
        blocks = _layer_terms(config, n, e, lo)
    out = {f"blocks: {k}": v * config.n_layer for k, v in blocks.items()}
    out.update(_outside_terms(config, batch, seq_len, e, lo))
    return {k: v for k, v in out.items() if v}  # a term of another configuration (RoPE, learned) is left out


def activation_bytes(
    config: TransformerConfig,
    batch: int,
    seq_len: int,
    *,
    bytes_per_element: int = 4,
    autocast_bytes: int | None = None,
    checkpointed: bool = False,
) -> int:
    """Total bytes of :func:`activation_terms`: what ``training_memory(...).activations`` measures."""
    return sum(activation_terms(config, batch, seq_len, bytes_per_element=bytes_per_element,
                                autocast_bytes=autocast_bytes, checkpointed=checkpointed).values())


def layer_activation_bytes(config: TransformerConfig, batch: int, seq_len: int, *, bytes_per_element: int = 4,
                           autocast_bytes: int | None = None) -> int:
    """Bytes one block saves: ``B T (16 h + 4 + a)`` elements in float32 (see :func:`activation_terms`)."""
    _check_activation_args(config, batch, seq_len, bytes_per_element, autocast_bytes)
    return sum(_layer_terms(config, batch * seq_len, bytes_per_element, autocast_bytes or bytes_per_element).values())


def korthikanti_activation_bytes(seq_len: int, batch: int, hidden: int, heads: int, n_layer: int) -> int:
    """Activation bytes of ``n_layer`` Transformer layers by Korthikanti et al. (2022, arXiv:2205.05198, eq. 1):

    ``n_layer * s b h (34 + 5 a s / h)`` — 16-bit activations, 1-byte dropout masks, and the
    ``s x s`` softmax output (plus its dropout mask and output) stored for every head, no parallelism.
    """
    for name, value in (("seq_len", seq_len), ("batch", batch), ("hidden", hidden), ("heads", heads),
                        ("n_layer", n_layer)):
        check_int(name, value, 1)
    s, b, h, a = seq_len, batch, hidden, heads
    return n_layer * (34 * s * b * h + 5 * a * s * s * b)  # s b h * 5 a s / h = 5 a s^2 b, an integer


# (term, Korthikanti's bytes per token in units of h and of a*s, ours in elements of h / of 1 / of a)
_RECONCILIATION = (
    ("LayerNorm inputs (x2)", (4, 0), (2, 0, 0), "same tensors; theirs 16-bit"),
    ("q, k, v matrix input", (2, 0), (1, 0, 0), "same"),
    ("queries and keys (for Q K^T), values", (6, 0), (3, 0, 0), "same; ours one buffer"),
    ("softmax output (s x s per head)", (0, 2), (0, 0, 0), "fused kernel recomputes it in the backward"),
    ("softmax dropout mask (s x s)", (0, 1), (0, 0, 0), "dropout = 0, and the fused kernel"),
    ("dropout output (s x s, multiplies V)", (0, 2), (0, 0, 0), "fused kernel recomputes it"),
    ("attention log-sum-exp (one per head)", (0, 0), (0, 0, 1), "what the fused kernel keeps instead"),
    ("output-projection input", (2, 0), (1, 0, 0), "same"),
    ("attention dropout mask (1 byte)", (1, 0), (0, 0, 0), "dropout = 0"),
    ("MLP input", (2, 0), (1, 0, 0), "same"),
    ("GELU input (4h)", (8, 0), (4, 0, 0), "same"),
    ("GELU output = second matrix input (4h)", (8, 0), (4, 0, 0), "same"),
    ("MLP dropout mask (1 byte)", (1, 0), (0, 0, 0), "dropout = 0"),
    ("LayerNorm mean and 1/std (x2)", (0, 0), (0, 4, 0), "small; the paper leaves them out"),
)


def activation_reconciliation(config: TransformerConfig, batch: int, seq_len: int, *, bytes_per_element: int = 4
                              ) -> list[dict]:
    """Korthikanti et al.'s per-layer terms beside ours, in bytes for one layer of ``config``.

    Each row: ``term``, ``korthikanti`` (their eq. 1: 16-bit activations, 1-byte dropout masks, the
    unfused attention), ``ours`` (this repository's GPT in the model precision ``bytes_per_element``
    with the fused attention and no dropout; :func:`layer_activation_bytes`), ``why`` they differ.
    The ``korthikanti`` column sums to ``korthikanti_activation_bytes(T, B, h, a, 1)``, the ``ours``
    column to ``layer_activation_bytes(config, B, T)``. Per token and layer (theirs in bytes at 16 bits,
    ours in elements, 4 bytes each in float32):

    ======================================  ===========  =============  ==========================
    term (per token, per layer)             theirs       ours (elems)   why
    ======================================  ===========  =============  ==========================
    LayerNorm inputs (x2)                   4h           2h             same; theirs 16-bit
    q, k, v matrix input                    2h           h              same
    Q and K for Q K^T; V                    6h           3h             same (ours one buffer)
    softmax output, its mask, dropout out   5as          0              fused kernel recomputes
    attention log-sum-exp                   0            a (float32)    fused kernel keeps it
    output-projection input                 2h           h              same
    MLP input, GELU input, GELU output      18h          9h             same
    two dropout masks (1 byte each)         2h           0              dropout = 0
    LayerNorm mean and 1/std (x2)           0            4              paper leaves them out
    ======================================  ===========  =============  ==========================

    So their ``34 h = 2 * 16 h + 2 h``: the same sixteen ``h``-sized tensors at 2 bytes plus two 1-byte
    dropout masks; their ``5 a s`` is the attention matrix, which the fused kernel never stores —
    the saving Korthikanti et al. call *selective activation recomputation*, done here by
    the kernel itself (FlashAttention's backward recomputes the scores; Dao et al. 2022, arXiv:2205.14135).
    Neither column has the terms outside the layers (embeddings, final LayerNorm, output head and the
    ``B T V`` log-probabilities of the loss), nor any division by tensor or sequence parallelism; with
    ``pos_encoding="rope"`` ours has one more row, the rotated copies of q and k (``2h``).
    """
    _check_activation_args(config, batch, seq_len, bytes_per_element, None)
    n, h, a, e = batch * seq_len, config.n_embd, config.n_head, bytes_per_element
    rows = []
    for term, (k_h, k_as), (o_h, o_1, o_a), why in _RECONCILIATION:
        rows.append({"term": term, "korthikanti": n * (k_h * h + k_as * a * seq_len),
                     "ours": n * (o_h * h * e + o_1 * e + o_a * a * max(e, 4)), "why": why})
    if config.pos_encoding == "rope":
        rows.append({"term": "rotated queries and keys (RoPE)", "korthikanti": 0, "ours": 2 * n * h * e,
                     "why": "rotation makes new q, k tensors; the paper has learned positions"})
    return rows


# ---------------------------------------------------------------------------------------------
# The KV cache
# ---------------------------------------------------------------------------------------------


def kv_cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, seq_len: int, batch: int,
                   bytes_per_element: int = 2) -> int:
    """Bytes of the keys and values of ``seq_len`` positions: ``2 n_layer n_kv_head head_dim seq_len batch bytes``.

    With grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245) several query heads share
    one of ``n_kv_head < n_head`` key/value heads, and the cache shrinks by ``n_head / n_kv_head``;
    multi-head attention has ``n_kv_head = n_head``. 16-bit (2 bytes) is the usual serving precision.
    """
    for name, value in (("n_layer", n_layer), ("n_kv_head", n_kv_head), ("head_dim", head_dim),
                        ("seq_len", seq_len), ("batch", batch), ("bytes_per_element", bytes_per_element)):
        check_int(name, value, 1)
    return 2 * n_layer * n_kv_head * head_dim * seq_len * batch * bytes_per_element


@dataclass(frozen=True)
class KVShape:
    """The shape that sets a published model's KV cache, with its source."""

    name: str
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    context: int
    source: str

    def kv_cache_bytes(self, seq_len: int | None = None, batch: int = 1, bytes_per_element: int = 2) -> int:
        """:func:`kv_cache_bytes` of this model, for its full context by default."""
        return kv_cache_bytes(self.n_layer, self.n_kv_head, self.head_dim, seq_len or self.context, batch,
                              bytes_per_element)


KV_CACHE_SHAPES = {
    "GPT-3 175B": KVShape(
        "GPT-3 175B", n_layer=96, n_head=96, n_kv_head=96, head_dim=128, context=2048,
        source="Brown et al. 2020, arXiv:2005.14165, Table 2.1 (n_layers 96, d_model 12288, n_heads 96, "
               "d_head 128; n_ctx 2048 tokens, §2.1); multi-head attention, no key/value sharing",
    ),
    "Llama 2 70B": KVShape(
        "Llama 2 70B", n_layer=80, n_head=64, n_kv_head=8, head_dim=128, context=4096,
        source="Touvron et al. 2023, arXiv:2307.09288, Table 1 (grouped-query attention for 34B and 70B, "
               "4k context); 80 layers, width 8192, 64 query heads and 8 key/value heads as in the released "
               "configuration (Hugging Face meta-llama/Llama-2-70b-hf, config.json)",
    ),
}


# ---------------------------------------------------------------------------------------------
# A model and a batch to measure, and the precision comparison
# ---------------------------------------------------------------------------------------------


def lm_training_setup(config: TransformerConfig, batch: int, seq_len: int, device=None, *, seed: int = 0):
    """A seeded GPT of ``config`` in training mode on ``device`` and a random causal-LM batch
    ``{"idx": (B, T), "targets": (B, T)}`` (the :func:`~aigc_book.training.objectives.causal_lm_loss` format)."""
    from aigc_book.models.gpt import GPT  # the GPT imports layers only; kept local so this module stays light

    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    check_int("batch", batch, 1)
    check_int("seq_len", seq_len, 1)
    if seq_len > config.block_size:
        raise ValueError(f"seq_len={seq_len} is longer than the context, block_size={config.block_size}")
    device = torch.device("cpu" if device is None else device)
    torch.manual_seed(seed)
    model = GPT(config).to(device).train()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len + 1), generator=g)
    # two tensors, as causal_lm_batch makes them (slices of one buffer would share a storage)
    data = {"idx": ids[:, :-1].clone().to(device), "targets": ids[:, 1:].clone().to(device)}
    return model, data


def memory_by_precision(config: TransformerConfig, batch: int, seq_len: int, device=None, *,
                        dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict[str, int]:
    """Activation bytes of one training step of a float32 GPT, measured and predicted, with and without autocast.

    Returns ``float32``, ``float32 formula``, ``autocast``, ``autocast formula`` (activations in bytes)
    and ``parameter copies`` (the 16-bit weights autocast keeps for the backward pass). Under
    autocast the matrix products and the attention save 16-bit tensors; LayerNorm (its input, the
    float32 residual stream, and its statistics), the attention's log-sum-exp and the
    cross-entropy's log-probabilities stay float32, which is why activations shrink by less than half.
    """
    from aigc_book.training.objectives import causal_lm_loss

    _check_autocast(dtype)
    model, data = lm_training_setup(config, batch, seq_len, device, seed=seed)

    def sgd(params):  # no optimiser state and no change: only the activations matter here
        return torch.optim.SGD(params, lr=0.0)

    full = training_memory(model, sgd, data, causal_lm_loss)
    mixed = training_memory(model, sgd, data, causal_lm_loss, autocast=dtype)
    return {
        "float32": full.activations,
        "float32 formula": activation_bytes(config, batch, seq_len),
        "autocast": mixed.activations,
        "autocast formula": activation_bytes(config, batch, seq_len, autocast_bytes=2),
        "parameter copies": mixed.parameter_copies,
    }


def training_bytes(n_params: int, layers: int, embd: int, heads: int, block: int, batch: int, vocab: int) -> int:
    """Rough float32 memory of one training step: weights, gradients and two AdamW moments (16
    bytes per parameter), plus activations kept for the backward pass — about ``34 C + 5 h T``
    16-bit values per token and layer (Korthikanti et al. 2022, §4.1), doubled for float32 — and
    the logits with their gradient."""
    tokens = batch * block
    activations = layers * tokens * (68 * embd + 10 * heads * block)
    return 16 * n_params + activations + 3 * 4 * tokens * vocab


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
