"""The whole recipe in one call: tokenizer, pretraining, supervised fine-tuning, preference tuning, report card.

Introduced in chapter 8, section "The recipe in one command". :func:`run_pipeline` is what
``python -m aigc_book tiny-chatgpt --out DIR`` runs. Each stage reuses an earlier chapter's code:

1. **tokenizer** — chapter 3's byte-level BPE with digits split
   (:meth:`~aigc_book.text.chat_tokenizer.BPEChatTokenizer.train`), trained on the corpus of
   :mod:`aigc_book.capstone.corpus` (Python's documentation and docstrings, plus chapter 3's bracket
   language);
2. **pretrained** — chapter 3's causal objective on that corpus, measured in bits per byte on held-out
   documents against a byte n-gram model;
3. **sft** — chapter 4's supervised fine-tuning, on multi-turn conversations of its instruction family
   (:mod:`aigc_book.capstone.conversations`);
4. **tuned** — one of chapter 5's methods (:func:`~aigc_book.rlhf.pipeline.run_rlhf`), GRPO by default.
   Best-of-n trains nothing (it picks among samples when answering), so with it this stage saves the
   SFT model and records what best-of-n's answers scored.

Every stage is a directory of ``DIR`` written aside (``DIR/.STAGE.partial``) and renamed into place
when finished, with a ``stage.json`` holding the settings it was made with and what it measured. A
re-run skips each finished stage whose settings match, refuses one whose settings differ (a new
``--out`` or ``overwrite`` is needed), and continues an unfinished pretraining or fine-tuning
exactly from its last checkpoint (the :class:`~aigc_book.training.trainer.Trainer` resumes
bitwise); an unfinished preference-tuning stage starts again, with the same seeds, so it reaches
the same result. The report card (:mod:`aigc_book.capstone.report`) is rewritten from the stages'
records at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc_book.capstone.chat import CHAT_GENERATION_CONFIG
from aigc_book.capstone.conversations import encode_conversations, sample_conversations
from aigc_book.capstone.corpus import Corpus, CorpusConfig, build_corpus
from aigc_book.capstone.scoring import FlopMeter, accuracy_by_kind, bits_per_byte, ngram_bits_per_byte
from aigc_book.checks import is_int, is_number
from aigc_book.files import atomic_write, replace_directory, sync_directory
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.rlhf.dpo import DPOConfig
from aigc_book.rlhf.grpo import GRPOConfig
from aigc_book.rlhf.pipeline import METHODS, RLHFConfig, run_rlhf
from aigc_book.rlhf.ppo import PPOConfig
from aigc_book.rlhf.reward_training import RewardConfig
from aigc_book.rlhf.sft_policy import SFTPolicy
from aigc_book.runtime import seed_everything
from aigc_book.tasks import instructions
from aigc_book.tasks.sft import generate_responses, sft_batch
from aigc_book.text.chat_tokenizer import BPEChatTokenizer
from aigc_book.text.tokenizer import TOKENIZER_FILE
from aigc_book.training.trainer import TrainConfig, Trainer

__all__ = ["STAGES", "STAGE_FILE", "SAMPLE_PROMPTS", "CapstoneConfig", "StageMismatchError", "run_pipeline",
           "load_stage_model"]

STAGES = ("tokenizer", "pretrained", "sft", "tuned")
STAGE_FILE = "stage.json"
CHECKPOINT = "checkpoint"
SPENT_FILE = "spent.json"  # time and FLOPs of earlier, interrupted runs of an unfinished stage
# Held-out prompts every stage answers in the report card (one of each kind), and one that is no instruction.
SAMPLE_PROMPTS = ("close ([ef{i", "reverse bagc", "sort hdbeha", "count a in abca", "add 7+5", "hello")
DEFAULT_RL_STEPS = {"grpo": 150, "ppo": 60, "dpo": 150, "best-of-n": 8}
# Old name -> new name of CapstoneConfig fields, so that stages recorded before the rename still match.
RENAMED_FIELDS = {"batch": "batch_size", "pretrain_iters": "pretrain_steps", "sft_iters": "sft_steps",
                  "sft_ptx_batch": "sft_ptx_batch_size"}


@dataclass(frozen=True)
class CapstoneConfig:
    """Everything the pipeline does; the defaults took 11 minutes on the book's 2-core CPU (0.6 GB of memory).

    ``sft_ptx_batch_size`` pretraining windows join every fine-tuning batch, their next-token loss added to
    the responses' with weight 1: fine-tuning on instructions alone makes the model forget the text
    it was pretrained on, and mixing pretraining data back in is InstructGPT's remedy (its PPO-ptx,
    Ouyang et al. 2022, arXiv:2203.02155, eq. 2). ``rl_steps`` counts GRPO's or PPO's iterations, DPO's
    optimizer steps or best-of-n's n (None: a default per method). The fields each stage depends on are
    listed in :attr:`STAGE_FIELDS`.
    """

    docs_chars: int | None = None
    bracket_share: float = 0.1
    vocab_size: int = 512
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    batch_size: int = 32
    pretrain_steps: int = 2500
    pretrain_lr: float = 3e-3
    conversations: int = 20_000
    max_turns: int = 3
    sft_steps: int = 1500
    sft_lr: float = 2e-3
    sft_ptx_batch_size: int = 8
    method: str = "grpo"
    rl_steps: int | None = None
    rl_lr: float = 2e-5
    pairs: int = 4000
    rm_steps: int = 300
    eval_prompts: int = 500
    seed: int = 0

    STAGE_FIELDS = {
        "tokenizer": ("docs_chars", "bracket_share", "vocab_size", "seed"),
        "pretrained": ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "pretrain_steps", "pretrain_lr",
                       "eval_prompts"),
        "sft": ("conversations", "max_turns", "sft_steps", "sft_lr", "sft_ptx_batch_size"),
        "tuned": ("method", "rl_steps", "rl_lr", "pairs", "rm_steps"),
    }

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        ints = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "pretrain_steps",
                "conversations", "max_turns", "sft_steps", "pairs", "rm_steps", "eval_prompts")
        for name in ints + (("rl_steps",) if self.rl_steps is not None else ()):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("pretrain_lr", "sft_lr", "rl_lr"):
            value = getattr(self, name)
            if not is_number(value) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        ptx = self.sft_ptx_batch_size
        if not is_int(ptx) or ptx < 0:
            raise ValueError(f"sft_ptx_batch_size must be an int >= 0 (0: no pretraining text in fine-tuning), "
                             f"got {ptx!r}")
        if self.vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 (the byte alphabet), got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.block_size < 32:
            raise ValueError(f"block_size must be at least 32 tokens (a conversation must fit), got {self.block_size}")
        CorpusConfig(self.docs_chars, self.bracket_share, seed=self.seed)  # its checks name a bad value

    @property
    def steps(self) -> int:
        """Preference tuning's steps: ``rl_steps`` or the method's default."""
        return self.rl_steps if self.rl_steps is not None else DEFAULT_RL_STEPS[self.method]

    def fingerprint(self, stage: str) -> dict:
        """The settings ``stage`` and every stage before it depend on."""
        fields = [f for s in STAGES[: STAGES.index(stage) + 1] for f in self.STAGE_FIELDS[s]]
        return {f: getattr(self, f) for f in fields}

    @classmethod
    def for_device(cls, device: torch.device | str, **changes) -> CapstoneConfig:
        """The defaults on a CPU; on CUDA a wider, deeper model with a longer context, trained longer."""
        if torch.device(device).type == "cuda":
            changes = {"n_layer": 8, "n_head": 8, "n_embd": 512, "block_size": 256, "batch_size": 64,
                       "pretrain_steps": 6000, "pretrain_lr": 1e-3, "vocab_size": 2048, "sft_steps": 3000,
                       "sft_lr": 5e-4, "conversations": 50_000, "rl_steps": 300, **changes}
        return cls(**changes)


class StageMismatchError(ValueError):
    """A stage in the output directory was made with other settings."""


# ------------------------------------------------------------------------------------------------
# Stage directories
# ------------------------------------------------------------------------------------------------


def _partial(out: Path, stage: str) -> Path:
    return out / f".{stage}.partial"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StageMismatchError(f"{path}: unreadable ({err}); remove it or run again with --overwrite") from None


def _finished(out: Path, stage: str, settings: CapstoneConfig) -> dict | None:
    """The record of a finished stage made with these settings; None if it is not there yet."""
    directory = out / stage
    if not directory.exists():
        return None
    data = _read_json(directory / STAGE_FILE)
    saved = _saved_settings(data.get("settings"))
    if saved != settings.fingerprint(stage):
        raise StageMismatchError(
            f"{directory} was made with other settings ({_difference(saved, settings, stage)}); "
            "use another --out, or --overwrite to start again")
    return data["record"]


def _saved_settings(saved):
    """A stage's recorded settings with their fields under today's names (see :data:`RENAMED_FIELDS`)."""
    if not isinstance(saved, dict):
        return saved
    return {RENAMED_FIELDS.get(key, key): value for key, value in saved.items()}


def _difference(saved, settings: CapstoneConfig, stage: str) -> str:
    now = settings.fingerprint(stage)
    if not isinstance(saved, dict):
        return "no settings recorded"
    names = [k for k in now if saved.get(k) != now[k]]
    return ", ".join(f"{k}: {saved.get(k)!r} there, {now[k]!r} now" for k in names) or "different stages"


def _start(out: Path, stage: str, settings: CapstoneConfig) -> Path:
    """The work directory of an unfinished stage: made fresh, or reused if its settings match."""
    work = _partial(out, stage)
    if work.exists() and not (work / "settings.json").exists():
        shutil.rmtree(work)  # killed before its first file: it holds nothing
    if work.exists():
        saved = _saved_settings(_read_json(work / "settings.json"))
        if saved != settings.fingerprint(stage):
            raise StageMismatchError(
                f"{work} holds an unfinished {stage} stage made with other settings "
                f"({_difference(saved, settings, stage)}); use another --out, or --overwrite to start again")
        return work
    work.mkdir(parents=True)
    _write_json(work / "settings.json", settings.fingerprint(stage))
    return work


def _write_json(path: Path, data) -> None:
    encoded = json.dumps(data).encode("utf-8")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(encoded))


def _commit(out: Path, stage: str, work: Path, settings: CapstoneConfig, record: dict) -> dict:
    """Write ``stage.json``, then rename the work directory into place: all or nothing (killed before the
    rename, the stage is still unfinished and a re-run finishes it). Returns the record as written
    (JSON: tuples become lists), so a re-run that skips the stage returns the same value."""
    shutil.rmtree(work / CHECKPOINT, ignore_errors=True)  # killed after this, the stage reruns: same seeds
    data = json.dumps({"stage": stage, "settings": settings.fingerprint(stage), "record": record}, indent=1)
    (work / STAGE_FILE).write_text(data, encoding="utf-8")
    sync_directory(work)
    replace_directory(work, out / stage)  # out / stage does not exist: _finished would have skipped the stage
    for name in ("settings.json", SPENT_FILE):  # bookkeeping of the unfinished stage
        (out / stage / name).unlink(missing_ok=True)
    return json.loads(data)["record"]


class _Spent:
    """Seconds and FLOPs of a stage, including earlier interrupted runs (kept in ``spent.json``)."""

    def __init__(self, work: Path) -> None:
        self.path = work / SPENT_FILE
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet (or unreadable): count from here
            saved = {}
        self.seconds, self.flops = saved.get("seconds", 0.0), saved.get("flops", 0.0)

    def __enter__(self) -> _Spent:
        self.meter = FlopMeter().__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.meter.__exit__()
        self.seconds += time.perf_counter() - self.t0
        self.flops += self.meter.flops
        _write_json(self.path, {"seconds": self.seconds, "flops": self.flops})


def load_stage_model(out, stage: str, *, device=None) -> tuple[GPT, BPEChatTokenizer]:
    """The model and tokenizer a finished stage saved."""
    directory = Path(out) / stage
    return GPT.from_pretrained(directory, device=device), BPEChatTokenizer.load(directory / TOKENIZER_FILE)



# ------------------------------------------------------------------------------------------------
# The stages
# ------------------------------------------------------------------------------------------------


def _corpus(settings: CapstoneConfig) -> Corpus:
    return build_corpus(CorpusConfig(settings.docs_chars, settings.bracket_share, seed=settings.seed))


def _tokenizer_stage(work: Path, corpus: Corpus, s: CapstoneConfig) -> dict:
    t0 = time.perf_counter()
    tok = BPEChatTokenizer.train(corpus.train, s.vocab_size)
    tok.save(work / TOKENIZER_FILE)
    bytes_per_token = {name: len(text.encode()) / len(tok.encode(text, allow_special=False))
                       for name, text in corpus.held_out.items()}
    return {"vocab_size": tok.vocab_size, "bpe_tokens": tok.bpe.vocab_size, "corpus_chars": corpus.chars,
            "train_bytes": corpus.train_bytes,
            "held_out_bytes": {k: len(v.encode()) for k, v in corpus.held_out.items()},
            "bytes_per_token": bytes_per_token, "seconds": time.perf_counter() - t0, "flops": 0.0}


def _measure_model(model: GPT, tok, corpus: Corpus, s: CapstoneConfig, unseen=None) -> dict:
    """What every model stage records: bits per byte per held-out source, accuracy (also on the ``unseen``
    held-out prompts, those not in the fine-tuning data, when given), sample answers."""
    prompts = _eval_prompts(s)
    extra = {"accuracy_unseen": accuracy_by_kind(model, tok, unseen)} if unseen else {}
    return {**extra,
        "bits_per_byte": {name: bits_per_byte(model, tok, text) for name, text in corpus.held_out.items()},
        "accuracy": accuracy_by_kind(model, tok, prompts),
        "accuracy_sampled": accuracy_by_kind(model, tok, prompts, temperature=CHAT_GENERATION_CONFIG.temperature,
                                             seed=s.seed),
        "samples": dict(zip(SAMPLE_PROMPTS, generate_responses(model, tok, SAMPLE_PROMPTS, max_new_tokens=16))),
    }


def _eval_prompts(s: CapstoneConfig) -> list[instructions.Instruction]:
    return instructions.sample_instructions(s.eval_prompts, seed=s.seed + 10_000)


def _lm_loss(model: GPT, batch: dict) -> torch.Tensor:
    """The next-token loss of ``batch``, plus that of its pretraining windows (``ptx_idx``) if it has any."""
    loss = model(batch["idx"], targets=batch["targets"]).loss
    if "ptx_idx" in batch:
        loss = loss + model(batch["ptx_idx"], targets=batch["ptx_targets"]).loss
    return loss


def _windows(ids: torch.Tensor, n: int, T: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random windows of ``T + 1`` tokens: inputs and next-token targets."""
    starts = torch.randint(len(ids) - T - 1, (n,), generator=g)
    x = torch.stack([ids[i : i + T + 1] for i in starts.tolist()])  # (n, T + 1)
    return x[:, :-1], x[:, 1:]


def _train(model: GPT, work: Path, batch_fn: Callable, config: TrainConfig) -> dict:
    """Train with checkpoints in ``work``: continue from one if it is there (exactly; Ctrl-C saves one)."""
    trainer = Trainer(model, batch_fn, _lm_loss, config)
    checkpoint = work / CHECKPOINT
    if checkpoint.exists():
        trainer.load_checkpoint(checkpoint)
    trainer.train(checkpoint_dir=checkpoint, checkpoint_every=max(1, config.steps // 10))
    return trainer.history


def _pretrain_stage(work: Path, corpus: Corpus, tok, s: CapstoneConfig, device, progress: bool) -> tuple[GPT, dict]:
    ids = _pretraining_ids(tok, corpus)
    held = torch.tensor(tok.encode("\n\n".join(corpus.held_out.values()), allow_special=False))
    T = s.block_size

    def windows(split: str, g: torch.Generator) -> dict:
        idx, targets = _windows(ids if split == "train" else held, s.batch_size, T, g)
        return {"idx": idx, "targets": targets}

    torch.manual_seed(s.seed)
    config = TransformerConfig(vocab_size=tok.vocab_size, block_size=T, n_layer=s.n_layer, n_head=s.n_head,
                               n_embd=s.n_embd, dropout=0.0)
    model = GPT(config).to(device)
    with _Spent(work) as spent:
        history = _train(model, work, windows, TrainConfig(
            steps=s.pretrain_steps, lr=s.pretrain_lr, warmup_steps=min(100, s.pretrain_steps // 10),
            eval_interval=max(1, s.pretrain_steps // 10), eval_batches=5, seed=s.seed, progress=progress))
    model.eval()
    record = {"params": model.num_parameters(), "non_embedding_params": model.num_parameters(exclude_embeddings=True),
              "train_tokens": ids.numel(), "tokens_seen": s.pretrain_steps * s.batch_size * T,
              "loss": _every(history["train_loss"]), "val_loss": [(e["step"], e["val"]) for e in history["evals"]],
              "ngram_bits_per_byte": ngram_bits_per_byte(corpus.train, corpus.held_out),
              **_measure_model(model, tok, corpus, s), "seconds": spent.seconds, "flops": spent.flops}
    return model, record


def _pretraining_ids(tok, corpus: Corpus) -> torch.Tensor:
    return torch.tensor(tok.encode(corpus.train, allow_special=False))


def _every(losses: list[float], points: int = 50) -> list[tuple[int, float]]:
    """About ``points`` (step, loss) pairs of a loss curve, for the report."""
    stride = max(1, len(losses) // points)
    return [(i + 1, float(v)) for i, v in enumerate(losses) if (i + 1) % stride == 0 or i + 1 == len(losses)]


def _sft_stage(work: Path, model: GPT, corpus: Corpus, tok, s: CapstoneConfig, progress: bool) -> tuple[GPT, dict]:
    conversations = _conversations(s)
    data = encode_conversations(tok, conversations, max_length=s.block_size + 1, truncate=True)
    seen = {turn.prompt for c in conversations for turn in c}
    prompts = _eval_prompts(s)
    ids = _pretraining_ids(tok, corpus)

    def batch(split: str, g: torch.Generator) -> dict:
        b = sft_batch(data, s.batch_size, g)
        if s.sft_ptx_batch_size:
            b["ptx_idx"], b["ptx_targets"] = _windows(ids, s.sft_ptx_batch_size, s.block_size, g)
        return b

    with _Spent(work) as spent:
        history = _train(model, work, batch, TrainConfig(
            steps=s.sft_steps, lr=s.sft_lr, warmup_steps=min(30, s.sft_steps // 10), weight_decay=0.0,
            eval_batches=1, eval_splits=(), seed=s.seed + 1, progress=progress))
    model.eval()
    record = {"conversations": len(conversations), "turns": int((data.tokens == tok.assistant_id).sum()),
              "tokens": int(data.real_mask.sum()), "loss": _every(history["train_loss"]),
              "held_out_seen_in_training": _seen_share(prompts, seen),
              **_measure_model(model, tok, corpus, s, unseen=[p for p in prompts if p.prompt not in seen]),
              "seconds": spent.seconds, "flops": spent.flops}
    return model, record


def _conversations(s: CapstoneConfig) -> list:
    return sample_conversations(s.conversations, seed=s.seed + 1, max_turns=s.max_turns)


def _seen_share(prompts, seen: set[str]) -> dict[str, float]:
    """Per kind, the share of held-out prompts that also occur in the training conversations."""
    by_kind: dict[str, list[bool]] = {}
    for p in prompts:
        by_kind.setdefault(p.kind, []).append(p.prompt in seen)
    return {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}


def _tune_stage(work: Path, model: GPT, corpus: Corpus, tok, s: CapstoneConfig, device, progress: bool,
                log) -> tuple[GPT, dict]:
    T = s.block_size
    ids = _pretraining_ids(tok, corpus)[: 100 * (T + 1)]
    pretrain_windows = ids[: len(ids) // (T + 1) * (T + 1)].view(-1, T + 1)  # PPO-ptx's data, if it is used
    rl = RLHFConfig(kinds=instructions.KINDS, pairs=s.pairs, reward=RewardConfig(steps=s.rm_steps),
                    eval_prompts=s.eval_prompts, ppo=PPOConfig(lr=s.rl_lr, kl_coef=0.1), grpo=GRPOConfig(lr=s.rl_lr),
                    dpo=DPOConfig(lr=s.rl_lr))
    sft = SFTPolicy(model, tok, pretrain_windows, {}, 0.0)
    with _Spent(work) as spent:
        summary, policy, _ = run_rlhf(s.method, steps=s.steps, seed=s.seed, settings=rl, device=device,
                                      progress=progress, sft=sft, log=log)
    policy.eval()
    seen = {turn.prompt for c in _conversations(s) for turn in c}
    unseen = [p for p in _eval_prompts(s) if p.prompt not in seen]
    record = {"method": s.method, "steps": s.steps, "rlhf": summary,
              **_measure_model(policy, tok, corpus, s, unseen=unseen), "seconds": spent.seconds, "flops": spent.flops}
    return policy, record


# ------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------


def run_pipeline(out, settings: CapstoneConfig | None = None, *, device=None, progress: bool = False,
                 log: Callable[[str], None] | None = None, overwrite: bool = False, until: str = STAGES[-1]) -> dict:
    """Run (or finish) the stages into ``out``, up to and including ``until``, and write ``report.md`` and
    ``report.json``; returns ``{"settings", "device", "stages"}`` with the record of every finished stage.
    See the module docstring for what a re-run does (a later call with a later ``until`` goes on)."""
    from aigc_book.capstone.report import write_report

    s = settings or CapstoneConfig()
    if until not in STAGES:
        raise ValueError(f"until must be one of {', '.join(STAGES)}; got {until!r}")
    say = log or (lambda message: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; --out must be a directory (new or from an earlier run)")
    if overwrite and out.exists():
        for name in [*STAGES, *(f".{st}.partial" for st in STAGES), "report.md", "report.json"]:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or "cpu")
    records = {stage: _finished(out, stage, s) for stage in STAGES}  # refuses a mismatch before any work
    corpus = _corpus(s)
    model = tok = None
    for stage in STAGES[: STAGES.index(until) + 1]:
        if records[stage] is not None:
            say(f"{stage}: already done in {out / stage}")
            continue
        say(f"{stage}: running")
        work = _start(out, stage, s)
        seed_everything(s.seed + 101 * STAGES.index(stage))  # a stage run alone starts where a full run would
        if stage == "tokenizer":
            records[stage] = _tokenizer_stage(work, corpus, s)
        else:
            if tok is None:
                tok = BPEChatTokenizer.load(out / "tokenizer" / TOKENIZER_FILE)
            if stage != "pretrained" and model is None:
                model = GPT.from_pretrained(out / STAGES[STAGES.index(stage) - 1], device=device)
            if stage == "pretrained":
                model, records[stage] = _pretrain_stage(work, corpus, tok, s, device, progress)
            elif stage == "sft":
                model, records[stage] = _sft_stage(work, model, corpus, tok, s, progress)
            else:
                model, records[stage] = _tune_stage(work, model, corpus, tok, s, device, progress, say)
            model.save_pretrained(work)
            tok.save(work / TOKENIZER_FILE)
        records[stage] = _commit(out, stage, work, s, records[stage])
        say(f"{stage}: done in {records[stage]['seconds']:.0f} s")
    report = {"settings": dataclasses.asdict(s), "device": str(device),
              "stages": {k: v for k, v in records.items() if v is not None}}
    write_report(out, report)
    return report
