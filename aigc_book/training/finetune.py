r"""Fine-tune a GPT from ``train-gpt`` on prompt/response pairs: the library behind ``python -m aigc_book finetune``.

Introduced in chapter 4, section "Instruction following". Four steps, each a piece of chapter 4:

1. **Template.** Each pair is laid out in the chat template of :mod:`aigc_book.tasks.chat`,
   ``<|user|>{prompt}<|end|><|assistant|>{response}<|end|>``. The special tokens are appended to
   the base model's character vocabulary (:class:`BaseChatTokenizer`), and the model's token
   embedding grows by one row each (:func:`~aigc_book.tasks.chat.grow_vocabulary`; a GPT's output
   head is the same matrix, tied, so it grows too).
2. **Trainable parameters.** ``method="full"`` trains every weight. ``method="lora"`` wraps every
   attention and MLP linear layer (``c_attn``, ``c_proj``, ``c_fc``) in LoRA (Hu et al. 2021, "LoRA:
   Low-Rank Adaptation of Large Language Models"; :mod:`aigc_book.adaptation.lora`) and trains those
   plus the *new* embedding rows only, since no pretrained weight knows the special tokens: a gradient
   hook zeroes the gradient of the pretrained rows, and AdamW then leaves them bitwise unchanged.
3. **Loss.** Supervised fine-tuning: the next-token cross-entropy on the response tokens and the
   closing ``<|end|>`` only (the prompt is given, not predicted; Ouyang et al. 2022, "Training language
   models to follow instructions with human feedback"),

   .. math:: \mathcal{L} = -\frac{1}{|R|} \sum_{t \in R} \log p_\theta(x_{t} \mid x_{<t}),

   :math:`R` the response positions of the batch (:func:`~aigc_book.tasks.chat.sft_batch`). The
   :class:`~aigc_book.training.trainer.Trainer` runs it (warm-up, cosine decay, gradient clipping at
   1, AdamW *without* weight decay: decay pulls weights towards zero, not towards the pretrained ones,
   and would shrink the frozen rows of the shared embedding under LoRA).
4. **Saving.** LoRA is merged (:func:`~aigc_book.adaptation.lora.merge_lora`), so the result is an
   ordinary GPT that ``GPT.from_pretrained`` and ``python -m aigc_book sample`` load unchanged.
   :func:`save_finetuned` builds the whole directory aside and renames it into place: a killed run
   leaves the previous output (or none), never half a model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.adaptation.freezing import count_trainable
from aigc_book.adaptation.lora import LoRALinear, apply_lora, merge_lora
from aigc_book.files import fsync_path
from aigc_book.models.gpt import GPT
from aigc_book.models.io import CONFIG_FILE, MODEL_FILE, CheckpointError, save_model
from aigc_book.tasks.chat import (
    SPECIALS,
    ChatTokenizer,
    SFTData,
    encode_chat,
    encode_sft,
    grow_vocabulary,
    sft_batch,
)
from aigc_book.tasks.instructions import as_pair, read_jsonl
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.training.checkpoint import interrupts_deferred
from aigc_book.training.objectives import IGNORE, causal_lm_loss
from aigc_book.training.trainer import TrainConfig, Trainer

__all__ = [
    "METHODS",
    "LORA_TARGETS",
    "DEFAULT_LR",
    "MAX_DATA_BYTES",
    "TOKENIZER_FILE",
    "LOG_FILE",
    "BaseChatTokenizer",
    "load_tokenizer",
    "load_base",
    "read_pairs",
    "check_pairs",
    "make_trainable",
    "supervised_fine_tune",
    "sft_loss",
    "FinetuneResult",
    "finetune",
    "check_output_dir",
    "save_finetuned",
]

METHODS = ("full", "lora")
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")  # every Linear of every block: q/k/v, attention output, the MLP
DEFAULT_LR = {"full": 3e-4, "lora": 3e-3}  # LoRA's few, zero-started weights want a larger step
TOKENIZER_FILE = "tokenizer.json"  # the name train-gpt and sample use
MAX_DATA_BYTES = 64 * 2**20
LOG_FILE = "finetune_log.json"


class BaseChatTokenizer(ChatTokenizer):
    """The chat tokenizer of a fine-tuned base model: the base's characters keep their ids, the
    special tokens follow.

    Unlike :class:`~aigc_book.tasks.chat.ChatTokenizer` it accepts a vocabulary whose characters can
    spell a special token (any text with ``<``, ``|`` and ``>`` — Python's documentation, say). That
    is safe because prompts and responses are encoded with
    :func:`~aigc_book.tasks.chat.encode_chat`, which never turns typed text into a special id: a
    typed ``<|end|>`` stays seven characters.

    Args:
        chars: the base model's characters, in id order.
        specials: the special tokens (must include the template's).
    """

    def __init__(self, chars, specials=SPECIALS) -> None:
        try:
            super().__init__(chars, specials)
            return
        except ValueError as err:  # every other check of ChatTokenizer comes before this one
            if "could also be typed" not in str(err):
                raise
        # ChatTokenizer's state, built as its __init__ builds it (tests/test_finetune.py checks they agree).
        self.chars = CharTokenizer(chars)
        self._set_specials(tuple(specials), self.chars.vocab_size)
        self.itos = list(self.chars.itos) + list(self.specials)


def load_tokenizer(path) -> CharTokenizer | ChatTokenizer:
    """The tokenizer file of a model directory: characters (``train-gpt``), or characters and special
    tokens (``finetune``, a :class:`BaseChatTokenizer`). A missing or invalid file raises ValueError."""
    path = Path(path)
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("type")
    except (OSError, ValueError, AttributeError):
        kind = None  # CharTokenizer.load says what is wrong with the file
    return BaseChatTokenizer.load(path) if kind == "chat" else CharTokenizer.load(path)


def load_base(directory, *, device=None) -> tuple[GPT, ChatTokenizer]:
    """The GPT and tokenizer that ``train-gpt`` (or an earlier ``finetune``) saved in ``directory``,
    ready for the chat template: a character tokenizer becomes a :class:`BaseChatTokenizer` and the
    model's vocabulary grows to match (new rows at the mean of the old ones).

    Raises :class:`~aigc_book.models.io.CheckpointError` (a ValueError) when ``directory`` holds no
    model, and ValueError when its tokenizer is missing or belongs to another model.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory (make a base model first: "
                              "python -m aigc_book train-gpt --text FILE --out DIR)")
    model = GPT.from_pretrained(directory, device=device)
    tok = load_tokenizer(directory / TOKENIZER_FILE)
    if tok.vocab_size != model.config.vocab_size:
        raise ValueError(f"{directory / TOKENIZER_FILE} has {tok.vocab_size} tokens but the model has "
                         f"{model.config.vocab_size} outputs; they come from different runs")
    if not isinstance(tok, ChatTokenizer):
        tok = BaseChatTokenizer(tok.itos)
        grow_vocabulary(model, tok.vocab_size)
    return model, tok


def read_pairs(path, *, max_bytes: int = MAX_DATA_BYTES) -> tuple[list[dict[str, str]], list[int]]:
    """``(pairs, line_numbers)`` from a JSON Lines file of ``{"prompt": ..., "response": ...}``
    (:func:`~aigc_book.tasks.instructions.read_jsonl`, whose errors name the line), with the line
    each pair came from, for later messages. ``max_bytes`` bounds the file's size."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected JSON Lines of prompt/response pairs)")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file (expected JSON Lines of prompt/response pairs)")
    if path.stat().st_size > max_bytes:
        raise ValueError(f"{path}: {path.stat().st_size / 2**20:.0f} MB is more than finetune reads "
                         f"({max_bytes / 2**20:.0f} MB); fine-tune on a sample of the pairs")
    return read_jsonl(path, line_numbers=True)


def check_pairs(tokenizer: ChatTokenizer, pairs, *, block_size: int, lines=None, source=None) -> None:
    """Refuse pairs the model cannot be trained on, naming the first bad one.

    Args:
        tokenizer: the chat tokenizer (its characters are the base model's).
        pairs: dicts, ``(prompt, response)`` tuples or :class:`~aigc_book.tasks.instructions.Instruction` s.
        block_size: the model's context; a conversation may have ``block_size + 1`` tokens (inputs are
            one shorter than the conversation).
        lines, source: the line number of each pair and the file name, for the messages
            (``source:line``); without them a pair is named by its index.

    Raises ValueError for an empty list, characters the base model never saw (all named), or a
    conversation longer than the context.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no prompt/response pairs to fine-tune on")
    known = tokenizer.chars.stoi
    for i, pair in enumerate(pairs):
        where = f"{source}:{lines[i]}" if lines is not None else f"pair {i}"
        prompt, response = as_pair(pair, i)
        unknown = sorted(set(prompt + response) - known.keys())
        if unknown:
            more = f" and {len(unknown) - 10} more" if unknown[10:] else ""
            shown = ", ".join(repr(c) for c in unknown[:10]) + more
            raise ValueError(f"{where}: the base model's tokenizer cannot encode {shown} (it knows only the "
                             f"{len(known)} characters of its training text); remove them, or train the base "
                             "on text that has them")
        n = len(encode_chat(tokenizer, prompt, response)[0])
        if n > block_size + 1:
            raise ValueError(f"{where}: the conversation is {n} tokens (prompt, response and 4 template tokens), "
                             f"longer than the base model's context of {block_size} allows ({block_size + 1}); "
                             "shorten it or use a base with a longer --block")


def make_trainable(model: GPT, method: str, *, first_new_row: int, lora_r: int = 8,
                   lora_alpha: float = 16.0) -> tuple[int, list]:
    """Choose what trains; returns ``(trainable parameter count, hook handles)``.

    ``"full"``: every parameter. ``"lora"``: LoRA of rank ``lora_r`` and scale ``lora_alpha / lora_r``
    on :data:`LORA_TARGETS`, plus the embedding rows ``first_new_row:`` (the special tokens; the tied
    head is the same matrix). The pretrained rows get a zero gradient from a hook, which AdamW
    without weight decay turns into no change at all; remove the handles after training.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return count_trainable(model).trainable, []
    apply_lora(model, target_modules=LORA_TARGETS, r=lora_r, alpha=lora_alpha)
    trainable = count_trainable(model).trainable
    handles = []
    weights = {id(w): w for w in (model.transformer.wte.weight, model.lm_head.weight)}  # one if tied
    for weight in weights.values():
        rows = weight.size(0)
        if not 0 <= first_new_row <= rows:
            raise ValueError(f"first_new_row must be in [0, {rows}], got {first_new_row}")
        keep = torch.zeros(rows, 1, dtype=weight.dtype, device=weight.device)  # (V, 1)
        keep[first_new_row:] = 1
        weight.requires_grad_(True)
        handles.append(weight.register_hook(lambda grad, keep=keep: grad * keep))  # (V, C) * (V, 1)
        trainable += (rows - first_new_row) * weight.size(1)
    return trainable, handles


def supervised_fine_tune(model: GPT, data: SFTData, *, steps: int, lr: float, batch_size: int, method: str = "full",
                         first_new_row: int = 0, train_on_prompt: bool = False, seed: int = 0, device=None,
                         progress: bool = False) -> int:
    """Chapter 4's supervised fine-tuning step on encoded conversations; returns the trainable parameter count.

    ``model`` must already have the chat vocabulary (:func:`~aigc_book.tasks.chat.grow_vocabulary`).
    :func:`make_trainable` chooses what trains (``first_new_row``: the first special-token row, for
    LoRA), then the :class:`~aigc_book.training.trainer.Trainer` minimises the causal-LM loss on
    :func:`~aigc_book.tasks.chat.sft_batch` batches (the response tokens, or every token with
    ``train_on_prompt``): 30 warm-up steps, cosine decay, weight decay 0.1 for ``"full"`` and none
    for ``"lora"`` (decay would shrink the frozen rows of the shared embedding). ``seed`` seeds the
    batches; LoRA's initial ``A`` matrices come from the global RNG, so seed it first. The model is
    left in training mode, with LoRA unmerged.
    """
    trainable, handles = make_trainable(model, method, first_new_row=first_new_row)
    cfg = TrainConfig(max_iters=steps, lr=lr, warmup_iters=30, seed=seed, progress=progress,
                      weight_decay=0.1 if method == "full" else 0.0)
    trainer = Trainer(model, lambda split, g: sft_batch(data, batch_size, g, train_on_prompt=train_on_prompt),
                      causal_lm_loss, cfg, device=device)
    try:
        trainer.train()
    finally:
        for handle in handles:
            handle.remove()
    return trainable


@torch.no_grad()
def sft_loss(model: nn.Module, data: SFTData, *, batch_size: int = 64) -> float:
    """Mean cross-entropy per response token over *all* of ``data`` (eval mode; same targets as
    :func:`~aigc_book.tasks.chat.sft_batch`): the number the summary reports before and after."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(data), batch_size):
            rows = slice(start, start + batch_size)
            real = data.real_mask[rows]
            L = int(real.sum(1).max())
            x, real, prompt = data.tokens[rows, :L], real[:, :L], data.prompt_mask[rows, :L]  # (b, L)
            targets = x[:, 1:].masked_fill(~(real[:, 1:] & ~prompt[:, 1:]), IGNORE)  # (b, L-1)
            logits = model(x[:, :-1].to(device)).logits.float()  # (b, L-1, V)
            total += F.cross_entropy(logits.flatten(0, 1), targets.flatten().to(device), ignore_index=IGNORE,
                                     reduction="sum").item()
            count += int((targets != IGNORE).sum())
    finally:
        model.train(was_training)
    return total / count


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the fine-tuned GPT (LoRA merged unless ``merge=False``).
        tokenizer: its chat tokenizer.
        method, steps: as given.
        initial_loss, final_loss: :func:`sft_loss` over all the pairs before and after training.
        trainable: parameters that trained (LoRA: the low-rank matrices and the new embedding rows).
        total: parameters of the fine-tuned model (without LoRA's, which merging folds in).
        seconds: wall time of the training loop.
        history: the :class:`~aigc_book.training.trainer.Trainer`'s (``train_loss`` per step, ...).
    """

    model: GPT
    tokenizer: ChatTokenizer
    method: str
    steps: int
    initial_loss: float
    final_loss: float
    trainable: int
    total: int
    seconds: float
    history: dict = field(repr=False)


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def finetune(model: GPT, tokenizer: ChatTokenizer, pairs, *, method: str = "lora", steps: int = 200,
             lr: float | None = None, batch_size: int = 8, seed: int = 0, lora_r: int = 8, lora_alpha: float = 16.0,
             device=None, progress: bool = True, merge: bool = True) -> FinetuneResult:
    """Supervised fine-tuning of ``model`` on prompt/response ``pairs`` in the chat template.

    Args:
        model: a GPT whose vocabulary already holds the special tokens (from :func:`load_base`).
        tokenizer: its :class:`~aigc_book.tasks.chat.ChatTokenizer`.
        pairs: dicts ``{"prompt", "response"}`` (as :func:`read_pairs` gives), tuples or Instructions.
        method: ``"full"`` (every weight) or ``"lora"`` (see :func:`make_trainable`).
        steps: optimizer steps; ``batch_size`` pairs are drawn (with replacement) for each.
        lr: peak learning rate (default :data:`DEFAULT_LR` of the method); linear warm-up over
            ``min(10, steps // 10)`` steps, then cosine decay to ``lr / 10``.
        seed: seeds the batches and LoRA's initial ``A`` (the global RNG is left as it was).
        lora_r, lora_alpha: LoRA's rank and scale numerator (``method="lora"`` only).
        device: where to train (default: the model's device).
        progress: show a progress bar (tqdm, on stderr).
        merge: fold LoRA into the weights at the end (False keeps the :class:`LoRALinear` layers).

    A NaN or infinite loss raises :class:`~aigc_book.training.trainer.NonFiniteLossError`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _positive_int(steps, "steps")
    _positive_int(batch_size, "batch_size")
    lr = DEFAULT_LR[method] if lr is None else lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if method == "lora":
        _positive_int(lora_r, "lora_r")
        if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or not (
                math.isfinite(lora_alpha) and lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a finite number > 0, got {lora_alpha!r}")
    if not isinstance(tokenizer, ChatTokenizer):
        raise TypeError(f"tokenizer must be a ChatTokenizer (load_base gives one), got {type(tokenizer).__name__}")
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model has {model.config.vocab_size} token ids but the tokenizer {tokenizer.vocab_size}: "
                         "grow the model first (load_base does, or tasks.chat.grow_vocabulary)")
    pairs = list(pairs)
    block = model.config.block_size
    check_pairs(tokenizer, pairs, block_size=block)
    data = encode_sft(tokenizer, pairs, max_length=block + 1)
    if device is not None:
        model.to(device)
    total = model.num_parameters()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trainable, handles = make_trainable(model, method, first_new_row=tokenizer.chars.vocab_size, lora_r=lora_r,
                                            lora_alpha=lora_alpha)
    initial = sft_loss(model, data)
    cfg = TrainConfig(max_iters=steps, lr=float(lr), min_lr=lr / 10, warmup_iters=min(10, steps // 10),
                      weight_decay=0.0, grad_clip=1.0, eval_splits=("train",), seed=seed, progress=progress)

    def loss_fn(m, batch):  # right padding never reaches a real token through the causal mask
        return m(batch["idx"], batch["targets"]).loss

    trainer = Trainer(model, lambda split, g: sft_batch(data, batch_size, g), loss_fn, cfg,
                      eval_fn=lambda m: {"train": sft_loss(m, data)})
    t0 = time.perf_counter()
    try:
        history = trainer.train()
    finally:
        for handle in handles:
            handle.remove()
    seconds = time.perf_counter() - t0
    if method == "lora" and merge:
        merge_lora(model)
    model.eval()
    return FinetuneResult(model, tokenizer, method, steps, initial, history["evals"][-1]["train"], trainable, total,
                          seconds, history)


def _staging(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp")  # the next output, while it is written


def _aside(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")  # the previous output, for the instant of the swap


def check_output_dir(out, *, overwrite: bool = False, base=None) -> Path:
    """Make sure ``out`` can receive a fine-tuned model, before any training; returns it as a Path.

    Refused (ValueError): ``out`` is ``base``; ``out`` is a file; ``out`` holds files and
    ``overwrite`` is False; ``out`` holds files that are not a model (``--overwrite`` never deletes
    those); its parent cannot be written. A swap that a kill interrupted is completed first.
    """
    out = Path(out)
    if base is not None and out.resolve() == Path(base).resolve():
        raise ValueError(f"{out}: is the base model's directory; write the fine-tuned model elsewhere")
    if not out.exists() and _aside(out).is_dir():  # killed between the two renames of save_finetuned
        os.replace(_aside(out), out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        if not overwrite:
            raise ValueError(f"{out}: already exists (holds {held[0]}); add --overwrite (overwrite=True) to "
                             "replace it, or choose another directory")
        if not ((out / CONFIG_FILE).is_file() or (out / MODEL_FILE).is_file()):
            raise ValueError(f"{out}: holds files that are not a model ({', '.join(held[:3])}); overwriting "
                             "replaces only a model directory: choose another directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent):
            pass
    except OSError as err:
        raise ValueError(f"{out}: cannot write there ({err.strerror or err})") from None
    return out


def save_finetuned(model: nn.Module, tokenizer: ChatTokenizer, out, *, overwrite: bool = False,
                   log: dict | None = None) -> Path:
    """Write ``model`` (``config.json``, ``model.safetensors``), ``tokenizer.json`` and, if given,
    ``log`` as ``finetune_log.json`` to the directory ``out``, atomically; returns ``out``.

    The files are written and synced in ``.OUT.tmp`` beside ``out``, then renamed into place (the
    previous ``out``, with ``overwrite``, is moved aside for that instant and deleted after). A
    failure or a kill at any moment leaves the previous ``out`` (or no ``out``), never a partial one.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model still has LoRA layers: merge_lora(model) first, so that it saves as a plain GPT")
    if getattr(model, "config", None) is None or model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError("the model and the tokenizer disagree on the vocabulary size; save the pair finetune made")
    out = check_output_dir(out, overwrite=overwrite)
    tmp, old = _staging(out), _aside(out)
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed run left
    swapped = False
    try:
        save_model(model, tmp)
        tokenizer.save(tmp / TOKENIZER_FILE)
        if log is not None:
            (tmp / LOG_FILE).write_text(json.dumps(log), encoding="utf-8")
        for p in [*tmp.iterdir(), tmp]:
            fsync_path(p)
        with interrupts_deferred():  # a Ctrl-C lands before the swap or after it, never between the renames
            if out.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
            os.replace(tmp, out)
            swapped = True
            fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not swapped and not out.exists() and old.exists():
            os.replace(old, out)  # the previous output goes back
        raise
    finally:
        if swapped:
            shutil.rmtree(old, ignore_errors=True)
    return out
