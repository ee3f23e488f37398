# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 03_language_modeling
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # Assignment 3: Language modelling, and every pretraining objective on one backbone
#
# These are the exercises of chapter 3. Read the chapter first, above all the sections "A language
# with a known floor", "A baseline that counts", "How a model learns: from gradient descent to
# AdamW", "Causal language modelling: training a GPT" (with "The gap is the KL divergence") and
# "Five objectives on one corpus". Everything is built from the `aigc_book` package. The chapter's
# runs take minutes; here every model is *tiny* (one layer of width 32, trained for 100 steps of 16
# sequences: a few seconds on a CPU) and seeded, so your numbers are the same each time you run the
# notebook, and close to the reference solution's. The small runs still show the effects the
# exercises ask about; where one needs the chapter's long runs, the question says so. Run the setup
# cells first. Check an answer with `grader.check("ex1")` (the cell is under each question); the
# checks you see are a part of the grading, more are run when the notebook is graded. Questions
# marked *(open: graded by hand)* and the cells that ask for your reasoning are read by your
# teacher.

# %%
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from aigc_book.models.gpt import GPT
from aigc_book.models.ngram import NGramLM
from aigc_book.models.transformer import TransformerConfig
from aigc_book.text.bpe import ByteBPE, train_hf_bpe
from aigc_book.text.corpora import python_docs_text, split_train_val
from aigc_book.text.languages import BracketLanguage, LanguageConfig
from aigc_book.training.evaluation import lm_loss
from aigc_book.training.objectives import (
    IGNORE,
    causal_lm_loss,
    plm_batch,
    sequence_lm_batch,
    two_stream_mask,
)
from aigc_book.training.trainer import NonFiniteLossError, TrainConfig, Trainer

torch.set_num_threads(1)  # tiny models run fastest on one thread, and bit for bit the same

T = 48  # tokens after BOS in every sequence, as in the chapter
lang = BracketLanguage()
train_seqs = lang.sample(3_000, T, seed=1)  # the chapter: 20,000
val_seqs = lang.sample(500, T, seed=2)  # the chapter: 1,000
floor = lang.entropy_floor(T)

# The tiny recipe (the chapter: 2 layers of width 64, 600 steps of 32 sequences at a peak of 3e-3).
TINY = TrainConfig(steps=100, lr=1e-2, warmup_steps=10, eval_batches=1, progress=False)


def tiny_trainer(seqs: torch.Tensor, config: TrainConfig = TINY, seed: int = 0) -> Trainer:
    """A Trainer, not yet trained, for a fresh one-layer GPT of width 32 (weights seeded by `seed`)
    on the sequences `seqs`, 16 sequences per step; call `.train()` on it."""
    torch.manual_seed(seed)
    model = GPT(
        TransformerConfig(
            vocab_size=lang.vocab_size, block_size=T, n_layer=1, n_head=4, n_embd=32
        )
    )
    return Trainer(
        model,
        lambda split, g: sequence_lm_batch(seqs, 16, g),
        causal_lm_loss,
        config,
        device="cpu",
    )


gpt_trainer = tiny_trainer(train_seqs)
gpt_trainer.train()
gpt = gpt_trainer.model.eval()  # the exercises' GPT: AdamW, warm-up and cosine decay
gpt_ce = lm_loss(gpt, val_seqs)
ngram = NGramLM(4, lang.vocab_size).fit(train_seqs)  # the chapter's best order
print(
    f"floor {floor:.4f} nats/token; tiny GPT {gpt_ce:.4f} (gap {gpt_ce - floor:.4f}); "
    f"4-gram {ngram.cross_entropy(val_seqs):.4f}"
)

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# points: 5

# %% [markdown]
# **Exercise 1. Distance.** Split the closer probe by the distance between a closer and its opener.
# At what distance does the n-gram fall to chance? Does the GPT?
#
# 1. Write a function `opener_distances(row)` that takes one sequence (a list or tensor of ids,
#    starting with BOS) and returns a dict `{p: p - o}` with one entry for every closing bracket:
#    its position `p` in the row and its distance to the position `o` of the bracket it closes.
#    *Hint:* keep your own stack while scanning the sequence, as the chapter's probe cell does.
# 2. The probe (set up in the next cell): in `probe_seqs`, every closer that comes right after
#    another closer (a nested group has just ended, so the last tokens say nothing about it). Each
#    model answers with the most probable of the four closers: the GPT from its logits at position
#    `p - 1`; the 4-gram `ngram` by the probability `ngram.log_probs` gives each closer put at `p`
#    (as in the chapter's probe cell). Define `gpt_acc` and `ngram_acc`: dicts from each distance
#    `d` in `DISTANCES` (3 to 12) to the model's accuracy (a float between 0 and 1) on the probe's
#    closers at distance `d`.
# 3. Define `ngram_chance_from` as the smallest distance `d` in `DISTANCES` such that the n-gram's
#    accuracy is below 0.5 at `d` and at every larger distance in `DISTANCES`, and
#    `gpt_chance_from` the same for the GPT (`None` if the GPT's accuracy at 12 is 0.5 or more).
#    Chance is 0.25.

# %%
probe_seqs = lang.sample(1_000, T, seed=3)  # fresh sequences for the probe
closer_ids = torch.tensor(lang.close_ids)  # the four closers' ids
DISTANCES = range(3, 13)

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN SOLUTION
def opener_distances(row) -> dict[int, int]:
    out, stack = {}, []
    for p, tok in enumerate(int(t) for t in row):
        if tok in lang.open_ids:
            stack.append(p)
        elif tok in lang.close_ids:
            out[p] = p - stack.pop()
    return out


rows, pos, dist = [], [], []
for i, row in enumerate(probe_seqs.tolist()):
    for p, d in opener_distances(row).items():
        if row[p - 1] in lang.close_ids:  # right after another closer
            rows.append(i)
            pos.append(p)
            dist.append(d)
rows, pos, dist = torch.tensor(rows), torch.tensor(pos), torch.tensor(dist)
ar = torch.arange(len(rows))
answer = probe_seqs[rows, pos]
with torch.no_grad():
    logits, _ = gpt(probe_seqs[rows, :-1])
gpt_pred = closer_ids[logits[ar, pos - 1][:, closer_ids].argmax(-1)]
scores = []
for c in lang.close_ids:  # the n-gram's log-probability of each closer at the probed position
    alt = probe_seqs[rows].clone()
    alt[ar, pos] = int(c)
    scores.append(torch.from_numpy(ngram.log_probs(alt))[ar, pos - 1])
ngram_pred = closer_ids[torch.stack(scores, 1).argmax(1)]
# END SOLUTION
gpt_acc = ...  # SOLUTION
ngram_acc = ...  # SOLUTION
# BEGIN SOLUTION
gpt_acc = {d: (gpt_pred == answer)[dist == d].float().mean().item() for d in DISTANCES}
ngram_acc = {d: (ngram_pred == answer)[dist == d].float().mean().item() for d in DISTANCES}


def chance_from(acc: dict) -> int | None:
    below = [d for d in DISTANCES if all(acc[e] < 0.5 for e in DISTANCES if e >= d)]
    return min(below) if below else None


# END SOLUTION
ngram_chance_from = ...  # SOLUTION
gpt_chance_from = ...  # SOLUTION
# BEGIN SOLUTION
ngram_chance_from = chance_from(ngram_acc)
gpt_chance_from = chance_from(gpt_acc)
# END SOLUTION
print("distance  GPT   4-gram")
for d in DISTANCES:
    print(f"{d:>8} {gpt_acc[d]:5.2f} {ngram_acc[d]:7.2f}")
print("the n-gram stays below 0.5 from distance", ngram_chance_from, "; the GPT:", gpt_chance_from)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_d = opener_distances(lang.encode("^x(ab[e]c)"))
assert _d == {7: 2, 9: 7}, (
    f"in '^x(ab[e]c)' the ']' at 7 closes the '[' at 5 and the ')' at 9 the '(' at 2; got {_d}"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
def _by_depth(row):
    # the opener of a closer at p: the last opener before p that left the depth one above p's
    ids = [int(t) for t in row]
    step = [1 if t in lang.open_ids else -1 if t in lang.close_ids else 0 for t in ids]
    after = np.cumsum(step)
    return {
        p: p - max(q for q in range(p) if step[q] == 1 and after[q] == after[p] + 1)
        for p in range(len(ids))
        if step[p] == -1
    }


for _row in probe_seqs[:200]:
    assert opener_distances(_row) == _by_depth(_row), "opener_distances is wrong on a probe row"

# %%
assert set(gpt_acc) == set(DISTANCES) and set(ngram_acc) == set(DISTANCES), (
    "gpt_acc and ngram_acc need one entry for every distance 3..12"
)
assert all(0 <= a <= 1 for a in [*gpt_acc.values(), *ngram_acc.values()]), (
    "accuracies are fractions between 0 and 1"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_r, _p, _dist = [], [], []
for _i, _row in enumerate(probe_seqs.tolist()):
    _stack = []
    for _q, _tok in enumerate(_row):
        if _tok in lang.open_ids:
            _stack.append(_q)
        elif _tok in lang.close_ids:
            _o = _stack.pop()
            if _row[_q - 1] in lang.close_ids:
                _r.append(_i)
                _p.append(_q)
                _dist.append(_q - _o)
_r, _p, _dist = torch.tensor(_r), torch.tensor(_p), torch.tensor(_dist)
_a = torch.arange(len(_r))
with torch.no_grad():
    _probs = gpt(probe_seqs[_r, :-1])[0][_a, _p - 1].softmax(-1)[:, lang.close_ids]
_ok_gpt = closer_ids[_probs.argmax(-1)] == probe_seqs[_r, _p]
_ng = []
for _c in lang.close_ids:  # the 4-gram's probability of each closer at the probed position
    _alt = torch.where(torch.arange(T + 1) == _p[:, None], int(_c), probe_seqs[_r])
    _ng.append(np.exp(ngram.log_probs(_alt))[_a.numpy(), (_p - 1).numpy()])
_ng = np.stack(_ng, 1)
_ok_ng = closer_ids[_ng.argmax(1)] == probe_seqs[_r, _p]
for _dd in DISTANCES:
    assert abs(gpt_acc[_dd] - _ok_gpt[_dist == _dd].float().mean().item()) < 1e-6, (
        f"gpt_acc[{_dd}] differs from the GPT's accuracy on the probe's closers at distance {_dd}"
    )
    assert abs(ngram_acc[_dd] - _ok_ng[_dist == _dd].float().mean().item()) < 1e-6, (
        f"ngram_acc[{_dd}] differs from the 4-gram's accuracy on the closers at distance {_dd}"
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_from = {}
for _name, _acc in (("ngram", ngram_acc), ("gpt", gpt_acc)):
    _below = [d for d in DISTANCES if all(_acc[e] < 0.5 for e in DISTANCES if e >= d)]
    _from[_name] = min(_below) if _below else None
assert ngram_chance_from == _from["ngram"], "ngram_chance_from does not follow the rule"
assert gpt_chance_from == _from["gpt"], "gpt_chance_from does not follow the rule from gpt_acc"
assert ngram_acc[3] > 0.9 and ngram_chance_from is not None and gpt_chance_from is None, (
    "expected: the 4-gram right when the opener is in its 3-token window, near chance further; "
    "the GPT well above chance at every distance"
)

# %% [raw]
# # END TESTS

# %% [markdown]
# *Your reading (for your teacher): at what distance does the n-gram fall to chance, and why there?
# Does the GPT?* _Type your answer here, replacing this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# A closer right after a closer is at distance 3 or more. At distance 3 the opener is inside the
# 4-gram's window of 3 tokens, so the 4-gram is always right. At distance 4 the window holds
# the inner group and, about half the time, a word between the opener and the inner group, which
# agrees with the opener's type; so it is right about two times in three. From distance 5 on it
# sees only the inner group and hovers somewhat above chance (about 0.3 to 0.4: its counts still
# lean on weak statistical hints). The tiny GPT, which attends to the whole prefix, stays at about
# 0.8 at every distance: distance does not matter to attention (its errors come from undertraining,
# not from the distance).

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex2
# points: 4

# %% [markdown]
# **Exercise 2. The floor moves.** Set `p_close` to 0.2 in `LanguageConfig`. Predict whether the
# floor goes up or down before computing it (write your prediction and its reason in the cell under
# the code), then retrain the GPT. Is the gap to the floor larger or smaller?
#
# Define `lang_02` (the language with `p_close=0.2`), `floor_02` (its exact floor for `T` tokens,
# nats per token) and `floor_direction` (`"up"` or `"down"`, compared with `floor`). Then retrain
# the tiny GPT on it: `trainer_02 = tiny_trainer(lang_02.sample(3_000, T, seed=1))`, trained with
# `.train()`; `gpt_02 = trainer_02.model`. Define `gap_02`, its validation loss on
# `lang_02.sample(500, T, seed=2)` minus `floor_02`, `gap_035 = gpt_ce - floor` (the setup's GPT on
# the chapter's language, trained with the same recipe) and `gap_direction` (`"larger"` or
# `"smaller"`: `gap_02` compared with `gap_035`).

# %% [raw]
# # BEGIN SOLUTION

# %%
lang_02 = ...  # SOLUTION
floor_02 = ...  # SOLUTION
floor_direction = ...  # SOLUTION
# BEGIN SOLUTION
lang_02 = BracketLanguage(LanguageConfig(p_close=0.2))
floor_02 = lang_02.entropy_floor(T)
floor_direction = "up" if floor_02 > floor else "down"
trainer_02 = tiny_trainer(lang_02.sample(3_000, T, seed=1))
trainer_02.train()
gpt_02 = trainer_02.model
# END SOLUTION
gap_02 = ...  # SOLUTION
gap_035 = ...  # SOLUTION
gap_direction = ...  # SOLUTION
# BEGIN SOLUTION
gap_02 = lm_loss(gpt_02, lang_02.sample(500, T, seed=2)) - floor_02
gap_035 = gpt_ce - floor
gap_direction = "larger" if gap_02 > gap_035 else "smaller"
# END SOLUTION
print(f"floor {floor:.4f} -> {floor_02:.4f} ({floor_direction}); gap {gap_035:.4f} -> {gap_02:.4f}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert floor_direction == ("up" if floor_02 > floor else "down"), (
    "floor_direction must be 'up' or 'down', comparing floor_02 with floor"
)
assert gap_direction == ("larger" if gap_02 > gap_035 else "smaller"), (
    "gap_direction must be 'larger' or 'smaller', comparing gap_02 with gap_035"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_lang = BracketLanguage(LanguageConfig(p_close=0.2))
_nll = np.array([-_lang.log_prob(r) / T for r in _lang.sample(2_000, T, seed=11)])
_se = _nll.std(ddof=1) / math.sqrt(len(_nll))
assert abs(floor_02 - _nll.mean()) < 4 * _se, (
    f"floor_02 = {floor_02:.4f} is far from a Monte-Carlo estimate of the floor with p_close=0.2 "
    f"({_nll.mean():.4f} ± {_se:.4f})"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_val = BracketLanguage(LanguageConfig(p_close=0.2)).sample(500, T, seed=2)
with torch.no_grad():
    _ce = F.cross_entropy(
        gpt_02.eval()(_val[:, :-1])[0].flatten(0, 1), _val[:, 1:].flatten()
    ).item()
assert abs(gap_02 - (_ce - floor_02)) < 1e-3, (
    "gap_02 should be gpt_02's cross-entropy on lang_02.sample(500, T, seed=2) minus floor_02"
)
assert abs(gap_035 - (gpt_ce - floor)) < 1e-9, "gap_035 should be gpt_ce - floor"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert floor_02 > floor + 0.02, "with p_close = 0.2 the floor should go up"
assert gap_02 > gap_035 + 0.02, (
    "with the same tiny recipe, the GPT should end further above the floor with p_close = 0.2"
)

# %% [raw]
# # END TESTS

# %% [markdown]
# *Your prediction and its reason, and your reading of the gap (for your teacher):* _Type your
# answer here, replacing this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# The floor goes up, from about 1.918 to 1.953 nats per token. At depths 1 to 3 the next token is
# an opener (0.25), a closer (`p_close`) or a word (the rest). A closer carries no choice (its type
# is fixed by the stack) while a word is one of four, with an entropy of 1.28 nats; lowering
# `p_close` from 0.35 to 0.2 moves probability from the closer to the words (0.40 to 0.55), and the
# entropy at those depths rises from 1.94 to 2.05 nats (`lang_02.depth_entropies()`). Closing less
# often also keeps the sequences deeper: less time at depth 0 (entropy 1.99) and more at depth 4
# (1.19), which pulls the other way but less.
#
# The gap gets larger (about 0.16 against 0.12 nats in the tiny runs). Deeper nesting means more
# closers and words whose bracket was opened far back, behind nested groups: more of the long-range
# tracking that is hard to learn, for the same model and the same steps.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex3
# manual: true
# points: 3

# %% [markdown]
# **Exercise 3. RoBERTa, properly.** *(open: graded by hand)* Repeat the MLM vs MLM + NSP
# comparison with three seeds each and report the mean and spread of the masked-token accuracy. Is
# the difference larger than the spread? Do the same for the closer probe's ranking.
#
# The runs need the chapter's settings (six encoders of 700 steps; a tiny encoder trained for a few
# seconds learns too little of the masked-token task for a comparison to mean anything), so run
# them from the chapter's cells: build the encoders with `small_encoder(seed)` for seeds 0, 1, 2,
# train each with `Trainer(..., TrainConfig(..., seed=seed))`, score each with `mlm_eval` and the
# closer probe. Report a table (seed × objective: masked-token accuracy, probe accuracy), the mean
# and the standard deviation over seeds, and your answers with the reasoning behind them.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# Model answer (what to look for). The seed must change both the initial weights (`small_encoder`
# seeds `torch.manual_seed`) and the data order (`TrainConfig(seed=...)`); the evaluation pairs
# stay fixed (`mlm_eval` seeds its own generator), so the spread measures training, not
# evaluation. With three seeds, report the mean and the sample standard deviation (`ddof=1`) per
# objective; the standard error of each mean is sd/√3 and that of the difference of the means is
# √(sd₁²/3 + sd₂²/3). Call the difference real only if it is larger than about twice that (better:
# a t-test with 4 degrees of freedom; three seeds are few).
#
# In the chapter's single run, MLM alone reached 0.460 masked-token accuracy against 0.387 for
# MLM + NSP, a difference of 0.07 against an evaluation standard error of 0.004; a good answer notes
# that this standard error says nothing about seeds. Our three-seed run of the chapter's CPU
# settings (seeds 0, 1, 2; mean ± sd over seeds):
#
# | objective | masked-token accuracy | closer probe (783 closers) |
# |---|---:|---:|
# | MLM + NSP | 0.391 ± 0.004 (0.387, 0.392, 0.395) | 0.586 ± 0.034 (0.626, 0.570, 0.563) |
# | MLM only | 0.442 ± 0.019 (0.460, 0.422, 0.443) | 0.450 ± 0.009 (0.441, 0.455, 0.456) |
#
# Masked tokens: MLM alone is better by 0.050, with a standard error of the difference of 0.011
# (about 4.5 standard errors; every MLM-only seed beats every MLM + NSP seed): larger than the
# spread, in line with RoBERTa's finding that dropping NSP does not hurt. The probe goes the other
# way, and also clearly: MLM + NSP is better by 0.14 (standard error 0.02), in every seed. NSP in
# this language is decided by whether the second half's brackets fit the first half's, so it
# trains exactly the long-range bracket tracking that the hard closers need, while it takes
# capacity from the ordinary masked tokens. So "which objective is better" depends on the measure;
# a good answer reports both, with their spreads, and does not generalise from 700 steps of a
# 100k-parameter model to BERT's scale. (On a GPU the chapter's settings are larger and the numbers
# differ.) Full marks: the table, mean and spread per objective for both measures, the comparison
# of each difference with its standard error, and a conclusion per measure.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex4
# points: 3

# %% [markdown]
# **Exercise 4. Partial prediction.** XLNet predicts only the last $1/K$ of each order
# (`predict_fraction`). Training with `predict_fraction=1/6` for the chapter's number of steps takes
# minutes, so this question first measures what partial prediction changes in a batch, and then asks
# you to reason about training (answer in the cell under the code; if you have the time, run the
# chapter's PLM cells with `plm_batch(..., predict_fraction=1/6)` and compare).
#
# Draw `batch_full = plm_batch(train_seqs, 64, torch.Generator().manual_seed(0))` and
# `batch_part`, the same with `predict_fraction=1/6`. Define `n_predicted` (how many tokens of each
# sequence `batch_part` predicts: an int), `min_rank_predicted` (the smallest rank, i.e. place in
# the factorisation order, of a predicted token in `batch_part`) and `mean_context_full`,
# `mean_context_partial`: the mean, over the predicted tokens of each batch, of the number of
# tokens whose content the prediction may see (the tokens earlier in its order, BOS included).
# Then answer: what happens to the left-to-right cross-entropy and to the probe when training with
# `predict_fraction=1/6` for the same number of steps, and why might predicting only
# late-in-the-order tokens help optimisation?

# %% [raw]
# # BEGIN SOLUTION

# %%
batch_full = plm_batch(train_seqs, 64, torch.Generator().manual_seed(0))
batch_part = plm_batch(train_seqs, 64, torch.Generator().manual_seed(0), predict_fraction=1 / 6)
n_predicted = ...  # SOLUTION
min_rank_predicted = ...  # SOLUTION
mean_context_full = ...  # SOLUTION
mean_context_partial = ...  # SOLUTION
# BEGIN SOLUTION
predicted_part = batch_part["targets"] != IGNORE
n_predicted = int(predicted_part.sum(1)[0])
min_rank_predicted = int(batch_part["rank"][predicted_part].min())
# a prediction sees the content of the tokens with a smaller rank: as many as its own rank
mean_context_full = batch_full["rank"][batch_full["targets"] != IGNORE].float().mean().item()
mean_context_partial = batch_part["rank"][predicted_part].float().mean().item()
# END SOLUTION
print(
    f"{n_predicted} of {T} tokens predicted per sequence, ranks {min_rank_predicted}..{T}; "
    f"context per prediction {mean_context_full:.1f} (all) vs {mean_context_partial:.1f} (last 1/6)"
)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(n_predicted, int) and n_predicted == round(T / 6), (
    f"with predict_fraction=1/6, plm_batch predicts round({T}/6) tokens per sequence"
)
assert (batch_part["targets"] != IGNORE).sum(1).eq(n_predicted).all(), (
    "every sequence of batch_part should have n_predicted targets"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert min_rank_predicted == T + 1 - n_predicted, (
    "the predicted tokens are the last n_predicted of the order (ranks run 0..T, BOS first)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _b, _mean in ((batch_full, mean_context_full), (batch_part, mean_context_partial)):
    _m = two_stream_mask(_b["rank"])[:, 0]  # (B, 2L, 2L)
    _L = _b["rank"].size(1)
    _seen = _m[:, _L:, :_L].sum(-1).float()  # (B, L): content slots each query may read
    assert abs(_seen[_b["targets"] != IGNORE].mean().item() - _mean) < 1e-4, (
        "the mean context should count the content slots that the predicted tokens' queries may "
        "attend to (two_stream_mask)"
    )

# %% [raw]
# # END TESTS

# %% [markdown]
# *Your answer on training with `predict_fraction=1/6` (for your teacher):* _Type your answer here,
# replacing this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# Each sequence now gives 8 predictions instead of 48, and each prediction sees 44.5 tokens on
# average instead of 24.5 (ranks 41 to 48 instead of 1 to 48). Our run of the chapter's PLM cells
# (CPU settings, 400 steps) with `predict_fraction=1/6`: the left-to-right cross-entropy ended
# 1.01 nats above the floor, against 0.40 with full prediction, and the probe stayed at chance
# (0.250 against 0.289). Both got worse. Left to right, the query stream must predict token *t*
# from *t* tokens, and most of those predictions have far less context than anything the model
# was trained on (it never predicts below rank 41); and with the same number of steps it received
# six times fewer training targets. The probe, which puts the probed token last in the order,
# matches what partial prediction trains, but 400 steps of 8 targets per sequence were not enough
# for either model to learn the hard closers (full prediction was near chance too). A good answer
# gives both numbers, explains the left-to-right loss by the missing early ranks, and sees that the
# benefit XLNet reports needs long training: XLNet trained 500k steps at large batch.
#
# Why it can help optimisation (Yang et al. 2019, §2.3): a token early in a random order is
# predicted from a few scattered tokens; its target is close to a unigram guess, the loss is high
# and its gradient is mostly noise, and matching the early ranks costs capacity. Late-in-order
# tokens have almost the whole sequence as context, their targets are nearly determined (like MLM
# with few masks), and their gradients teach the dependencies; the unpredicted tokens still serve as
# context, and their query stream need not be computed at all (a saving in memory and time).

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex5
# points: 3

# %% [markdown]
# **Exercise 5. Resume.** Train the GPT for half its steps, save a checkpoint with
# `save_checkpoint`, start again, load it and train the rest. Check with `torch.equal` that the
# weights equal those of an uninterrupted run. Which random states would break this if they were
# not saved?
#
# Use `RESUME = replace(TINY, steps=40)` (the tiny recipe, 40 steps). Define `straight`, a
# `tiny_trainer(train_seqs, RESUME)` trained without a stop, and `resumed`: another trainer that
# trains 20 steps (`.train(until=20)`), saves a checkpoint into a fresh temporary directory, and
# then a *new* `tiny_trainer(train_seqs, RESUME, seed=1)` (a model with other random weights, as a
# new Python process would build; the chapter asks for a real new process, try it if you like) that
# loads the checkpoint with `load_checkpoint` and trains to the end. Define `resumed_equal` (`True`
# when every tensor of the two models' `state_dict`s is `torch.equal`). Then show what a lost random
# state does: `broken`, another new trainer that loads the checkpoint, then resets its data
# generator with `broken.generator.manual_seed(0)` before training the rest, and `broken_equal`
# (the same comparison as `resumed_equal`, for `broken`).

# %%
RESUME = replace(TINY, steps=40)

# %% [raw]
# # BEGIN SOLUTION

# %%
straight = ...  # SOLUTION
resumed = ...  # SOLUTION
broken = ...  # SOLUTION
# BEGIN SOLUTION
straight = tiny_trainer(train_seqs, RESUME)
straight.train()

checkpoint = Path(tempfile.mkdtemp()) / "checkpoint"
first_half = tiny_trainer(train_seqs, RESUME)
first_half.train(until=20)
first_half.save_checkpoint(checkpoint)

resumed = tiny_trainer(train_seqs, RESUME, seed=1)
resumed.load_checkpoint(checkpoint)
resumed.train()

broken = tiny_trainer(train_seqs, RESUME, seed=1)
broken.load_checkpoint(checkpoint)
broken.generator.manual_seed(0)  # as if the data generator's state had not been saved
broken.train()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# END SOLUTION
resumed_equal = ...  # SOLUTION
broken_equal = ...  # SOLUTION
# BEGIN SOLUTION
resumed_equal = same_weights(straight.model, resumed.model)
broken_equal = same_weights(straight.model, broken.model)
# END SOLUTION
print(f"resumed = uninterrupted: {resumed_equal}; without the data's generator: {broken_equal}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert straight.step == resumed.step == broken.step == RESUME.steps, (
    "straight, resumed and broken should all have trained to RESUME.steps steps"
)
assert resumed_equal is True, "resumed_equal should be True: resuming is exact"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_a = dict(straight.model.named_parameters())
_b = dict(resumed.model.named_parameters())
assert resumed.model is not straight.model, "resumed must be a new trainer with its own model"
assert _a.keys() == _b.keys() and all(torch.equal(_a[k], _b[k]) for k in _a), (
    "the resumed model's weights differ from the uninterrupted run's"
)
assert len(resumed.history["train_loss"]) == RESUME.steps, (
    "the resumed trainer should hold the whole run's history (20 steps loaded, 20 trained)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_a = dict(straight.model.named_parameters())
_c = dict(broken.model.named_parameters())
assert broken_equal is False, "broken_equal should be False"
assert not all(torch.equal(_a[k], _c[k]) for k in _a), (
    "the broken run's weights should differ from the uninterrupted run's"
)

# %% [raw]
# # END TESTS

# %% [markdown]
# *Which random states would break exact resuming if they were not saved, and why (for your
# teacher)?* _Type your answer here, replacing this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# The checkpoint holds the weights, AdamW's moments and step count (the learning-rate schedule
# follows the step), the history, and every random state (`capture_rng_state`): the trainer's data
# generator, PyTorch's global generator, NumPy's, Python's and CUDA's. Here only the **data
# generator** matters: it decides which sequences form each batch, and `broken` shows that
# restarting it replays the first batches and changes the weights. **PyTorch's global generator**
# (and **CUDA's**, on a GPU) would matter as soon as training draws from it: dropout (our models
# use `dropout=0.0`), or a batch function that draws masks from the global generator instead of the
# one it is given. **NumPy's and Python's** would matter for data pipelines that shuffle with them.
# (Beyond random states: the optimizer's moments; without them the first steps after resuming
# would be Adam's first steps again.)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex6
# points: 3

# %% [markdown]
# **Exercise 6. Tokens for English.** Train our BPE (`ByteBPE.train`) with vocabularies of 300,
# 1,000 and 4,000 on the Python documentation (`docs_train`, the first 90%). Plot characters per
# token on the held-out tail (`docs_val`) against vocabulary size.
#
# Define `chars_per_token`, a dict `{300: ..., 1000: ..., 4000: ...}` of `len(docs_val)` divided by
# the number of tokens each tokenizer cuts `docs_val` into, and draw the plot. *Hint:* BPE learns
# its merges one at a time, most frequent first; does training with a larger vocabulary change the
# first merges? (`ByteBPE(merges)` builds a tokenizer from a list of merges.)

# %%
docs_train, docs_val = split_train_val(python_docs_text(), 0.1)

# %% [raw]
# # BEGIN SOLUTION

# %%
chars_per_token = ...  # SOLUTION
# BEGIN SOLUTION
bpe_4000 = ByteBPE.train(docs_train, vocab_size=4_000)  # its first merges are the smaller BPEs
chars_per_token = {}
for size in (300, 1_000, 4_000):
    bpe = ByteBPE(bpe_4000.merges[: size - 256])
    chars_per_token[size] = len(docs_val) / len(bpe.encode(docs_val))
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(list(chars_per_token), list(chars_per_token.values()), "o-")
ax.set(xscale="log", xlabel="vocabulary size", ylabel="characters per token (held out)")
plt.show()
# END SOLUTION
print({size: round(ratio, 3) for size, ratio in chars_per_token.items()})

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert set(chars_per_token) == {300, 1000, 4000}, "chars_per_token needs the keys 300, 1000, 4000"
assert 1 < chars_per_token[300] < chars_per_token[1000] < chars_per_token[4000], (
    "characters per token should be above 1 and grow with the vocabulary"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_hf = train_hf_bpe(docs_train, vocab_size=1_000)  # the same algorithm in the Hugging Face library
_ratio = len(docs_val) / len(_hf.encode(docs_val).ids)
assert abs(chars_per_token[1000] / _ratio - 1) < 0.01, (
    f"chars_per_token[1000] = {chars_per_token[1000]:.3f}, but Hugging Face's BPE with the same "
    f"settings gives {_ratio:.3f} characters per token on docs_val"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_hf = train_hf_bpe(docs_train, vocab_size=4_000)
_ratio = len(docs_val) / len(_hf.encode(docs_val).ids)
assert abs(chars_per_token[4000] / _ratio - 1) < 0.01, (
    f"chars_per_token[4000] = {chars_per_token[4000]:.3f}, but Hugging Face's BPE with the same "
    f"settings gives {_ratio:.3f} characters per token on docs_val"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex7
# points: 4

# %% [markdown]
# **Exercise 7. Where the KL lives.** Split the GPT's exact KL by the kind of token the truth allows
# next (only words and openers, or also a closer) and by depth. Where does the model lose most?
#
# For the setup's `gpt` on `val_seqs`, compute the exact KL divergence $\mathrm{KL}(p\,\|\,q)$ at
# every prefix as in the chapter's section "The gap is the KL divergence" (`lang.next_token_table`
# gives the true $p$): `kl`, an `(N, T)` tensor. Define `depth`, the `(N, T)` tensor of the number
# of unclosed brackets after each prefix `val_seqs[:, :t + 1]`, and then `kl_by_depth`, a dict from
# each depth 0..4 to the mean KL over the prefixes at that depth; `kl_by_closer`, a dict
# `{False: ..., True: ...}`: the mean KL where the truth allows no closer next (depth 0) and where
# it allows one (depth above 0); and `worst_depth`, the depth with the largest mean KL.

# %% [raw]
# # BEGIN SOLUTION

# %%
kl = ...  # SOLUTION
depth = ...  # SOLUTION
# BEGIN SOLUTION
with torch.no_grad():
    log_q = gpt(val_seqs[:, :-1])[0].double().log_softmax(-1)  # (N, T, V)
p_true = torch.from_numpy(np.stack([lang.next_token_table(row[:-1]) for row in val_seqs]))
p_log_p = torch.where(p_true > 0, p_true * p_true.log(), torch.zeros_like(p_true))
kl = (p_log_p - p_true * log_q).sum(-1)  # (N, T)
step = torch.from_numpy(
    np.isin(val_seqs[:, :-1], lang.open_ids).astype(int) - np.isin(val_seqs[:, :-1], lang.close_ids)
)
depth = step.cumsum(1)  # (N, T): unclosed brackets after each prefix
# END SOLUTION
kl_by_depth = ...  # SOLUTION
kl_by_closer = ...  # SOLUTION
worst_depth = ...  # SOLUTION
# BEGIN SOLUTION
kl_by_depth = {d: kl[depth == d].mean().item() for d in range(lang.config.max_depth + 1)}
kl_by_closer = {False: kl[depth == 0].mean().item(), True: kl[depth > 0].mean().item()}
worst_depth = max(kl_by_depth, key=kl_by_depth.get)
# END SOLUTION
for d, v in kl_by_depth.items():
    print(f"depth {d}: mean KL {v:.4f} over {(depth == d).sum().item():,} prefixes")
print(f"closer allowed next: {kl_by_closer[True]:.4f}; not allowed: {kl_by_closer[False]:.4f}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert tuple(kl.shape) == tuple(val_seqs[:, 1:].shape) and tuple(depth.shape) == tuple(kl.shape), (
    "kl and depth should be (N, T) tensors, one entry per prefix of val_seqs"
)
assert set(kl_by_depth) == set(range(5)) and set(kl_by_closer) == {False, True}, (
    "kl_by_depth needs the depths 0..4 and kl_by_closer the keys False and True"
)
assert all(v >= 0 for v in kl_by_depth.values()), "a KL divergence is never negative"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
with torch.no_grad():
    _logq = gpt(val_seqs[:, :-1])[0].double().log_softmax(-1)
_p = torch.from_numpy(np.stack([lang.next_token_table(r[:-1]) for r in val_seqs]))
_kl = F.kl_div(_logq, _p, reduction="none").sum(-1)  # PyTorch's own KL(p || q)
assert torch.allclose(kl.double(), _kl, atol=1e-6), "kl differs from F.kl_div(log q, p)"
_text = [lang.decode(r) for r in val_seqs[:50]]
_depth = torch.tensor(
    [[sum(c in "([{<" for c in s[: t + 1]) - sum(c in ")]}>" for c in s[: t + 1]) for t in range(T)]
     for s in _text]
)
assert torch.equal(depth[:50].long(), _depth), "depth: the unclosed brackets after each prefix"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_ids = val_seqs.numpy()
_steps = np.isin(_ids, lang.open_ids).astype(int) - np.isin(_ids, lang.close_ids)
_dep = torch.from_numpy(np.cumsum(_steps, axis=1)[:, :-1])  # (N, T): depth after each prefix
_kl = kl.double()
for _dd in range(5):
    assert abs(kl_by_depth[_dd] - _kl[_dep == _dd].mean().item()) < 1e-6, f"kl_by_depth[{_dd}]"
assert abs(kl_by_closer[True] - _kl[_dep > 0].mean().item()) < 1e-6, (
    "kl_by_closer[True] should average the prefixes after which a closer is allowed (depth > 0)"
)
assert abs(kl_by_closer[False] - _kl[_dep == 0].mean().item()) < 1e-6, "kl_by_closer[False]"
assert worst_depth == max(kl_by_depth, key=kl_by_depth.get), "worst_depth is not the argmax"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
with torch.no_grad():
    _logq = gpt(val_seqs[:, :-1])[0].double().log_softmax(-1)
_obs = -_logq.gather(-1, val_seqs[:, 1:, None]).squeeze(-1)  # the observed loss per prefix
_per_seq = (_obs - kl.double()).mean(1)  # its expectation is the floor
_share = torch.stack([(depth == d).double().mean() for d in range(5)])
_mix = sum(_share[d] * kl_by_depth[d] for d in range(5) if _share[d] > 0)
assert abs(_mix - kl.double().mean()) < 1e-6, (
    "the depths' mean KLs, weighted by their shares, should give the mean KL"
)
assert abs((gpt_ce - floor) - kl.double().mean()) < 4 * _per_seq.std() / math.sqrt(len(_per_seq)), (
    "the mean KL should equal the gap to the floor within the validation set's sampling error"
)

# %% [raw]
# # END TESTS

# %% [markdown]
# *Where does the model lose most, and why there (for your teacher)?* _Type your answer here,
# replacing this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# The KL grows with depth: about 0.07 nats per prefix at depth 0, where only words `w x y z` and
# openers can come and nothing must be remembered, 0.08 at depth 1, then 0.14, 0.21 and 0.32 at
# depth 4, so where a closer is allowed the mean KL is about twice what it is where none is. Inside
# brackets the model must know the type of the innermost open bracket to give the right closer and
# the right word group, and the deeper the stack, the further back (behind nested groups) that
# bracket may have been opened and the more open brackets there are to tell apart. Per prefix the
# model loses most at depth 4; the deep levels are visited less often, though, so the *total* KL
# (mean × number of prefixes) is spread over depths 1 to 3 about evenly, with depth 2 the largest.
# (At depth 0 the tiny model still pays something: it has not quite learned the word frequencies
# and when to open.)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex8
# points: 3

# %% [markdown]
# **Exercise 8. L2 is not decay, in training.** Replace the GPT trainer's optimizer by
# `torch.optim.Adam(..., weight_decay=0.1)` (an L2 term) with the same two parameter groups, and
# train again. Compare the validation loss and the norms of the embedding and output matrices with
# the AdamW run.
#
# Define `l2_trainer = tiny_trainer(train_seqs)` and, before training it, set
# `l2_trainer.optimizer` to a `torch.optim.Adam` with the two groups of `configure_optimizer`
# (tensors of dimension 2 or more with `weight_decay` `TINY.weight_decay`, the others with 0),
# `lr=TINY.lr` and `betas=TINY.betas` (the trainer sets each group's learning rate at every step).
# Build the groups from `l2_trainer.model.parameters()` yourself: PyTorch's `AdamW` keeps a
# `decoupled_weight_decay=True` entry in its `param_groups`, so handing those dicts to `Adam` would
# quietly give you AdamW again. Train it. Define `loss_l2` (validation loss on `val_seqs`),
# `loss_adamw` (the setup's `gpt_ce`) and `emb_norm`, a dict `{"AdamW": ..., "Adam + L2": ...}` of
# the Frobenius norm of each model's token embedding `transformer.wte.weight`, which is also its
# output matrix (the two are tied).

# %% [raw]
# # BEGIN SOLUTION

# %%
l2_trainer = tiny_trainer(train_seqs)
# BEGIN SOLUTION
params = [p for p in l2_trainer.model.parameters() if p.requires_grad]
l2_trainer.optimizer = torch.optim.Adam(
    [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": TINY.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ],
    lr=TINY.lr,
    betas=TINY.betas,
)
l2_trainer.train()
# END SOLUTION
loss_l2 = ...  # SOLUTION
loss_adamw = ...  # SOLUTION
emb_norm = ...  # SOLUTION
# BEGIN SOLUTION
loss_l2 = lm_loss(l2_trainer.model, val_seqs)
loss_adamw = gpt_ce
emb_norm = {
    "AdamW": gpt.transformer.wte.weight.norm().item(),
    "Adam + L2": l2_trainer.model.transformer.wte.weight.norm().item(),
}
# END SOLUTION
print(f"validation loss: AdamW {loss_adamw:.4f}, Adam + L2 {loss_l2:.4f}; embedding {emb_norm}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_opt = l2_trainer.optimizer
assert type(_opt) is torch.optim.Adam, "l2_trainer.optimizer should be a torch.optim.Adam"
assert not any(g.get("decoupled_weight_decay", False) for g in _opt.param_groups), (
    "the optimizer's groups say decoupled_weight_decay=True: that is AdamW; build new group dicts"
)
_wd = {id(p): g["weight_decay"] for g in _opt.param_groups for p in g["params"]}
_params = list(l2_trainer.model.parameters())
assert all(_wd.get(id(p)) == (0.1 if p.dim() >= 2 else 0.0) for p in _params), (
    "every matrix needs weight_decay 0.1 and every bias or LayerNorm vector 0.0"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
with torch.no_grad():
    _ce = F.cross_entropy(
        l2_trainer.model.eval()(val_seqs[:, :-1])[0].flatten(0, 1), val_seqs[:, 1:].flatten()
    ).item()
assert abs(loss_l2 - _ce) < 1e-4 and abs(loss_adamw - gpt_ce) < 1e-9, (
    "loss_l2 should be the Adam + L2 model's cross-entropy on val_seqs, loss_adamw gpt_ce"
)
assert loss_l2 > loss_adamw + 0.1, "the L2 run should end clearly worse than the AdamW run"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_n = torch.linalg.matrix_norm(l2_trainer.model.lm_head.weight.detach()).item()
_n0 = torch.linalg.matrix_norm(gpt.lm_head.weight.detach()).item()
assert abs(emb_norm["Adam + L2"] - _n) < 1e-4, "emb_norm['Adam + L2']: the norm of its embedding"
assert abs(emb_norm["AdamW"] - _n0) < 1e-4, (
    "emb_norm['AdamW'] is not the norm of the setup GPT's embedding"
)
assert emb_norm["Adam + L2"] < 0.7 * emb_norm["AdamW"], "L2 should shrink the embedding far more"

# %% [raw]
# # END TESTS

# %% [markdown]
# *Your comparison (for your teacher):* _Type your answer here, replacing this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# With the same coefficient 0.1, the L2 run ends far worse (about 0.3 nats further from the floor)
# and its matrices are much smaller: the embedding's norm falls to about a third of the AdamW
# run's, and the attention matrices almost to zero. Under Adam the L2 gradient $\lambda\theta$ is
# normalised together with the data's gradient: for a weight whose data gradient is small compared
# with $\lambda\theta$, Adam's step becomes a full-size step of about $\eta$ towards zero, every
# step, the over-decay the chapter's four-weight demo showed. The decoupled decay of AdamW shrinks
# each weight by the fraction $\eta\lambda$ (0.1% per step here), which over 100 steps is a few
# percent. To get a sensible L2 run under Adam one would need a far smaller coefficient, and the
# right one would depend on the gradients' scale: the reason AdamW decouples the two.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex9
# points: 3

# %% [markdown]
# **Exercise 9. Without warm-up.** Train the GPT with `warmup_steps=0` at the peak learning rate,
# and at three times that rate. Does either run hit a `NonFiniteLossError` or end worse?
#
# The peak rate of the tiny recipe is `TINY.lr` (1e-2). Define `trainers`, a dict with the keys
# `"no warm-up"` and `"no warm-up, 3x lr"`: trainers from `tiny_trainer(train_seqs,
# replace(TINY, warmup_steps=0, lr=...))`, each trained (catch `NonFiniteLossError`); `nonfinite`,
# a dict with the same keys, `True` for a run that raised it; and `final_loss`, a dict with these
# keys and `"warm-up"` (the setup's run, `gpt_ce`): each finished run's validation loss on
# `val_seqs` (`float("nan")` for a run that stopped).

# %% [raw]
# # BEGIN SOLUTION

# %%
trainers = ...  # SOLUTION
nonfinite = ...  # SOLUTION
final_loss = ...  # SOLUTION
# BEGIN SOLUTION
trainers, nonfinite, final_loss = {}, {}, {"warm-up": gpt_ce}
for name, lr in (("no warm-up", TINY.lr), ("no warm-up, 3x lr", 3 * TINY.lr)):
    trainers[name] = tiny_trainer(train_seqs, replace(TINY, warmup_steps=0, lr=lr))
    try:
        trainers[name].train()
        nonfinite[name] = False
        final_loss[name] = lm_loss(trainers[name].model, val_seqs)
    except NonFiniteLossError:
        nonfinite[name] = True
        final_loss[name] = float("nan")
# END SOLUTION
for name, loss in final_loss.items():
    print(f"{name:<18} validation loss {loss:.4f} (floor {floor:.4f})")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert set(trainers) == set(nonfinite) == {"no warm-up", "no warm-up, 3x lr"}, (
    "trainers and nonfinite need the keys 'no warm-up' and 'no warm-up, 3x lr'"
)
for _name, _factor in (("no warm-up", 1), ("no warm-up, 3x lr", 3)):
    _h = trainers[_name].history["lr"]
    assert _h and abs(_h[0] - _factor * TINY.lr) < 1e-12, (
        f"the first step of '{_name}' should already use {_factor} x TINY.lr (no warm-up)"
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _name, _t in trainers.items():
    with torch.no_grad():
        _ce = F.cross_entropy(
            _t.model.eval()(val_seqs[:, :-1])[0].flatten(0, 1), val_seqs[:, 1:].flatten()
        ).item()
    assert abs(final_loss[_name] - _ce) < 1e-4, f"final_loss['{_name}'] is not its validation loss"
assert abs(final_loss["warm-up"] - gpt_ce) < 1e-9, "final_loss['warm-up'] should be gpt_ce"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert not any(nonfinite.values()), "neither run should have hit a NonFiniteLossError"
assert abs(final_loss["no warm-up"] - final_loss["warm-up"]) < 0.05, (
    "without warm-up at the peak rate the tiny run should end about where the warm-up run ends"
)
assert final_loss["no warm-up, 3x lr"] > final_loss["warm-up"] + 0.05, (
    "at three times the peak rate the run should end clearly worse"
)

# %% [raw]
# # END TESTS

# %% [markdown]
# *Your reading (for your teacher): why does neither run blow up, and what makes the second one
# worse?* _Type your answer here, replacing this text._

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# Neither run hits a non-finite loss. Without warm-up at the peak rate the tiny run ends where the
# warm-up run ends (even slightly lower); at three times the rate it ends clearly worse (about
# 0.2 nats further from the floor). Why nothing blows up: gradient clipping caps the norm of every
# step's gradient at 1; Adam's first steps have a size of about the learning rate per weight
# whatever the gradient (bias correction makes $\hat m/\sqrt{\hat v} \approx \pm 1$); the
# pre-LayerNorm blocks keep the activations' scale bounded; and the model is tiny and shallow.
# What makes the 3x run worse is the rate itself, most of the run, not the missing warm-up: the
# cosine decays only to a tenth of the peak, so it keeps taking steps of about 3e-3 to 3e-2 per
# weight, too large to settle into a good minimum in 100 steps (a run at 3x *with* warm-up would
# tell the two apart). Warm-up matters more for deep models and large batches (Goyal et al. 2017),
# where the first full-size steps, with Adam's $\hat v$ estimated from few gradients, can throw
# the weights into a region they do not recover from.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION
