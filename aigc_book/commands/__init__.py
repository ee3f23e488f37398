"""The commands of ``python -m aigc_book``, one module each, all of one shape.

Introduced in chapter 3, section "Your own text", where the first command trains a GPT. A command
module has

* ``add_arguments(parser)``: its own flags (``parser`` already holds the shared options it names);
* ``SHARED``: which of the shared options it takes (:func:`aigc_book.commands.options.shared_parser`:
  ``--device``, ``--seed``, ``--progress``/``--no-progress``, ``--overwrite``), and ``SEED``, its
  default seed, where it takes ``--seed``;
* ``run(args) -> dict | None``: the work; the dict is printed as one JSON line, last on stdout (None:
  the command printed as it went). Bad input raises :class:`~aigc_book.errors.UsageError`, a failed
  run :class:`~aigc_book.errors.RunError`;
* ``interrupted(args) -> str``: the line Ctrl-C leaves on stderr.

:data:`COMMANDS` registers them; :mod:`aigc_book.cli` builds the parser from it. Flags share one
vocabulary: ``--n-layer --n-head --n-embd --block-size --batch-size --steps --max-new-tokens --seed``,
``--model`` for what a command reads and ``--out`` for what it writes. Older spellings (``--layers``,
``--iters``, ``sample --out``, ...) still work and say what replaced them.

Default seeds: 1337 for ``train-gpt`` and ``finetune`` (nanoGPT's; the book's runs of them used it),
0 for ``sample``, ``rlhf``, ``tiny-chatgpt`` and ``chat`` (the chapters' runs used it).
"""

from __future__ import annotations

from aigc_book.commands import chat, finetune, measure, rlhf, sample, tiny_chatgpt, train_gpt

__all__ = ["COMMANDS"]

# name -> (module, one-line help), in the order `--help` lists them
COMMANDS = {
    "train-gpt": (train_gpt, "train a character-level GPT on a UTF-8 text file"),
    "sample": (sample, "generate text from a model trained with train-gpt"),
    "finetune": (finetune, "fine-tune a train-gpt model on prompt/response pairs (chat template)"),
    "rlhf": (rlhf, "SFT, preferences, a reward model, then PPO, DPO, GRPO or best-of-n (chapter 5)"),
    "chat": (chat, "talk to a chat model from tiny-chatgpt or finetune (chapter 8)"),
    "tiny-chatgpt": (tiny_chatgpt,
                     "tokenizer, pretraining, SFT, preference tuning and a report card, resumable (chapter 8)"),
    "measure": (measure, "this machine's peak FLOP/s, memory bandwidth, a GPT's MFU and decoding speed (chapter 6)"),
}
