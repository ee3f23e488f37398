"""``python -m aigc_book sample``: generate text from a model ``train-gpt`` or ``finetune`` wrote.

Introduced in chapter 3, section "Your own text"; chapter 4, section "Decoding", adds beam search. Usage::

    python -m aigc_book sample --model DIR [--prompt TEXT --max-new-tokens 300 --temperature 0.8 --top-k K
                               --top-p P --min-p P --repetition-penalty R --greedy --num-beams K
                               --length-penalty A --seed 0]

It samples by default (``--do-sample``, temperature 0.8, no top-k/top-p/min-p limit) and streams the
text as it is generated; ``--greedy`` (or ``--temperature 0``) always takes the most probable token.
``--num-beams K`` runs beam search, or beam sampling unless ``--greedy`` is given, as in Hugging Face's
``generate``; it prints the best hypothesis at the end. On a ``finetune`` model ``--prompt`` is the
user's turn: it prints ``<|user|>PROMPT<|end|><|assistant|>`` and the response, and stops at ``<|end|>``.

The decoding flags are defined once, here (:func:`add_generation_arguments`, checked by
:func:`check_generation_args`, turned into one ``GenerationConfig`` by :func:`generation_config`), and
``chat`` takes them from here too. The model is read on the CPU.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from aigc_book.commands.options import add_flag, check_seed
from aigc_book.errors import UsageError
from aigc_book.generation.config import GenerationConfig
from aigc_book.models.io import CheckpointError
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.tokenizer import TOKENIZER_FILE

__all__ = ["MAX_NEW_TOKENS", "SHARED", "SEED", "add_arguments", "add_generation_arguments",
           "check_generation_args", "generation_config", "interrupted", "run"]

SHARED = ("seed",)
SEED = 0
MAX_NEW_TOKENS = 100_000
MAX_BEAMS = 64  # each beam is a row of the batch and of the KV cache


def add_generation_arguments(p: argparse.ArgumentParser, *, unit: str = "tokens", max_new_tokens: int = 300,
                             beams: bool = True) -> None:
    """The decoding flags of ``sample`` and ``chat``, named as Hugging Face's ``GenerationConfig`` names
    them; ``unit`` names the tokens in the help, ``beams`` adds ``--num-beams`` and ``--length-penalty``."""
    add_flag(p, "--max-new-tokens", "--tokens", type=int, default=max_new_tokens,
             help=f"{unit} to generate (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8; 0: greedy)")
    p.add_argument("--top-k", type=int, default=None, help=f"sample among the K most probable {unit} only")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set with mass >= P")
    p.add_argument("--min-p", type=float, default=None,
                   help=f"drop {unit} less probable than P times the most probable one")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help=f"CTRL's penalty on {unit} already in the text (> 1 discourages them)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--do-sample", dest="do_sample", action="store_true", default=True,
                      help=f"sample the next {unit[:-1]} (the default, at --temperature 0.8)")
    mode.add_argument("--greedy", dest="do_sample", action="store_false",
                      help=f"always take the most probable {unit[:-1]} (same as --temperature 0"
                           + ("; with --num-beams: plain beam search)" if beams else ")"))
    if beams:
        p.add_argument("--num-beams", type=int, default=1, help="beam search with K beams (1: none)")
        p.add_argument("--length-penalty", type=float, default=1.0,
                       help="beam search ranks by sum log p / length**A (default 1; A > 0 favours longer beams)")


def check_generation_args(args, *, min_new_tokens: int = 0) -> None:
    """Every flag :func:`add_generation_arguments` added, in one line each."""
    if not min_new_tokens <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise UsageError(f"--max-new-tokens must be in [{min_new_tokens}, {MAX_NEW_TOKENS}], got {args.max_new_tokens}")
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
    if hasattr(args, "num_beams"):
        if not 1 <= args.num_beams <= MAX_BEAMS:
            raise UsageError(f"--num-beams must be in [1, {MAX_BEAMS}] (1 = no beam search), got {args.num_beams}")
        if not math.isfinite(args.length_penalty):
            raise UsageError(f"--length-penalty must be a finite number (> 0 favours longer beams), "
                             f"got {args.length_penalty}")


def generation_config(args) -> GenerationConfig:
    """The decoding flags as one :class:`~aigc_book.generation.config.GenerationConfig` (flags already checked).

    ``--temperature 0`` is greedy decoding, as it always was: ``do_sample=False`` and temperature 1.
    """
    do_sample = args.do_sample and args.temperature > 0
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": do_sample,
              "temperature": args.temperature if do_sample else 1.0, "top_k": args.top_k, "top_p": args.top_p,
              "min_p": args.min_p, "repetition_penalty": args.repetition_penalty}
    if hasattr(args, "num_beams"):
        kwargs |= {"num_beams": args.num_beams, "length_penalty": args.length_penalty}
    return GenerationConfig(**kwargs)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--model", "--out", required=True, help="the directory train-gpt or finetune wrote")
    p.add_argument("--prompt", default="")
    add_generation_arguments(p, unit="characters", max_new_tokens=300)


def run(args) -> None:
    """Print the prompt and its continuation, token by token as they are generated (beam search:
    the best hypothesis once the search ends)."""
    from aigc_book.generation.search import generate
    from aigc_book.models.gpt import GPT

    check_generation_args(args)
    check_seed(args.seed)
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise UsageError(
            f"--model {args.model}: no such directory (train first: python -m aigc_book train-gpt --text FILE "
            "--out DIR)"
        )
    try:
        try:
            tok = CharTokenizer.load(model_dir / TOKENIZER_FILE)
        except ValueError:  # a finetune model: characters and the chat template's special tokens
            from aigc_book.text.load import load_tokenizer

            tok = load_tokenizer(model_dir / TOKENIZER_FILE)  # or CharTokenizer's error again
        model = GPT.from_pretrained(model_dir)
    except (CheckpointError, ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    if tok.vocab_size != model.config.vocab_size:
        raise UsageError(
            f"--model {args.model}: {TOKENIZER_FILE} has {tok.vocab_size} characters but the model has "
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

    idx = idx[:, -model.config.block_size:]
    result = generate(model, idx, generation_config(args), generator=torch.Generator().manual_seed(args.seed),
                      eos_token_id=tok.end_id if chat else None,  # the response ends at <|end|>
                      on_token=show if args.num_beams == 1 else None)
    if args.num_beams > 1:
        new = result.sequences[0, idx.size(1):].tolist()
        print(tok.decode(new), end="")
        args.sampled = len(new)
    print(flush=True)


def interrupted(args) -> str:
    return f"\naigc-book: interrupted after {getattr(args, 'sampled', 0)} of {args.max_new_tokens} tokens"
