# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 04_adapting
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # Assignment 4: Adapting a pretrained model
#
# These are the exercises of chapter 4. Read the chapter first, above all the sections "Fine-tuning
# the whole model", "LoRA", "Instruction following", "In-context learning and induction heads" and
# "Decoding". Everything is built from the `aigc_book` package. The chapter's base model trains for
# 600 steps; here the base model is *tiny* (one layer of width 32, pretrained for 100 steps on the
# bracket language: a few seconds on a CPU), the classification task has sequences of 16 tokens, and
# every run is short and seeded, so your numbers are the same each time you run the notebook, and
# close to the reference solution's. The short runs still show what the exercises ask about. Run
# the setup cells first. Check an answer with `grader.check("ex1")` (the cell is under each
# question); the checks you see are a part of the grading, more are run when the notebook is
# graded. The cells that ask for your reasoning are read by your teacher.

# %%
import copy
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from aigc_book.adaptation.freezing import count_trainable
from aigc_book.adaptation.lora import LoRALinear, apply_lora, merge_lora
from aigc_book.generation import generate, top_p_filter
from aigc_book.incontext.attention_only import AttentionOnlyConfig, AttentionOnlyTransformer
from aigc_book.incontext.induction import phase_change_step, repeated_tokens, train_induction
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.tasks import instructions
from aigc_book.tasks.classification import (
    SequenceClassifier,
    classification_accuracy,
    classification_loss,
    make_classification_data,
)
from aigc_book.tasks.sft import encode_sft, sft_batch
from aigc_book.text.chat_tokenizer import ChatTokenizer
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.evaluation import lm_loss
from aigc_book.training.objectives import causal_lm_loss, sequence_lm_batch
from aigc_book.training.trainer import TrainConfig, Trainer

torch.set_num_threads(1)  # tiny models run fastest on one thread, and bit for bit the same

T = 48  # tokens after BOS in every pretraining sequence (chapter 3's language and length)
lang = BracketLanguage()
V = lang.vocab_size
pretrain_seqs = lang.sample(3_000, T, seed=1)  # the chapter: 20,000
val_seqs = lang.sample(500, T, seed=2)
base_config = TransformerConfig(vocab_size=V, block_size=64, n_layer=1, n_head=4, n_embd=32)
torch.manual_seed(0)
base = GPT(base_config)  # the chapter: 2 layers of width 64, 600 steps of 32 sequences
Trainer(
    base,
    lambda split, g: sequence_lm_batch(pretrain_seqs, 16, g),
    causal_lm_loss,
    TrainConfig(steps=100, lr=1e-2, warmup_steps=10, eval_batches=1, progress=False),
    device="cpu",
).train()
base.eval().requires_grad_(False)  # the pretrained weights: every method starts from a copy
print(f"base GPT: {base.num_parameters():,} parameters, held-out {lm_loss(base, val_seqs):.3f}")

# The classification task of the chapter: which type of bracket is open innermost at the end?
cls_data = make_classification_data("open_type", n_per_class=300, length=16, seed=3)
K = len(cls_data.classes)
answer_ids = torch.tensor([lang.stoi[c] for c in "wxyz"[:K]])  # the label symbols of classes 0..3
IGNORE = -100


def label_batch(split: str, g: torch.Generator) -> dict:
    """16 sequences with one target each: the label's symbol after the last token."""
    batch = cls_data.batch(split, 16, g)
    targets = torch.full_like(batch["idx"], IGNORE)
    targets[:, -1] = answer_ids[batch["labels"]]
    return {"idx": batch["idx"], "targets": targets}


@torch.no_grad()
def label_accuracy(model) -> float:
    """Validation accuracy of the arg-max over the label symbols after the sequence."""
    x, y = cls_data.split("val")
    was_training = model.training
    model.eval()
    logits = model(x).logits[:, -1, answer_ids]  # (N, K)
    model.train(was_training)
    return (logits.argmax(-1) == y).float().mean().item()


def fine_tune(model, lr: float, iters: int = 60, seed: int = 0) -> Trainer:
    """Train the trainable parameters of `model` on the label task (the chapter: 200 steps)."""
    cfg = TrainConfig(
        steps=iters, lr=lr, warmup_steps=5, weight_decay=0.0, eval_batches=1, seed=seed,
        progress=False,
    )
    trainer = Trainer(model, label_batch, causal_lm_loss, cfg, device="cpu")
    trainer.train()
    return trainer


LORA_TARGETS = ("c_attn", "c_proj", "c_fc")  # the chapter's LoRA: every linear layer of the block
print(f"{cls_data.classes}: {len(cls_data.split('train')[1])} training sequences; "
      f"base model's accuracy {label_accuracy(base):.3f} (chance {1 / K:.2f})")

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# points: 3

# %% [markdown]
# **Exercise 1. LoRA's rank.** Re-run the comparison with LoRA at `r = 1, 2, 8, 16`. Count the
# trainable parameters by the formula $r(d_\text{in} + d_\text{out})$ per layer and check
# `count_trainable`. Does accuracy grow with $r$? *Check:* the counts must match exactly.
#
# For each rank `r` in `RANKS`: copy `base`, apply LoRA with `apply_lora(model,
# target_modules=LORA_TARGETS, r=r, alpha=16.0)` (the chapter's `alpha`), seed with
# `torch.manual_seed(0)` before applying, and fine-tune it with `fine_tune(model, lr=1e-2)` (60
# steps). Define `lora_models` (a dict rank → trained model), `by_formula` (rank → the sum of
# $r(d_\text{in} + d_\text{out})$ over the wrapped layers, read from the layers' shapes), `counted`
# (rank → `count_trainable(model).trainable`) and `lora_acc` (rank → `label_accuracy(model)`).

# %%
RANKS = (1, 2, 8, 16)

# %% [raw]
# # BEGIN SOLUTION

# %%
lora_models = ...  # SOLUTION
by_formula = ...  # SOLUTION
counted = ...  # SOLUTION
lora_acc = ...  # SOLUTION
# BEGIN SOLUTION
lora_models, by_formula, counted, lora_acc = {}, {}, {}, {}
for r in RANKS:
    model = copy.deepcopy(base)
    torch.manual_seed(0)
    wrapped = apply_lora(model, target_modules=LORA_TARGETS, r=r, alpha=16.0)
    by_formula[r] = sum(
        r * (layer.in_features + layer.out_features)
        for layer in (model.get_submodule(name).base_layer for name in wrapped)
    )
    counted[r] = count_trainable(model).trainable
    fine_tune(model, lr=1e-2)
    lora_models[r] = model
    lora_acc[r] = label_accuracy(model)
# END SOLUTION
for r in RANKS:
    print(f"r = {r:>2}: {by_formula[r]:>6,} by the formula, {counted[r]:>6,} counted; "
          f"accuracy {lora_acc[r]:.3f}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert set(by_formula) == set(counted) == set(lora_acc) == set(RANKS), "one entry per rank in RANKS"
assert all(by_formula[r] == counted[r] for r in RANKS), "the formula and count_trainable must agree"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# by hand from the base's linear layers: each Linear of the block gets A (r x in) and B (out x r)
_layers = [m for n, m in base.transformer.h.named_modules() if isinstance(m, torch.nn.Linear)]
for _r in RANKS:
    _expected = sum(_r * (m.weight.shape[0] + m.weight.shape[1]) for m in _layers)
    assert by_formula[_r] == _expected, f"by_formula[{_r}] should be {_expected:,}"
    _trainable = sum(p.numel() for p in lora_models[_r].parameters() if p.requires_grad)
    assert _trainable == _expected, f"the rank-{_r} model should train only its LoRA matrices"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_x, _y = cls_data.split("val")
for _r in RANKS:
    _m = lora_models[_r].eval()
    assert any(isinstance(m, LoRALinear) for m in _m.modules()), "lora_models holds LoRA models"
    assert _m.transformer.h[0].attn.c_attn.r == _r, f"lora_models[{_r}] should have rank {_r}"
    with torch.no_grad():
        _pred = _m(_x).logits[:, -1][:, answer_ids].argmax(-1)
    assert abs(lora_acc[_r] - (_pred == _y).double().mean().item()) < 1e-6, (
        f"lora_acc[{_r}] is not the model's validation accuracy"
    )
assert max(lora_acc.values()) > 1 / K + 0.1, "LoRA should learn something at some rank"

# %% [raw]
# # END TESTS

# %% [markdown]
# *Does accuracy grow with $r$? Your reading (for your teacher):* _Type your answer here, replacing
# this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# The counts: each wrapped layer adds $r(d_\text{in}+d_\text{out})$ parameters, so the total is
# linear in $r$ (here 512 per unit of rank: $32{+}96$, $32{+}32$, $32{+}128$ and $128{+}32$ for
# the four linear layers of the one block), and `count_trainable` gives exactly the same numbers.
#
# Accuracy did *not* grow with $r$ in our run: 0.43, 0.34, 0.28 and 0.24 for $r$ = 1, 2, 8 and 16
# after 60 steps (chance is 0.25). With `alpha` fixed at 16 the update is scaled by $\alpha/r$:
# rank 1 gets a factor 16, rank 16 a factor 1. Adam moves each entry of $B$ by about the learning
# rate per step whatever its gradient, so the change of $BA$ grows only like $\sqrt{r}$ (a sum of
# $r$ terms of random sign), and the scaled update $\frac{\alpha}{r}BA$ like $\alpha/\sqrt{r}$:
# the larger rank learns *slower* here, and in a short run speed is what counts (rank-stabilised
# LoRA, Kalajdzievski 2023, scales by $\alpha/\sqrt{r}$ for this reason). The extra capacity of a
# larger rank is not needed: one good direction per layer can carry this task. A good answer reads
# the table, names the $\alpha/r$ scaling as a confound (to compare capacities, keep $\alpha/r$
# fixed or tune the learning rate per rank), and notes that one seed of 60 steps leaves a few points
# of noise (a standard error of about $\sqrt{0.25/300} \approx 3$ points at 300 validation
# sequences). Hu et al. (2021, §7.2) found small ranks sufficient for many tasks.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex2
# points: 3

# %% [markdown]
# **Exercise 2. Merging.** Merge a trained LoRA model with `merge_lora`, save it with
# `save_pretrained`, load it as a plain `GPT` and check that its logits equal the unmerged model's
# to 1e-5.
#
# `lora_model` below is a copy of `base` with LoRA of rank 8 on `LORA_TARGETS`, fine-tuned for 20
# steps. Define `merged` (`merge_lora` of a deep copy of `lora_model`: merging changes the model in
# place), save it into a fresh temporary directory, define `loaded` (`GPT.from_pretrained` of that
# directory) and `max_diff`, the largest absolute difference between the logits of `loaded` and
# of `lora_model` on `x_check` (a float).

# %%
lora_model = copy.deepcopy(base)
torch.manual_seed(0)
apply_lora(lora_model, target_modules=LORA_TARGETS, r=8, alpha=16.0)
fine_tune(lora_model, lr=1e-2, iters=20)
lora_model.eval()
x_check = cls_data.split("val")[0][:64]

# %% [raw]
# # BEGIN SOLUTION

# %%
merged = ...  # SOLUTION
loaded = ...  # SOLUTION
max_diff = ...  # SOLUTION
# BEGIN SOLUTION
merged = merge_lora(copy.deepcopy(lora_model))
directory = Path(tempfile.mkdtemp()) / "merged"
merged.save_pretrained(directory)
loaded = GPT.from_pretrained(directory)
with torch.no_grad():
    max_diff = (loaded(x_check).logits - lora_model(x_check).logits).abs().max().item()
# END SOLUTION
print(f"{type(loaded).__name__} loaded from disk; largest logit difference {max_diff:.1e}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert type(loaded) is GPT, "loaded should be a plain GPT, loaded with GPT.from_pretrained"
assert not any(isinstance(m, LoRALinear) for m in loaded.modules()), "loaded: no LoRA layers"
assert isinstance(max_diff, float) and max_diff < 1e-5, "the merged logits should agree to 1e-5"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_x = cls_data.split("train")[0][:32]
with torch.no_grad():
    _diff = (loaded.eval()(_x).logits - lora_model.eval()(_x).logits).abs().max().item()
assert _diff < 1e-5, f"on other sequences the loaded model's logits differ by {_diff:.1e}"
assert any(isinstance(m, LoRALinear) for m in lora_model.modules()), (
    "lora_model itself must keep its LoRA layers: merge a deep copy"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
with torch.no_grad():
    _change = (loaded(x_check).logits - base(x_check).logits).abs().max().item()
assert _change > 1e-3, "the merged weights should differ from the base model's (LoRA was trained)"
_w = loaded.transformer.h[0].attn.c_attn.weight
_l = lora_model.transformer.h[0].attn.c_attn
_by_hand = _l.base_layer.weight + _l.scaling * _l.lora_B.weight @ _l.lora_A.weight
assert torch.allclose(_w, _by_hand, atol=1e-6), "the merged c_attn weight: W + (alpha/r) B A"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex3
# points: 4

# %% [markdown]
# **Exercise 3. A classification head instead of a label symbol.** Train
# `aigc_book.tasks.classification.SequenceClassifier` (a linear head on the last token's hidden
# state) on `open_type` with the base model frozen (a *linear probe*). How close does it get to
# full fine-tuning? *Check:* the probe trains $d \cdot K + K$ parameters.
#
# Define `probe`: `SequenceClassifier(copy.deepcopy(base), K)` with its backbone frozen, seeded
# with `torch.manual_seed(0)` before it is built, and trained for 60 steps with a `Trainer`
# (`cls_data.batch(split, 16, g)` as the batch function, `classification_loss` as the loss,
# `TrainConfig(steps=60, lr=1e-2, warmup_steps=5, weight_decay=0.0, progress=False)`). Define
# `probe_trainable` (`count_trainable(probe).trainable`) and `probe_acc` (its validation accuracy,
# `classification_accuracy` on `cls_data.split("val")`). For the comparison define `full`, a copy
# of `base` with every weight trainable (`.requires_grad_(True)`), trained with `fine_tune(full,
# lr=3e-3)` (the chapter's rate, 60 steps), and `full_acc = label_accuracy(full)`.

# %% [raw]
# # BEGIN SOLUTION

# %%
probe = ...  # SOLUTION
probe_trainable = ...  # SOLUTION
probe_acc = ...  # SOLUTION
full = ...  # SOLUTION
full_acc = ...  # SOLUTION
# BEGIN SOLUTION
torch.manual_seed(0)
probe = SequenceClassifier(copy.deepcopy(base), K)
probe.backbone.requires_grad_(False)
probe_trainable = count_trainable(probe).trainable
Trainer(
    probe,
    lambda split, g: cls_data.batch(split, 16, g),
    classification_loss,
    TrainConfig(steps=60, lr=1e-2, warmup_steps=5, weight_decay=0.0, progress=False),
    device="cpu",
).train()
probe_acc = classification_accuracy(probe, *cls_data.split("val"))

full = copy.deepcopy(base).requires_grad_(True).train()
fine_tune(full, lr=3e-3)
full_acc = label_accuracy(full)
# END SOLUTION
print(f"linear probe: {probe_trainable} trained parameters, accuracy {probe_acc:.3f}; "
      f"full fine-tuning: {count_trainable(full).trainable:,}, accuracy {full_acc:.3f}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_d = base.config.n_embd
assert probe_trainable == _d * K + K, f"the probe should train d*K + K = {_d * K + K} parameters"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_names = {n for n, p in probe.named_parameters() if p.requires_grad}
assert _names == {"head.weight", "head.bias"}, f"only the head should train, not all of {_names}"
for (_n, _p), _p0 in zip(probe.backbone.named_parameters(), base.parameters()):
    assert torch.equal(_p, _p0), f"the frozen backbone changed: {_n}"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_x, _y = cls_data.split("val")
with torch.no_grad():
    _h = base.transformer(_x).last_hidden_state[:, -1]  # (N, d): the last token's state
    _pred = (_h @ probe.head.weight.T + probe.head.bias).argmax(-1)
assert abs(probe_acc - (_pred == _y).double().mean().item()) < 1e-6, (
    "probe_acc is not the probe's validation accuracy"
)
assert probe_acc > 0.6, "a linear probe on the pretrained base should be far above chance (0.25)"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert count_trainable(full).trainable == count_trainable(full).total, "full: every weight trains"
_x, _y = cls_data.split("val")
with torch.no_grad():
    _pred = full.eval()(_x).logits[:, -1][:, answer_ids].argmax(-1)
assert abs(full_acc - (_pred == _y).double().mean().item()) < 1e-6, (
    "full_acc is not the fully fine-tuned model's validation accuracy"
)

# %% [raw]
# # END TESTS

# %% [markdown]
# *How close does the probe get to full fine-tuning, and why (for your teacher)?* _Type your answer
# here, replacing this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# In our run the probe, with 132 trained parameters ($32 \cdot 4 + 4$), reached 0.97 validation
# accuracy, better than full fine-tuning of all 15,744 weights after the same 60 steps (0.85).
# That is the point of the chapter's remark that "the information is inside the model":
# to predict the next token the base model must already know which bracket is open innermost (the
# right closer and the agreeing words depend on it), so the last position's hidden state encodes
# it, and a linear read-out suffices. Full fine-tuning must first learn to say it with a new
# symbol, through the LM head shared with the embeddings, and it moves every weight, so in a short
# run it can be slower; with more steps the chapter's full fine-tuning reached 0.93. A probe is
# also a measurement: its accuracy bounds how linearly decodable the property is from the frozen
# representation.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex4
# points: 2

# %% [markdown]
# **Exercise 4. The loss mask.** In the SFT cell, count how many targets per batch are not −100
# with and without `train_on_prompt`. *Check:* the difference equals the number of prompt tokens
# after the first one.
#
# `sft_data` below encodes 200 instructions with the chat template. Draw two batches of 32 rows with
# `sft_batch(sft_data, 32, torch.Generator().manual_seed(0), train_on_prompt=...)` (the same seed,
# so the same rows), one with `train_on_prompt=False` and one with `True`. Define
# `n_response_only` and `n_with_prompt` (the targets that are not −100 in each), `difference`
# (their difference) and `prompt_after_first` (the number of prompt tokens after the first one,
# summed over the batch's rows; the batch's `prompt_mask` tells which tokens are the prompt).

# %%
chat_tok = ChatTokenizer(instructions.CHARS)
sft_pairs = instructions.sample_instructions(200, seed=6)
sft_data = encode_sft(chat_tok, sft_pairs)

# %% [raw]
# # BEGIN SOLUTION

# %%
n_response_only = ...  # SOLUTION
n_with_prompt = ...  # SOLUTION
difference = ...  # SOLUTION
prompt_after_first = ...  # SOLUTION
# BEGIN SOLUTION
response_only = sft_batch(sft_data, 32, torch.Generator().manual_seed(0), train_on_prompt=False)
with_prompt = sft_batch(sft_data, 32, torch.Generator().manual_seed(0), train_on_prompt=True)
n_response_only = int((response_only["targets"] != IGNORE).sum())
n_with_prompt = int((with_prompt["targets"] != IGNORE).sum())
difference = n_with_prompt - n_response_only
prompt_after_first = int((response_only["prompt_mask"].sum(1) - 1).sum())
# END SOLUTION
print(f"{n_response_only} targets on the responses, {n_with_prompt} with the prompts: "
      f"{difference} more; prompt tokens after the first: {prompt_after_first}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert difference == n_with_prompt - n_response_only == prompt_after_first, (
    "the difference should equal the prompt tokens after the first one"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the same rows, and each row's prompt length from the chat template itself
_rows = torch.randint(len(sft_data), (32,), generator=torch.Generator().manual_seed(0))
_n_prompt = [chat_tok.encode_chat(sft_pairs[i].prompt, sft_pairs[i].answer)[1] for i in _rows]
_n_all = [len(chat_tok.encode_chat(sft_pairs[i].prompt, sft_pairs[i].answer)[0]) for i in _rows]
assert prompt_after_first == sum(n - 1 for n in _n_prompt), "prompt_after_first is wrong"
assert n_with_prompt == sum(n - 1 for n in _n_all), (
    "with train_on_prompt every real token but the first is a target"
)
assert n_response_only == sum(a - p for a, p in zip(_n_all, _n_prompt)), (
    "without it, only the response tokens (and the closing <|end|>) are targets"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex5
# points: 3

# %% [markdown]
# **Exercise 5. Beam search by hand.** With `num_beams=2` and 3 new tokens, write out the beams
# after each step from the model's log-probabilities, and check the result against `generate`.
#
# Start from `prompt` (the ids of `^x(ab[`) and `base`. At each step, extend every beam by every
# token, score each extension by the beam's summed log-probability plus the new token's
# log-probability (`log_softmax` of `base`'s logits at the beam's last position), and keep the two
# best. (At the first step there is one beam: the prompt.) Define `beams`, a list of 3 lists (one
# per step), each holding the two kept beams best first as pairs `(tokens, score)`: `tokens` a
# tuple of the new token ids so far, `score` the summed log-probability (a float). Then define
# `best` (the ids of the prompt and the best three new tokens, a list of ints) and compare it
# with `generate(base, prompt, max_new_tokens=3, num_beams=2)`. Every beam here has 3 new tokens,
# so the length penalty divides every score by the same 3 and does not change the order.

# %%
prompt = torch.tensor([lang.encode("^x(ab[")])  # (1, 6)

# %% [raw]
# # BEGIN SOLUTION

# %%
beams = ...  # SOLUTION
best = ...  # SOLUTION
# BEGIN SOLUTION
beams, running = [], [((), 0.0)]
with torch.no_grad():
    for _ in range(3):
        candidates = []
        for tokens, score in running:
            ids = torch.cat([prompt[0], torch.tensor(tokens, dtype=torch.long)])[None]
            log_p = base(ids).logits[0, -1].double().log_softmax(-1)  # (V,)
            candidates += [(tokens + (v,), score + log_p[v].item()) for v in range(V)]
        running = sorted(candidates, key=lambda c: -c[1])[:2]
        beams.append(running)
best = prompt[0].tolist() + list(beams[-1][0][0])
# END SOLUTION
for step, kept in enumerate(beams, start=1):
    print(f"step {step}: " + "   ".join(f"{lang.decode(t)!r} {s:.3f}" for t, s in kept))
out = generate(base, prompt, max_new_tokens=3, num_beams=2, num_return_sequences=2)
print("generate:", [lang.decode(s) for s in out.sequences], out.sequences_scores.tolist())

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_out = generate(base, prompt, max_new_tokens=3, num_beams=2)
assert best == _out.sequences[0].tolist(), f"best should be generate's {_out.sequences[0].tolist()}"
assert len(beams) == 3 and all(len(k) == 2 for k in beams), "beams: 3 steps of 2 beams each"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_out = generate(base, prompt, max_new_tokens=3, num_beams=2, num_return_sequences=2)
for (_t, _s), _seq, _score in zip(beams[-1], _out.sequences, _out.sequences_scores):
    assert list(_t) == _seq[prompt.size(1) :].tolist(), "the final two beams should be generate's"
    assert abs(_s / 3 - _score.item()) < 1e-4, "generate's score is the summed log-probability / 3"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _step, _kept in enumerate(beams, start=1):
    for _t, _s in _kept:
        assert len(_t) == _step, f"after step {_step} every beam has {_step} new tokens"
        _ids = torch.cat([prompt[0], torch.tensor(_t)])[None]
        with torch.no_grad():
            _lp = base(_ids[:, :-1]).logits[0].double().log_softmax(-1)  # (L - 1, V)
        _sum = sum(_lp[prompt.size(1) - 1 + i, tok].item() for i, tok in enumerate(_t))
        assert abs(_s - _sum) < 1e-4, f"a beam's score: its summed log-probability ({_sum:.4f})"
with torch.no_grad():
    _first = base(prompt).logits[0, -1].log_softmax(-1).topk(2).indices.tolist()
assert [t[0] for t, _ in beams[0]] == _first, "after step 1: the two most probable tokens"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex6
# points: 2

# %% [markdown]
# **Exercise 6. Top-p by hand.** For probabilities $(0.5, 0.3, 0.1, 0.1)$ and $p = 0.75$, which
# tokens does top-p keep? *Check:*
# `top_p_filter(torch.tensor([[0.5, 0.3, 0.1, 0.1]]).log(), 0.75)`.
#
# Define `kept`, a dict from each $p$ in `P_VALUES` (0.4, 0.75 and 0.95) to the sorted list of
# the token indices (0 to 3) that top-p keeps, worked out by hand from the definition (the
# smallest set of most probable tokens whose probabilities add up to at least $p$), and
# `filtered`, the output of the check above for $p = 0.75$.

# %%
P_VALUES = (0.4, 0.75, 0.95)
probs = [0.5, 0.3, 0.1, 0.1]

# %% [raw]
# # BEGIN SOLUTION

# %%
kept = ...  # SOLUTION
filtered = ...  # SOLUTION
# BEGIN SOLUTION
# 0.5 alone reaches 0.4; 0.5 + 0.3 = 0.8 reaches 0.75; 0.5 + 0.3 + 0.1 = 0.9 falls short of 0.95
kept = {0.4: [0], 0.75: [0, 1], 0.95: [0, 1, 2, 3]}
filtered = top_p_filter(torch.tensor([probs]).log(), 0.75)
# END SOLUTION
print(kept, filtered)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert kept[0.75] == [0, 1], "at p = 0.75, which tokens does the nucleus hold? 0.5 alone is < 0.75"
assert torch.equal(torch.isfinite(filtered[0]), torch.tensor([True, True, False, False])), (
    "filtered should be top_p_filter's output for p = 0.75"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _p in P_VALUES:
    _cum, _keep = 0.0, []
    for _i in sorted(range(4), key=lambda i: -probs[i]):
        if _cum >= _p - 1e-12:
            break
        _keep.append(_i)
        _cum += probs[_i]
    _lib = torch.isfinite(top_p_filter(torch.tensor([probs], dtype=torch.float64).log(), _p)[0])
    assert kept[_p] == sorted(_keep) == _lib.nonzero().flatten().tolist(), f"kept[{_p}] is wrong"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex7
# points: 3

# %% [markdown]
# **Exercise 7. Induction heads.** Train the one-layer attention-only model as long as the
# two-layer one. Does its loss on the repeated half ever fall below its loss on the first half?
#
# The chapter trains both for 800 steps; here train only the one-layer model, for 200 steps (the
# two-layer model's sudden drop came at step 380 in the chapter's run, so a short run of it would
# show nothing yet). Build `one_layer = AttentionOnlyTransformer(AttentionOnlyConfig(n_layer=1,
# **INDUCTION))` after `torch.manual_seed(0)`, train it with `log = train_induction(one_layer,
# steps=200, seq_len=32, segment_len=12, eval_every=50, seed=0)`, and define `ever_below` (`True`
# if at some logged step its loss on the copy, `log.repeat_loss`, was below its loss on the first
# occurrence, `log.first_loss`, by more than 0.1 nats) and `ever_below_half` (`True` if it ever fell
# below half of it: the chapter's sign of an induction head, `phase_change_step`).

# %%
INDUCTION = dict(vocab_size=32, block_size=32, n_head=4, n_embd=64)  # the chapter's models

# %% [raw]
# # BEGIN SOLUTION

# %%
one_layer = ...  # SOLUTION
log = ...  # SOLUTION
ever_below = ...  # SOLUTION
ever_below_half = ...  # SOLUTION
# BEGIN SOLUTION
torch.manual_seed(0)
one_layer = AttentionOnlyTransformer(AttentionOnlyConfig(n_layer=1, **INDUCTION))
log = train_induction(one_layer, steps=200, seq_len=32, segment_len=12, eval_every=50, seed=0)
ever_below = any(r < f - 0.1 for r, f in zip(log.repeat_loss, log.first_loss))
ever_below_half = phase_change_step(log) is not None
# END SOLUTION
for step, first, repeat in zip(log.steps, log.first_loss, log.repeat_loss):
    print(f"step {step:>3}: first occurrence {first:.2f} nats, copy {repeat:.2f}")
print(f"ever below: {ever_below}; ever below half: {ever_below_half}; ln V = {math.log(32):.2f}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert one_layer.config.n_layer == 1 and log.steps[-1] == 200, "train the one-layer model 200 steps"
assert ever_below == any(r < f - 0.1 for r, f in zip(log.repeat_loss, log.first_loss)), (
    "ever_below should say whether the copy's loss fell more than 0.1 below the first occurrence's"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# a fresh batch, scored with PyTorch's cross-entropy, token by token
_b = repeated_tokens(256, seq_len=32, segment_len=12, vocab_size=32,
                     generator=torch.Generator().manual_seed(123))
with torch.no_grad():
    _logits, _ = one_layer.eval()(_b.tokens[:, :-1])
_loss = F.cross_entropy(_logits.transpose(1, 2), _b.tokens[:, 1:], reduction="none")  # (B, T-1)
_k = torch.arange(1, 12)
_first = _loss.gather(1, _b.source_start[:, None] + _k - 1).mean().item()
_copy = _loss.gather(1, _b.repeat_start[:, None] + _k - 1).mean().item()
assert ever_below is True and _copy < _first - 0.3, (
    "the one-layer model's loss on the copy should fall below its loss on the first occurrence"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert ever_below_half is (phase_change_step(log) is not None), "ever_below_half is wrong"
assert ever_below_half is False and min(
    r / f for r, f in zip(log.repeat_loss, log.first_loss)
) > 0.5, "a one-layer model should never get its copy loss below half: it has no induction head"

# %% [raw]
# # END TESTS

# %% [markdown]
# *Your reading (for your teacher): what can a single attention layer learn here, and why does it
# not get further?* _Type your answer here, replacing this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# Yes: its loss on the copy falls below its loss on the first occurrence (from $\ln 32 \approx 3.47$
# to about 2.8 nats after 200 steps, about 2.4 after the chapter's 800), while the loss on the first
# occurrence stays at $\ln V$. But it never falls below half of it, which the two-layer model does
# (0.30 nats after 800 steps in the chapter). A single attention layer can learn "a token that
# already appeared in the context is more likely to appear again": attend to earlier tokens and
# copy their identity into the prediction. Inside the copy the next token has always appeared
# earlier, so spreading the probability over the (roughly 15 to 20) distinct earlier tokens gives
# a loss near $\ln 16 \approx 2.8$ instead of $\ln 32$. To know *which* earlier token comes next,
# a head must attend to the token right *after* an earlier occurrence of the current token; its
# key must therefore carry "my previous token was A", which only a previous-token head in an
# earlier layer can write into that position (Elhage et al. 2021). With one layer, keys hold only
# each token's own identity and position, so that composition, the induction head, is impossible,
# however long it trains.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION
