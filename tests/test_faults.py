"""Fault injection: Ctrl-C at every phase of a step, kill -9 inside checkpoint writes, a full disk,
and a NaN loss. After each fault, resuming either reproduces the uninterrupted run bit for bit or
refuses with a clear message; it never continues from a silently different state."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tqdm.auto
from safetensors.torch import load_file

import aigc_book.training.checkpoint as checkpoint_module
from aigc_book.cli import main
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.text.corpora import python_docs_text
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.objectives import causal_lm_loss, sequence_lm_batch
from aigc_book.training.trainer import NonFiniteLossError, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
LANG = BracketLanguage()
DATA = {"train": LANG.sample(128, 12, seed=0), "val": LANG.sample(32, 12, seed=1)}
STEPS, EVERY = 6, 2  # checkpoint and evaluate every EVERY steps



def make_trainer() -> Trainer:
    torch.manual_seed(0)
    config = TransformerConfig(LANG.vocab_size, 12, n_layer=1, n_head=2, n_embd=16, dropout=0.1)  # dropout: global RNG
    model = GPT(config)
    cfg = TrainConfig(steps=STEPS, lr=3e-3, warmup_steps=1, eval_interval=EVERY, eval_batches=2, grad_accum=2,
                      progress=False)
    return Trainer(model, lambda split, g: sequence_lm_batch(DATA[split], 4, g), causal_lm_loss, cfg)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def straight():
    """The uninterrupted run: final weights, losses and evaluation steps."""
    t = make_trainer()
    t.train()
    return weights(t), t.history["train_loss"], [e["step"] for e in t.history["evals"]]


def assert_same_run(t: Trainer, straight) -> None:
    final, losses, eval_steps = straight
    for name, tensor in weights(t).items():
        assert torch.equal(tensor, final[name]), f"{name} differs from the uninterrupted run"
    assert t.history["train_loss"] == losses
    assert [e["step"] for e in t.history["evals"]] == eval_steps


def resume(ck) -> Trainer:
    t = make_trainer()
    t.load_checkpoint(ck)
    t.train(checkpoint_dir=ck, checkpoint_every=EVERY)
    return t


class SigintOnCall:
    """Wrap ``obj.name`` so that its ``nth`` call sends this process a real SIGINT (after the call
    when ``after``): the interrupt lands wherever Python next checks for signals."""

    def __init__(self, monkeypatch, obj, name: str, nth: int, after: bool = False):
        self.calls, real = 0, getattr(obj, name)

        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.calls == nth and not after:
                os.kill(os.getpid(), signal.SIGINT)
            result = real(*args, **kwargs)
            if self.calls == nth and after:
                os.kill(os.getpid(), signal.SIGINT)
            return result

        monkeypatch.setattr(obj, name, wrapped)


# (phase, object to wrap, attribute, after the real call?) -- the object is looked up on a trainer.
PHASES = {
    "data": (lambda t: t, "batch_fn", False),  # while drawing a micro-batch
    "forward": (lambda t: t, "loss_fn", False),  # between the two micro-batches' forward passes
    "update": (lambda t: t.optimizer, "step", True),  # right after the weights changed
    "evaluation": (lambda t: t, "evaluate", False),  # in an evaluation, after the step was committed
    "checkpoint write": (lambda t: checkpoint_module, "save_model", False),  # inside the atomic save
    "progress bar": (lambda t: tqdm.auto.tqdm, "update", False),  # drawing the bar after a step
}
# The nth call of each: 12 micro-batches and 6 updates in 6 steps, 3 evaluations and 3 checkpoints.
CALLS = {"data": (1, 2, 3, 6, 11), "forward": (1, 2, 5, 8), "update": (1, 3, 6), "evaluation": (1, 2, 3),
         "checkpoint write": (1, 2, 3), "progress bar": (1, 4, 6)}
SIGINT_CASES = [(phase, nth) for phase, calls in CALLS.items() for nth in calls]


@pytest.mark.parametrize("phase, nth", SIGINT_CASES, ids=[f"{p}-{n}" for p, n in SIGINT_CASES])
@pytest.mark.slow
def test_ctrl_c_anywhere_resumes_bit_for_bit(phase, nth, straight, monkeypatch, tmp_path):
    t = make_trainer()
    owner, name, after = PHASES[phase]
    SigintOnCall(monkeypatch, owner(t), name, nth, after)
    ck = tmp_path / "checkpoint"
    try:
        t.train(checkpoint_dir=ck, checkpoint_every=EVERY)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    monkeypatch.undo()
    assert interrupted, f"the injected SIGINT in {phase} (call {nth}) never arrived"
    assert_same_run(resume(ck), straight)


@pytest.mark.slow
def test_ctrl_c_in_the_final_evaluation_is_made_up_on_resume(straight, monkeypatch, tmp_path):
    t = make_trainer()
    SigintOnCall(monkeypatch, t, "evaluate", nth=STEPS // EVERY)  # the evaluation at the last step
    with pytest.raises(KeyboardInterrupt):
        t.train(checkpoint_dir=tmp_path / "ck", checkpoint_every=EVERY)
    monkeypatch.undo()
    resumed = resume(tmp_path / "ck")
    assert resumed.history["evals"][-1]["step"] == STEPS
    assert_same_run(resumed, straight)


@pytest.mark.parametrize("nth", [1, 2, 3, 4, 5, 6])
@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoint(nth, straight, monkeypatch, tmp_path):
    """The nth file operation of a checkpoint write fails with ENOSPC: the run stops with the
    error, the checkpoint before it is intact, and resuming from it reproduces the run."""
    t = make_trainer()
    ck = tmp_path / "checkpoint"
    t.train(until=EVERY, checkpoint_dir=ck, checkpoint_every=EVERY)  # one good checkpoint at step 2
    calls = {"n": 0}
    real_fsync, real_save = checkpoint_module.fsync_path, checkpoint_module.save_model

    def failing(real):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(checkpoint_module, "fsync_path", failing(real_fsync))
    monkeypatch.setattr(checkpoint_module, "save_model", failing(real_save))
    with pytest.raises(OSError, match="No space left"):
        t.train(checkpoint_dir=ck, checkpoint_every=EVERY)
    monkeypatch.undo()
    assert not (tmp_path / "checkpoint.tmp").exists()  # no half-written copy left behind
    resumed = make_trainer()
    resumed.load_checkpoint(ck)
    assert resumed.step == EVERY and resumed.resume_note is None
    resumed.train(checkpoint_dir=ck, checkpoint_every=EVERY)
    assert_same_run(resumed, straight)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(bad, straight, tmp_path):
    t = make_trainer()
    ck = tmp_path / "checkpoint"
    real_loss, calls = t.loss_fn, {"n": 0}

    def poisoned(model, batch):  # call 7: step 3's first micro-batch (after 4 training and 2 evaluation calls)
        calls["n"] += 1
        loss = real_loss(model, batch)
        return loss * bad if calls["n"] == 7 else loss

    t.loss_fn = poisoned
    before = weights(t)
    with pytest.raises(NonFiniteLossError, match=r"step 3: the loss is (nan|inf)"):
        t.train(checkpoint_dir=ck, checkpoint_every=EVERY)
    assert t.step == 2 and all(torch.isfinite(v).all() for v in weights(t).values())
    assert not all(torch.equal(before[k], v) for k, v in weights(t).items())  # it did train until then
    assert_same_run(resume(ck), straight)  # from the step-2 checkpoint, with a healthy loss


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(straight, tmp_path):
    t = make_trainer()
    ck = tmp_path / "checkpoint"
    t.train(until=4, checkpoint_dir=ck, checkpoint_every=EVERY)  # checkpoints at steps 2 (.prev) and 4
    (ck / "model.safetensors").write_bytes(b"\0" * 100)
    resumed = make_trainer()
    resumed.load_checkpoint(ck)
    assert resumed.step == 2 and "changed since the checkpoint at step 4" in resumed.resume_note
    resumed.train(checkpoint_dir=ck, checkpoint_every=EVERY)
    assert_same_run(resumed, straight)


# --------------------------------------------------------------------------- kill -9 (subprocesses)

CHILD = """
import os, signal, sys
import aigc_book.training.checkpoint as ck
from aigc_book import cli
module, name, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
target = {"checkpoint": ck, "os": os, "torch": ck.torch}[module]
real, calls = getattr(target, name), [0]
def killer(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(target, name, killer)
sys.exit(cli.main(sys.argv[4:]))
"""
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--steps", "6",
        "--eval-interval", "2", "--checkpoint-interval", "1", "--no-progress", "--device", "cpu"]
# Where the process dies: inside the weights write, the trainer-state write, an fsync, the
# directory switch (os.replace). Dying before the first checkpoint is complete (save_model 1,
# os.replace 3) leaves nothing to resume, and --resume says so; every other case resumes.
KILL_CASES = [("checkpoint", "save_model", 1), ("checkpoint", "save_model", 3), ("torch", "save", 2),
              ("checkpoint", "fsync_path", 9), ("checkpoint", "fsync_path", 13), ("os", "replace", 3),
              ("os", "replace", 4), ("os", "replace", 7)]


@pytest.fixture(scope="module")
def cli_straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    text = tmp / "docs.txt"
    text.write_text(python_docs_text()[:4000], encoding="utf-8")
    assert main(["train-gpt", "--text", str(text), "--out", str(tmp / "straight"), *TINY]) == 0
    return text, load_file(tmp / "straight" / "model.safetensors")


@pytest.mark.parametrize("module, name, nth", KILL_CASES, ids=[f"{m}.{n}-{k}" for m, n, k in KILL_CASES])
@pytest.mark.slow
def test_kill_9_inside_a_checkpoint_write_then_resume(module, name, nth, cli_straight, tmp_path, capsys):
    text, final = cli_straight
    out = tmp_path / "run"
    args = ["train-gpt", "--text", str(text), "--out", str(out), *TINY]
    child = subprocess.run([sys.executable, "-c", CHILD, module, name, str(nth), *args], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, f"not killed: {child.returncode} {child.stderr[-500:]}"
    code = main([*args, "--resume"])
    err = capsys.readouterr().err
    if code == 2:  # the only other acceptable outcome: a clear refusal
        assert "--resume" in err and "Traceback" not in err
        return
    assert code == 0, err
    resumed = load_file(out / "model.safetensors")
    assert all(torch.equal(resumed[k], final[k]) for k in final), "resumed run differs from the straight one"
    log = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in log["history"]["evals"]] == [2, 4, 6]
