"""Command line: train a character-level GPT on your own text, then sample from it.

Introduced in chapter 3, section "Your own text". Usage::

    python -m aigc_book train-gpt --text FILE [--layers 4 --heads 4 --embd 128 --block 64
                                  --batch 12 --iters 2000 --lr 1e-3 --device cpu --seed 1337 --out DIR]
    python -m aigc_book sample --out DIR [--prompt TEXT --tokens 300 --temperature 0.8 --top-k K --top-p P
                               --min-p P --repetition-penalty R --greedy --num-beams K --length-penalty A]
    python -m aigc_book finetune --base DIR --data PAIRS.jsonl --method full|lora --out DIR
                                 [--steps 200 --lr X --batch 8 --seed 1337 --lora-r 8 --lora-alpha 16
                                  --device D --overwrite]
    python -m aigc_book rlhf --method ppo|dpo|grpo|best-of-n --out DIR [--steps 150 --seed 0 --device D
                             --no-progress --overwrite]
    python -m aigc_book measure [--n-layer 4 --n-embd 256 --dtype float32|bfloat16 --device D ...]
    python -m aigc_book tiny-chatgpt --out DIR [--method grpo|ppo|dpo|best-of-n --device D --overwrite ...]
    python -m aigc_book chat --model DIR [--temperature 0.8 --top-k K --top-p P --min-p P --repetition-penalty R
                             --greedy --max-new-tokens 64 --seed 0 --device D --message TEXT ...]

``train-gpt`` holds out the last 10% of the file for validation, shows a progress bar on stderr,
and prints one JSON object as the last line of stdout: ``params``, ``ms_per_iter`` (median),
``tokens_per_s``, ``train_loss``, ``val_loss`` (mean nats per character over the whole held-out
tail), ``device``, ``world_size``, ``global_batch`` and more. The defaults are nanoGPT's "baby GPT on
a CPU" recipe.

``train-gpt`` also trains data-parallel (chapter 6, section "When one machine is not enough";
:mod:`aigc_book.training.distributed`) when started by torchrun, with the same flags::

    torchrun --nproc_per_node 2 -m aigc_book train-gpt --text FILE [flags as above]

Each process (gloo on a CPU, nccl on ``cuda:LOCAL_RANK``) draws its own ``--batch`` windows, so a step
sees ``global_batch = batch x world_size`` of them and ``tokens_per_s`` counts all processes. Rank 0
alone shows the progress bar, writes the checkpoints, the model and the log, and prints the JSON
line and any error; ``--resume`` needs the same number of processes and is then exact. On a CPU
each process takes ``cores // nproc_per_node`` threads unless ``AIGC_CPU_THREADS`` is set. Under
torchrun a bad input is still one line from the program (exit 2 in every process), but torchrun
adds its own report of the failed processes and exits 1.

``sample`` samples by default (``--do-sample``, temperature 0.8, no top-k/top-p/min-p limit) and
streams the text as it is generated; ``--greedy`` (or ``--temperature 0``) always takes the most
probable token. ``--num-beams K`` runs beam search (chapter 4, section "Decoding"), or beam sampling
unless ``--greedy`` is given, as in Hugging Face's ``generate``; it prints the best hypothesis at the end.

``finetune`` (chapter 4, section "Instruction following"; :mod:`aigc_book.adaptation.finetune`) trains a
``train-gpt`` model on ``{"prompt": ..., "response": ...}`` lines laid out in the chat template,
fully or with LoRA (saved merged), prints one JSON object last (``initial_loss``, ``final_loss``,
``trainable_params``, ``wall_s``, ...) and writes ``--out`` only when it has finished, atomically.
``sample --out DIR`` on its result treats ``--prompt`` as the user's turn: it prints
``<|user|>PROMPT<|end|><|assistant|>`` and the response, and stops at ``<|end|>``.

``rlhf`` (chapter 5; :func:`aigc_book.rlhf.pipeline.run_rlhf`) runs the chapter's whole pipeline —
the SFT model, simulated labelers' preferences, a reward model, then the method — with progress on
stderr, and prints one JSON object last: ``method``, ``gold_reward_before``, ``gold_reward_after``,
``proxy_reward_after`` (the reward model's score, where one is used), ``kl`` (nats per response, to
the SFT model), ``wall_s`` and more. ``--steps`` is PPO's or GRPO's iterations, DPO's optimizer steps,
or n for best-of-n. The tuned chat model is written to ``--out`` at the end, atomically (an interrupted
run leaves ``--out`` as it was; run the command again: the same seed gives the same run).

``measure`` (chapter 6, section "Outside the notebook: `measure`"; :mod:`aigc_book.efficiency.measure`)
measures this machine — matrix-product peak, memory bandwidth, a GPT training step's model FLOP
utilisation, decoding speed with and without the KV cache — with a progress bar on stderr, and prints
one JSON object last.

``chat`` (chapter 8, section "Talking to it"; :mod:`aigc_book.capstone.chat`) talks to a chat model: a
``finetune`` or ``rlhf`` output, or a ``tiny-chatgpt --out`` directory (its ``tuned/`` model, else ``sft/``).
Without ``--message`` it is an interactive chat (``you>`` / ``bot>``, the reply streamed; ``/reset``
starts over, ``/quit`` or Ctrl-D ends it); each ``--message`` is one user turn of a single conversation,
answered in turn, and one JSON object is printed at the end (``turns`` of ``user``/``assistant``,
``dropped_turns``: the oldest turns that no longer fit in the context, ...). The sampling flags are
``sample``'s; the same ``--seed`` gives the same conversation.

``tiny-chatgpt`` (chapter 8, section "The recipe in one command"; :mod:`aigc_book.capstone.command`)
trains a tokenizer, pretrains, fine-tunes on conversations and tunes with chapter 5's GRPO (or
``--method``), writes ``DIR/report.md``, and prints one JSON object last. Run again after an
interruption, it skips the finished stages and continues the unfinished one.

Nothing is lost and nothing goes silently wrong:

* every bad input (a missing, empty, binary or huge file; a flag out of range; a model that would
  not fit in memory; an unusable ``--out``) is one line on stderr and exit status 2, before any
  training starts;
* Ctrl-C saves a checkpoint (exit 130) and ``--resume`` continues exactly, refusing a checkpoint
  made with other settings; an existing run is never overwritten without ``--overwrite``;
* a NaN or infinite loss stops the run (exit 1), keeps the last good checkpoint and names the step.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from aigc_book.errors import RunError, UsageError
from aigc_book.models.io import CONFIG_FILE, CheckpointError
from aigc_book.runtime import get_device, seed_everything
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import split_train_val

CHECKPOINT_DIR = "checkpoint"
TOKENIZER_FILE = "tokenizer.json"
VAL_FRACTION = 0.1
MAX_TEXT_BYTES = 32 * 2**20  # a character-level model on a laptop: 32 MB is already hours of training
SNIFF_BYTES = 1 << 16  # binary files are recognised from their first 64 KB, before reading the rest
MAX_SEED = 2**32 - 1  # NumPy's seeds stop here
MAX_SAMPLE_TOKENS = 100_000
MAX_BEAMS = 64  # each beam is a row of the batch and of the KV cache


def read_text_file(path: str, block: int) -> str:
    """Read a UTF-8 text file, rejecting what cannot train a model with context ``block``."""
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


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be in [0, {MAX_SEED}], got {seed}")


def check_train_args(args) -> None:
    """Every flag of ``train-gpt`` that can be checked without reading the text."""
    for name in ("layers", "heads", "embd", "block", "batch", "iters"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
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


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Make sure ``out`` can receive the run before any training is done."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    checkpoints = [out / f"{CHECKPOINT_DIR}{suffix}" for suffix in ("", ".prev", ".tmp")]
    existing = [p for p in [*checkpoints[:2], out / CONFIG_FILE] if p.exists()]  # .tmp alone is no run
    if resume or not existing:
        return
    if not overwrite:
        raise UsageError(
            f"--out {out} already holds a run ({existing[0].name}); add --resume to continue it, "
            f"or --overwrite to replace it"
        )
    for p in checkpoints:
        shutil.rmtree(p, ignore_errors=True)


def torchrun_place():
    """This process's place when torchrun started it with more than one process, else None."""
    from aigc_book.training.distributed import torchrun_env

    try:
        env = torchrun_env()
    except ValueError as err:
        raise UsageError(f"torchrun: {err}") from None
    return env if env is not None and env.world_size > 1 else None


def cmd_train_gpt(args) -> dict | None:
    """Train as ``args`` say; returns the JSON summary (None on the ranks > 0 of a torchrun job)."""
    # Imported here so that `--help` and bad arguments answer without loading the models.
    from aigc_book.models.gpt import GPT
    from aigc_book.models.transformer import TransformerConfig
    from aigc_book.training import distributed as dp
    from aigc_book.training.evaluation import lm_loss
    from aigc_book.training.objectives import causal_lm_batch, causal_lm_loss
    from aigc_book.training.trainer import TrainConfig, Trainer

    check_train_args(args)
    place = torchrun_place()
    world_size, rank = (place.world_size, place.rank) if place else (1, 0)
    text = read_text_file(args.text, args.block)
    if place is not None and not os.environ.get(dp.THREADS_ENV_VAR):
        # before get_device, whose load follower never goes above the count it starts with
        torch.set_num_threads(dp.threads_per_process(place.local_world_size))
    try:
        device = get_device(args.device)
        device = dp.process_device(place, device) if place is not None else device
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device: {err}") from None
    out = Path(args.out)
    prepare_out(out, args.resume, args.overwrite)
    seed_everything(dp.rank_seed(args.seed, rank))  # each rank its own dropout; DDP copies rank 0's weights
    tok = CharTokenizer.train(text)
    train_text, val_text = split_train_val(text, VAL_FRACTION)
    train_ids, val_ids = tok.encode_tensor(train_text), tok.encode_tensor(val_text)
    if len(train_ids) < args.block + 1:
        raise UsageError(f"--text {args.text}: training part too short for --block {args.block}")
    try:
        config = TransformerConfig(vocab_size=tok.vocab_size, block_size=args.block, n_layer=args.layers,
                                   n_head=args.heads, n_embd=args.embd, dropout=args.dropout)
    except ValueError as err:
        raise UsageError(f"--layers/--heads/--embd: {err}") from None
    with torch.device("meta"):  # count the parameters without allocating them
        n_params = GPT(config).num_parameters()
    need = training_bytes(n_params, args.layers, args.embd, args.heads, args.block, args.batch, tok.vocab_size)
    if place is not None and device.type == "cpu":
        need *= place.local_world_size  # the processes on this machine share its memory
    free = available_bytes(device)
    if free is not None and need > free:
        raise UsageError(
            f"--layers {args.layers} --embd {args.embd} --batch {args.batch} --block {args.block}: training would "
            f"need about {need / 2**30:.1f} GiB ({n_params:,} parameters), but {device} has {free / 2**30:.1f} GiB free"
        )
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

    # One process: no process group. Under torchrun: join it now, and leave it however the run ends.
    with dp.process_group(place, device) if place is not None else contextlib.nullcontext():
        trainer = Trainer(model, batch_fn, causal_lm_loss, train_cfg, device=device, eval_fn=eval_fn)
        history, wall = run_training(args, trainer, text, out, rank)
        if rank != 0:  # every rank holds the same weights; rank 0 writes them
            return None
        ms = [m for m in history["ms"] if m is not None]
        ms = statistics.median(ms[min(5, len(ms) - 1):]) if ms else float("nan")  # skip the first, slow steps
        model.save_pretrained(out)
        tok.save(out / TOKENIZER_FILE)
        result = {
            "params": model.num_parameters(),
            "ms_per_iter": round(ms, 3),
            "tokens_per_s": round(world_size * args.batch * args.block * 1000.0 / ms, 1),  # all processes'
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
            "world_size": world_size,
            "global_batch": world_size * args.batch,  # windows per optimizer step, all processes together
            "out": str(out),
        }
        log = {"result": result, "history": history}
        (out / "train_log.json").write_text(json.dumps(log), encoding="utf-8")
    return result


def run_training(args, trainer, text: str, out: Path, rank: int = 0) -> tuple[dict, float]:
    """Resume if ``--resume`` asks, then train; returns the history and the seconds it took.
    Messages come from rank 0 only."""
    from aigc_book.training.trainer import NonFiniteLossError

    say = (lambda message: print(message, file=sys.stderr)) if rank == 0 else (lambda message: None)
    # What --resume must find unchanged besides the model and the TrainConfig.
    trainer.metadata = {"batch": args.batch, "text_sha256": hashlib.sha256(text.encode()).hexdigest()}
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


def check_sample_args(args) -> None:
    """Every flag of ``sample`` that can be checked without loading the model."""
    if not 0 <= args.tokens <= MAX_SAMPLE_TOKENS:
        raise UsageError(f"--tokens must be in [0, {MAX_SAMPLE_TOKENS}], got {args.tokens}")
    check_sampling_flags(args)
    if not 1 <= args.num_beams <= MAX_BEAMS:
        raise UsageError(f"--num-beams must be in [1, {MAX_BEAMS}] (1 = no beam search), got {args.num_beams}")
    if not math.isfinite(args.length_penalty):
        raise UsageError(f"--length-penalty must be a finite number (> 0 favours longer beams), "
                         f"got {args.length_penalty}")
    check_seed(args.seed)


def check_sampling_flags(args) -> None:
    """The flags ``sample`` and ``chat`` share: --temperature, --top-k, --top-p, --min-p, --repetition-penalty."""
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1 (or left out for no limit), got {args.top_k}")
    for flag, value in (("--top-p", args.top_p), ("--min-p", args.min_p)):
        if value is not None and not 0.0 <= value <= 1.0:  # also refuses nan
            raise UsageError(f"{flag} must be in [0, 1] (or left out for no limit), got {value}")
    penalty = args.repetition_penalty
    if penalty is not None and not (math.isfinite(penalty) and penalty > 0):
        raise UsageError(f"--repetition-penalty must be a finite number > 0 (1 = none; CTRL used 1.2), got {penalty}")


def cmd_sample(args) -> None:
    """Print the prompt and its continuation, token by token as they are generated (beam search:
    the best hypothesis once the search ends)."""
    from aigc_book.generation.search import generate
    from aigc_book.models.gpt import GPT

    check_sample_args(args)
    out = Path(args.out)
    if not out.is_dir():
        raise UsageError(
            f"--out {args.out}: no such directory (train first: python -m aigc_book train-gpt --text FILE --out DIR)"
        )
    try:
        try:
            tok = CharTokenizer.load(out / TOKENIZER_FILE)
        except ValueError:  # a finetune model: characters and the chat template's special tokens
            from aigc_book.text.load import load_tokenizer

            tok = load_tokenizer(out / TOKENIZER_FILE)  # or CharTokenizer's error again
        model = GPT.from_pretrained(out)
    except (CheckpointError, ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    if tok.vocab_size != model.config.vocab_size:
        raise UsageError(
            f"--out {args.out}: {TOKENIZER_FILE} has {tok.vocab_size} characters but the model has "
            f"{model.config.vocab_size} outputs; they come from different runs"
        )
    chat = not isinstance(tok, CharTokenizer)  # a finetune model: --prompt is the user's turn of the chat template
    if chat:
        from aigc_book.text.chat_tokenizer import format_chat
    prompt = format_chat(args.prompt) if chat else args.prompt or ("\n" if "\n" in tok.stoi else tok.itos[0])
    try:
        idx = torch.tensor([tok.encode_chat(args.prompt)[0]]) if chat else tok.encode_tensor(prompt)[None]
    except ValueError as err:
        raise UsageError(f"--prompt: {err}") from None
    print(prompt, end="", flush=True)
    args.sampled = 0

    def show(token: torch.Tensor) -> None:
        print(tok.decode(token.tolist()), end="", flush=True)
        args.sampled += 1

    do_sample = args.do_sample and args.temperature > 0  # --temperature 0 is greedy, as it always was
    idx = idx[:, -model.config.block_size:]
    result = generate(model, idx, max_new_tokens=args.tokens, do_sample=do_sample,
                      temperature=args.temperature if do_sample else 1.0, top_k=args.top_k, top_p=args.top_p,
                      min_p=args.min_p, repetition_penalty=args.repetition_penalty, num_beams=args.num_beams,
                      length_penalty=args.length_penalty, generator=torch.Generator().manual_seed(args.seed),
                      eos_token_id=tok.end_id if chat else None,  # the response ends at <|end|>
                      on_token=show if args.num_beams == 1 else None)
    if args.num_beams > 1:
        new = result.sequences[0, idx.size(1):].tolist()
        print(tok.decode(new), end="")
        args.sampled = len(new)
    print(flush=True)


def check_finetune_args(args) -> None:
    """Every flag of ``finetune`` that can be checked without reading the data or the base model."""
    for name in ("steps", "batch"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.method != "lora" and (args.lora_r is not None or args.lora_alpha is not None):
        raise UsageError("--lora-r and --lora-alpha apply to --method lora only")
    if args.lora_r is not None and args.lora_r < 1:
        raise UsageError(f"--lora-r must be >= 1, got {args.lora_r}")
    if args.lora_alpha is not None and not (math.isfinite(args.lora_alpha) and args.lora_alpha > 0):
        raise UsageError(f"--lora-alpha must be a finite number > 0, got {args.lora_alpha}")
    check_seed(args.seed)


def cmd_finetune(args) -> dict:
    """Fine-tune a ``train-gpt`` model on prompt/response pairs (:mod:`aigc_book.adaptation.finetune`)."""
    from aigc_book.adaptation.finetune import (
        MAX_DATA_BYTES,
        FinetuneConfig,
        check_output_dir,
        check_pairs,
        finetune,
        load_base,
        save_finetuned,
    )
    from aigc_book.tasks.instructions import read_jsonl
    from aigc_book.training.trainer import NonFiniteLossError

    check_finetune_args(args)
    try:
        pairs, lines = read_jsonl(args.data, line_numbers=True, max_bytes=MAX_DATA_BYTES)
    except (OSError, ValueError) as err:
        raise UsageError(f"--data {err}") from None
    try:
        device = get_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device: {err}") from None
    try:
        out = check_output_dir(args.out, overwrite=args.overwrite, base=args.base)
    except ValueError as err:
        raise UsageError(f"--out {err}") from None
    try:
        model, tok = load_base(args.base, device=device)
    except (CheckpointError, ValueError, TypeError) as err:
        raise UsageError(f"--base {err}") from None
    try:
        check_pairs(tok, pairs, block_size=model.config.block_size, lines=lines, source=args.data)
    except (ValueError, TypeError) as err:
        raise UsageError(f"--data {err}") from None
    config = FinetuneConfig(method=args.method, steps=args.steps, lr=args.lr, batch_size=args.batch, seed=args.seed,
                            lora_r=args.lora_r or 8, lora_alpha=args.lora_alpha or 16.0)
    lr = config.peak_lr
    seed_everything(args.seed)
    try:
        result = finetune(model, tok, pairs, config, progress=not args.no_progress)
    except NonFiniteLossError as err:
        raise RunError(f"{err}; nothing was saved; try a smaller --lr (now {lr:g})") from None
    ms = [m for m in result.history["ms"] if m is not None]
    summary = {
        "method": args.method,
        "steps": args.steps,
        "pairs": len(pairs),
        "initial_loss": round(result.initial_loss, 4),
        "final_loss": round(result.final_loss, 4),
        "trainable_params": result.trainable,
        "params": result.total,
        "lr": lr,
        "batch": args.batch,
        "ms_per_step": round(statistics.median(ms), 3) if ms else None,
        "wall_s": round(result.seconds, 1),
        "device": str(device),
        "out": str(out),
    }
    try:
        save_finetuned(result.model, tok, out, overwrite=args.overwrite,
                       log={"result": summary, "base": str(args.base), "data": str(args.data),
                            "history": result.history})
    except OSError as err:  # a full disk or a vanished directory
        raise RunError(f"cannot write {out} ({err.strerror or err}); it was left as it was: make room, then "
                       "run the command again") from None
    except ValueError as err:  # --out was filled by something else while training ran
        raise RunError(f"--out {err}; nothing was saved") from None
    return summary


def check_rlhf_args(args) -> None:
    """Every flag of ``rlhf`` that can be checked before any training."""
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.method == "best-of-n" and args.steps > 1024:
        raise UsageError(f"--steps is n for best-of-n: at most 1024 samples per prompt, got {args.steps}")
    check_seed(args.seed)


def cmd_rlhf(args) -> dict:
    """SFT -> preferences -> reward model -> one method (:func:`aigc_book.rlhf.pipeline.run_rlhf`)."""
    from aigc_book.adaptation.finetune import check_output_dir, save_finetuned
    from aigc_book.rlhf.pipeline import run_rlhf
    from aigc_book.training.trainer import NonFiniteLossError

    check_rlhf_args(args)
    try:
        device = get_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device: {err}") from None
    try:
        out = check_output_dir(args.out, overwrite=args.overwrite)
    except ValueError as err:
        raise UsageError(f"--out {err}") from None
    seed_everything(args.seed)
    say = (lambda message: None) if args.no_progress else (lambda message: print(f"[rlhf] {message}", file=sys.stderr))
    try:
        summary, policy, tok = run_rlhf(args.method, steps=args.steps, seed=args.seed, device=device,
                                        progress=not args.no_progress, log=say)
    except (NonFiniteLossError, FloatingPointError) as err:
        raise RunError(f"{err}; nothing was saved") from None
    summary["device"], summary["out"] = str(device), str(out)
    try:
        save_finetuned(policy, tok, out, overwrite=args.overwrite, log={"result": summary})
    except OSError as err:
        raise RunError(f"cannot write {out} ({err.strerror or err}); it was left as it was: make room, then "
                       "run the command again") from None
    except ValueError as err:
        raise RunError(f"--out {err}; nothing was saved") from None
    return summary


def add_sampling_arguments(p: argparse.ArgumentParser, unit: str) -> None:
    """The flags ``sample`` and ``chat`` share (checked by :func:`check_sampling_flags`); ``unit`` names the tokens."""
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8; 0: greedy)")
    p.add_argument("--top-k", type=int, default=None, help=f"sample among the K most probable {unit} only")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set with mass >= P")
    p.add_argument("--min-p", type=float, default=None,
                   help=f"drop {unit} less probable than P times the most probable one")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help=f"CTRL's penalty on {unit} already in the text (> 1 discourages them)")


def check_chat_args(args) -> None:
    """Every flag of ``chat`` that can be checked without loading the model."""
    check_sampling_flags(args)
    if not 1 <= args.max_new_tokens <= MAX_SAMPLE_TOKENS:
        raise UsageError(f"--max-new-tokens must be in [1, {MAX_SAMPLE_TOKENS}], got {args.max_new_tokens}")
    check_seed(args.seed)


def cmd_chat(args) -> dict | None:
    """Chat with a chat model (:mod:`aigc_book.capstone.chat`): the REPL, or with ``--message`` one
    conversation whose JSON summary is returned."""
    from aigc_book.capstone.chat import ChatSession, SamplingSettings, load_chat_model, run_terminal_chat

    check_chat_args(args)
    settings = SamplingSettings(do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                                max_new_tokens=args.max_new_tokens)
    try:
        device = get_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device: {err}") from None
    try:
        model, tok = load_chat_model(args.model, device=device)
    except (CheckpointError, ValueError, TypeError) as err:
        raise UsageError(f"--model {err}") from None
    session = ChatSession(model, tok, settings, seed=args.seed)
    if args.message is None:
        run_terminal_chat(session)
        return None
    for i, message in enumerate(args.message):  # every message is checked before the first reply
        try:
            session.check_message(message)
        except ValueError as err:
            raise UsageError(f"--message #{i + 1}: {err}") from None
    t0 = time.perf_counter()
    for message in args.message:
        session.reply(message)
    return {**session.summary(), "model": str(args.model), "device": str(device),
            "wall_s": round(time.perf_counter() - t0, 3)}


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
    t.add_argument("--overwrite", action="store_true", help="replace a run that OUT already holds")
    s = sub.add_parser("sample", help="generate text from a model trained with train-gpt")
    s.add_argument("--out", required=True, help="the directory train-gpt wrote")
    s.add_argument("--prompt", default="")
    s.add_argument("--tokens", type=int, default=300)
    add_sampling_arguments(s, "characters")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--do-sample", dest="do_sample", action="store_true", default=True,
                      help="sample the next character (the default, at --temperature 0.8)")
    mode.add_argument("--greedy", dest="do_sample", action="store_false",
                      help="always take the most probable character (with --num-beams: plain beam search)")
    s.add_argument("--num-beams", type=int, default=1, help="beam search with K beams (1: none)")
    s.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search ranks by sum log p / length**A (default 1; A > 0 favours longer beams)")
    s.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("finetune", help="fine-tune a train-gpt model on prompt/response pairs (chat template)")
    f.add_argument("--base", required=True, help="a directory train-gpt (or finetune) wrote")
    f.add_argument("--data", required=True, help='JSON Lines, one {"prompt": ..., "response": ...} per line')
    f.add_argument("--method", required=True, choices=("full", "lora"),
                   help="full: train every weight; lora: low-rank updates of every block's linears")
    f.add_argument("--out", required=True, help="directory for the fine-tuned model (written when training ends)")
    f.add_argument("--steps", type=int, default=200)
    f.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-4 full, 3e-3 lora)")
    f.add_argument("--batch", type=int, default=8, help="pairs per step")
    f.add_argument("--seed", type=int, default=1337)
    f.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 8)")
    f.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator, update x alpha/r (default 16)")
    f.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    f.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    f.add_argument("--overwrite", action="store_true", help="replace the model that --out already holds")
    r = sub.add_parser("rlhf", help="SFT, preferences, a reward model, then PPO, DPO, GRPO or best-of-n (chapter 5)")
    r.add_argument("--method", required=True, choices=("ppo", "dpo", "grpo", "best-of-n"))
    r.add_argument("--steps", type=int, default=150,
                   help="PPO/GRPO iterations, DPO optimizer steps, or n for best-of-n (default 150)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True, help="directory for the tuned chat model (written when the run ends)")
    r.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    r.add_argument("--overwrite", action="store_true", help="replace the model that --out already holds")
    c = sub.add_parser("chat", help="talk to a chat model from tiny-chatgpt or finetune (chapter 8)")
    c.add_argument("--model", required=True, help="a tiny-chatgpt --out directory, or a model directory finetune wrote")
    add_sampling_arguments(c, "tokens")
    c.add_argument("--greedy", dest="do_sample", action="store_false", default=True,
                   help="always take the most probable token (same as --temperature 0)")
    c.add_argument("--max-new-tokens", type=int, default=64, help="longest reply in tokens (the context may cut it)")
    c.add_argument("--seed", type=int, default=0, help="the same seed gives the same conversation")
    c.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    c.add_argument("--message", action="append", default=None,
                   help="a user message (repeat for several turns): answer them as one conversation and print "
                        "one JSON line, instead of the interactive chat")
    from aigc_book.capstone.command import add_tiny_chatgpt_arguments
    from aigc_book.efficiency.measure import add_measure_arguments

    add_tiny_chatgpt_arguments(sub.add_parser(
        "tiny-chatgpt", help="tokenizer, pretraining, SFT, preference tuning and a report card, resumable (chapter 8)"))
    add_measure_arguments(sub.add_parser(
        "measure", help="this machine's peak FLOP/s, memory bandwidth, a GPT's MFU and decoding speed (chapter 6)"))
    return parser


def speaks(args) -> bool:
    """Whether this process reports errors: all but the ranks > 0 of a torchrun ``train-gpt``, which
    check the same inputs and meet the same failures as rank 0 (one line, not one per process)."""
    return args.command != "train-gpt" or os.environ.get("RANK", "0") in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m aigc_book`` and the ``aigc-book`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train-gpt":
            result = cmd_train_gpt(args)
            if result is not None:  # None: a torchrun rank other than 0
                print(json.dumps(result), flush=True)
        elif args.command == "finetune":
            print(json.dumps(cmd_finetune(args)), flush=True)
        elif args.command == "rlhf":
            print(json.dumps(cmd_rlhf(args)), flush=True)
        elif args.command == "chat":
            result = cmd_chat(args)
            if result is not None:  # None: the interactive chat, which printed as it went
                print(json.dumps(result, ensure_ascii=False), flush=True)
        elif args.command == "tiny-chatgpt":
            from aigc_book.capstone.command import cmd_tiny_chatgpt

            print(json.dumps(cmd_tiny_chatgpt(args)), flush=True)
        elif args.command == "measure":
            from aigc_book.efficiency.measure import cmd_measure

            print(json.dumps(cmd_measure(args)), flush=True)
        else:
            cmd_sample(args)
    except UsageError as err:
        if speaks(args):
            print(f"aigc-book: error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        if speaks(args):
            print(f"aigc-book: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if not speaks(args):
            pass
        elif args.command == "sample":
            print(f"\naigc-book: interrupted after {getattr(args, 'sampled', 0)} of {args.tokens} tokens",
                  file=sys.stderr)
        elif args.command in ("measure", "chat"):
            print(f"aigc-book: interrupted; {args.command} writes nothing, run it again", file=sys.stderr)
        elif args.command in ("finetune", "rlhf"):
            print(f"aigc-book: interrupted; {args.command} writes --out only once training has finished, so it holds "
                  "what it held before: run the command again", file=sys.stderr)
        elif args.command == "tiny-chatgpt":
            print("aigc-book: interrupted; finished stages are kept and an unfinished pretraining or fine-tuning "
                  "saved a checkpoint: run the same command again to continue", file=sys.stderr)
        elif getattr(args, "training_started", False):
            print("aigc-book: interrupted; run the same command with --resume to continue", file=sys.stderr)
        else:
            print("aigc-book: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    return 0
