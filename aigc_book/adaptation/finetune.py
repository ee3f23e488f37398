r"""Fine-tune a GPT from ``train-gpt`` on prompt/response pairs: the library behind ``python -m aigc_book finetune``.

Introduced in chapter 4, section "Instruction following". Four steps, each a piece of chapter 4:

1. **Template.** Each pair is laid out in the chat template of :mod:`aigc_book.text.chat_tokenizer`,
   ``<|user|>{prompt}<|end|><|assistant|>{response}<|end|>``. The special tokens are appended to
   the base model's character vocabulary (:class:`~aigc_book.text.chat_tokenizer.BaseChatTokenizer`),
   and the model's token embedding grows by one row each (:func:`~aigc_book.models.surgery.grow_vocabulary`;
   a GPT's output head is the same matrix, tied, so it grows too).
2. **Trainable parameters.** ``method="full"`` trains every weight. ``method="lora"`` wraps every
   attention and MLP linear layer (``c_attn``, ``c_proj``, ``c_fc``) in LoRA (Hu et al. 2021, "LoRA:
   Low-Rank Adaptation of Large Language Models"; :mod:`aigc_book.adaptation.lora`) and trains those
   plus the *new* embedding rows only, since no pretrained weight knows the special tokens: a gradient
   hook zeroes the gradient of the pretrained rows, and AdamW then leaves them bitwise unchanged.
3. **Loss.** Supervised fine-tuning: the next-token cross-entropy on the response tokens and the
   closing ``<|end|>`` only (the prompt is given, not predicted; Ouyang et al. 2022, "Training language
   models to follow instructions with human feedback"),

   .. math:: \mathcal{L} = -\frac{1}{|R|} \sum_{t \in R} \log p_\theta(x_{t} \mid x_{<t}),

   :math:`R` the response positions of the batch (:func:`~aigc_book.tasks.sft.sft_batch`). The
   :class:`~aigc_book.training.trainer.Trainer` runs it (warm-up, cosine decay, gradient clipping at
   1, AdamW *without* weight decay: decay pulls weights towards zero, not towards the pretrained ones,
   and would shrink the frozen rows of the shared embedding under LoRA).
4. **Saving.** LoRA is merged (:func:`~aigc_book.adaptation.lora.merge_lora`), so the result is an
   ordinary GPT that ``GPT.from_pretrained`` and ``python -m aigc_book sample`` load unchanged.
   :func:`save_finetuned` builds the whole directory aside and swaps it into place
   (:func:`~aigc_book.files.replace_directory`): a killed run leaves the previous output (or none),
   never half a model.

:class:`FinetuneConfig` holds the settings (method, steps, learning rate, batch size, seed, LoRA's
rank and scale); :func:`finetune` takes it with the model, the tokenizer and the pairs.
"""

from __future__ import annotations

import json
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
from aigc_book.checks import check_int, check_number
from aigc_book.files import finish_interrupted_swap, replace_directory, sync_directory
from aigc_book.models.gpt import GPT
from aigc_book.models.io import CONFIG_FILE, MODEL_FILE, CheckpointError, save_model
from aigc_book.models.surgery import grow_vocabulary
from aigc_book.tasks.instructions import as_pair
from aigc_book.tasks.sft import SFTData, encode_sft, sft_batch
from aigc_book.text.chat_tokenizer import BaseChatTokenizer, ChatTokenizer
from aigc_book.text.load import load_tokenizer
from aigc_book.text.tokenizer import TOKENIZER_FILE
from aigc_book.training.checkpoint import interrupts_deferred
from aigc_book.training.objectives import IGNORE, causal_lm_loss
from aigc_book.training.trainer import TrainConfig, Trainer

__all__ = [
    "METHODS",
    "LORA_TARGETS",
    "DEFAULT_LR",
    "MAX_DATA_BYTES",
    "LOG_FILE",
    "FinetuneConfig",
    "load_base",
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
MAX_DATA_BYTES = 64 * 2**20  # the largest file of pairs the finetune command reads
LOG_FILE = "finetune_log.json"


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
    tok = load_tokenizer(directory / TOKENIZER_FILE, types=("char", "chat"))
    if tok.vocab_size != model.config.vocab_size:
        raise ValueError(f"{directory / TOKENIZER_FILE} has {tok.vocab_size} tokens but the model has "
                         f"{model.config.vocab_size} outputs; they come from different runs")
    if not isinstance(tok, ChatTokenizer):
        tok = BaseChatTokenizer(tok.itos)
        grow_vocabulary(model, tok.vocab_size)
    return model, tok


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
        n = len(tokenizer.encode_chat(prompt, response)[0])
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

    ``model`` must already have the chat vocabulary (:func:`~aigc_book.tasks.sft.grow_vocabulary`).
    :func:`make_trainable` chooses what trains (``first_new_row``: the first special-token row, for
    LoRA), then the :class:`~aigc_book.training.trainer.Trainer` minimises the causal-LM loss on
    :func:`~aigc_book.tasks.sft.sft_batch` batches (the response tokens, or every token with
    ``train_on_prompt``): 30 warm-up steps, cosine decay, weight decay 0.1 for ``"full"`` and none
    for ``"lora"`` (decay would shrink the frozen rows of the shared embedding). ``seed`` seeds the
    batches; LoRA's initial ``A`` matrices come from the global RNG, so seed it first. The model is
    left in training mode, with LoRA unmerged.
    """
    trainable, handles = make_trainable(model, method, first_new_row=first_new_row)
    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=30, seed=seed, progress=progress,
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
    :func:`~aigc_book.tasks.sft.sft_batch`): the number the summary reports before and after."""
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


@dataclass(frozen=True)
class FinetuneConfig:
    """What :func:`finetune` trains and how; checked when made.

    Attributes:
        method: ``"full"`` (every weight) or ``"lora"`` (see :func:`make_trainable`).
        steps: optimizer steps; ``batch_size`` pairs are drawn (with replacement) for each.
        lr: peak learning rate (None: :data:`DEFAULT_LR` of the method, see :attr:`peak_lr`); linear
            warm-up over ``min(10, steps // 10)`` steps, then cosine decay to ``lr / 10``.
        batch_size: pairs per step.
        seed: seeds the batches and LoRA's initial ``A`` (the global RNG is left as it was).
        lora_r, lora_alpha: LoRA's rank and scale numerator (``method="lora"`` only; Hu et al. 2021
            scale the update by ``lora_alpha / lora_r``).
        merge: fold LoRA into the weights at the end (False keeps the :class:`LoRALinear` layers).
    """

    method: str = "lora"
    steps: int = 200
    lr: float | None = None
    batch_size: int = 8
    seed: int = 0
    lora_r: int = 8
    lora_alpha: float = 16.0
    merge: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        check_int("steps", self.steps)
        check_int("batch_size", self.batch_size)
        if self.lr is not None:
            check_number("lr", self.lr)
        if self.method == "lora":
            check_int("lora_r", self.lora_r)
            check_number("lora_alpha", self.lora_alpha)

    @property
    def peak_lr(self) -> float:
        """``lr``, or the method's default when it is None."""
        return float(DEFAULT_LR[self.method] if self.lr is None else self.lr)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the fine-tuned GPT (LoRA merged unless the config's ``merge`` is False).
        tokenizer: its chat tokenizer.
        method, steps: the config's.
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


def finetune(model: GPT, tokenizer: ChatTokenizer, pairs, config: FinetuneConfig | None = None, *, device=None,
             progress: bool = True) -> FinetuneResult:
    """Supervised fine-tuning of ``model`` on prompt/response ``pairs`` in the chat template.

    Args:
        model: a GPT whose vocabulary already holds the special tokens (from :func:`load_base`).
        tokenizer: its :class:`~aigc_book.text.chat_tokenizer.ChatTokenizer`.
        pairs: dicts ``{"prompt", "response"}`` (as :func:`~aigc_book.tasks.instructions.read_jsonl`
            gives), tuples or Instructions.
        config: what to train and how (:class:`FinetuneConfig`; default ``FinetuneConfig()``).
        device: where to train (default: the model's device).
        progress: show a progress bar (tqdm, on stderr).

    A NaN or infinite loss raises :class:`~aigc_book.training.trainer.NonFiniteLossError`.
    """
    c = FinetuneConfig() if config is None else config
    if not isinstance(c, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(c).__name__}")
    method, steps, lr, seed = c.method, c.steps, c.peak_lr, c.seed
    if not isinstance(tokenizer, ChatTokenizer):
        raise TypeError(f"tokenizer must be a ChatTokenizer (load_base gives one), got {type(tokenizer).__name__}")
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model has {model.config.vocab_size} token ids but the tokenizer {tokenizer.vocab_size}: "
                         "grow the model first (load_base does, or models.surgery.grow_vocabulary)")
    pairs = list(pairs)
    block = model.config.block_size
    check_pairs(tokenizer, pairs, block_size=block)
    data = encode_sft(tokenizer, pairs, max_length=block + 1)
    if device is not None:
        model.to(device)
    total = model.num_parameters()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trainable, handles = make_trainable(model, method, first_new_row=tokenizer.chars.vocab_size,
                                            lora_r=c.lora_r, lora_alpha=c.lora_alpha)
    initial = sft_loss(model, data)
    train_config = TrainConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=min(10, steps // 10),
                               weight_decay=0.0, grad_clip=1.0, eval_splits=("train",), seed=seed, progress=progress)

    def loss_fn(m, batch):  # right padding never reaches a real token through the causal mask
        return m(batch["idx"], batch["targets"]).loss

    trainer = Trainer(model, lambda split, g: sft_batch(data, c.batch_size, g), loss_fn, train_config,
                      eval_fn=lambda m: {"train": sft_loss(m, data)})
    t0 = time.perf_counter()
    try:
        history = trainer.train()
    finally:
        for handle in handles:
            handle.remove()
    seconds = time.perf_counter() - t0
    if method == "lora" and c.merge:
        merge_lora(model)
    model.eval()
    return FinetuneResult(model, tokenizer, method, steps, initial, history["evals"][-1]["train"], trainable, total,
                          seconds, history)


def _staging(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp")  # the next output, while it is written


def check_output_dir(out, *, overwrite: bool = False, base=None) -> Path:
    """Make sure ``out`` can receive a fine-tuned model, before any training; returns it as a Path.

    Refused (ValueError): ``out`` is ``base``; ``out`` is a file; ``out`` holds files and
    ``overwrite`` is False; ``out`` holds files that are not a model (``--overwrite`` never deletes
    those); its parent cannot be written. A swap that a kill interrupted is completed first.
    """
    out = Path(out)
    if base is not None and out.resolve() == Path(base).resolve():
        raise ValueError(f"{out}: is the base model's directory; write the fine-tuned model elsewhere")
    finish_interrupted_swap(out)  # killed between the two renames of save_finetuned
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

    The files are written and synced in ``.OUT.tmp`` beside ``out``, then swapped into place by
    :func:`~aigc_book.files.replace_directory` (the previous ``out``, with ``overwrite``, is moved
    aside for that instant and deleted after). A failure or a kill at any moment leaves the previous
    ``out`` (or no ``out``), never a partial one.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model still has LoRA layers: merge_lora(model) first, so that it saves as a plain GPT")
    if getattr(model, "config", None) is None or model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError("the model and the tokenizer disagree on the vocabulary size; save the pair finetune made")
    out = check_output_dir(out, overwrite=overwrite)
    tmp = _staging(out)
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed run left
    try:
        save_model(model, tmp)
        tokenizer.save(tmp / TOKENIZER_FILE)
        if log is not None:
            (tmp / LOG_FILE).write_text(json.dumps(log), encoding="utf-8")
        sync_directory(tmp)
        with interrupts_deferred():  # a Ctrl-C lands before the swap or after it, never between the renames
            replace_directory(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a swap; after a failure, the half-written copy
    return out
