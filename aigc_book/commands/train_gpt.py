"""``python -m aigc_book train-gpt``: train a character-level GPT on a UTF-8 text file.

Introduced in chapter 3, section "Your own text". Usage::

    python -m aigc_book train-gpt --text FILE [--n-layer 4 --n-head 4 --n-embd 128 --block-size 64
                                  --batch-size 12 --steps 2000 --lr 1e-3 --device cpu --seed 1337 --out DIR]

The last 10% of the file is held out for validation; a progress bar goes to stderr, and one JSON
object is the last line of stdout: ``params``, ``ms_per_iter`` (median), ``tokens_per_s``,
``train_loss``, ``val_loss`` (mean nats per character over the whole held-out tail), ``device``,
``world_size``, ``global_batch`` and more. The defaults are nanoGPT's "baby GPT on a CPU" recipe, and
so is the seed, 1337.

It also trains data-parallel (chapter 6, section "When one machine is not enough";
:mod:`aigc_book.training.distributed`) when started by torchrun, with the same flags::

    torchrun --nproc_per_node 2 -m aigc_book train-gpt --text FILE [flags as above]

Each process (gloo on a CPU, nccl on ``cuda:LOCAL_RANK``) draws its own ``--batch-size`` windows, so a
step sees ``global_batch = batch_size x world_size`` of them and ``tokens_per_s`` counts all processes.
Rank 0 alone shows the progress bar, writes the checkpoints, the model and the log, and prints the
JSON line and any error; ``--resume`` needs the same number of processes and is then exact. On a CPU
each process takes ``cores // nproc_per_node`` threads unless ``AIGC_CPU_THREADS`` is set. Under
torchrun a bad input is still one line from the program (exit 2 in every process), but torchrun
adds its own report of the failed processes and exits 1.

Ctrl-C saves a checkpoint (exit 130) and ``--resume`` continues exactly, refusing a checkpoint made
with other settings; a NaN or infinite loss stops the run (exit 1), keeps the last good checkpoint
and names the step.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from aigc_book.commands.options import CHECKPOINT_DIR, add_flag, check_out, check_seed, device_of, say
from aigc_book.errors import RunError, UsageError
from aigc_book.models.io import CheckpointError
from aigc_book.runtime import seed_everything
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import split_train_val
from aigc_book.text.tokenizer import TOKENIZER_FILE

__all__ = ["MAX_TEXT_BYTES", "SHARED", "SEED", "add_arguments", "interrupted", "min_chars", "read_text_file", "run"]

SHARED = ("device", "seed", "progress", "overwrite")
SEED = 1337  # nanoGPT's; the runs the book reports were made with it
VAL_FRACTION = 0.1
MAX_TEXT_BYTES = 32 * 2**20  # a character-level model on a laptop: 32 MB is already hours of training
SNIFF_BYTES = 1 << 16  # binary files are recognised from their first 64 KB, before reading the rest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", required=True, help="UTF-8 text file (the last 10%% is held out for validation)")
    add_flag(p, "--n-layer", "--layers", type=int, default=4, help="Transformer blocks (default 4)")
    add_flag(p, "--n-head", "--heads", type=int, default=4, help="attention heads per block (default 4)")
    add_flag(p, "--n-embd", "--embd", type=int, default=128, help="width, a multiple of --n-head (default 128)")
    add_flag(p, "--block-size", "--block", type=int, default=64, help="context length in characters (default 64)")
    add_flag(p, "--batch-size", "--batch", type=int, default=12, help="windows per step (default 12)")
    add_flag(p, "--steps", "--iters", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--out", default="runs/gpt", help="directory for the model and tokenizer")
    p.add_argument("--eval-interval", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile (faster steps after a compile)")
    p.add_argument("--checkpoint-interval", type=int, default=500,
                   help="save a checkpoint under OUT/checkpoint every N steps (and always on Ctrl-C); "
                        "0: only on Ctrl-C")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT/checkpoint (same arguments otherwise)")


def read_text_file(path: str, block_size: int) -> str:
    """Read a UTF-8 text file, rejecting what cannot train a model with context ``block_size``."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"--text {path}: no such file")
    if not p.is_file():
        raise UsageError(f"--text {path}: not a regular file")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if b"\x00" in head:
        raise UsageError(f"--text {path}: looks like a binary file (contains NUL bytes); give a UTF-8 text file")
    if size > MAX_TEXT_BYTES:
        raise UsageError(
            f"--text {path}: {size / 2**20:.0f} MB is more than train-gpt reads ({MAX_TEXT_BYTES // 2**20} MB); "
            f"train on an excerpt, e.g. head -c {MAX_TEXT_BYTES // 2**20}M {path} > excerpt.txt"
        )
    data = p.read_bytes()
    if not data.strip():
        raise UsageError(f"--text {path}: the file is empty")
    if b"\x00" in data:
        raise UsageError(f"--text {path}: looks like a binary file (contains NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"--text {path}: not valid UTF-8 (byte {err.start}); give a UTF-8 text file") from None
    need = min_chars(block_size)
    if len(text) < need:
        raise UsageError(
            f"--text {path}: too short ({len(text)} characters); --block-size {block_size} needs at least {need} "
            f"(the last 10% is held out and must hold {block_size + 1} characters)"
        )
    return text


def min_chars(block_size: int) -> int:
    """Shortest text whose held-out tail still holds one window of ``block_size + 1`` characters."""
    return int((block_size + 1) / VAL_FRACTION) + 1


def check_args(args) -> None:
    """Every flag of ``train-gpt`` that can be checked without reading the text."""
    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("checkpoint_interval", "eval_interval"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {args.lr}")
    if not 0.0 <= args.dropout < 1.0:  # also refuses nan
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    check_seed(args.seed)
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: choose one")


def torchrun_place():
    """This process's place when torchrun started it with more than one process, else None."""
    from aigc_book.training.distributed import torchrun_env

    try:
        env = torchrun_env()
    except ValueError as err:
        raise UsageError(f"torchrun: {err}") from None
    return env if env is not None and env.world_size > 1 else None


def run(args) -> dict | None:
    """Train as ``args`` say; returns the JSON summary (None on the ranks > 0 of a torchrun job)."""
    # Imported here so that `--help` and bad arguments answer without loading the models.
    from aigc_book.efficiency.memory import available_bytes, training_bytes
    from aigc_book.models.gpt import GPT
    from aigc_book.models.transformer import TransformerConfig
    from aigc_book.training import distributed as dp
    from aigc_book.training.evaluation import lm_loss
    from aigc_book.training.objectives import causal_lm_batch, causal_lm_loss
    from aigc_book.training.trainer import TrainConfig, Trainer

    check_args(args)
    place = torchrun_place()
    world_size, rank = (place.world_size, place.rank) if place else (1, 0)
    text = read_text_file(args.text, args.block_size)
    if place is not None and not os.environ.get(dp.THREADS_ENV_VAR):
        # before get_device, whose load follower never goes above the count it starts with
        torch.set_num_threads(dp.threads_per_process(place.local_world_size))
    device = device_of(args)
    try:
        device = dp.process_device(place, device) if place is not None else device
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device: {err}") from None
    out = check_out(args.out, overwrite=args.overwrite, resume=args.resume, in_place=True)
    seed_everything(dp.rank_seed(args.seed, rank))  # each rank its own dropout; DDP copies rank 0's weights
    tok = CharTokenizer.train(text)
    train_text, val_text = split_train_val(text, VAL_FRACTION)
    train_ids, val_ids = tok.encode_tensor(train_text), tok.encode_tensor(val_text)
    block, batch = args.block_size, args.batch_size
    if len(train_ids) < block + 1:
        raise UsageError(f"--text {args.text}: training part too short for --block-size {block}")
    try:
        config = TransformerConfig(vocab_size=tok.vocab_size, block_size=block, n_layer=args.n_layer,
                                   n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout)
    except ValueError as err:
        raise UsageError(f"--n-layer/--n-head/--n-embd: {err}") from None
    with torch.device("meta"):  # count the parameters without allocating them
        n_params = GPT(config).num_parameters()
    need = training_bytes(n_params, args.n_layer, args.n_embd, args.n_head, block, batch, tok.vocab_size)
    if place is not None and device.type == "cpu":
        need *= place.local_world_size  # the processes on this machine share its memory
    free = available_bytes(device)
    if free is not None and need > free:
        raise UsageError(
            f"--n-layer {args.n_layer} --n-embd {args.n_embd} --batch-size {batch} --block-size {block}: training "
            f"would need about {need / 2**30:.1f} GiB ({n_params:,} parameters), but {device} has "
            f"{free / 2**30:.1f} GiB free"
        )
    model = GPT(config)
    data = {"train": train_ids, "val": val_ids}

    def batch_fn(split, generator):
        return causal_lm_batch(data[split], batch, block, generator)

    train_cfg = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        min_lr=args.lr / 10,
        warmup_steps=min(100, args.steps // 10),
        weight_decay=0.1,
        betas=(0.9, 0.99),
        grad_clip=1.0,
        eval_interval=args.eval_interval,
        eval_batches=20,
        eval_splits=("train", "val"),
        seed=args.seed,
        progress=args.progress,
        compile=args.compile,
    )
    quick = 20 * batch * block  # tokens per split in the evaluations during training

    def eval_fn(m):
        return {split: lm_loss(m, ids, block, max_tokens=quick) for split, ids in data.items()}

    # One process: no process group. Under torchrun: join it now, and leave it however the run ends.
    with dp.process_group(place, device) if place is not None else contextlib.nullcontext():
        trainer = Trainer(model, batch_fn, causal_lm_loss, train_cfg, device=device, eval_fn=eval_fn)
        history, wall = train(args, trainer, text, out)
        if rank != 0:  # every rank holds the same weights; rank 0 writes them
            return None
        ms = [m for m in history["ms"] if m is not None]
        ms = statistics.median(ms[min(5, len(ms) - 1):]) if ms else float("nan")  # skip the first, slow steps
        model.save_pretrained(out)
        tok.save(out / TOKENIZER_FILE)
        result = {
            "params": model.num_parameters(),
            "ms_per_iter": round(ms, 3),
            "tokens_per_s": round(world_size * batch * block * 1000.0 / ms, 1),  # all processes'
            "train_loss": round(history["evals"][-1]["train"], 4),
            "val_loss": round(lm_loss(model, val_ids, block), 4),
            "device": str(device),
            "iters": args.steps,
            "vocab_size": tok.vocab_size,
            "train_chars": len(train_text),
            "val_chars": len(val_text),
            "wall_s": round(wall, 1),
            "threads": torch.get_num_threads(),
            "compiled": args.compile,
            "world_size": world_size,
            "global_batch": world_size * batch,  # windows per optimizer step, all processes together
            "out": str(out),
        }
        log = {"result": result, "history": history}
        (out / "train_log.json").write_text(json.dumps(log), encoding="utf-8")
    return result


def train(args, trainer, text: str, out: Path) -> tuple[dict, float]:
    """Resume if ``--resume`` asks, then train; returns the history and the seconds it took.
    Messages come from rank 0 only."""
    from aigc_book.training.trainer import NonFiniteLossError

    # What --resume must find unchanged besides the model and the TrainConfig ("batch": the key
    # checkpoints have always carried).
    trainer.metadata = {"batch": args.batch_size, "text_sha256": hashlib.sha256(text.encode()).hexdigest()}
    checkpoint = out / CHECKPOINT_DIR
    if args.resume:
        try:
            trainer.load_checkpoint(checkpoint)
        except CheckpointError as err:
            raise UsageError(f"--resume: {err}") from None
        if trainer.resume_note:
            say(f"aigc-book: warning: {trainer.resume_note}")
        say(f"resuming from step {trainer.step} ({checkpoint})")
    args.training_started = True  # from here on, Ctrl-C leaves a checkpoint to resume from
    t0 = time.perf_counter()
    try:
        history = trainer.train(checkpoint_dir=checkpoint, checkpoint_every=args.checkpoint_interval)
    except NonFiniteLossError as err:
        kept = f"the last checkpoint ({checkpoint}) is kept" if checkpoint.exists() else "no checkpoint was written"
        raise RunError(f"{err}; {kept}; try a smaller --lr (now {args.lr:g})") from None
    except OSError as err:  # a full disk or a vanished directory while saving
        raise RunError(f"cannot write the checkpoint in {checkpoint} ({err.strerror or err}); the previous one is "
                       f"intact: make room, then run the same command with --resume") from None
    return history, time.perf_counter() - t0


def interrupted(args) -> str:
    """What Ctrl-C left behind."""
    if getattr(args, "training_started", False):
        return "aigc-book: interrupted; run the same command with --resume to continue"
    return "aigc-book: interrupted before training started; nothing was saved"
