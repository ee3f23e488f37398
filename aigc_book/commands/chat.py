"""``python -m aigc_book chat``: talk to a chat model.

Introduced in chapter 8, section "Talking to it". Usage::

    python -m aigc_book chat --model DIR [--temperature 0.8 --top-k K --top-p P --min-p P
                             --repetition-penalty R --greedy --max-new-tokens 64 --seed 0 --device D
                             --message TEXT ...]

The model is a ``finetune`` or ``rlhf`` output, or a ``tiny-chatgpt --out`` directory (its ``tuned/``
model, else ``sft/``; :mod:`aigc_book.capstone.chat`). Without ``--message`` it is an interactive chat
(``you>`` / ``bot>``, the reply streamed; ``/reset`` starts over, ``/quit`` or Ctrl-D ends it); each
``--message`` is one user turn of a single conversation, answered in turn, and one JSON object is
printed at the end (``turns`` of ``user``/``assistant``, ``dropped_turns``: the oldest turns that no
longer fit in the context, ...). The decoding flags are ``sample``'s
(:func:`aigc_book.commands.sample.add_generation_arguments`), without beam search; the same ``--seed``
gives the same conversation.
"""

from __future__ import annotations

import argparse
import time

from aigc_book.commands.options import check_seed, device_of
from aigc_book.commands.sample import add_generation_arguments, check_generation_args, generation_config
from aigc_book.errors import UsageError
from aigc_book.models.io import CheckpointError

__all__ = ["SHARED", "SEED", "add_arguments", "interrupted", "run"]

SHARED = ("device", "seed")
SEED = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a tiny-chatgpt --out directory, or a model directory finetune wrote")
    add_generation_arguments(p, unit="tokens", max_new_tokens=64, beams=False)
    p.add_argument("--message", action="append", default=None,
                   help="a user message (repeat for several turns): answer them as one conversation and print "
                        "one JSON line, instead of the interactive chat")


def run(args) -> dict | None:
    """Chat with a chat model (:mod:`aigc_book.capstone.chat`): the REPL, or with ``--message`` one
    conversation whose JSON summary is returned."""
    from aigc_book.capstone.chat import ChatSession, load_chat_model, run_terminal_chat

    check_generation_args(args, min_new_tokens=1)
    check_seed(args.seed)
    config = generation_config(args)
    device = device_of(args)
    try:
        model, tok = load_chat_model(args.model, device=device)
    except (CheckpointError, ValueError, TypeError) as err:
        raise UsageError(f"--model {err}") from None
    session = ChatSession(model, tok, config, seed=args.seed)
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


def interrupted(args) -> str:
    return "aigc-book: interrupted; chat writes nothing, run it again"
