# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 08_capstone
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # Assignment 8: Capstone — your own tiny ChatGPT
#
# This assignment goes with chapter 8 (read "The recipe in one command", "A tokenizer for the
# corpus", "Supervised fine-tuning in conversations" and "Talking to it"). You will turn off the
# pretraining text that the pipeline mixes into fine-tuning and measure what the model forgets,
# count the tokens that numbers need with two tokenizers, and find how many turns of a chat fit in
# the model's context. The chapter's run takes minutes; the setup cell below runs the same
# `run_pipeline` on a very small setting (a GPT of one block, 32 wide, 150 pretraining and 100
# fine-tuning steps) that finishes in seconds, through the supervised fine-tuning stage. Exercises 1
# and 2 need runs of the chapter's size and are graded by hand. After you answer an autograded
# question, run `grader.check("ex3")` (and so on) for its public tests; more tests are hidden and
# run when your notebook is graded.
#
# The setup gives you `settings` (the small `CapstoneConfig`), `RUN` (the run's directory, with
# `tokenizer/`, `pretrained/` and `sft/`), `stages` (each stage's record, as `run_pipeline` returns
# it), `corpus` (the pipeline's corpus) and `WORK` (a scratch directory for your own runs).

# %%
import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from aigc_book.capstone.chat import ChatSession
from aigc_book.capstone.corpus import CorpusConfig, build_corpus
from aigc_book.capstone.pipeline import CapstoneConfig, load_stage_model, run_pipeline
from aigc_book.generation import GenerationConfig
from aigc_book.models.gpt import GPT
from aigc_book.text.bpe import GPT2_SPLIT_PATTERN, ByteBPE
from aigc_book.text.chat_tokenizer import BPEChatTokenizer

torch.set_num_threads(1)  # the same sums on every run, and no fight over a busy CPU

settings = CapstoneConfig(
    docs_chars=60_000,
    vocab_size=300,
    n_layer=1,
    n_head=2,
    n_embd=32,
    block_size=48,
    batch_size=8,
    pretrain_steps=150,
    conversations=2000,
    sft_steps=100,
    eval_prompts=10,
)
WORK = Path(tempfile.mkdtemp(prefix="assignment8-"))
RUN = WORK / "run"
stages = run_pipeline(RUN, settings, until="sft")["stages"]
corpus = build_corpus(
    CorpusConfig(settings.docs_chars, settings.bracket_share, seed=settings.seed)
)

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# manual: true
# points: 2

# %% [markdown]
# **Exercise 1. Does pretraining matter?** *(open: graded by hand)* Run the pipeline with the
# chapter's settings but `pretrain_steps=1` (almost no pretraining) and compare the SFT accuracy
# with the chapter's (88.7 % greedy on 300 held-out instructions). *Check:* the `sft` record's
# `accuracy` (and `accuracy_unseen`, the held-out prompts that were not in the fine-tuning data).
# The run takes a few minutes on a laptop CPU, so do it outside this notebook, for instance
#
# ```python
# chapter = dict(n_layer=3, n_embd=96, block_size=64, pretrain_steps=1000, conversations=12_000,
#                sft_steps=1000, rl_steps=60, eval_prompts=300)
# no_pretraining = CapstoneConfig(**{**chapter, "pretrain_steps": 1})
# run_pipeline("runs/no-pretraining", no_pretraining, until="sft")
# ```
#
# Report the accuracy per kind of instruction for both runs, and explain what pretraining on
# Python's documentation does and does not give a model whose fine-tuning task is this instruction
# family.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# **Model answer (for teachers).** A good answer runs both settings (or takes the chapter's numbers
# for the pretrained run: 88.7 % greedy; add 100 %, close 95.3 %, count 70.2 %, reverse 87.1 %,
# sort 89.7 %), and compares per kind, on all held-out prompts and on the unseen ones
# (`accuracy_unseen`), which is where generalisation shows: every held-out `add` prompt was also in
# the fine-tuning data, so `add` measures memorisation, not what pretraining gave.
#
# What to expect and to accept: the instruction family is synthetic (letters a–h, digits, brackets),
# and 1,000 fine-tuning steps on 12,000 conversations (with pretraining windows mixed in) may teach
# much of it from scratch, so accuracy without pretraining need not fall to zero; the gap, whichever
# way and however large it comes out, should be reported with its size and not over-read from one
# seed. What pretraining gives
# here: the byte-level statistics of text, the bracket language (chapter 3), which is the `close`
# kind's material, and the habit of copying and continuing sequences within a context (induction
# heads, chapter 4), which `reverse`, `sort` and `count` need. What it does not give: the chat
# template and the answers themselves, which only fine-tuning teaches (the pretrained model answered
# 0 % of the instructions). A good answer also notes that the no-pretraining run's held-out bits per
# byte after SFT show how little of the text the mixed-in pretraining windows alone taught.
#
# Full marks: both runs reported per kind with the unseen-prompt accuracy, and an explanation that
# separates what fine-tuning teaches from what pretraining contributes. One point for the numbers
# without the explanation, or for an explanation not backed by a run.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex2
# manual: true
# points: 2

# %% [markdown]
# **Exercise 2. Another method.** *(open: graded by hand)* Run
# `python -m aigc_book tiny-chatgpt --method ppo` (and `--method dpo`) into new directories and
# compare the report cards' sampled accuracy and KL with GRPO's. Which one gives the most accuracy
# per nat of KL here? *Check:* `report.json`, `stages.tuned.rlhf.kl`. These runs take minutes each;
# do them outside this notebook (the three methods can share one pretrained and fine-tuned run: copy
# its `tokenizer/`, `pretrained/` and `sft/` directories into each new `--out` directory and run
# with the same settings and another `--method`). Report the three methods' sampled accuracy before
# and after, their KL, and the accuracy gained per nat of KL, and say what you think explains the
# differences.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# **Model answer (for teachers).** The measure is (sampled accuracy after − sampled accuracy after
# SFT) / KL, from `stages.tuned.accuracy_sampled.all`, `stages.sft.accuracy_sampled.all` and
# `stages.tuned.rlhf.kl` of each `report.json`. In the chapter's GRPO run the sampled accuracy went
# from 79.3 % to 84.0 % at a KL of 0.13 nats: about 36 percentage points per nat. A good answer
# computes the same for PPO and DPO from its own runs, with the same SFT model (otherwise the
# methods are not compared on the same start), and interprets the numbers:
#
# * **GRPO** is given the checker itself (a verifiable reward, 1 for a right answer) and compares
#   samples within a group, so there is no learned reward model to over-optimise; in the chapter it
#   bought 4.7 points of sampled accuracy for 0.13 nats.
# * **PPO** here optimises a *learned* reward model trained on preference pairs (chapter 5); where
#   that model is inaccurate, PPO can raise its proxy reward while the true accuracy stays flat or
#   falls, at a large KL (chapter 5's over-optimisation). Then its accuracy per nat is low or
#   negative: a negative gain divided by a large KL is not "efficient", and a good answer says so.
# * **DPO** learns offline from the same kind of preference pairs (two answers sampled from the SFT
#   model, labelled by chapter 5's simulated, noisy labelers), with no reward model and no sampling
#   during training; its gain depends on how often the labelers' preferred answer is the right one,
#   and its KL on how far the pairs pull the policy from the SFT model.
#
# Full marks: the three methods' numbers from runs that share the SFT model, the ratio computed
# correctly (with attention to negative gains and tiny KLs, where the ratio is unstable), and an
# explanation that refers to what each method optimises. One point for numbers without the
# explanation.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex3
# points: 3

# %% [markdown]
# **Exercise 3. Forgetting.** The pipeline mixes `settings.sft_ptx_batch_size` (8) pretraining windows
# into every fine-tuning batch. Run the fine-tuning stage again with `sft_ptx_batch_size=0` (fine-tuning
# on conversations alone), starting from the same pretrained model, and compare the held-out bits
# per byte after SFT with the setup's run (in the chapter, the run with mixing kept python docs at
# 2.076 bits per byte against 2.057 after pretraining). Our runs are tiny (100 fine-tuning steps)
# but the forgetting shows already.
#
# 1. Make the directory `ALONE` (given below), copy the setup run's `tokenizer/` and `pretrained/`
#    directories into it (`shutil.copytree`), and call `run_pipeline(ALONE, ..., until="sft")` with
#    the setup's `settings` changed only in `sft_ptx_batch_size=0` (`dataclasses.replace`). The pipeline
#    finds the two copied stages finished and runs only the fine-tuning.
# 2. `bpb_mixed` and `bpb_alone`: the `sft` records' `bits_per_byte` dicts (held-out source → bits
#    per byte) of the setup's run and of yours.
# 3. `extra_flops`: what the mixed-in windows cost, as the setup run's `sft` FLOPs minus yours (a
#    float). In seconds the cost is about the same share, but timings are noisy on a shared CPU.
#
# (What the mixing costs in *accuracy* needs runs of the chapter's size: in these tiny runs the
# accuracy is near zero either way.)

# %% [raw]
# # BEGIN SOLUTION

# %%
ALONE = WORK / "alone"
bpb_mixed = ...  # SOLUTION
bpb_alone = ...  # SOLUTION
extra_flops = ...  # SOLUTION
# BEGIN SOLUTION
ALONE.mkdir(exist_ok=True)
for stage in ("tokenizer", "pretrained"):
    shutil.copytree(RUN / stage, ALONE / stage, dirs_exist_ok=True)
alone = run_pipeline(ALONE, dataclasses.replace(settings, sft_ptx_batch_size=0), until="sft")["stages"]
bpb_mixed = stages["sft"]["bits_per_byte"]
bpb_alone = alone["sft"]["bits_per_byte"]
extra_flops = stages["sft"]["flops"] - alone["sft"]["flops"]
# END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert set(bpb_alone) == set(corpus.held_out) == set(bpb_mixed), (
    "bpb_mixed and bpb_alone should map each held-out source (python docs, bracket language) to "
    "bits per byte"
)
assert bpb_mixed == stages["sft"]["bits_per_byte"], (
    "bpb_mixed should be the setup run's sft bits_per_byte"
)
assert bpb_alone["python docs"] > bpb_mixed["python docs"], (
    "without the pretraining windows the model should have forgotten more of the python docs "
    "(more bits per byte)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_saved = json.loads((ALONE / "sft" / "stage.json").read_text())["settings"]
_want = {**settings.fingerprint("sft"), "sft_ptx_batch_size": 0}
assert _saved == _want, (
    f"ALONE/sft should be made with the setup's settings and sft_ptx_batch_size=0, not {_saved}"
)
_m = GPT.from_pretrained(ALONE / "sft").eval()
_tok = load_stage_model(ALONE, "sft")[1]
_ids = torch.tensor(_tok.encode(corpus.held_out["python docs"], allow_special=False))
_T = _m.config.block_size
_n = (len(_ids) - 1) // _T
_w = _ids[: _n * _T + 1].unfold(0, _T + 1, _T)  # windows that share one token with their neighbour
with torch.no_grad():
    _logits = _m(_w[:, :-1]).logits.flatten(0, 1)
    _nats = F.cross_entropy(_logits, _w[:, 1:].flatten(), reduction="sum")
_bytes = len(_tok.decode(_ids[1 : _n * _T + 1].tolist()).encode("utf-8"))
assert abs(bpb_alone["python docs"] - float(_nats) / math.log(2) / _bytes) < 1e-3, (
    "bpb_alone['python docs'] differs from the bits per byte of ALONE/sft's model computed by hand"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_m = GPT.from_pretrained(RUN / "sft")
_c = _m.config
# N: the non-embedding parameters, the blocks and the final LayerNorm
_N = sum(p.numel() for p in _m.transformer.h.parameters())
_N += sum(p.numel() for p in _m.transformer.ln_f.parameters())
_per_token = 2 * _N + 2 * _c.n_layer * _c.block_size * _c.n_embd + 2 * _c.n_embd * _c.vocab_size
# trained: x 3
_windows = 3 * settings.sft_steps * settings.sft_ptx_batch_size * _c.block_size * _per_token
assert isinstance(extra_flops, float), "extra_flops should be a float"
assert abs(extra_flops - _windows) / _windows < 0.05, (
    "extra_flops should be the setup's sft FLOPs minus yours: about 3 x (2N + 2 n_layer T d + 2 d "
    "V) per "
    "token of the sft_steps x sft_ptx_batch_size x block_size mixed-in tokens"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex4
# points: 3

# %% [markdown]
# **Exercise 4. Numbers as digits.** The pipeline's tokenizer splits numbers into single digits
# before BPE (LLaMA's rule); GPT-2's pattern keeps a run of digits together, so BPE may merge
# frequent numbers. Train two tokenizers on `corpus.train` with `vocab_size = 1024`:
# `BPEChatTokenizer.train` with its default pattern (digits apart) and with
# `pattern=GPT2_SPLIT_PATTERN`. The 100 sums `add a+b` (`a, b` in 0..9) have the answers `str(a +
# b)`. Compute:
#
# * `n_apart` and `n_merged`: how many different tokens the answers need with each tokenizer (encode
#   each answer alone with `allow_special=False`, as it follows `<|assistant|>` in the chat
#   template, and count the distinct ids);
# * `merged_answers`: the sorted list of the answers of two digits that GPT-2's split writes as a
#   single token.

# %% [raw]
# # BEGIN SOLUTION

# %%
n_apart = ...  # SOLUTION
n_merged = ...  # SOLUTION
merged_answers = ...  # SOLUTION
# BEGIN SOLUTION
answers = sorted({str(a + b) for a in range(10) for b in range(10)})
digits_apart = BPEChatTokenizer.train(corpus.train, 1024)
gpt2_style = BPEChatTokenizer.train(corpus.train, 1024, pattern=GPT2_SPLIT_PATTERN)
n_apart = len({t for s in answers for t in digits_apart.encode(s, allow_special=False)})
n_merged = len({t for s in answers for t in gpt2_style.encode(s, allow_special=False)})
merged_answers = [
    s for s in answers if len(s) == 2 and len(gpt2_style.encode(s, allow_special=False)) == 1
]
# END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_answers = {str(a + b) for a in range(10) for b in range(10)}
assert isinstance(n_apart, int) and isinstance(n_merged, int), "n_apart and n_merged should be ints"
assert n_apart == len(set("".join(_answers))), (
    "with digits apart, the answers need exactly one token per digit that occurs in them"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_bpe = ByteBPE.train(corpus.train, 1024, pattern=GPT2_SPLIT_PATTERN)
_answers = {str(a + b) for a in range(10) for b in range(10)}
assert n_merged == len({t for s in _answers for t in _bpe.encode(s)}), (
    "n_merged differs from the count with a byte-level BPE of 1024 tokens trained with GPT-2's "
    "pattern"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_bpe = ByteBPE.train(corpus.train, 1024, pattern=GPT2_SPLIT_PATTERN)
_two = sorted(s for s in {str(a + b) for a in range(10) for b in range(10)} if len(s) == 2)
assert list(merged_answers) == [s for s in _two if len(_bpe.encode(s)) == 1], (
    "merged_answers should list, sorted, the two-digit answers that GPT-2's split encodes as one "
    "token"
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
# **Exercise 5. Memory.** How many turns of `add` questions fit in a context of `block_size` tokens
# (48 here) before the session drops one? Load the setup run's fine-tuned model
# (`model, chat_tok = load_stage_model(RUN, "sft")`), open
# `session = ChatSession(model, chat_tok, short, seed=1)` with replies of at most 12 tokens,
# `short = GenerationConfig(do_sample=True, temperature=0.8, max_new_tokens=12)`, and send it
# the 12 messages `f"add {i % 10}+{(3 * i) % 10}"` for `i` in 0..11, in one conversation.
#
# * `dropped`: the list of `session.dropped_turns` after each of the 12 replies;
# * `turns_fit`: how many turns the context held when the session first had to drop one (the number
#   of replies before the first reply after which `dropped_turns` is above 0);
# * `first_turn_tokens`: how many tokens the first turn takes in the context (`<|user|>`, the
#   message, `<|end|>`, `<|assistant|>`, the reply and its closing `<|end|>`), from
#   `session.context_ids()`.

# %% [raw]
# # BEGIN SOLUTION

# %%
dropped = ...  # SOLUTION
turns_fit = ...  # SOLUTION
first_turn_tokens = ...  # SOLUTION
# BEGIN SOLUTION
model, chat_tok = load_stage_model(RUN, "sft")
short = GenerationConfig(do_sample=True, temperature=0.8, max_new_tokens=12)
session = ChatSession(model, chat_tok, short, seed=1)
dropped = []
for i in range(12):
    session.reply(f"add {i % 10}+{(3 * i) % 10}")
    if i == 0:
        first_turn_tokens = len(session.context_ids())
    dropped.append(session.dropped_turns)
turns_fit = next(i for i, d in enumerate(dropped) if d > 0)
# END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(dropped, list) and len(dropped) == 12, (
    "dropped should hold 12 counts, one per reply"
)
assert dropped[0] == 0 and all(a <= b for a, b in zip(dropped, dropped[1:])), (
    "dropped_turns starts at 0 and never decreases"
)
assert turns_fit == next(i for i, d in enumerate(dropped) if d > 0), (
    "turns_fit: the number of replies before the first one after which a turn was dropped"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_model, _tok = load_stage_model(RUN, "sft")
_s = ChatSession(_model, _tok, GenerationConfig(do_sample=True, temperature=0.8, max_new_tokens=12),
                 seed=1)
_B = _model.config.block_size
_first_drop = None
for _i in range(12):
    _msg = f"add {_i % 10}+{(3 * _i) % 10}"
    _p = 3 + len(_tok.encode(_msg, allow_special=False))  # <|user|> message <|end|> <|assistant|>
    # reply tokens kept free (a quarter of the context)
    _room = min(12, max(4, _B // 4), _B - _p - 1)
    _needs_drop = len(_s.context_ids()) + _p + 1 + _room > _B  # +1: the reply's closing <|end|>
    _before = _s.dropped_turns
    _reply = _s.reply(_msg)
    assert (_s.dropped_turns > _before) == _needs_drop, (
        "the session dropped a turn when the count said not"
    )
    if _needs_drop and _first_drop is None:
        _first_drop = _i
assert turns_fit == _first_drop, (
    "turns_fit differs from a count of the context's tokens turn by turn"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_model, _tok = load_stage_model(RUN, "sft")
_s = ChatSession(_model, _tok, GenerationConfig(do_sample=True, temperature=0.8, max_new_tokens=12),
                 seed=1)
_msg = "add 0+0"
_reply = _s.reply(_msg)
_hand = 3 + len(_tok.encode(_msg, allow_special=False))  # <|user|> message <|end|> <|assistant|>
_hand += len(_tok.encode(_reply, allow_special=False)) + 1  # the reply and its <|end|>
assert first_turn_tokens == _hand, (
    "first_turn_tokens: <|user|>, the message's tokens, <|end|>, <|assistant|>, the reply's "
    "tokens, <|end|>"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION
