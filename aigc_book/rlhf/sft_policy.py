"""The starting point of every method in chapter 5: chapter 4's supervised (SFT) chat model, rebuilt.

Introduced in chapter 5, section "The setting: a policy, a gold reward and labelers". Two stages, as
chapter 4 runs them:

1. **Pretraining** a GPT with the causal objective on chapter 3's bracket language
   (:class:`~aigc_book.text.languages.BracketLanguage`).
2. **Supervised fine-tuning** on the instruction family of :mod:`aigc_book.tasks.instructions`
   in the chat template (:mod:`aigc_book.tasks.sft`): the embedding grows the chat tokens' rows and
   the whole model trains on the response tokens only.

:func:`build_sft_policy` returns the model, its tokenizer and the pretraining sequences (which
PPO-ptx mixes back in). The same :class:`PolicyConfig` and seed give the same model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from aigc_book.adaptation.finetune import supervised_fine_tune
from aigc_book.models.gpt import GPT
from aigc_book.models.surgery import grow_vocabulary
from aigc_book.models.transformer import TransformerConfig
from aigc_book.rlhf.common import check_fields
from aigc_book.tasks import instructions
from aigc_book.tasks.instructions import CHARS
from aigc_book.tasks.sft import encode_sft, instruction_accuracy
from aigc_book.text.chat_tokenizer import ChatTokenizer
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.objectives import causal_lm_loss, sequence_lm_batch
from aigc_book.training.trainer import TrainConfig, Trainer

__all__ = ["PolicyConfig", "SFTPolicy", "build_sft_policy", "PRETRAIN_LENGTH"]

PRETRAIN_LENGTH = 48  # tokens after BOS in a pretraining sequence (chapter 3's length)


@dataclass(frozen=True)
class PolicyConfig:
    """Sizes and steps of the two stages (the defaults take about half a minute on a laptop CPU).

    Attributes:
        n_layer, n_head, n_embd: the GPT's shape.
        pretrain_seqs, pretrain_steps, pretrain_lr: bracket-language sequences, optimizer steps and peak
            learning rate of pretraining.
        sft_pairs, sft_steps, sft_lr: instruction-response pairs, optimizer steps and peak learning
            rate of supervised fine-tuning.
        batch_size: sequences per step in both stages.
    """

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    pretrain_seqs: int = 20_000
    pretrain_steps: int = 600
    sft_pairs: int = 4_000
    sft_steps: int = 600
    batch_size: int = 32
    pretrain_lr: float = 3e-3
    sft_lr: float = 2e-3

    def __post_init__(self) -> None:
        check_fields(self, positive_ints=("n_layer", "n_head", "n_embd", "pretrain_seqs", "pretrain_steps", "sft_pairs",
                                          "sft_steps", "batch_size"), positive=("pretrain_lr", "sft_lr"))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")


@dataclass
class SFTPolicy:
    """What :func:`build_sft_policy` returns.

    Attributes:
        model: the supervised chat model (a GPT over the chat vocabulary), in eval mode.
        tokenizer: its :class:`~aigc_book.text.chat_tokenizer.ChatTokenizer`.
        pretrain_seqs: ``(N, T + 1)`` bracket-language sequences it was pretrained on (PPO-ptx's data).
        accuracy: greedy accuracy on 300 held-out instructions (``{"all": ..., kind: ...}``).
        seconds: wall-clock time of both stages.
    """

    model: GPT
    tokenizer: ChatTokenizer
    pretrain_seqs: torch.Tensor
    accuracy: dict[str, float]
    seconds: float


def build_sft_policy(config: PolicyConfig | None = None, *, seed: int = 0, device=None,
                     progress: bool = False) -> SFTPolicy:
    """Pretrain a GPT on the bracket language, then fine-tune it on the instructions (chapter 4's recipe)."""
    r = config or PolicyConfig()
    device = torch.device(device or "cpu")
    t0 = time.perf_counter()
    lang = BracketLanguage()
    seqs = lang.sample(r.pretrain_seqs, PRETRAIN_LENGTH, seed=seed + 1)
    config = TransformerConfig(vocab_size=lang.vocab_size, block_size=64, n_layer=r.n_layer, n_head=r.n_head,
                               n_embd=r.n_embd)
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    Trainer(model, lambda split, g: sequence_lm_batch(seqs, r.batch_size, g), causal_lm_loss,
            TrainConfig(steps=r.pretrain_steps, lr=r.pretrain_lr, warmup_steps=50, seed=seed, progress=progress),
            device=device).train()
    tokenizer = ChatTokenizer(CHARS)
    grow_vocabulary(model, tokenizer.vocab_size)
    data = encode_sft(tokenizer, instructions.sample_instructions(r.sft_pairs, seed=seed + 6),
                      max_length=config.block_size + 1)
    supervised_fine_tune(model, data, steps=r.sft_steps, lr=r.sft_lr, batch_size=r.batch_size, seed=seed, device=device,
                         progress=progress)
    model.eval()
    accuracy = instruction_accuracy(model, tokenizer, instructions.sample_instructions(300, seed=seed + 7))
    return SFTPolicy(model, tokenizer, seqs, accuracy, time.perf_counter() - t0)
