"""A small, complete training loop that any model and objective can use.

Introduced in chapter 3, section "Causal language modelling: training a GPT". What it does, in the
order of one step:

1. draw ``grad_accum`` micro-batches from ``batch_fn("train", generator)`` and add up the
   gradients of ``loss_fn(model, batch) / grad_accum`` (gradient accumulation);
2. clip the global gradient norm to ``grad_clip``;
3. set the learning rate from :func:`lr_at` (linear warm-up, then cosine decay to ``min_lr``);
4. take an AdamW step (Loshchilov & Hutter 2019) with weight decay on matrices only (embeddings and
   Linear weights), not on biases and LayerNorm gains — as in GPT-2/nanoGPT — using PyTorch's
   fused AdamW kernel on CPU and CUDA.

On CUDA the forward pass runs under bf16 autocast (:func:`aigc_book.autocast`); on a CPU it stays in
float32 (without AMX, bf16 matrix products are slower than float32).

With ``TrainConfig.compile`` the forward and backward passes run through ``torch.compile``
(the first step pays the compile time); checkpoints and evaluation use the plain model.

Checkpoints resume *exactly*: the model (:mod:`aigc_book.models.io`), optimizer moments, step, loss
history and every random state (PyTorch, CUDA, NumPy, Python, the trainer's data generator) are saved, so
stopping at step k and resuming gives bitwise the same weights as never stopping (tested).
Loading uses ``torch.load(weights_only=True)``, which cannot run code from a file; a corrupt or
mismatched checkpoint raises :class:`CheckpointError` naming the file.

Data parallel (chapter 6, section "When one machine is not enough"; :mod:`aigc_book.training.distributed`):
when a process group of more than one process is initialised (``torchrun``), the model is wrapped in
``DistributedDataParallel``, and each rank draws its *own* micro-batches (its data generator is
seeded with :func:`~aigc_book.training.distributed.rank_seed`, which is ``seed`` itself on rank 0).
The gradients are averaged during the backward pass (not after every accumulated micro-batch:
``no_sync``), so every rank takes the same step; the loss in ``history`` is the mean over ranks;
evaluation runs on every rank on the same data and gives the same numbers; only rank 0 shows the
progress bar and writes checkpoints, which hold every rank's random states, so resuming with the
same number of processes is exact too (tested). Ctrl-C is recorded, the ranks agree on it at the
end of the step, and all stop after that same step with a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aigc_book.models.io import CheckpointError
from aigc_book.runtime import autocast
from aigc_book.training import distributed as dp
from aigc_book.training.checkpoint import interrupts_deferred, read_checkpoint, write_checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :class:`Trainer` (defaults suit the book's small models).

    Attributes:
        steps: optimizer steps to train for.
        lr, min_lr: the peak learning rate, and where the cosine decay ends (None: ``lr / 10``).
        warmup_steps: optimizer steps of linear warm-up before the decay.
        weight_decay, betas: AdamW's (decay on matrices only).
        grad_clip: the global gradient-norm clip (0 disables clipping).
        grad_accum: micro-batches whose gradients add up to one step.
        eval_interval: evaluate every this many steps (0: only at the end).
        eval_batches: batches per split in one evaluation.
        eval_splits: the splits :meth:`Trainer.evaluate` averages ``loss_fn`` over.
        seed: seeds the trainer's data generator.
        progress: show a progress bar.
        compile: train through ``torch.compile`` (the first steps pay the compile time).

    A checkpoint saves these fields; one saved under their older names (``max_iters``,
    ``warmup_iters``, ``eval_iters``) still loads (:data:`RENAMED_FIELDS`).
    """

    steps: int = 1000
    lr: float = 1e-3
    min_lr: float | None = None  # default: lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # 0 disables clipping
    grad_accum: int = 1
    eval_interval: int = 0  # 0: evaluate only at the end
    eval_batches: int = 20
    eval_splits: tuple[str, ...] = ("val",)
    seed: int = 0
    progress: bool = True
    compile: bool = False  # train through torch.compile (the first steps pay the compile time)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.grad_accum < 1 or self.eval_batches < 1:
            raise ValueError("steps, grad_accum and eval_batches must be >= 1")
        if self.lr <= 0 or self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0; warmup_steps, weight_decay and grad_clip must be >= 0")
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "eval_splits", tuple(self.eval_splits))


# Old name -> new name of TrainConfig fields, so that a checkpoint saved before the rename still loads.
RENAMED_FIELDS = {"max_iters": "steps", "warmup_iters": "warmup_steps", "eval_iters": "eval_batches"}


def saved_train_config(saved: dict) -> dict:
    """A checkpoint's ``train_config`` with its fields under today's names (see :data:`RENAMED_FIELDS`)."""
    return {RENAMED_FIELDS.get(key, key): value for key, value in saved.items()}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr``."""
    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def configure_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with two groups: tensors of dimension >= 2 decay, vectors (biases, norms) do not."""
    params = [p for p in model.parameters() if p.requires_grad]  # shared (tied) tensors appear once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel updates all tensors in one pass: on a 2-core CPU it is about 4x faster than
    # the default multi-tensor ("foreach") path for the book's small models (5 ms of a 40 ms step).
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older PyTorch or an unsupported dtype
            pass
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _to(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the weights were left as they were."""

    def __init__(self, step: int, loss: float, grad_norm: float, lr: float):
        self.step, self.loss, self.grad_norm, self.lr = step, loss, grad_norm, lr
        super().__init__(
            f"step {step}: the loss is {loss:.4g} and the gradient norm {grad_norm:.4g}; training stopped "
            f"before this update (learning rate {lr:.3g}: too high a learning rate is the usual cause)"
        )


class Trainer:
    """Train ``model`` on ``loss_fn(model, batch_fn(split, generator))``.

    Args:
        model: any ``nn.Module`` (moved to ``device``).
        batch_fn: ``batch_fn(split, generator) -> batch`` (a tensor, dict, list or tuple of tensors);
            ``split`` is ``"train"`` or an evaluation split name. It must draw its randomness from
            ``generator`` only, which is what makes resuming exact.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        config: a :class:`TrainConfig`.
        device: where to train (default: the model's current device).
        eval_fn: ``eval_fn(model) -> {split: loss}``, e.g. :func:`aigc_book.training.evaluation.lm_loss`
            over held-out text; by default :meth:`evaluate` averages ``loss_fn`` over ``eval_batches``
            fixed batches of each split in ``eval_splits``.
        distributed: ``None`` (default): data parallel when a process group of more than one process
            is initialised; ``False``: train alone even then. (Every rank must build its Trainer.)

    After :meth:`train`, ``history`` holds ``step``, ``train_loss``, ``lr``, ``ms`` per step and
    ``evals`` (one dict per evaluation: ``step`` and a loss per split).
    """

    def __init__(self, model: nn.Module, batch_fn: Callable, loss_fn: Callable, config: TrainConfig | None = None,
                 device: torch.device | str | None = None, eval_fn: Callable | None = None,
                 distributed: bool | None = None) -> None:
        self.config = cfg = config or TrainConfig()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.rank, self.world_size = dp.world() if distributed is not False else (0, 1)
        # DDP broadcasts rank 0's weights now and averages gradients in every backward pass.
        self.ddp = dp.wrap_ddp(self.model, self.device) if self.world_size > 1 else None
        # The wrappers share the model's parameters; checkpoints and evaluation use the plain model.
        wrapped = self.ddp if self.ddp is not None else self.model
        self.train_model = torch.compile(wrapped) if cfg.compile else wrapped
        self.batch_fn, self.loss_fn, self.eval_fn = batch_fn, loss_fn, eval_fn
        self.optimizer = configure_optimizer(model, cfg, self.device)
        self.generator = torch.Generator().manual_seed(dp.rank_seed(cfg.seed, self.rank))
        self._sigint: dp.SigintRecorder | None = None  # data parallel: Ctrl-C recorded while training
        self._stop_agreed = False
        self.step = 0
        self.history: dict[str, list] = {"step": [], "train_loss": [], "lr": [], "ms": [], "evals": []}
        self.metadata: dict = {}  # what else must match on resume (e.g. the command line's batch size)
        self.resume_note: str | None = None

    # ---- training -----------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step (with accumulation); returns the mean micro-batch loss.

        Raises :class:`NonFiniteLossError`, leaving the weights as they were, when the loss or the
        gradient norm is NaN or infinite.
        """
        loss, grad_norm = self._gradients()
        with interrupts_deferred():  # the update, the step counter and the history change together
            return self._update(loss, grad_norm)

    def _gradients(self) -> tuple[float, float]:
        """Forward and backward over ``grad_accum`` micro-batches; the weights do not change."""
        cfg, model = self.config, self.model
        model.train()
        total = 0.0
        for i in range(cfg.grad_accum):
            batch = _to(self.batch_fn("train", self.generator), self.device)
            # DDP: average the gradients once, in the last micro-batch's backward pass
            sync = self.ddp is None or i == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with autocast(self.device):
                    loss = self.loss_fn(self.train_model, batch)
                (loss / cfg.grad_accum).backward()
            total += loss.item()
        total = self._agree(total) if self.ddp is not None else total
        params = [p for p in model.parameters() if p.grad is not None]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")  # inf: measure, do not clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
        return total / cfg.grad_accum, grad_norm

    def _agree(self, total: float) -> float:
        """Data parallel: one small all-reduce gives every rank the loss summed over ranks and whether
        any rank saw Ctrl-C (``self._stop_agreed``), so all ranks record and decide the same."""
        asked = self._sigint is not None and self._sigint.requested
        both = torch.tensor([total, float(asked)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(both)
        self._stop_agreed = bool(both[1] > 0)
        return float(both[0]) / self.world_size

    def _update(self, loss: float, grad_norm: float, ms: float | None = None) -> float:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self.step + 1, loss, grad_norm, lr_at(self.step, self.config))
        lr = lr_at(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        h = self.history
        h["step"].append(self.step)
        h["train_loss"].append(loss)
        h["lr"].append(lr)
        h["ms"].append(ms)
        return loss

    def _eval_due(self, step: int) -> bool:
        cfg = self.config
        return step > 0 and ((cfg.eval_interval and step % cfg.eval_interval == 0) or step == cfg.steps)

    def train(self, until: int | None = None, checkpoint_dir=None, checkpoint_every: int = 0) -> dict:
        """Train from the current step up to ``until`` (default ``steps``); returns ``history``.

        With ``checkpoint_dir``, a checkpoint is written there every ``checkpoint_every`` steps (if
        > 0) and when the run is interrupted (Ctrl-C), so nothing is lost: :meth:`load_checkpoint`
        continues exactly where it stopped, as if the run had never been interrupted, wherever the
        interrupt landed (a step half done is redone; a finished one is kept; a missed evaluation
        is made up). A NaN or infinite loss stops the run with :class:`NonFiniteLossError` and writes
        nothing, so the last checkpoint stays the last good state.
        """
        cfg = self.config
        until = cfg.steps if until is None else min(until, cfg.steps)
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, file=sys.stderr, disable=not cfg.progress or self.rank != 0,
                   desc="train", dynamic_ncols=True, leave=False)
        rng_at_step_start, in_step = None, False
        # Data parallel: Ctrl-C is only recorded, and the ranks stop together after the same step (_agree).
        recorder = dp.SigintRecorder() if self.ddp is not None else contextlib.nullcontext()
        commit = contextlib.nullcontext if self.ddp is not None else interrupts_deferred
        self._stop_agreed = False
        with recorder as self._sigint:
            try:
                evals = self.history["evals"]
                if self._eval_due(self.step) and not (evals and evals[-1]["step"] == self.step):
                    evals.append({"step": self.step, **self.evaluate()})  # an interrupt came before it ran
                while self.step < until:
                    t0 = time.perf_counter()
                    if checkpoint_dir is not None:  # an interrupted step is redone from this state
                        rng_at_step_start = capture_rng_state(self.generator)
                    in_step = True
                    loss, grad_norm = self._gradients()
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    with commit():  # a step is committed whole: weights, counter, history
                        self._update(loss, grad_norm, ms=1000 * (time.perf_counter() - t0))
                        in_step = False
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    if self._stop_agreed:  # some rank saw Ctrl-C; every rank knows it after this same step
                        raise KeyboardInterrupt
                    if self._eval_due(self.step):
                        record = {"step": self.step, **self.evaluate()}
                        self.history["evals"].append(record)
                        bar.set_postfix(loss=f"{loss:.4f}",
                                        **{k: f"{v:.4f}" for k, v in record.items() if k != "step"})
                    if checkpoint_dir is not None and checkpoint_every and self.step % checkpoint_every == 0:
                        self.save_checkpoint(checkpoint_dir)
            except KeyboardInterrupt:
                if checkpoint_dir is not None:
                    if in_step and rng_at_step_start is not None:  # the half-done step will be redone
                        restore_rng_state(rng_at_step_start, self.generator)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.save_checkpoint(checkpoint_dir)
                    if self.rank == 0:
                        print(f"\ninterrupted at step {self.step}; checkpoint saved to {checkpoint_dir}",
                              file=sys.stderr)
                raise
            finally:
                self._sigint, self._stop_agreed = None, False
                bar.close()
        return self.history

    @torch.no_grad()
    def evaluate(self, splits: tuple[str, ...] | None = None, batches: int | None = None) -> dict[str, float]:
        """``eval_fn(model)`` if given, else the mean loss over ``batches`` batches per split, always the
        same batches (own fixed generator).

        Evaluation draws nothing from the training generator or the global RNG, so evaluating more
        or less often does not change the training run.
        """
        if self.eval_fn is not None:
            with autocast(self.device):
                return {k: float(v) for k, v in self.eval_fn(self.model).items()}
        splits = self.config.eval_splits if splits is None else splits
        batches = self.config.eval_batches if batches is None else batches
        was_training = self.model.training
        self.model.eval()
        out = {}
        try:
            for i, split in enumerate(splits):
                g = torch.Generator().manual_seed(10_000 + self.config.seed * 97 + i)
                losses = []
                for _ in range(batches):
                    batch = _to(self.batch_fn(split, g), self.device)
                    with autocast(self.device):
                        losses.append(self.loss_fn(self.model, batch).item())
                out[split] = float(np.mean(losses))
        finally:
            self.model.train(was_training)
        return out

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, directory) -> Path:
        """Write the model, the optimizer, the history and every random state as one atomic
        checkpoint (:func:`aigc_book.training.checkpoint.write_checkpoint`).

        Data parallel: every rank must call it; rank 0 collects each rank's random states and alone
        writes (the weights and optimizer moments are the same on every rank), and the others wait
        until the checkpoint is complete."""
        rng = capture_rng_state(self.generator)
        per_rank = None
        if self.world_size > 1:
            per_rank = [None] * self.world_size
            torch.distributed.all_gather_object(per_rank, rng)
        if self.rank == 0:
            state = {
                "format": 2,
                "step": self.step,
                "train_config": json.loads(json.dumps(asdict(self.config))),
                "metadata": self.metadata,
                "optimizer": self.optimizer.state_dict(),
                "history": self.history,
                "rng": rng,
            }
            if per_rank is not None:
                state.update(world_size=self.world_size, rng_per_rank=per_rank)
            write_checkpoint(directory, self.model, state)
        if self.world_size > 1:
            torch.distributed.barrier()  # no rank goes on (or exits) while rank 0 is still writing
        return Path(directory)

    def load_checkpoint(self, directory) -> Path:
        """Restore the newest complete checkpoint; returns the directory it came from.

        Raises :class:`CheckpointError` for a missing, damaged or mismatched checkpoint; when only the
        previous one is intact it is used and ``self.resume_note`` says why.
        """
        state, path, self.resume_note = read_checkpoint(directory, self.model)
        saved_world = state.get("world_size", 1) if isinstance(state, dict) else 1
        if saved_world != self.world_size:
            how = "one process, without torchrun" if saved_world == 1 else f"{saved_world} processes"
            raise CheckpointError(f"{path}: written by {saved_world} process(es) but resumed by {self.world_size}: "
                                  f"each process's data stream is part of the state; resume with {how}")
        try:
            saved_cfg = saved_train_config(state["train_config"])
            own = json.loads(json.dumps(asdict(self.config)))
            diff = {k: (saved_cfg.get(k), v) for k, v in own.items()
                    if k not in ("progress", "compile") and saved_cfg.get(k) != v}
            saved_meta, meta = state.get("metadata", {}), self.metadata
            diff.update({k: (saved_meta.get(k), meta.get(k))
                         for k in sorted(set(saved_meta) | set(meta)) if saved_meta.get(k) != meta.get(k)})
            if diff:
                raise CheckpointError(f"{path}: saved with different settings: " + ", ".join(
                    f"{k}={a!r} (checkpoint) vs {b!r} (now)" for k, (a, b) in diff.items()))
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            self.history = state["history"]
            restore_rng_state(state["rng_per_rank"][self.rank] if self.world_size > 1 else state["rng"],
                              self.generator)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path}: trainer state does not fit this model/optimizer ({err})") from err
        return path


# ---- random state ----------------------------------------------------------------------------
def capture_rng_state(generator: torch.Generator | None = None) -> dict:
    """Every random state that training touches, as tensors and plain Python values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        generator.set_state(state["generator"])
