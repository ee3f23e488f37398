"""Command line: train a character-level GPT on your own text, then sample from it.

Introduced in chapter 3, section "Your own text". Usage::

    python -m aigc_book train-gpt --text FILE [--layers 4 --heads 4 --embd 128 --block 64
                                  --batch 12 --iters 2000 --lr 1e-3 --device cpu --seed 1337 --out DIR]
    python -m aigc_book sample --out DIR [--prompt TEXT --tokens 300 --temperature 0.8]

``train-gpt`` holds out the last 10% of the file for validation, shows a progress bar on stderr,
and prints one JSON object as the last line of stdout: ``params``, ``ms_per_iter`` (median),
``tokens_per_s``, ``train_loss``, ``val_loss`` (mean nats per character over the whole held-out
tail), ``device`` and more. The defaults are nanoGPT's "baby GPT on a CPU" recipe.
Bad input (missing, empty, binary or too-short file; unknown device) exits with status 2 and a
one-line message.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from aigc_book.models.io import CheckpointError
from aigc_book.runtime import get_device, seed_everything
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import split_train_val

CHECKPOINT_DIR = "checkpoint"
TOKENIZER_FILE = "tokenizer.json"
VAL_FRACTION = 0.1


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


def read_text_file(path: str, block: int) -> str:
    """Read a UTF-8 text file, rejecting what cannot train a model with context ``block``."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"--text {path}: no such file")
    if not p.is_file():
        raise UsageError(f"--text {path}: not a regular file")
    data = p.read_bytes()
    if not data.strip():
        raise UsageError(f"--text {path}: the file is empty")
    if b"\x00" in data:
        raise UsageError(f"--text {path}: looks like a binary file (contains NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"--text {path}: not valid UTF-8 (byte {err.start}); give a UTF-8 text file") from None
    need = min_chars(block)
    if len(text) < need:
        raise UsageError(
            f"--text {path}: too short ({len(text)} characters); --block {block} needs at least {need} "
            f"(the last 10% is held out and must hold {block + 1} characters)"
        )
    return text


def min_chars(block: int) -> int:
    """Shortest text whose held-out tail still holds one window of ``block + 1`` characters."""
    return int((block + 1) / VAL_FRACTION) + 1


def cmd_train_gpt(args) -> dict:
    # Imported here so that `--help` and bad arguments answer without loading the models.
    from aigc_book.models.gpt import GPT
    from aigc_book.models.transformer import TransformerConfig
    from aigc_book.training.evaluation import lm_loss
    from aigc_book.training.objectives import causal_lm_batch, causal_lm_loss
    from aigc_book.training.trainer import TrainConfig, Trainer

    for name in ("layers", "heads", "embd", "block", "batch", "iters"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.checkpoint_interval < 0:
        raise UsageError(f"--checkpoint-interval must be >= 0, got {args.checkpoint_interval}")
    if args.lr <= 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    text = read_text_file(args.text, args.block)
    try:
        device = get_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device: {err}") from None
    seed_everything(args.seed)
    tok = CharTokenizer.fit(text)
    train_text, val_text = split_train_val(text, VAL_FRACTION)
    train_ids, val_ids = tok.encode_tensor(train_text), tok.encode_tensor(val_text)
    if len(train_ids) < args.block + 1:
        raise UsageError(f"--text {args.text}: training part too short for --block {args.block}")
    try:
        config = TransformerConfig(vocab_size=tok.vocab_size, block_size=args.block, n_layer=args.layers,
                                   n_head=args.heads, n_embd=args.embd, dropout=args.dropout)
    except ValueError as err:
        raise UsageError(f"--layers/--heads/--embd/--dropout: {err}") from None
    model = GPT(config)
    data = {"train": train_ids, "val": val_ids}

    def batch_fn(split, generator):
        return causal_lm_batch(data[split], args.batch, args.block, generator)

    train_cfg = TrainConfig(
        max_iters=args.iters,
        lr=args.lr,
        min_lr=args.lr / 10,
        warmup_iters=min(100, args.iters // 10),
        weight_decay=0.1,
        betas=(0.9, 0.99),
        grad_clip=1.0,
        eval_interval=args.eval_interval,
        eval_iters=20,
        eval_splits=("train", "val"),
        seed=args.seed,
        progress=not args.no_progress,
        compile=args.compile,
    )
    quick = 20 * args.batch * args.block  # tokens per split in the evaluations during training

    def eval_fn(m):
        return {split: lm_loss(m, ids, args.block, max_tokens=quick) for split, ids in data.items()}

    trainer = Trainer(model, batch_fn, causal_lm_loss, train_cfg, device=device, eval_fn=eval_fn)
    out = Path(args.out)
    checkpoint = out / CHECKPOINT_DIR
    if args.resume:
        try:
            trainer.load_checkpoint(checkpoint)
        except CheckpointError as err:
            raise UsageError(f"--resume: {err}") from None
        print(f"resuming from step {trainer.step} ({checkpoint})", file=sys.stderr)
    t0 = time.perf_counter()
    history = trainer.train(checkpoint_dir=checkpoint, checkpoint_every=args.checkpoint_interval)
    wall = time.perf_counter() - t0
    ms = statistics.median(history["ms"][min(5, len(history["ms"]) - 1) :])  # skip the first, slow steps
    model.save_pretrained(out)
    tok.save(out / TOKENIZER_FILE)
    result = {
        "params": model.num_parameters(),
        "ms_per_iter": round(ms, 3),
        "tokens_per_s": round(args.batch * args.block * 1000.0 / ms, 1),
        "train_loss": round(history["evals"][-1]["train"], 4),
        "val_loss": round(lm_loss(model, val_ids, args.block), 4),
        "device": str(device),
        "iters": args.iters,
        "vocab_size": tok.vocab_size,
        "train_chars": len(train_text),
        "val_chars": len(val_text),
        "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "compiled": args.compile,
        "out": str(out),
    }
    log = {"result": result, "history": {k: v for k, v in history.items()}}
    (out / "train_log.json").write_text(json.dumps(log), encoding="utf-8")
    return result


def cmd_sample(args) -> str:
    from aigc_book.models.gpt import GPT

    out = Path(args.out)
    if not out.is_dir():
        raise UsageError(
            f"--out {args.out}: no such directory (train first: python -m aigc_book train-gpt --text FILE --out DIR)"
        )
    try:
        tok = CharTokenizer.load(out / TOKENIZER_FILE)
        model = GPT.from_pretrained(out)
        config = model.config
    except (CheckpointError, ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    if args.tokens < 0 or args.temperature < 0:
        raise UsageError("--tokens and --temperature must be >= 0")
    prompt = args.prompt if args.prompt else ("\n" if "\n" in tok.stoi else tok.itos[0])
    try:
        idx = tok.encode_tensor(prompt)[None]
    except ValueError as err:
        raise UsageError(f"--prompt: {err}") from None
    idx = idx[:, -config.block_size :]
    g = torch.Generator().manual_seed(args.seed)
    ids = model.generate(idx, args.tokens, temperature=args.temperature, top_k=args.top_k, generator=g)
    return tok.decode(ids[0].tolist())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aigc_book", description="Train and sample small GPTs on a CPU or GPU."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-gpt", help="train a character-level GPT on a UTF-8 text file")
    t.add_argument("--text", required=True, help="UTF-8 text file (the last 10%% is held out for validation)")
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--embd", type=int, default=128)
    t.add_argument("--block", type=int, default=64, help="context length in characters")
    t.add_argument("--batch", type=int, default=12)
    t.add_argument("--iters", type=int, default=2000)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--out", default="runs/gpt", help="directory for the model and tokenizer")
    t.add_argument("--eval-interval", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--compile", action="store_true", help="train through torch.compile (faster steps after a compile)")
    t.add_argument(
        "--checkpoint-interval",
        type=int,
        default=500,
        help="save a checkpoint under OUT/checkpoint every N steps (and always on Ctrl-C); 0: only on Ctrl-C",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from OUT/checkpoint (same arguments otherwise)",
    )
    s = sub.add_parser("sample", help="generate text from a model trained with train-gpt")
    s.add_argument("--out", required=True, help="the directory train-gpt wrote")
    s.add_argument("--prompt", default="")
    s.add_argument("--tokens", type=int, default=300)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m aigc_book`` and the ``aigc-book`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train-gpt":
            result = cmd_train_gpt(args)
            print(json.dumps(result), flush=True)
        else:
            print(cmd_sample(args), flush=True)
    except UsageError as err:
        print(f"aigc-book: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aigc-book: interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    return 0
