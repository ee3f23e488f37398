# %% [markdown]
# # 8. Capstone: your own tiny ChatGPT, from nothing to a chat
#
# ChatGPT was made in stages: a tokenizer, a language model pretrained on a large amount of text,
# supervised fine-tuning on conversations written by people, then tuning on human preferences (OpenAI
# 2022; Ouyang et al. 2022). Each earlier chapter of this book built one stage. This chapter chains
# them, on a laptop CPU, in minutes, and measures what every stage bought:
#
# | stage | what it does | built in | code |
# |---|---|---|---|
# | corpus | text that ships with Python, plus chapter 3's generated language | 1, 3 | `aigc_book.capstone.corpus` |
# | tokenizer | byte-level BPE, digits kept apart | 3 | `aigc_book.text.chat_tokenizer` |
# | pretraining | next-token prediction, measured in bits per byte | 3 | `aigc_book.capstone.pipeline` |
# | supervised fine-tuning | multi-turn conversations in the chat template | 4 | `aigc_book.capstone.conversations` |
# | preference tuning | GRPO against a checker, or PPO, DPO, best-of-n | 5 | `aigc_book.rlhf` |
# | report card | loss, accuracy, bits per byte, time and FLOPs per stage | 6 | `aigc_book.capstone.report` |
# | chat | a terminal chat and a widget, with the KV cache | 2, 4 | `aigc_book.capstone.chat` |
#
# The same {term}`pipeline <training pipeline>` is one command, `python -m aigc_book tiny-chatgpt --out DIR`, and
# `python -m aigc_book chat --model DIR` talks to its result. The chapter runs a smaller setting so
# that it finishes in a few minutes on a laptop; the command's defaults train a larger model for longer.

# %%
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from aigc_book import get_device, seed_everything, use_book_style

use_book_style()
device = get_device()
seed_everything(0)
chapter_start = time.perf_counter()
print(f"PyTorch {torch.__version__}, device: {device}, threads: {torch.get_num_threads()}")

# %% [markdown]
# ## Settings
#
# *How large is the run, and where do you change it?*
#
# `CapstoneConfig` holds every size and step count. The chapter's CPU values produced the stored
# outputs; the command's defaults (`CapstoneConfig()`) train a wider, deeper model with a longer
# context for more steps. On a CUDA GPU, `CapstoneConfig.for_device` scales the model and the steps up.

# %%
from aigc_book.capstone.pipeline import CapstoneConfig

settings = CapstoneConfig(
    n_layer=3,
    n_embd=96,
    block_size=64,
    pretrain_steps=1000,
    conversations=12_000,
    sft_steps=1000,
    rl_steps=60,
    eval_prompts=300,
)
if device.type == "cuda":
    settings = CapstoneConfig.for_device(device)
RUN = Path(tempfile.mkdtemp(prefix="tiny-chatgpt-"))  # every stage's output, and the report card
for name, value in asdict(settings).items():
    print(f"  {name:<19}{value}")
print(f"output directory: {RUN}")

# %% [markdown]
# ## The recipe in one command
#
# *What does the pipeline do, and what happens when it is stopped halfway?*
#
# `run_pipeline(out, settings)` runs four stages; each writes a directory of `out`:
#
# ```text
# out/tokenizer/    tokenizer.json                           + stage.json
# out/pretrained/   model.safetensors, config.json, tokenizer.json + stage.json
# out/sft/          the fine-tuned chat model                 + stage.json
# out/tuned/        the preference-tuned chat model           + stage.json
# out/report.md     the report card (report.json: the same numbers for scripts)
# ```
#
# A stage is built in a hidden work directory and renamed into place only when it has finished, with
# `stage.json` written last: it records the settings the stage was made with and everything it
# measured. Run again, the pipeline skips every finished stage whose settings match, refuses one made
# with other settings (unless told to overwrite), and continues an unfinished pretraining or
# fine-tuning from its last checkpoint. The command line is the same function:
#
# ```bash
# python -m aigc_book tiny-chatgpt --out runs/chat            # the defaults: minutes, not hours, on a CPU
# python -m aigc_book chat --model runs/chat                  # talk to it
# python -m aigc_book tiny-chatgpt --out runs/chat-ppo --method ppo
# ```
#
# The chapter calls `run_pipeline` once per section with `until=`, the last stage to run: each call
# finds the earlier stages done and goes on, which is what a re-run after an interruption does too.

# %%
from aigc_book.capstone.pipeline import STAGES, load_stage_model, run_pipeline

stage_seconds = {}


def run_until(stage: str) -> dict:
    t0 = time.perf_counter()
    report = run_pipeline(RUN, settings, device=device, until=stage, log=print)
    stage_seconds[stage] = time.perf_counter() - t0
    return report["stages"]


print("stages:", " → ".join(STAGES))

# %% [markdown]
# ## A corpus that ships with Python
#
# *What does the model read before it ever sees a question?*
#
# ChatGPT's base model read hundreds of billions of tokens from the web and books. Ours reads what every
# Python installation carries: the language reference's help topics (`pydoc_data`, chapter 1) and the
# docstrings of the standard library, read from its source with `ast` (nothing is imported, so nothing
# runs). A tenth of the characters is chapter 3's bracket language, a generated language whose
# grammar we know. Whole documents are held out for measuring, never split across training and test.

# %%
from aigc_book.capstone.corpus import CorpusConfig, build_corpus

corpus = build_corpus(
    CorpusConfig(settings.docs_chars, settings.bracket_share, seed=settings.seed)
)
rows = ["| source | training characters | held-out characters |", "|---|---:|---:|"]
rows += [
    f"| {name} | {corpus.chars[name]:,} | {len(corpus.held_out[name]):,} |" for name in corpus.chars
]
display(Markdown("\n".join(rows)))
held_docs = [d for docs in corpus.held_out_documents.values() for d in docs]
assert not any(d in corpus.train for d in held_docs), (
    "a held-out document leaked into the training text"
)
print(
    f"{len(corpus.train):,} training characters; none of the {len(held_docs):,} held-out "
    "documents occurs in them"
)
print("\nA held-out docstring:\n")
print(next(d for d in corpus.held_out_documents["python docs"] if 120 < len(d) < 400))
print("\nA held-out bracket-language document:\n")
print(corpus.held_out_documents["bracket language"][0])

# %% [markdown]
# ## A tokenizer for the corpus
#
# *Which pieces does the model read and write?*
#
# Chapter 3's byte-level BPE (Sennrich et al. 2016; GPT-2's byte version, Radford et al. 2019), trained
# on the corpus, with one change that LLaMA made (Touvron et al. 2023, §2.1): numbers are split into
# single digits, so "12" and "21" are spelt with the same two tokens and arithmetic does not have to be
# learnt for every number separately. The {term}`chat template`'s special tokens, `<|user|>`, `<|end|>`,
# `<|assistant|>` and `<|pad|>`, get the last ids; typed text can never produce them.

# %%
from aigc_book.text.bpe import DIGIT_SPLIT_PATTERN, GPT2_SPLIT_PATTERN, ByteBPE
from aigc_book.text.chat_tokenizer import BPEChatTokenizer

stages = run_until("tokenizer")
tok = BPEChatTokenizer.load(RUN / "tokenizer" / "tokenizer.json")
for text in ["Return the number of items in a container.", "sort hdbeha", "add 17+25", "你好"]:
    pieces = tok.token_strings(tok.encode(text, allow_special=False))
    print(f"{len(pieces):>3} tokens: {pieces}")
# With a larger vocabulary BPE starts merging digits; the same corpus, both ways:
gpt2_style = ByteBPE.train(corpus.train, 2048, pattern=GPT2_SPLIT_PATTERN)
digits_apart = ByteBPE.train(corpus.train, 2048, pattern=DIGIT_SPLIT_PATTERN)
number = "In 1991 there were 2048 of them, 100 or 10"
print(f"\n2,048 tokens, GPT-2's split: {gpt2_style.token_strings(gpt2_style.encode(number))}")
print(f"2,048 tokens, digits apart:  {digits_apart.token_strings(digits_apart.encode(number))}")
assert all(
    len(p.strip()) <= 1 or not p.strip().isdigit()
    for p in digits_apart.token_strings(digits_apart.encode(number))
)
ids, n_prompt = tok.encode_chat("add 7+5 <|end|>", "12")
assert (
    ids.count(tok.end_id) == 2
)  # the typed "<|end|>" stayed text: only the template's two are special
assert (
    tok.decode(tok.encode("你好 🙂", allow_special=False)) == "你好 🙂"
)  # bytes: no unknown characters
t = stages["tokenizer"]
display(
    Markdown(
        f"{t['vocab_size']} tokens: {t['bpe_tokens']} from BPE and "
        f"{t['vocab_size'] - t['bpe_tokens']} special. On the held-out text a token holds "
        + " and ".join(f"{v:.2f} bytes of {k}" for k, v in t["bytes_per_token"].items())
        + ". Any text can be encoded (byte-level: there is no unknown character), and a typed "
        "`<|end|>` stays seven characters (checked above)."
    )
)

# %% [markdown]
# ## Pretraining
#
# *How well does the model know the text, and compared with what?*
#
# Chapter 3's objective: predict every next token, with the cross-entropy loss, on windows of
# `block_size` tokens drawn at random from the corpus. A loss per token cannot be compared across
# tokenizers (a token of 2 bytes is easier to guess than one of 4), so the {term}`report card` uses **bits per
# byte**, the summed negative log-likelihood of a held-out text divided by $\ln 2$ and by its number of
# UTF-8 bytes,
#
# $$\text{bits per byte} = \frac{-\sum_t \ln p_\theta(x_t \mid x_{<t})}{\ln 2 \cdot \text{bytes}},$$
#
# as The Pile does for its comparisons (Gao et al. 2020). The baseline is chapter 3's n-gram model
# (Witten–Bell smoothing), over bytes, fitted on the same training text.

# %%
from aigc_book.capstone.scoring import bits_per_byte

stages = run_until("pretrained")
p = stages["pretrained"]
base, _ = load_stage_model(RUN, "pretrained", device=device)
# The formula, by hand, on one held-out document: the summed loss of its predicted tokens over
# their bytes.
doc = corpus.held_out["python docs"][:4000]
doc_ids = torch.tensor(
    tok.encode(doc, allow_special=False)[: base.config.block_size + 1], device=device
)
with torch.no_grad():
    nats = torch.nn.functional.cross_entropy(
        base(doc_ids[None, :-1]).logits[0].float(), doc_ids[1:], reduction="sum"
    ).item()
by_hand = nats / math.log(2) / len(tok.decode(doc_ids[1:].tolist()).encode())
assert math.isclose(by_hand, bits_per_byte(base, tok, tok.decode(doc_ids.tolist())), rel_tol=1e-4)
print(f"one window by hand: {by_hand:.4f} bits per byte (bits_per_byte agrees)")

fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(*zip(*p["loss"]), label="training batches")
ax.plot(*zip(*p["val_loss"]), "o-", label="held-out batches")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per token)")
ax.set_title("Pretraining")
ax.legend()
plt.show()
rows = ["| held-out text | byte 5-gram | our GPT |", "|---|---:|---:|"]
rows += [
    f"| {k} | {p['ngram_bits_per_byte'][k]:.3f} | {v:.3f} |" for k, v in p["bits_per_byte"].items()
]
beats = [k for k, v in p["bits_per_byte"].items() if v < p["ngram_bits_per_byte"][k]]
display(
    Markdown(
        "Bits per byte on held-out documents (lower is better):\n\n"
        + "\n".join(rows)
        + "\n\n"
        + (
            f"The GPT beats the n-gram model on {' and '.join(beats)}"
            if beats
            else "The n-gram model is still ahead on every source"
        )
        + f", after {p['tokens_seen']:,} training tokens ({p['params']:,} parameters)."
    )
)

# %% [markdown]
# A pretrained model continues text; it has never seen the chat template, so it does not answer. Here
# is what it writes after `<|user|>add 7+5<|end|><|assistant|>`, and how often its answers are right:

# %%
rows = ["| prompt | its continuation |", "|---|---|"]
rows += [f"| `{q}` | `{a!r}` |" for q, a in p["samples"].items()]
display(
    Markdown(
        "\n".join(rows) + f"\n\nAccuracy on {settings.eval_prompts} held-out instructions: "
        f"{p['accuracy']['all']:.1%}."
    )
)

# %% [markdown]
# ## Supervised fine-tuning in conversations
#
# *How does a text model become a chat model?*
#
# By training on conversations in the chat template (chapter 4). A chat has to answer the *latest*
# message of a longer exchange, so each training example holds one to three turns of chapter 4's
# instruction family, and the loss falls on every assistant reply and its `<|end|>`, never on what the
# user typed (Ouyang et al. 2022 trained their SFT model on labelers' demonstrations the same way).
# The cell shows one example and the tokens that carry a loss:

# %%
from aigc_book.capstone.conversations import encode_conversations, sample_conversations
from aigc_book.tasks import instructions
from aigc_book.tasks.sft import sft_batch

example = sample_conversations(1, seed=5, max_turns=3)[0]
data = encode_conversations(tok, [example])
batch = sft_batch(data, 1, torch.Generator().manual_seed(0))
trained = batch["targets"][0][batch["targets"][0] != -100].tolist()
print(tok.decode(data.tokens[0][data.real_mask[0]].tolist()))
print("trained on:", repr(tok.decode(trained)))
assert tok.decode(trained) == "".join(f"{turn.answer}<|end|>" for turn in example)

stages = run_until("sft")
f = stages["sft"]
add_prompts = (instructions.InstructionConfig().max_operand + 1) ** 2
kinds = [k for k in f["accuracy"] if k != "all"]
rows = [
    "| kind | before (pretrained) | after SFT | held-out prompts also in the SFT data |",
    "|---|---:|---:|---:|",
]
rows += [
    f"| {k} | {p['accuracy'][k]:.1%} | {f['accuracy'][k]:.1%} | "
    f"{f['held_out_seen_in_training'][k]:.0%} |"
    for k in kinds
]
rows.append(f"| **all** | {p['accuracy']['all']:.1%} | **{f['accuracy']['all']:.1%}** | |")
display(
    Markdown(
        "Greedy accuracy on held-out instructions:\n\n" + "\n".join(rows) + "\n\n"
        "The training loss (responses, plus the pretraining windows mixed in; see below) "
        f"went from {f['loss'][0][1]:.3f} to {f['loss'][-1][1]:.3f} nats per token "
        f"in {settings.sft_steps} steps. `add` has only {add_prompts} different prompts "
        f"(sums of two numbers up to {instructions.InstructionConfig().max_operand}), "
        "so its held-out prompts were all seen in training; for the other kinds most were not."
    )
)

# %% [markdown]
# Fine-tuning on instructions alone makes a model forget the text it was pretrained on: chapter 5's SFT
# model had lost most of its bracket language before reinforcement learning began (its "alignment
# tax"). InstructGPT's remedy for its PPO stage was to keep mixing pretraining data in (PPO-ptx, Ouyang
# et al. 2022, eq. 2). The pipeline does the same during fine-tuning: every batch also holds
# `sft_ptx_batch_size` pretraining windows, whose next-token loss is added to the responses' loss. What the
# model kept, in {term}`bits per byte` on the held-out documents:

# %%
rows = [
    "| held-out text | after pretraining | after SFT (pretraining windows mixed in) |",
    "|---|---:|---:|",
]
rows += [f"| {k} | {v:.3f} | {f['bits_per_byte'][k]:.3f} |" for k, v in p["bits_per_byte"].items()]
display(
    Markdown(
        f"{settings.sft_ptx_batch_size} windows of {settings.block_size} tokens per batch:\n\n"
        + "\n".join(rows)
        + "\n\nExercise 3 turns the mixing off."
    )
)

# %% [markdown]
# ## Preference tuning
#
# *What does the last stage add?*
#
# Chapter 5 compared four ways of tuning a policy on feedback. The pipeline uses **GRPO** (Shao et al.
# 2024): its reward is the program that checks answers (a {term}`verifiable reward`), so there is no learned
# reward model to over-optimise, and it needs no value head. In chapter 5 it reached the highest gold
# reward of the methods; `--method ppo|dpo|best-of-n` runs the others. GRPO samples a group of answers
# to each prompt and raises the probability of those that score above their group's mean, with a KL
# penalty toward the SFT model. It learns from the model's own *samples*, so the place to look for
# its effect is the answers sampled at a temperature, as the chat gives them, not only the greedy
# ones.

# %%
stages = run_until("tuned")
u = stages["tuned"]
r = u["rlhf"]
rows = [
    "| | after SFT | after preference tuning |",
    "|---|---:|---:|",
    f"| greedy accuracy | {f['accuracy']['all']:.1%} | {u['accuracy']['all']:.1%} |",
    f"| sampled accuracy (temperature 0.8) | {f['accuracy_sampled']['all']:.1%} | "
    f"{u['accuracy_sampled']['all']:.1%} |",
    f"| gold reward (temperature 1, chapter 5's measure) | {r['gold_reward_before']:.3f} | "
    f"{r['gold_reward_after']:.3f} |",
    f"| KL to the SFT model (nats per answer) | 0 | {r['kl']:.3f} |",
]
display(Markdown("\n".join(rows)))
sampled_gain = u["accuracy_sampled"]["all"] - f["accuracy_sampled"]["all"]
greedy_gain = u["accuracy"]["all"] - f["accuracy"]["all"]
display(
    Markdown(
        f"GRPO changed the sampled accuracy by {100 * sampled_gain:+.1f} percentage points "
        f"and the greedy accuracy by {100 * greedy_gain:+.1f}, moving {r['kl']:.2f} nats "
        "from the SFT model. "
        + (
            "Most of what it bought is in the samples: it made the model's right answers more "
            "probable, which is what a chat at a temperature shows, while the most probable "
            "answer was often right already."
            if sampled_gain > greedy_gain
            else "Here the greedy answers gained at least as much as the sampled ones."
        )
    )
)

# %% [markdown]
# ## The report card
#
# *What did each stage cost and buy?*
#
# The pipeline writes `report.md` from the stages' records; here it is, as written:

# %%
display(Markdown((RUN / "report.md").read_text(encoding="utf-8")))

# %% [markdown]
# ## Talking to it
#
# *Does the chat do what the report card says?*
#
# `ChatSession` keeps the conversation in the chat template and answers each message with chapter 4's
# `generate` (sampling at temperature 0.8 by default, the KV cache on, stopping at `<|end|>`). The
# conversation below is held-out instructions, several turns in one chat; then the chat answers 200 more,
# each checked by the program that knows the right answer, to compare with the report card's sampled
# accuracy.

# %%
from aigc_book.capstone.chat import ChatSession, chat_widget, load_chat_model
from aigc_book.generation import GenerationConfig

model, chat_tok = load_chat_model(RUN, device=device)
session = ChatSession(model, chat_tok, seed=0)
for prompt in ["sort hdbeha", "add 7+5", "reverse bagc", "count a in abca", "close ([ef{i"]:
    reply = session.reply(prompt)
    mark = (
        "right"
        if instructions.check(prompt, reply)
        else f"wrong (the answer is {instructions.answer(prompt)})"
    )
    print(f"you> {prompt}\nbot> {reply}    [{mark}]")
print(
    f"\n{session.turns} turns in one conversation, {len(session.context_ids())} "
    f"of {model.config.block_size} context tokens used, {session.dropped_turns} old turns dropped"
)

held_out = instructions.sample_instructions(200, seed=settings.seed + 10_000)
chat_right = []
for inst in held_out:
    session.reset()
    chat_right.append(instructions.check(inst, session.reply(inst.prompt)))
chat_accuracy = sum(chat_right) / len(chat_right)
display(
    Markdown(
        f"The chat answered {chat_accuracy:.1%} of 200 held-out instructions right; the report "
        f"card's sampled accuracy after preference tuning is {u['accuracy_sampled']['all']:.1%} "
        f"(on {settings.eval_prompts} prompts, same temperature)."
    )
)

# %% [markdown]
# A model of this size has a short memory: everything it knows about the conversation has to fit in
# its context of `block_size` tokens. When a conversation grows past it, the session drops the oldest
# whole turns, as chat products do in some form, and says so. Bad input gets one clear line:

# %%
short_replies = GenerationConfig(do_sample=True, temperature=0.8, max_new_tokens=12)
long_chat = ChatSession(model, chat_tok, short_replies, seed=1)
for i in range(12):
    long_chat.reply(f"add {i % 10}+{(3 * i) % 10}")
print(
    f"after {long_chat.turns} turns: {long_chat.dropped_turns} dropped, "
    f"{len(long_chat.context_ids())} context tokens (block size {model.config.block_size})"
)
assert len(long_chat.context_ids()) <= model.config.block_size
for bad in ["", "   ", "sort " + "abcdefgh" * 40]:
    try:
        long_chat.reply(bad)
    except ValueError as err:
        print(f"error: {err}")
print("你好 →", repr(long_chat.reply("你好")))

# %% [markdown]
# The instructions it was fine-tuned on use the letters a to h and numbers up to 9. Outside that family it
# has seen nothing to imitate, and a right answer there would be luck:

# %%
config = instructions.InstructionConfig()
outside = ["reverse hello", "sort zyxw", "add 23+45", "count o in foo"]
right_outside = 0
for prompt in outside:
    session.reset()
    reply = session.reply(prompt)
    right_outside += instructions.check(prompt, reply)
    print(
        f"you> {prompt}\n"
        f"bot> {reply}    [{'right' if instructions.check(prompt, reply) else 'wrong'}]"
    )
print(
    f"{right_outside} of {len(outside)} right outside the family (letters {config.letters}, "
    f"numbers up to {config.max_operand})"
)

# %% [markdown]
# In Jupyter, the widget below is the same session with a text box (Enter sends; Reset starts a new
# conversation). On the static site it needs a running kernel; the conversation above is its transcript.
# In a terminal: `python -m aigc_book chat --model DIR`.

# %%
chat_widget(ChatSession(model, chat_tok, seed=2))

# %% [markdown]
# ## Interrupted and resumed
#
# *What happens when the power goes, or you press Ctrl-C?*
#
# The command below runs the whole pipeline on a very small setting, is interrupted with the signal
# Ctrl-C sends while pretraining, and is then run again. It finds the finished tokenizer, continues the
# pretraining from its checkpoint and goes on. A second directory gets the same command without an
# interruption, and the two chat models are compared weight for weight.

# %%
from aigc_book.models.gpt import GPT

tiny_flags = [
    "--docs-chars",
    "100000",
    "--vocab-size",
    "300",
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--block-size",
    "48",
    "--batch-size",
    "8",
    "--pretrain-steps",
    "300",
    "--conversations",
    "300",
    "--sft-steps",
    "30",
    "--rl-steps",
    "2",
    "--eval-prompts",
    "20",
    "--device",
    "cpu",
    "--no-progress",
]
command = [sys.executable, "-m", "aigc_book", "tiny-chatgpt", *tiny_flags]
interrupted, straight = Path(tempfile.mkdtemp()) / "run", Path(tempfile.mkdtemp()) / "run"
env = {**os.environ, "AIGC_CPU_THREADS": "1"}  # the same thread count in every run: same sums
proc = subprocess.Popen(
    [*command, "--out", str(interrupted)],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
)
checkpoint = interrupted / ".pretrained.partial" / "checkpoint"
while not checkpoint.exists() and proc.poll() is None:
    time.sleep(0.05)
proc.send_signal(signal.SIGINT)
_, err = proc.communicate()
print(f"first run: exit status {proc.returncode}\n  {err.strip().splitlines()[-1]}")
print("left behind:", sorted(p.name for p in interrupted.iterdir()))
resumed = subprocess.run(
    [*command, "--out", str(interrupted)], env=env, capture_output=True, text=True, check=True
)
subprocess.run(
    [*command, "--out", str(straight)], env=env, capture_output=True, text=True, check=True
)
a, b = GPT.from_pretrained(interrupted / "tuned"), GPT.from_pretrained(straight / "tuned")
same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
print(
    f"second run: exit status {resumed.returncode}; its chat model equals the "
    f"uninterrupted run's: {same}"
)
assert proc.returncode == 130 and same

# %% [markdown]
# ## What it cost
#
# *How much compute did each stage take, and how does that compare with the real thing?*
#
# Each stage's FLOPs are counted as chapter 6 counts them: every forward pass of every Transformer (the
# policy, the reference model, a reward model) is priced with $2N + 2\,n_\text{layer}\,n_\text{ctx}\,d$
# per token plus the output layer, and a pass that trains is counted three times (forward and a
# backward twice as costly; Kaplan et al. 2020). A hook counts the passes, so generation and scoring
# count too, not only training.

# %%
model_stages = ["pretrained", "sft", "tuned"]
labels = ["pretraining", "SFT", "preference tuning"]
flops = [stages[s]["flops"] for s in model_stages]
seconds = [stages[s]["seconds"] for s in model_stages]
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
axes[0].bar(labels, seconds)
axes[0].set_ylabel("seconds")
axes[1].bar(labels, flops)
axes[1].set_ylabel("FLOPs")
for axis in axes:
    axis.tick_params(axis="x", labelrotation=15)
plt.tight_layout()
plt.show()
GPT3_FLOPS = 3.14e23  # Brown et al. 2020, Table D.1 (3.64e3 PF-days)
total = sum(flops)
rows = [
    "| stage | seconds | FLOPs | FLOP/s achieved | share of the FLOPs |",
    "|---|---:|---:|---:|---:|",
]
rows += [
    f"| {lab} | {s:.0f} | {fl:.2e} | {fl / s:.2e} | {fl / total:.1%} |"
    for lab, s, fl in zip(labels, seconds, flops)
]
display(
    Markdown(
        "\n".join(rows) + f"\n\nIn all {total:.2e} FLOPs: GPT-3's pretraining alone took "
        f"{GPT3_FLOPS / total:.1e} times as many (3.14 × 10²³, Brown et al. 2020)."
    )
)

# %% [markdown]
# ## From here to ChatGPT
#
# *What is the same, and what is only bigger?*
#
# The recipe is InstructGPT's (Ouyang et al. 2022), of which ChatGPT is a sibling fine-tuned from a
# GPT-3.5-series model (OpenAI 2022). The table puts our run beside it; the ratios are computed from
# the numbers in the table.

# %%
ours = {
    "parameters": p["params"],
    "pretraining tokens": p["tokens_seen"],
    "fine-tuning examples": f["conversations"],
}
theirs = {"parameters": 175e9, "pretraining tokens": 300e9, "fine-tuning examples": 13e3}
sources = {
    "parameters": "GPT-3 175B (Brown et al. 2020)",
    "pretraining tokens": "GPT-3 (Brown et al. 2020)",
    "fine-tuning examples": "InstructGPT's SFT prompts, about 13k (Ouyang et al. 2022, §3.2)",
}
rows = ["| | ours | theirs | ratio | theirs: source |", "|---|---:|---:|---:|---|"]
rows += [
    f"| {k} | {ours[k]:,.0f} | {theirs[k]:,.0f} | {theirs[k] / ours[k]:,.3g}× | {sources[k]} |"
    for k in ours
]
display(Markdown("\n".join(rows)))

# %% [markdown]
# What is only bigger: the corpus, the model and the compute (by the factors above), and the people —
# InstructGPT's demonstrations and rankings came from about 40 labelers, where our feedback is a
# program that knows the answers. What is the same: next-token pretraining, a chat template with special
# tokens, supervised fine-tuning on the replies only, a KL-penalised optimisation of a reward, a KV
# cache and a sampling temperature at chat time. What is missing entirely: safety training, tool use,
# retrieval, and the evaluation of open-ended answers that no program can check.

# %% [markdown]
# ## Common misconceptions
#
# * **"A lower loss per token means a better model."** Only with the same tokenizer. A tokenizer with
#   longer tokens has fewer, harder predictions; bits per byte compares models across tokenizers.
# * **"A pretrained model can chat."** It continues text. Ours answered
#   held-out instructions at the rate shown in section "Pretraining" until it was fine-tuned on the template.
# * **"Preference tuning teaches new skills."** Here it mostly made right answers the model could
#   already sample more probable (section "Preference tuning" measures greedy and sampled accuracy
#   separately); a method that samples can only reinforce what it samples.
# * **"It learned to reverse, so it can reverse anything."** It learned the family it was shown; the
#   cell in section "Talking to it" counts its right answers outside it.
# * **"The chat remembers the whole conversation."** It sees its {term}`context window` and nothing else; a
#   long conversation loses its oldest turns.
# * **"Training a chat model takes a data centre."** Training a *good* one does. The recipe itself runs
#   on a laptop, and every stage can be measured there.

# %% [markdown]
# ## Summary

# %%
display(
    Markdown(
        "\n".join(
            [
                f"* A {t['vocab_size']}-token byte-level BPE (digits kept apart) "
                f"spelt the held-out Python text at {t['bytes_per_token']['python docs']:.2f} "
                "bytes per token.",
                f"* Pretraining a GPT of {p['params']:,} parameters on {p['tokens_seen']:,} tokens "
                f"reached {p['bits_per_byte']['python docs']:.3f} bits per byte on held-out Python "
                f"documentation (byte 5-gram: {p['ngram_bits_per_byte']['python docs']:.3f}); "
                f"it answered {p['accuracy']['all']:.1%} of held-out instructions.",
                f"* Supervised fine-tuning on {f['conversations']:,} conversations raised that "
                f"to {f['accuracy']['all']:.1%} (greedy).",
                "* GRPO against the checker moved the sampled accuracy from "
                f"{f['accuracy_sampled']['all']:.1%} to {u['accuracy_sampled']['all']:.1%} and the "
                f"greedy one to {u['accuracy']['all']:.1%}, at a KL of {r['kl']:.2f} nats.",
                f"* The chat answered {chat_accuracy:.1%} of 200 held-out instructions right; "
                "interrupted and run again, the pipeline produced the same model "
                "as an uninterrupted run.",
                f"* All of it took {total:.2e} FLOPs and {sum(seconds):.0f} seconds of training "
                f"and measuring on this {device.type.upper()}.",
            ]
        )
    )
)

# %% [markdown]
# ## Exercises
#
# These exercises are also a graded assignment, `assignments/08_capstone.py`: a teacher builds it
# with `python3 tools/book.py assignments` (see the teacher's page, `teaching.md`). Exercises
# marked *(autograded)* are checked by tests; those marked *(open)* are graded by hand.
#
# 1. **Does pretraining matter?** *(open)* Run the pipeline with `pretrain_steps=1` (almost no
#    pretraining) and compare the SFT accuracy with this chapter's. *Check:* the `sft` record's
#    `accuracy`.
# 2. **Another method.** *(open)* Run `python -m aigc_book tiny-chatgpt --method ppo` (and `dpo`) into
#    new directories and compare the report cards' sampled accuracy and KL with GRPO's. Which one gives
#    the most accuracy per nat of KL here? *Check:* `report.json`, `stages.tuned.rlhf.kl`.
# 3. **Forgetting.** *(autograded)* Run the pipeline with `sft_ptx_batch_size=0` (fine-tuning on
#    conversations alone) and compare the bits per byte after SFT with this chapter's. What did the
#    mixed-in pretraining windows cost in accuracy and in time? *Check:* the report card's table "Bits
#    per byte on held-out text after each stage" and the `sft` record's `seconds`.
# 4. **Numbers as digits.** *(autograded)* Train the tokenizer with GPT-2's pattern
#    (`pattern=GPT2_SPLIT_PATTERN` in `BPEChatTokenizer.train`) and count how many different tokens the
#    100 sums `add a+b` need for their answers. *Check:* the cell below counts them both ways.
# 5. **Memory.** *(autograded)* How many turns of `add` questions fit in a context of `block_size`
#    tokens before the session drops one? *Check:* `ChatSession.dropped_turns` after each reply.

# %%
# NBVAL_CHECK_OUTPUT
# 4. Answer tokens of the 100 sums, with digits apart and with GPT-2's split, on the same text.
answers = {str(a + b) for a in range(10) for b in range(10)}
apart = {t for s in answers for t in digits_apart.encode(s)}
merged = {t for s in answers for t in gpt2_style.encode(s)}
assert apart == {t for s in "0123456789" for t in digits_apart.encode(s)}
print(
    f"4. {len(answers)} different answers: {len(apart)} tokens with digits apart, "
    f"{'more' if len(merged) > len(apart) else 'no more'} with GPT-2's split"
)

# %% [markdown]
# ## Key terms
#
# | English | 中文 |
# |---|---|
# | {term}`pipeline (training recipe) <training pipeline>` | 训练流程 |
# | {term}`bits per byte` | 每字节比特数 |
# | {term}`chat template` | 对话模板 |
# | {term}`multi-turn conversation` | 多轮对话 |
# | {term}`verifiable reward` | 可验证奖励 |
# | {term}`report card` | 成绩单 |
# | {term}`context window` | 上下文窗口 |
# | {term}`resumable run` | 可断点续训的运行 |

# %% [markdown]
# ## References
#
# * {cite:t}`ch08-brown2020gpt3` (GPT-3).
# * {cite:t}`ch08-gao2020pile` (the Pile).
# * {cite:t}`ch08-kaplan2020scaling`.
# * {cite:t}`ch08-openai2022chatgpt`.
# * {cite:t}`ch08-ouyang2022instructgpt` (InstructGPT).
# * {cite:t}`ch08-radford2019gpt2` (GPT-2).
# * {cite:t}`ch08-sennrich2016bpe` (BPE).
# * {cite:t}`ch08-shao2024deepseekmath` (GRPO).
# * {cite:t}`ch08-touvron2023llama` (LLaMA).
#
# ```{bibliography}
# :filter: docname in docnames
# :keyprefix: ch08-
# :labelprefix: 8.
# :style: unsrt
# ```

# %%
print(f"chapter run time: {time.perf_counter() - chapter_start:.0f} s")
