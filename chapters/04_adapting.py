# %% [markdown]
# # 4. Adapting a pretrained model: fine-tuning, LoRA, prompts, in-context learning and decoding
#
# Chapter 3 pretrained small Transformers on a language whose every probability we know. A
# pretrained model predicts the next token; nobody asked it to classify, to answer questions or to
# follow instructions. This chapter teaches it those jobs, and asks:
#
# 1. How do you adapt a pretrained model to a new task, and what does each way cost? Full
#    fine-tuning; training only the last layers; {term}`LoRA <LoRA (low-rank adaptation)>`; bottleneck {term}`adapters <adapter>`; {term}`prefix tuning`; prompt
#    tuning — each written from scratch, checked against the `peft` library where `peft` has it,
#    and compared on the same base model and task: trainable parameters, memory, time per step,
#    accuracy over three seeds.
# 2. What does {term}`extractive question answering` look like when it is done right, and how is it scored?
# 3. How does a model learn to follow instructions in a {term}`chat template`, and why is the loss put on the
#    response only?
# 4. What can a model do with examples in its prompt, without any training, and what mechanism
#    inside it does that ({term}`induction heads <induction head>`)?
# 5. How is text generated from the adapted model: {term}`greedy <greedy decoding>`, {term}`beam search`, {term}`temperature`, {term}`top-k <top-k / top-p (nucleus) sampling>`, top-p,
#    min-p, {term}`repetition penalty` — each checked against Hugging Face `transformers`?
# 6. How is each of these scored, and what can each metric not tell you?
#
# Every task has answers a program can check, so every accuracy in this chapter is exact. The code
# lives in the package: `aigc_book.adaptation` (freezing, LoRA, adapters, prompt and prefix
# tuning), `aigc_book.tasks` (the tasks, the chat template, the metrics), `aigc_book.incontext`
# (induction heads), `aigc_book.generation` (decoding) and `aigc_book.efficiency.memory`.

# %%
import copy
import math
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from aigc_book import ChapterSettings, get_device, seed_everything, use_book_style
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.evaluation import lm_loss
from aigc_book.training.objectives import causal_lm_loss, sequence_lm_batch
from aigc_book.training.trainer import TrainConfig, Trainer

use_book_style()
device = get_device()
seed_everything(0)
chapter_start = time.perf_counter()
print(f"PyTorch {torch.__version__}, device: {device}, threads: {torch.get_num_threads()}")

# %% [markdown]
# ## Settings
#
# *How large are the experiments, and where do you change them?*
#
# Every size and step count of the chapter is set in the next cell. The CPU values produced the
# outputs stored in the notebook; on a CUDA GPU the same cells train larger models for longer, and
# the sentences that quote results are rendered from the numbers, so they stay true.

# %%
T = 48  # tokens after BOS in every pretraining sequence (chapter 3's language and length)


@dataclass(frozen=True)
class Settings(ChapterSettings):
    n_layer: int = 2  # the base GPT: layers, heads, width
    n_head: int = 4
    n_embd: int = 64
    pretrain_seqs: int = 20_000  # pretraining: sequences, steps, batch, peak learning rate
    pretrain_iters: int = 600
    batch: int = 32
    lr: float = 3e-3
    cls_length: int = 32  # classification: tokens per sequence, examples per class, steps per run
    cls_per_class: int = 1_000
    cls_iters: int = 200
    seeds: int = 3  # seeds per method in the comparison
    qa_length: int = 24  # question answering: context tokens, questions, steps
    qa_questions: int = 4_000
    qa_iters: int = 200
    sft_pairs: int = 4_000  # instruction following: training conversations, steps
    sft_iters: int = 800
    induction_iters: int = 800  # the attention-only models of the induction-head section
    icl_docs: int = 20_000  # few-shot: documents of demonstrations, pretraining steps
    icl_iters: int = 600

    cuda = dict(  # what a CUDA GPU changes (Settings.for_device)
        n_layer=4,
        n_embd=128,
        pretrain_seqs=100_000,
        pretrain_iters=3000,
        batch=128,
        lr=1e-3,
        cls_per_class=4_000,
        cls_iters=600,
        seeds=5,
        qa_questions=20_000,
        qa_iters=2000,
        sft_pairs=20_000,
        sft_iters=2000,
        induction_iters=2000,
        icl_iters=2000,
    )


settings = Settings.for_device(device)
print(f"settings for {device.type}:")
print(settings.table(name_width=16, number_width=10))

# %% [markdown]
# ## A base model to adapt
#
# *What is the pretrained model that every method below starts from?*
#
# A GPT pretrained, as in chapter 3, on the bracket language: nested brackets of four types with
# words that must agree with the innermost open bracket, each sequence starting with `^`. The
# cell trains it with the causal (next-token) objective and reports its held-out loss against the
# language's entropy, the floor no model can beat.

# %%
lang = BracketLanguage()
pretrain_seqs = lang.sample(settings.pretrain_seqs, T, seed=1)  # (N, T + 1)
val_seqs = lang.sample(1_000, T, seed=2)
V = lang.vocab_size
base_config = TransformerConfig(
    vocab_size=V,
    block_size=64,
    n_layer=settings.n_layer,
    n_head=settings.n_head,
    n_embd=settings.n_embd,
)
torch.manual_seed(0)
base = GPT(base_config).to(device)
pretrain_cfg = TrainConfig(
    steps=settings.pretrain_iters, lr=settings.lr, warmup_steps=50, progress=False
)
t0 = time.perf_counter()
Trainer(
    base,
    lambda split, g: sequence_lm_batch(pretrain_seqs, settings.batch, g),
    causal_lm_loss,
    pretrain_cfg,
    device=device,
).train()
floor = lang.entropy_floor(T)
base_loss = lm_loss(base, val_seqs.to(device))
print(
    f"base GPT: {base.num_parameters():,} parameters, pretrained in "
    f"{time.perf_counter() - t0:.0f} s"
)
print(
    f"held-out loss {base_loss:.3f} nats/token; the language's floor {floor:.3f}; "
    f"gap {base_loss - floor:.3f}"
)
assert base_loss < floor + 0.15, "the base model should be close to the floor"
base.eval()
base.requires_grad_(False)  # the pretrained weights: every method below starts from a copy

# %% [markdown]
# ## Tasks with known answers
#
# *What will the adapted models be asked to do, and how do we know the right answers?*
#
# Three kinds of task, each decided by a program (`aigc_book.tasks`), so the best possible score is
# known to be 100%:
#
# * **classification**: a property of a whole sequence — how deep its brackets nest, which bracket
#   type dominates, or whether it is well formed or has one token corrupted;
# * **extractive question answering**: given a sequence and one of its opening brackets, find the
#   span up to the matching closer;
# * **instruction following**: short instructions (close these brackets, reverse, sort, count, add)
#   whose responses a checker verifies exactly.
#
# The next cell draws examples of each.

# %%
# NBVAL_CHECK_OUTPUT
from aigc_book.tasks import instructions
from aigc_book.tasks.classification import PROPERTIES, make_classification_data
from aigc_book.tasks.qa import make_qa_data, span_text

for prop in PROPERTIES:
    demo = make_classification_data(prop, n_per_class=4, length=16, seed=0)
    x, y = demo.split("train")
    print(
        f"{prop:<14}", "  ".join(f"{lang.decode(x[i])} -> {demo.classes[y[i]]}" for i in range(2))
    )
qa_demo = make_qa_data(1, length=16, seed=0)
row, start, end = qa_demo.idx[0], int(qa_demo.start_positions[0]), int(qa_demo.end_positions[0])
print(
    "question answering: the marker ① stands before the asked-about bracket; answer:",
    span_text(lang, row, start, end, sep=""),
)
for item in instructions.sample_instructions(5, seed=0):
    print(
        f"instruction: {item.prompt!r:<26} answer: {item.answer!r:<8} "
        f"checker: {instructions.check(item.prompt, item.answer)}"
    )

# %% [markdown]
# ## Fine-tuning the whole model
#
# *What is the simplest way to teach the pretrained model a classification task?*
#
# Keep the model a language model and make the label its next token. After a sequence, the model
# must answer with one symbol: `w`, `x`, `y` or `z` for classes 0, 1, 2, 3 (any agreed symbols
# would do; the T5 paper casts every task this way, Raffel et al. 2020). Only the last position has
# a target; every other position's target is −100, which `cross_entropy` ignores. The loss is then
# the cross-entropy of the label among all symbols, and the prediction is the arg-max over the
# label symbols only. Because the task *is* next-token prediction, every adaptation method below
# trains with the same loss function and the same loop as pretraining.
#
# The task here is `open_type`: at the end of the sequence, which type of bracket is open
# innermost? (Only sequences that end inside a bracket are drawn.) To predict the next token, the
# pretrained model must already track this — the right closer and the agreeing words depend on it —
# so the information is inside the model; the task asks it to *say* it with a new symbol.
# **{term}`Full fine-tuning <full fine-tuning>`** trains every weight.

# %%
TASK = "open_type"
cls_data = make_classification_data(
    TASK, n_per_class=settings.cls_per_class, length=settings.cls_length, seed=3
)
K = len(cls_data.classes)
answer_ids = torch.tensor(
    [lang.stoi[c] for c in "wxyz"[:K]], device=device
)  # (K,) the label symbols
IGNORE = -100


def label_batch(split: str, g: torch.Generator, batch_size: int = settings.batch) -> dict:
    """Sequences with one target: the label's symbol after the last token."""
    batch = cls_data.batch(split, batch_size, g)
    idx = batch["idx"].to(device)  # (B, L + 1)
    targets = torch.full_like(idx, IGNORE)
    targets[:, -1] = answer_ids[batch["labels"].to(device)]
    return {"idx": idx, "targets": targets}


@torch.no_grad()
def label_accuracy(model, split: str = "val") -> float:
    x, y = cls_data.split(split)
    was_training = model.training
    model.eval()
    logits = model(x.to(device)).logits[
        :, -1, answer_ids
    ]  # (N, K): scores of the label symbols only
    model.train(was_training)
    return (logits.argmax(-1).cpu() == y).float().mean().item()


print(
    f"{TASK}: classes {cls_data.classes}, {len(cls_data.split('train')[1])} training and "
    f"{len(cls_data.split('val')[1])} validation sequences of {settings.cls_length} tokens"
)
print(
    f"base model before any fine-tuning: accuracy {label_accuracy(base):.3f} (chance {1 / K:.3f})"
)

# %% [markdown]
# Before training, the base model answers at about chance: it was never asked this question. Now the
# whole model is trained for a few hundred steps.

# %%
from aigc_book.adaptation.freezing import count_trainable

LR = {
    "full": 3e-3,
    "last layer": 1e-2,
    "LoRA": 1e-2,
    "adapters": 1e-2,
    "prefix": 0.3,
    "prompt": 0.3,
}


def fine_tune(model, method: str, seed: int, iters: int = settings.cls_iters) -> Trainer:
    cfg = TrainConfig(
        steps=iters, lr=LR[method], warmup_steps=10, weight_decay=0.0, seed=seed, progress=False
    )
    trainer = Trainer(model, label_batch, causal_lm_loss, cfg, device=device)
    trainer.train()
    return trainer


torch.manual_seed(0)
full = copy.deepcopy(base).requires_grad_(True).train()
full_trainer = fine_tune(full, "full", seed=0)
counts = count_trainable(full)
print(
    f"full fine-tuning: {counts.trainable:,} of {counts.total:,} parameters trained; "
    f"validation accuracy {label_accuracy(full):.3f} after {settings.cls_iters} steps"
)

# %% [markdown]
# ## LoRA
#
# *Can the update be much smaller than the model and still do the job?*
#
# Full fine-tuning changes every weight matrix $W \in \mathbb{R}^{d_\text{out} \times d_\text{in}}$.
# LoRA (Hu et al. 2021) freezes $W$ and learns a low-rank change instead:
#
# $$h = W x + \frac{\alpha}{r}\, B A x, \qquad A \in \mathbb{R}^{r \times d_\text{in}},\;
#   B \in \mathbb{R}^{d_\text{out} \times r},\; r \ll \min(d_\text{in}, d_\text{out}).$$
#
# $A$ starts random and $B$ at zero, so training starts from the pretrained model exactly; the
# update has $r (d_\text{in} + d_\text{out})$ parameters instead of $d_\text{in} d_\text{out}$. After
# training, $W + \frac{\alpha}{r} B A$ can be **merged** into one matrix: no extra cost at inference.
# The authors' motivation was scale: on GPT-3 175B, LoRA trained up to 10,000 times fewer parameters
# than full fine-tuning, needed 3 times less GPU memory, and matched or beat its quality on their
# benchmarks (Hu et al. 2021, abstract).
#
# Our `LoRALinear` is checked here against `peft`'s LoRA layer given the same weights: the output,
# the scaling $\alpha / r$, the merged weight, and merging then unmerging.

# %%
# NBVAL_CHECK_OUTPUT
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from aigc_book.adaptation.lora import LoRALinear, apply_lora, lora_parameter_count, merge_lora

torch.manual_seed(0)
layer = torch.nn.Linear(6, 5, dtype=torch.float64)
r, alpha = 2, 4.0
ours = LoRALinear(copy.deepcopy(layer), r=r, alpha=alpha)
theirs = PeftLoraLinear(
    copy.deepcopy(layer), "default", config=LoraConfig(r=r, lora_alpha=alpha), r=r, lora_alpha=alpha
)
with torch.no_grad():  # the same A, and a non-zero B (a zero B would hide every mistake)
    ours.lora_A.weight.copy_(theirs.lora_A["default"].weight)
    B = torch.randn(5, r, dtype=torch.float64)
    ours.lora_B.weight.copy_(B)
    theirs.lora_B["default"].weight.copy_(B)
x = torch.randn(3, 6, dtype=torch.float64)
by_hand = layer(x) + (alpha / r) * x @ ours.lora_A.weight.T @ B.T  # W x + (alpha/r) B A x
torch.testing.assert_close(ours(x), by_hand)
torch.testing.assert_close(ours(x), theirs(x))
assert ours.scaling == theirs.scaling["default"] == alpha / r
unmerged = ours(x)
ours.merge()
torch.testing.assert_close(
    ours.base_layer(x), unmerged
)  # one matrix now computes the same function
ours.unmerge()
torch.testing.assert_close(ours.base_layer.weight, layer.weight)
print("LoRALinear equals W x + (alpha/r) B A x and peft's LoRA layer; merged equals unmerged")

# %% [markdown]
# On the base GPT, LoRA goes on every linear layer of every block: the attention's fused
# query/key/value projection `c_attn` (the LoRA paper's choice), the attention's output projection
# and both feed-forward layers (names ending in `c_proj` and `c_fc`); everything else is frozen.

# %%
LORA = dict(target_modules=("c_attn", "c_proj", "c_fc"), r=8, alpha=16.0)
torch.manual_seed(0)
lora_model = copy.deepcopy(base)
wrapped = apply_lora(lora_model, **LORA)
counts = count_trainable(lora_model)
expected = sum(
    lora_parameter_count(m.in_features, m.out_features, LORA["r"])
    for m in (lora_model.get_submodule(n) for n in wrapped)
)
assert counts.trainable == expected
fine_tune(lora_model, "LoRA", seed=0)
lora_accuracy = label_accuracy(lora_model)
merged = merge_lora(copy.deepcopy(lora_model))
x_val = cls_data.split("val")[0][:64].to(device)
with torch.no_grad():  # in float64: the merge itself is compared, not float32 rounding of two paths
    torch.testing.assert_close(
        copy.deepcopy(merged).double()(x_val).logits,
        copy.deepcopy(lora_model).double()(x_val).logits,
        rtol=1e-4,
        atol=1e-4,
    )
assert (
    label_accuracy(merged) == lora_accuracy
    and type(merged.transformer.h[0].attn.c_attn) is torch.nn.Linear
)
print(
    f"LoRA on {len(wrapped)} layers: {counts.trainable:,} trained parameters "
    f"({counts.percent:.1f}% of {counts.total:,}); validation accuracy {lora_accuracy:.3f}; "
    "merged into plain Linear layers, same logits"
)

# %% [markdown]
# ## Adapters, prefixes and prompts
#
# *What other small sets of parameters can carry a new task?*
#
# Three more places to put the trainable parameters, each in `aigc_book.adaptation`:
#
# * **Bottleneck adapters** (Houlsby et al. 2019): after the attention and the feed-forward
#   sublayer of every block, a small network $h \mapsto h + W_\text{up}\,\sigma(W_\text{down} h)$
#   with $W_\text{down} \in \mathbb{R}^{m \times d}$, $m \ll d$. $W_\text{up}$ starts at zero, so a
#   fresh adapter is the identity. Each adds $2md + m + d$ parameters.
# * **Prefix tuning** (Li & Liang 2021): every layer's attention gets $P$ trained keys and values in
#   front of its own; the tokens attend to them as if a prefix of $P$ tokens came first. It adds
#   $P \cdot n_\text{layer} \cdot 2d$ parameters.
# * **{term}`Prompt tuning <prompt tuning>`** (Lester et al. 2021): only $P$ trained input vectors in front of the token
#   embeddings — a "soft prompt" of $Pd$ parameters.
#
# Prompt and prefix tuning wrap the frozen GPT and keep its `forward(idx, targets)`, so the same loop
# trains them. The next cell checks the parameter formulas, that a fresh adapter leaves the model's
# output unchanged, and that our prompt and prefix tuning train exactly as many parameters as
# `peft`'s do on the same GPT converted to Hugging Face's GPT-2.

# %%
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

from aigc_book.adaptation.adapters import adapter_parameter_count, apply_adapters
from aigc_book.adaptation.prompts import PrefixTuning, PromptTuning
from aigc_book.models.hf_gpt2 import to_hf_gpt2

P, M = 16, 8  # virtual tokens; adapter width
d, L = base_config.n_embd, base_config.n_layer
adapter_model = copy.deepcopy(base)
apply_adapters(adapter_model, bottleneck=M)
with torch.no_grad():
    torch.testing.assert_close(
        adapter_model(x_val).logits, base(x_val).logits
    )  # a fresh adapter is the identity
assert count_trainable(adapter_model).trainable == 2 * L * adapter_parameter_count(d, M)

import warnings

hf_base = to_hf_gpt2(copy.deepcopy(base).cpu())
for name, ours_cls, config, by_formula in [
    (
        "prompt",
        PromptTuning,
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P),
        P * d,
    ),
    (
        "prefix",
        PrefixTuning,
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P),
        P * L * 2 * d,
    ),
]:
    ours_count = count_trainable(ours_cls(copy.deepcopy(base), P)).trainable
    with warnings.catch_warnings():  # transformers' notice that a peft-internal call is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        peft_count, _ = get_peft_model(copy.deepcopy(hf_base), config).get_nb_trainable_parameters()
    assert ours_count == peft_count == by_formula, (name, ours_count, peft_count, by_formula)
    print(
        f"{name} tuning with {P} virtual tokens: {ours_count:,} trainable parameters "
        f"(peft: {peft_count:,})"
    )
print(
    f"adapters of width {M} after both sublayers of {L} blocks: "
    f"{2 * L * adapter_parameter_count(d, M):,}"
)

# %% [markdown]
# ## Comparing the methods
#
# *Which method should you use, and what does each cost?*
#
# Six methods, one base model, one task, the same loop; each run starts from a fresh copy of the
# base model and is repeated with different seeds (the seed sets the order of the batches and any
# random start). For each: the trainable parameters, the memory one training step needs (parameters,
# gradients, AdamW's two moments, and the activations saved for the backward pass, measured with
# saved-tensor hooks by `aigc_book.efficiency.memory.training_memory`; on CUDA also the allocator's
# peak), the time per step, and the validation accuracy as mean ± standard deviation over seeds.
# Learning rates were chosen per method (in `LR` above): the small methods need larger steps.

# %%
from tqdm.auto import tqdm

from aigc_book.adaptation.freezing import train_last_layers
from aigc_book.efficiency.memory import training_memory


def adapted(method: str, seed: int):
    torch.manual_seed(seed)
    model = copy.deepcopy(base).train()
    g = torch.Generator().manual_seed(seed)
    if method == "full":
        model.requires_grad_(True)
    elif method == "last layer":
        train_last_layers(model, 1)
    elif method == "LoRA":
        apply_lora(model, **LORA)
    elif method == "adapters":
        apply_adapters(model, bottleneck=M)
    elif method == "prefix":
        model = PrefixTuning(model, P, generator=g)
    elif method == "prompt":
        model = PromptTuning(model, P, generator=g)
    return model


rows = []
for method in tqdm(LR, desc="methods"):
    memory = training_memory(
        adapted(method, 0),
        lambda ps: torch.optim.AdamW(ps, lr=1e-3),
        label_batch("train", torch.Generator().manual_seed(0)),
        causal_lm_loss,
    )
    accuracies, ms, losses = [], [], []
    for seed in range(settings.seeds):
        model = adapted(method, seed)
        trainer = fine_tune(model, method, seed)
        accuracies.append(label_accuracy(model))
        ms.append(float(np.median(trainer.history["ms"])))
        losses.append(
            (trainer.history["train_loss"][0], float(np.mean(trainer.history["train_loss"][-20:])))
        )
    counts = count_trainable(model)
    rows.append(
        {
            "method": method,
            "trainable": counts.trainable,
            "percent": counts.percent,
            "activation_share": memory.activations / memory.total,
            "memory_kib": memory.total / 1024,
            "peak_cuda_kib": (memory.peak_cuda or 0) / 1024,
            "ms": float(np.median(ms)),
            "acc_mean": float(np.mean(accuracies)),
            "acc_sd": float(np.std(accuracies, ddof=1)),
            "loss_start": np.mean([a for a, _ in losses]),
            "loss_end": np.mean([b for _, b in losses]),
        }
    )

peak = " peak CUDA (KiB) |" if device.type == "cuda" else ""
table = [
    f"| method | trainable | % of model | memory per step (KiB) |{peak} ms per step | loss: "
    "first step → last 20 | accuracy (mean ± sd) |",
    "|---|---:|---:|---:|" + ("---:|" if peak else "") + "---:|---:|---:|",
]
for r in rows:
    cuda = f" {r['peak_cuda_kib']:,.0f} |" if peak else ""
    table.append(
        f"| {r['method']} | {r['trainable']:,} | {r['percent']:.2f} | {r['memory_kib']:,.0f} "
        f"|{cuda} {r['ms']:.1f} | {r['loss_start']:.2f} → {r['loss_end']:.2f} | "
        f"{r['acc_mean']:.3f} ± {r['acc_sd']:.3f} |"
    )
display(Markdown("\n".join(table)))
by_acc = sorted(rows, key=lambda r: -r["acc_mean"])
smallest = min(rows, key=lambda r: r["trainable"])
display(
    Markdown(
        f"On this run, **{by_acc[0]['method']}** reached the highest mean accuracy "
        f"({by_acc[0]['acc_mean']:.3f}) and **{by_acc[-1]['method']}** the lowest "
        f"({by_acc[-1]['acc_mean']:.3f}); **{smallest['method']}** trained the fewest parameters "
        f"({smallest['trainable']:,}, {smallest['percent']:.2f}% of the model). Full fine-tuning's "
        f"step needed {rows[0]['memory_kib'] / min(r['memory_kib'] for r in rows):.1f}× the "
        "memory of the cheapest method's."
    )
)
prompt_row = next(r for r in rows if r["method"] == "prompt")
full_row = rows[0]
display(
    Markdown(
        "Three things to read in the table. **Memory**: at this size the activations saved for "
        f"the backward pass are {full_row['activation_share']:.0%} of full fine-tuning's step, "
        "so freezing weights saves less than the parameter counts suggest; "
        "in large models the weights, gradients and optimiser states dominate, which is "
        "where LoRA's saving comes from (3× less GPU memory on GPT-3 175B, Hu et al. 2021). "
        "**Time**: a frozen model still runs forward and backward through every layer above "
        "the first trained parameter, so the small methods are not proportionally faster. "
        f"**Prompt tuning**: its loss fell from {prompt_row['loss_start']:.2f} "
        f"to {prompt_row['loss_end']:.2f} nats — it learned to answer with a label symbol — "
        f"and its accuracy is {prompt_row['acc_mean']:.3f} against a chance of {1 / K:.3f}, "
        f"""{
            'no better than guessing'
            if prompt_row['acc_mean'] < 1 / K + 0.05
            else 'below full fine-tuning'
        }. """
        "Lester et al. (2021) found prompt tuning competitive with full fine-tuning only once "
        f"models have billions of parameters; this one has {base.num_parameters():,}."
    )
)
assert prompt_row["loss_end"] < prompt_row["loss_start"] - 1

# %% [markdown]
# ## Extractive question answering
#
# *How does a model point at the answer inside a text, and how is that scored?*
#
# In **extractive** question answering the answer is a span of the given text. BERT's recipe
# (Devlin et al. 2019, §4.2): a bidirectional encoder reads question and context together, and two
# linear heads give every position a *start* score and an *end* score; the loss is the mean of two
# cross-entropies, one over positions for the true start and one for the true end; the prediction
# is the span $i \le j$ with the largest start$_i$ + end$_j$. The labels are **positions** in the
# input — which token the answer starts at — not token ids.
#
# Our question: *where does this bracket close?* The input is `[CLS]` + the sequence, with a marker
# token `①` placed just before the asked-about opening bracket + `[SEP]`; the answer is the span from
# that bracket to its matching closer. A program knows every answer.
#
# The source article's fine-tuning script gets this wrong in three ways: it encodes the context
# without the question, so the model is never asked anything; it passes the *token ids* of the
# question and of the answer, each padded to 128, as `start_positions` and `end_positions`; and it
# scores the predictions with a classification metric over those numbers. Our `qa_loss` refuses
# labels of that shape:

# %%
from aigc_book.models.transformer import Transformer
from aigc_book.tasks.qa import SpanHeads, evaluate_qa, qa_loss

qa_train = make_qa_data(settings.qa_questions, length=settings.qa_length, seed=4)
qa_val = make_qa_data(500, length=settings.qa_length, seed=5)
qa_V = qa_train.special.vocab_size
row = qa_val.idx[0]
print("input:  ", " ".join((lang.itos + qa_train.special.names())[int(t)] for t in row))
print(
    f"answer: positions {int(qa_val.start_positions[0])}..{int(qa_val.end_positions[0])} = "
    f"{span_text(lang, row, int(qa_val.start_positions[0]), int(qa_val.end_positions[0]))}"
)

torch.manual_seed(0)
encoder_cfg = TransformerConfig(
    vocab_size=qa_V,
    block_size=settings.qa_length + 4,
    n_layer=settings.n_layer,
    n_head=settings.n_head,
    n_embd=settings.n_embd,
    causal=False,
    pos_encoding="rope",
)
qa_model = SpanHeads(Transformer(encoder_cfg)).to(device)
wrong = qa_train.batch(4, torch.Generator().manual_seed(0))
wrong["start_positions"] = wrong["end_positions"] = wrong["idx"]  # token ids in place of positions
try:
    qa_loss(qa_model, {k: v.to(device) for k, v in wrong.items()})
except ValueError as err:
    print("ValueError:", str(err)[:110], "...")

# %% [markdown]
# Trained the right way, with positions as labels. The chapter's pretrained model is a causal GPT,
# whose state at an answer's start has not seen where it ends, so the span heads sit on a small
# bidirectional encoder trained for this task alone. It uses rotary positions (chapter 2): the
# answer is defined by *relative* positions (the closer that matches this opener), which rotary
# attention sees directly; with learned absolute positions the same encoder needed several times
# more steps in our trials. **{term}`Exact match <exact match (EM)>`** (EM) counts answers whose span
# is exactly right; **F1** gives partial credit for overlap. SQuAD defines both on the answer's text
# after normalisation — lower case, punctuation and the articles *a, an, the* removed — with F1 over
# the bag of words (Rajpurkar et al. 2016). That normalisation deletes every bracket of our answers
# (punctuation) and the word `a` (an article), so the text scores are distorted here; the
# position-based EM and F1 (`span_*` below) are the ones to trust.

# %%
qa_cfg = TrainConfig(steps=settings.qa_iters, lr=3e-3, warmup_steps=20, progress=False)
qa_trainer = Trainer(
    qa_model,
    lambda split, g: {k: v for k, v in qa_train.batch(settings.batch, g).items()},
    qa_loss,
    qa_cfg,
    device=device,
)
qa_trainer.train()
qa_scores = evaluate_qa(qa_model, qa_val, max_length=settings.qa_length, lang=lang)
for name, value in qa_scores.items():
    print(f"{name:<18}{value:6.1f}")
assert qa_scores["span_exact_match"] > 50, qa_scores

# %% [markdown]
# ## Instruction following
#
# *How does a next-token predictor become an assistant that answers requests and stops?*
#
# By **{term}`supervised fine-tuning <supervised fine-tuning (SFT)>`** (SFT) on conversations written in a **chat template**. Each turn is
# wrapped in **{term}`special tokens <special token>`**, ids that ordinary text can never produce:
#
# `<|user|>add 7+12<|end|><|assistant|>19<|end|>`
#
# At use time the model is given everything up to `<|assistant|>` and generates until it produces
# `<|end|>`. Training puts the loss on the response tokens only (the prompt's targets are −100):
# the user's text is given, not something to imitate. InstructGPT's SFT stage trained on such
# demonstrations (Ouyang et al. 2022). The instructions are a small family with exact checkers
# (`aigc_book.tasks.instructions`): close the open brackets of a prefix, reverse, sort, count a
# character, add two numbers. The RLHF chapter reuses the same family, with the checker as a reward.
#
# The base model's vocabulary has the bracket language's 29 symbols; the chat tokenizer keeps their
# ids and adds the letters, digits and special tokens the instructions need. The embedding grows
# new rows (started at the mean of the old ones, Hewitt 2021), and the whole model is fine-tuned.

# %%
from aigc_book.adaptation.finetune import supervised_fine_tune
from aigc_book.models.surgery import grow_vocabulary
from aigc_book.tasks.sft import encode_sft, instruction_accuracy, sft_batch
from aigc_book.text.chat_tokenizer import ChatTokenizer, format_chat

chat_tok = ChatTokenizer(instructions.CHARS)
sft_train = instructions.sample_instructions(settings.sft_pairs, seed=6)
sft_val = instructions.sample_instructions(300, seed=7)
sft_data = encode_sft(chat_tok, sft_train, max_length=base_config.block_size + 1)
example = sft_batch(sft_data, 1, torch.Generator().manual_seed(1))
ids, targets = example["idx"][0], example["targets"][0]
print(format_chat(sft_train[0].prompt, sft_train[0].answer))
print(f"chat vocabulary: {chat_tok.vocab_size} ids (the base model had {V})")
print("tokens with a loss:", repr(chat_tok.decode([t for t in targets.tolist() if t != IGNORE])))


SFT_LR = {"full": 2e-3, "lora": 3e-3}


def sft_model(train_on_prompt: bool, method: str = "full", seed: int = 0):
    """The base model with the chat vocabulary, fine-tuned on the instructions.

    Returns (model, trainable parameter count)."""
    torch.manual_seed(seed)  # LoRA's initial A matrices
    model = grow_vocabulary(copy.deepcopy(base).train(), chat_tok.vocab_size)
    # LoRA also trains the new special-token rows of the (tied) embedding, and nothing else of it
    trainable = supervised_fine_tune(
        model,
        sft_data,
        steps=settings.sft_iters,
        lr=SFT_LR[method],
        batch_size=settings.batch,
        method=method,
        first_new_row=V,
        train_on_prompt=train_on_prompt,
        seed=seed,
        device=device,
    )
    return model, trainable


sft_runs = {
    ("full", "response only"): sft_model(False),
    ("full", "prompt and response"): sft_model(True),
    ("lora", "response only"): sft_model(False, "lora"),
}
sft_accuracy = {
    key: instruction_accuracy(model, chat_tok, sft_val) for key, (model, _) in sft_runs.items()
}
chat_model = sft_runs["full", "response only"][0]
kinds = instructions.KINDS
table = [
    "| method | loss on | trainable | all | " + " | ".join(kinds) + " |",
    "|---|---|---:|---:|" + "---:|" * len(kinds),
]
for (method, loss_on), (_, trainable) in sft_runs.items():
    acc = sft_accuracy[method, loss_on]
    table.append(
        f"| {method} | {loss_on} | {trainable:,} | {acc['all']:.2f} | "
        + " | ".join(f"{acc.get(k, float('nan')):.2f}" for k in kinds)
        + " |"
    )
display(Markdown("\n".join(table)))

# %% [markdown]
# The table gives the share of held-out instructions whose greedy response the checker accepts, for
# each kind, after the same number of steps. Training on the prompt as well spends part of every
# step on predicting the user's text — random letters and numbers that cannot be predicted — instead
# of the answers; compare the first two rows kind by kind. The third row trains LoRA (and the new
# special-token rows) instead of every weight, with the same loop (`make_trainable` is what the
# `finetune` command uses). One seed each: a difference of a few points is within the noise.
#
# Here are a few of the fully fine-tuned, response-only model's answers:

# %%
from aigc_book.tasks.sft import generate_responses

shown = sft_val[:8]
for item, response in zip(shown, generate_responses(chat_model, chat_tok, shown)):
    verdict = "right" if instructions.check(item, response) else f"wrong (expected {item.answer!r})"
    print(f"{item.prompt!r:<24} -> {response!r:<10} {verdict}")

# %% [markdown]
# ## In-context learning and induction heads
#
# *Can a model learn from examples in its prompt, without any change to its weights — and how?*
#
# GPT-3's paper (Brown et al. 2020, §2) called it **few-shot** (or *in-context*) learning: write $K$
# solved examples of a task into the prompt, then the query, and let the model continue. No weight
# changes. The source article 001 builds much on this ("ChatGPT as the new operating system" of
# human–computer interaction, programmed in prompts). What {term}`in-context learning` does in a
# Transformer is partly understood. Olsson et al. (2022) found **induction heads**: attention heads
# that, at a token `A`, look back for an earlier `A` and copy the token `B` that followed it —
# *after A came B last time, so predict B*. They form suddenly during training, at the same time as
# the model's ability to use its context improves, and need two layers: a first-layer head that
# writes "my previous token was A" into each position (a **previous-token head**), and a
# second-layer head that matches on it (Elhage et al. 2021).
#
# The cleanest place to see them: random token sequences in which a random segment is repeated later
# at a random distance. Outside the copy nothing can be predicted (the loss stays at $\ln V$);
# inside it, every token but the first can be predicted by induction. Two attention-only
# Transformers (no MLPs), with one and with two layers, are trained on such data; every few steps
# the cell measures the loss on the segment's first occurrence and on its copy, and each head's
# **prefix-matching score** (the attention a token of the copy pays to the token right after its
# earlier occurrence) and **previous-token score**. The distance between the segment and its copy
# is random: with a fixed distance (say, "the second half repeats the first") a one-layer model
# can solve the task with a head that attends a fixed number of positions back, no induction needed.

# %%
from aigc_book.incontext.attention_only import AttentionOnlyConfig, AttentionOnlyTransformer
from aigc_book.incontext.induction import phase_change_step, train_induction

INDUCTION = dict(
    vocab_size=32, block_size=32, n_head=4, n_embd=64
)  # LayerNorm and rotary positions by default
logs = {}
for n_layer in (1, 2):
    torch.manual_seed(0)
    model = AttentionOnlyTransformer(AttentionOnlyConfig(n_layer=n_layer, **INDUCTION)).to(device)
    logs[n_layer] = train_induction(
        model, steps=settings.induction_iters, seq_len=32, segment_len=12, seed=0
    )
    log = logs[n_layer]
    print(
        f"{n_layer} layer(s), {log.seconds:.0f} s: loss on the copy "
        f"{log.repeat_loss[-1]:.2f} nats, on its first occurrence {log.first_loss[-1]:.2f} "
        f"(ln V = {math.log(INDUCTION['vocab_size']):.2f})"
    )

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for n_layer, log in logs.items():
    axes[0].plot(log.steps, log.repeat_loss, label=f"{n_layer} layer(s): copy")
    axes[0].plot(log.steps, log.first_loss, "--", label=f"{n_layer} layer(s): first occurrence")
    best = log.prefix_matching.flatten(1).max(1).values  # (n_evals,) the best head's score
    axes[1].plot(log.steps, best, label=f"{n_layer} layer(s)")
axes[0].set(
    title="Loss on repeated random tokens", xlabel="training step", ylabel="loss (nats/token)"
)
axes[1].set(title="Strongest prefix-matching head", xlabel="training step", ylabel="mean attention")
axes[0].legend(fontsize=8)
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The rendered summary below reads the curves: when the two-layer model's loss on the copy fell
# below half its loss on the first occurrence, how strongly its best head attends to the token that
# induction predicts, and what the one-layer model managed.

# %%
two, one = logs[2], logs[1]
step2, step1 = phase_change_step(two), phase_change_step(one)
pm2, pt2 = two.prefix_matching[-1], two.previous_token[-1]  # (n_layer, n_head) at the end
layer, head = divmod(int(pm2.argmax()), pm2.size(1))
display(
    Markdown(
        "The two-layer model's loss on the copy fell below half its loss "
        f"on the first occurrence at step {step2}; the one-layer model's "
        f"{'never did' if step1 is None else f'did at step {step1}'} (its copy loss ended "
        f"at {one.repeat_loss[-1]:.2f} nats against {two.repeat_loss[-1]:.2f}). The strongest "
        f"prefix-matching head of the two-layer model is head {head} of layer {layer + 1}: "
        f"it puts {pm2[layer, head]:.2f} of its attention on the token that induction predicts. "
        f"The strongest previous-token head is in layer {int(pt2.max(1).values.argmax()) + 1}, "
        f"with a score of {float(pt2.max()):.2f}."
    )
)
assert step2 is not None and two.repeat_loss[-1] < 0.5 * two.first_loss[-1]
assert layer == 1, "the induction head should be in the second layer"
assert one.repeat_loss[-1] > two.repeat_loss[-1] + 0.5

# %% [markdown]
# Now {term}`few-shot prompting` itself. A small GPT is pretrained on documents in which every entry applies
# one rule to a letter from a to h — `copy` it, write it in `upper` case, or write its `position` in
# the alphabet (a=1, b=2, ...) — written as `input=output;`, with the rule chosen at random per
# document and never named. To continue such a document correctly, the model
# must infer the rule from the lines above: in-context learning is the only way to lower the loss.
# Afterwards we prompt it with $K$ demonstrations of one rule on fresh words, then a new word, and
# check its completion (`aigc_book.incontext.few_shot`, following Brown et al.'s protocol: the
# demonstrations are drawn at random from a pool that excludes the query).

# %%
from aigc_book.incontext.few_shot import few_shot_accuracy
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.training.objectives import causal_lm_batch

LETTERS = "abcdefgh"
RULES = {
    "copy": LETTERS,
    "upper": LETTERS.upper(),
    "position": "12345678",
}  # what each letter becomes
rng = np.random.default_rng(8)


def apply(rule: str, letter: str) -> str:
    return RULES[rule][LETTERS.index(letter)]


def document(rule: str) -> str:
    return "".join(f"{c}={apply(rule, c)};" for c in rng.choice(list(LETTERS), size=12)) + "\n"


icl_text = "".join(document(str(rng.choice(list(RULES)))) for _ in range(settings.icl_docs))
icl_tok = CharTokenizer.train(icl_text)
icl_data = torch.tensor(icl_tok.encode(icl_text), device=device)
torch.manual_seed(0)
icl_gpt = GPT(
    TransformerConfig(
        vocab_size=icl_tok.vocab_size,
        block_size=64,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        n_embd=settings.n_embd,
    )
).to(device)
Trainer(
    icl_gpt,
    lambda split, g: causal_lm_batch(icl_data, settings.batch, 64, g),
    causal_lm_loss,
    TrainConfig(steps=settings.icl_iters, lr=3e-3, warmup_steps=30, progress=False),
    device=device,
).train()
icl_gpt.eval()
print("a training document:", icl_text.splitlines()[0])
shots = (0, 1, 2, 4)
few_shot = {}
for rule in RULES:
    pairs = [
        (c, apply(rule, c)) for c in LETTERS
    ]  # each query's demonstrations are the other letters
    few_shot[rule] = few_shot_accuracy(
        icl_gpt, icl_tok, pairs, pairs, shots=shots, template="{input}={output};"
    )
print(
    "a 2-shot prompt:",
    repr(few_shot["upper"].prompts[2][0]),
    "->",
    repr(few_shot["upper"].completions[2][0]),
)

fig, ax = plt.subplots(figsize=(6, 3.5))
for rule, result in few_shot.items():
    ax.plot(shots, result.accuracy, "o-", label=rule)
ax.set(
    title="Few-shot accuracy of a small GPT",
    xlabel="demonstrations in the prompt (K)",
    ylabel="exact-match accuracy",
    ylim=(0, 1.05),
    xticks=shots,
)
ax.legend()
plt.show()
mean_acc = {
    k: float(np.mean([r.accuracy[i] for r in few_shot.values()])) for i, k in enumerate(shots)
}
display(
    Markdown(
        f"With no demonstration the model must guess the rule: mean accuracy {mean_acc[0]:.2f} "
        f"over the three rules. With one demonstration it is {mean_acc[1]:.2f}, "
        f"with two {mean_acc[2]:.2f}, with four {mean_acc[4]:.2f} — and no weight changed. "
        "That is what source article 001 means by few-shot learning, and the sober reading of it: "
        "the model learned, in pretraining, that documents stick to one rule, and uses "
        "the prompt to tell which."
    )
)
assert mean_acc[4] > mean_acc[0] + 0.2

# %% [markdown]
# ## Decoding
#
# *Given a model's next-token scores, how do you turn them into text?*
#
# A language model gives scores (logits) $z_v$ for every next token $v$. Decoding chooses:
#
# * **greedy**: the arg-max, every step. Deterministic, and prone to repeating itself.
# * **sampling**: draw from $\mathrm{softmax}(z / \tau)$. The **temperature** $\tau$ sharpens
#   ($\tau < 1$) or flattens ($\tau > 1$) the distribution.
# * **top-k** keeps the $k$ highest scores (Fan et al. 2018); **top-p** (nucleus) keeps the smallest
#   set of top tokens whose probability reaches $p$ (Holtzman et al. 2020); **min-p** keeps tokens
#   with $p_v \ge p_\text{min} \cdot \max_u p_u$ (Nguyen et al. 2024). The rest get $-\infty$.
# * **repetition penalty** (Keskar et al. 2019): a token already in the text has its score divided
#   by $\theta$ if positive, multiplied by $\theta$ if negative.
# * **beam search** keeps the `num_beams` best partial sequences by total log-probability and
#   returns the best finished one, ranked by $\sum_t \log p_t / n^{\alpha}$ with $n$ the number of
#   generated tokens and $\alpha$ the `length_penalty`.
#
# `aigc_book.generation.generate` does all of these, with Hugging Face's argument names, on our KV
# cache (reordered as beams are chosen). As in `transformers`, the options form one frozen
# `GenerationConfig` (the same names and defaults, except that `top_k` means no limit until set), and
# keyword arguments to `generate` override it: `generate(model, ids, config, temperature=0.7)`, or
# `generate(model, ids, max_new_tokens=12, num_beams=3)` with no config at all. A bad value is refused
# when the config is made. The next cell checks each transformation against the
# matching `transformers` logits processor on the same scores, and our beam search against
# `transformers`' own `generate(num_beams=...)` on our base model converted to Hugging Face's GPT-2.

# %%
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from aigc_book.generation import (
    apply_repetition_penalty,
    apply_temperature,
    generate,
    min_p_filter,
    next_token_distribution,
    top_k_filter,
    top_p_filter,
)

g = torch.Generator().manual_seed(0)
scores = torch.randn(4, V, generator=g) * 3  # (B, V) logits
seen = torch.randint(0, V, (4, 10), generator=g)  # (B, 10) tokens already in each text
pairs = [
    (apply_temperature(scores, 0.7), TemperatureLogitsWarper(0.7)(seen, scores)),
    (top_k_filter(scores, 5), TopKLogitsWarper(5)(seen, scores)),
    (top_p_filter(scores, 0.9), TopPLogitsWarper(0.9)(seen, scores)),
    (min_p_filter(scores, 0.1), MinPLogitsWarper(0.1)(seen, scores)),
    (
        apply_repetition_penalty(scores, seen, 1.3),
        RepetitionPenaltyLogitsProcessor(1.3)(seen, scores),
    ),
]
for ours, theirs in pairs:
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
print(
    "temperature, top-k, top-p, min-p and repetition penalty equal transformers' processors exactly"
)

hf_model = to_hf_gpt2(copy.deepcopy(base).cpu()).eval()
prompt = torch.tensor([lang.encode("^x(ab[")])
for beams, alpha in [(3, 1.0), (4, 0.5)]:
    ours = generate(
        base.cpu(),
        prompt,
        max_new_tokens=12,
        num_beams=beams,
        length_penalty=alpha,
        num_return_sequences=beams,
    )
    theirs = hf_model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=12,
        num_beams=beams,
        length_penalty=alpha,
        do_sample=False,
        num_return_sequences=beams,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert torch.equal(ours.sequences, theirs.sequences)
    torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores, rtol=1e-4, atol=1e-4)
    print(
        f"beam search, {beams} beams, length penalty {alpha}: the same {beams} sequences and "
        f"scores as transformers; best: {lang.decode(ours.sequences[0])}"
    )
base.to(device)

# %% [markdown]
# What each setting does to one next-token distribution: the base model's, after the prefix `^x(ab[`.
# (In Jupyter, the widget below lets you turn the knobs; the figure after it shows fixed settings.)

# %%
with torch.no_grad():
    next_scores = (
        base(torch.tensor([lang.encode("^x(ab[")], device=device)).logits[0, -1].cpu()
    )  # (V,)
order = next_scores.argsort(descending=True)
symbols = [lang.itos[i] for i in order]


def draw(ax, temperature=1.0, top_k=None, top_p=None, min_p=None):
    probs = next_token_distribution(
        next_scores, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p
    )
    ax.bar(range(V), probs[order].numpy())
    ax.set_xticks(range(V), symbols)
    ax.set_ylim(0, 1)
    ax.set_xlabel("next symbol (most likely first)")
    ax.set_ylabel("probability")
    kept = int((probs > 0).sum())
    ax.set_title(
        f"T={temperature:g}, top_k={top_k}, top_p={top_p}, min_p={min_p}: {kept} symbols kept"
    )


# %% tags=["remove-output"]
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets


def show(temperature, top_k, top_p, min_p):
    fig, ax = plt.subplots(figsize=(9, 3))
    draw(ax, temperature, top_k or None, top_p if top_p < 1 else None, min_p or None)
    plt.show()


widgets.interact(
    show,
    temperature=widgets.FloatSlider(value=1.0, min=0.1, max=3.0, step=0.1),
    top_k=widgets.IntSlider(value=0, min=0, max=V, description="top_k (0: off)"),
    top_p=widgets.FloatSlider(
        value=1.0, min=0.05, max=1.0, step=0.05, description="top_p (1: off)"
    ),
    min_p=widgets.FloatSlider(value=0.0, min=0.0, max=0.5, step=0.01, description="min_p (0: off)"),
)

# %%
fig, axes = plt.subplots(2, 2, figsize=(11, 6), sharey=True)
for ax, kw in zip(
    axes.flat, [dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_p=0.8)]
):
    draw(ax, **kw)
fig.suptitle("One next-token distribution, reshaped by decoding settings")
fig.tight_layout()
plt.show()

# %% [markdown]
# Low temperature concentrates the probability on the top symbols, high temperature spreads it over
# symbols the model thinks unlikely, and top-p cuts the tail off entirely.
#
# Because the language's true probabilities are known, the effect of each setting on whole
# generated texts can be measured exactly: the share of generated sequences that are **well
# formed** (every bracket closed by its own type, every word agreeing), how **diverse** they are
# (distinct sequences among 200), and their true log-probability per token under the language.

# %%
bos = torch.full((200, 1), lang.bos_id, dtype=torch.long, device=device)
decoding = {
    "greedy": dict(do_sample=False),
    "greedy + repetition penalty 1.5": dict(do_sample=False, repetition_penalty=1.5),
    "sampling, T=1": dict(do_sample=True),
    "sampling, T=0.5": dict(do_sample=True, temperature=0.5),
    "sampling, T=2": dict(do_sample=True, temperature=2.0),
    "top-k 3": dict(do_sample=True, top_k=3),
    "top-p 0.9": dict(do_sample=True, top_p=0.9),
    "min-p 0.1": dict(do_sample=True, min_p=0.1),
    "beam search, 4 beams": dict(num_beams=4),
}
table = [
    "| decoding | well formed | distinct of 200 | true log-prob per token | example |",
    "|---|---:|---:|---:|---|",
]
quality = {}
for name, kw in decoding.items():
    out = generate(
        base, bos, max_new_tokens=32, generator=torch.Generator(device=device).manual_seed(0), **kw
    )
    seqs = out.sequences.cpu()
    formed = np.mean([lang.is_well_formed(s) for s in seqs])
    distinct = len({tuple(s.tolist()) for s in seqs})
    logp = np.nanmean([lang.log_prob(s) / 32 if lang.is_well_formed(s) else np.nan for s in seqs])
    quality[name] = dict(formed=formed, distinct=distinct, text=lang.decode(seqs[0]))
    table.append(f"| {name} | {formed:.2f} | {distinct} | {logp:.2f} | `{lang.decode(seqs[0])}` |")
display(Markdown("\n".join(table)))
assert (
    quality["greedy"]["distinct"] == 1
)  # greedy from one prompt: one text, however many times you ask
q = {name: v["formed"] for name, v in quality.items()}
greedy_symbols = sorted(set(quality["greedy"]["text"][1:]))
display(
    Markdown(
        "Greedy decoding gives one text for one prompt, and here it "
        f"uses only {len(greedy_symbols)} distinct symbol(s) after `^` "
        f"({', '.join(f'`{c}`' for c in greedy_symbols)}): the most likely next symbol is chosen "
        "again and again; the repetition penalty pushes it off the loop for a few symbols. "
        f"Sampling at $T=1$ gives 200 different texts, but only {q['sampling, T=1']:.0%} of them "
        f"follow every rule for 32 symbols: a model {base_loss - floor:.3f} nats per symbol above "
        "the floor still puts a little probability on impossible symbols, and over 32 draws "
        f"that adds up. A high temperature makes it worse ({q['sampling, T=2']:.0%} at $T=2$); "
        f"a low temperature ({q['sampling, T=0.5']:.0%} at $T=0.5$), top-k ({q['top-k 3']:.0%}), "
        f"top-p ({q['top-p 0.9']:.0%}) and min-p ({q['min-p 0.1']:.0%}) cut the unlikely tail and "
        "trade variety for staying on the likely path. Beam search, like greedy decoding, returns "
        f"{quality['beam search, 4 beams']['distinct']} text for the 200 identical prompts: "
        f"`{quality['beam search, 4 beams']['text']}`."
    )
)
assert q["sampling, T=2"] < q["sampling, T=1"] < q["sampling, T=0.5"]
assert min(q["top-p 0.9"], q["min-p 0.1"], q["top-k 3"]) > q["sampling, T=1"]

# %% [markdown]
# (The log-probability column averages over the texts that follow the rules; any other text has
# probability zero under the language.)
#
# **Prompting an English model in Chinese.** The source article generates with GPT-2 fetched from a
# model hub, prompting it with a Chinese sentence. Offline, the download fails; and even online,
# GPT-2 was trained on English web pages — non-English pages were deliberately filtered out
# (Radford et al. 2019, §3.7) — and its byte-level tokenizer learned its merges from that text, while
# each Chinese character is 3 bytes in UTF-8. A byte-level BPE trained on English text shows the
# effect:

# %%
from aigc_book.text.bpe import train_hf_bpe
from aigc_book.text.corpora import python_docs_text

english_bpe = train_hf_bpe(python_docs_text(), vocab_size=2_000)
for text in [
    "Write an article about artificial intelligence",
    "写一篇关于人工智能的文章",
]:  # the article's prompt, and in English
    n_tokens = len(english_bpe.encode(text).ids)
    print(
        f"{text!r}: {len(text)} characters, {len(text.encode('utf-8'))} UTF-8 bytes, "
        f"{n_tokens} tokens"
    )
english, chinese = "Write an article about artificial intelligence", "写一篇关于人工智能的文章"
assert len(english_bpe.encode(english).ids) < len(english)  # merges: fewer tokens than characters
assert len(english_bpe.encode(chinese).ids) >= 2 * len(
    chinese
)  # at least two byte-tokens per character

# %% [markdown]
# The English sentence costs fewer tokens than it has characters; the Chinese one costs about one
# token per UTF-8 byte, three per character, each a fragment the English model has almost never
# seen. The same generation works offline with our own converted model — the beam search above ran
# `transformers`' `generate` on it, with no download.

# %% [markdown]
# ## Evaluation metrics
#
# *Which number should you report, and what can it not tell you?*
#
# * **{term}`Perplexity <perplexity>`** $= e^{\text{mean NLL}}$ measures how well a model predicts held-out text. It
#   needs the model's probabilities, depends on the tokenizer (per character and per BPE token are
#   not comparable), and says nothing about whether generated text is correct.
# * **Accuracy** counts exact answers. It is the right measure when a program can decide
#   correctness, as for every task in this chapter; it gives no credit for near misses.
# * **Exact match and F1** (SQuAD) compare a predicted answer with references after normalisation,
#   F1 with partial credit for shared words. Normalisation can hide errors (it deleted our brackets).
# * **BLEU** (Papineni et al. 2002) and **chrF** (Popović 2015) compare generated text with
#   references by overlapping word n-grams and character n-grams. They reward surface overlap, not
#   meaning: a correct answer worded differently scores low. The source article 004 names BLEU; it
#   was made for machine translation, where several references exist.
#
# The next cell computes each for the chapter's models, and checks BLEU against a hand computation
# of its pieces (modified n-gram precisions and the brevity penalty) and against `sacrebleu`.

# %%
from aigc_book.tasks import metrics

base_nll = lm_loss(base, val_seqs.to(device))
print(
    f"perplexity of the base model: {metrics.perplexity(base_nll):.3f} symbols "
    f"(the language's own: {math.exp(floor):.3f}); check: {math.exp(base_nll):.3f}"
)
assert abs(metrics.perplexity(base_nll) - math.exp(base_nll)) < 1e-9

reverse_items = [i for i in sft_val if i.kind == "reverse"][:50]
hypotheses = generate_responses(chat_model, chat_tok, reverse_items)
references = [i.answer for i in reverse_items]
exact = np.mean([h == r for h, r in zip(hypotheses, references)])
letters = (
    [" ".join(h) for h in hypotheses],
    [" ".join(r) for r in references],
)  # BLEU counts letters as words
print(
    f"{len(reverse_items)} reverse instructions: accuracy {exact:.2f}, "
    f"BLEU {metrics.bleu(*letters):.1f}, chrF {metrics.chrf(hypotheses, references):.1f}"
)

hyp, ref = "the cat sat on the mat today".split(), "the cat sat on a mat today".split()
precisions = [metrics.modified_precision(hyp, [ref], n) for n in (1, 2, 3, 4)]
assert precisions == [
    (6, 7),
    (4, 6),
    (2, 5),
    (1, 4),
]  # by hand: 'the' is clipped to the reference's one
assert (
    metrics.brevity_penalty(7, 7) == 1.0
    and abs(metrics.brevity_penalty(5, 7) - math.exp(1 - 7 / 5)) < 1e-12
)
by_hand = 100 * math.prod(m / t for m, t in precisions) ** (
    1 / 4
)  # geometric mean, brevity penalty 1
with_sacrebleu = metrics.bleu([" ".join(hyp)], [" ".join(ref)])
print(
    f"BLEU of {' '.join(hyp)!r} against {' '.join(ref)!r}: by hand {by_hand:.2f}, "
    f"sacrebleu {with_sacrebleu:.2f}"
)
assert abs(metrics.bleu_by_hand([hyp], [[ref]]) - by_hand) < 1e-9
assert abs(by_hand - with_sacrebleu) < 1e-6

# %% [markdown]
# ## Common misconceptions
#
# *Which claims about adapting and prompting models are wrong, and what is right instead?*
#
# ```{admonition} Common misconceptions, corrected
# :class: warning
#
# * **"LoRA cuts memory 10,000 times."** No. On GPT-3 175B it cut the *trainable parameters* about
#   10,000 times and the GPU memory about 3 times (Hu et al. 2021); this chapter's table shows why
#   memory falls less: activations and the frozen weights remain.
# * **"Extractive QA is trained with the answer's token ids."** No. The labels are *positions* in
#   the input, where the answer starts and ends; the source article's script passes token ids and
#   never gives the model the question (section "Extractive question answering").
# * **"Few-shot learning trains the model on the examples."** No weight changes. The examples are
#   part of the input; the model conditions on them, as the few-shot cell above showed.
# * **"Prompt tuning is as good as fine-tuning."** Only for large models (Lester et al. 2021); on
#   this chapter's small model it stayed at chance.
# * **"Beam search always gives better text than sampling."** It finds sequences of high
#   probability, which for open-ended text are often repetitive (Holtzman et al. 2020); the
#   decoding table above measures it on the bracket language.
# * **"An English model can be prompted in Chinese."** GPT-2 was trained on English web pages; a
#   byte-level tokenizer trained on English splits each Chinese character into byte pieces
#   (section "Decoding").
# ```

# %% [markdown]
# ## Summary
#
# * A pretrained model is adapted by training some of its parameters on the new task with the same
#   next-token loss: **full fine-tuning** trains all; **training the last layers**, **LoRA**
#   (a low-rank update $\frac{\alpha}{r}BA$, mergeable into $W$), **bottleneck adapters**,
#   **prefix tuning** (trained keys and values) and **prompt tuning** (trained input vectors) train
#   a small fraction. The comparison table measured what each costs and achieves on this model;
#   the small-prompt methods are known to need large models to match full fine-tuning (Lester et
#   al. 2021).
# * Classification can be written as next-token prediction of a label symbol, so every method
#   shares one loop.
# * Extractive QA predicts start and end **positions**, scored by exact match and F1.
# * Instruction following is SFT on conversations in a chat template with special tokens, with the
#   loss on the response only; the model learns to stop by predicting `<|end|>`.
# * A model can use examples in its context without any training; in small attention-only models
#   this ability appears suddenly, together with induction heads.
# * Decoding shapes the next-token distribution (temperature, top-k, top-p, min-p, repetition
#   penalty) or searches for a likely sequence (greedy, beam search); each changes what you get.

# %%
print(f"chapter run time: {time.perf_counter() - chapter_start:.0f} s on {device.type}")

# %% [markdown]
# ## Exercises
#
# These exercises are also a graded assignment, `assignments/04_adapting.py`: a teacher builds it
# with `python3 tools/book.py assignments` (see the teacher's page, `teaching.md`). Exercises
# marked *(autograded)* are checked by tests; those marked *(open)* are graded by hand. The
# assignment adapts a tiny base model, pretrained in seconds, with short seeded runs.
#
# 1. **LoRA's rank.** *(autograded)* Re-run the comparison with LoRA at `r = 1, 2, 8, 16`. Count the
#    trainable parameters by the formula $r(d_\text{in} + d_\text{out})$ per layer and check
#    `count_trainable`. Does accuracy grow with $r$? *Check:* the counts must match exactly.
# 2. **Merging.** *(autograded)* Merge a trained LoRA model with `merge_lora`, save it with
#    `save_pretrained`, load it as a plain `GPT` and check that its logits equal the unmerged
#    model's to 1e-5.
# 3. **A classification head instead of a label symbol.** *(autograded)* Train
#    `aigc_book.tasks.classification.SequenceClassifier` (a linear head on the last token's hidden
#    state) on `open_type` with the base model frozen (a *linear probe*). How close does it get to
#    full fine-tuning? *Check:* the probe trains $d \cdot K + K$ parameters.
# 4. **The loss mask.** *(autograded)* In the SFT cell, count how many targets per batch are not
#    −100 with and without `train_on_prompt`. *Check:* the difference equals the number of prompt
#    tokens after the first one.
# 5. **Beam search by hand.** *(autograded)* With `num_beams=2` and 3 new tokens, write out the
#    beams after each step from the model's log-probabilities, and check the result against
#    `generate`.
# 6. **Top-p by hand.** *(autograded)* For probabilities $(0.5, 0.3, 0.1, 0.1)$ and $p = 0.75$,
#    which tokens does top-p keep? *Check:*
#    `top_p_filter(torch.tensor([[0.5, 0.3, 0.1, 0.1]]).log(), 0.75)`.
# 7. **Induction heads.** *(autograded)* Train the one-layer attention-only model as long as the
#    two-layer one. Does its loss on the repeated half ever fall below its loss on the first half?
#
# ## Key terms
#
# | English | 中文 |
# |---|---|
# | {term}`fine-tuning` | 微调 |
# | {term}`full fine-tuning` | 全参数微调 |
# | {term}`parameter-efficient fine-tuning (PEFT)` | 参数高效微调 |
# | {term}`LoRA (low-rank adaptation)` | 低秩适配 |
# | {term}`adapter` | 适配器 |
# | {term}`prefix tuning` | 前缀微调 |
# | {term}`prompt tuning` | 提示微调 |
# | {term}`extractive question answering` | 抽取式问答 |
# | {term}`exact match <exact match (EM)>` | 精确匹配 |
# | {term}`supervised fine-tuning (SFT)` | 监督微调 |
# | {term}`chat template` | 对话模板 |
# | {term}`special token` | 特殊词元 |
# | {term}`in-context learning` | 上下文学习 |
# | {term}`few-shot prompting` | 少样本提示 |
# | {term}`induction head` | 归纳头 |
# | {term}`greedy decoding` | 贪心解码 |
# | {term}`beam search` | 束搜索 |
# | {term}`temperature` | 温度 |
# | {term}`top-k / top-p (nucleus) sampling` | top-k / top-p（核）采样 |
# | {term}`repetition penalty` | 重复惩罚 |
# | {term}`perplexity` | 困惑度 |
#
# ## References
#
# * {cite:t}`ch04-brown2020gpt3` (GPT-3).
# * {cite:t}`ch04-devlin2019bert` (§4.2: SQuAD fine-tuning).
# * {cite:t}`ch04-elhage2021circuits`.
# * {cite:t}`ch04-fan2018hierarchical` (top-k).
# * {cite:t}`ch04-hewitt2021initializing`.
# * {cite:t}`ch04-holtzman2020degeneration` (top-p).
# * {cite:t}`ch04-houlsby2019adapters` (adapters).
# * {cite:t}`ch04-hu2021lora` (LoRA).
# * {cite:t}`ch04-keskar2019ctrl` (repetition penalty).
# * {cite:t}`ch04-lester2021prompttuning` (prompt tuning).
# * {cite:t}`ch04-li2021prefix` (prefix tuning).
# * {cite:t}`ch04-nguyen2024minp` (min-p).
# * {cite:t}`ch04-olsson2022induction`.
# * {cite:t}`ch04-ouyang2022instructgpt` (InstructGPT).
# * {cite:t}`ch04-papineni2002bleu` (BLEU).
# * {cite:t}`ch04-popovic2015chrf` (chrF).
# * {cite:t}`ch04-radford2019gpt2` (GPT-2).
# * {cite:t}`ch04-raffel2020t5` (T5).
# * {cite:t}`ch04-rajpurkar2016squad` (SQuAD).
#
# ```{bibliography}
# :filter: docname in docnames
# :keyprefix: ch04-
# :labelprefix: 4.
# :style: unsrt
# ```
