"""The trainer: schedule, weight decay groups, accumulation, exact resume, safe checkpoints."""

import dataclasses

import pytest
import torch

from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.objectives import causal_lm_loss, sequence_lm_batch
from aigc_book.training.trainer import (
    RENAMED_FIELDS,
    CheckpointError,
    TrainConfig,
    Trainer,
    configure_optimizer,
    lr_at,
    saved_train_config,
)

LANG = BracketLanguage()
DATA = {"train": LANG.sample(256, 16, seed=0), "val": LANG.sample(64, 16, seed=1)}


def batch_fn(split, generator):
    return sequence_lm_batch(DATA[split], 4, generator)


def make_model(seed=0, dropout=0.1, n_embd=16):
    torch.manual_seed(seed)
    return GPT(TransformerConfig(LANG.vocab_size, 16, n_layer=1, n_head=2, n_embd=n_embd, dropout=dropout))


def config(**kw):
    base = dict(steps=10, lr=3e-3, warmup_steps=2, eval_interval=4, eval_batches=2, grad_accum=2, progress=False)
    return TrainConfig(**{**base, **kw})


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert [lr_at(s, cfg) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_at(9, cfg) == pytest.approx(1.0)
    mid = 10 + 45  # half-way through the decay: cos(pi/2) = 0
    assert lr_at(mid, cfg) == pytest.approx(0.1 + 0.5 * 0.9)
    assert lr_at(100, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_weight_decay_applies_to_matrices_only():
    model = make_model()
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_parameters()  # tied once


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0)


def test_gradient_accumulation_equals_one_big_batch():
    """Two micro-batches of 4 with accumulation = one batch of 8 (same rows)."""
    rows = DATA["train"][:8]

    def halves(split, generator):
        halves.calls += 1
        part = rows[:4] if halves.calls % 2 else rows[4:]
        return {"idx": part[:, :-1], "targets": part[:, 1:]}

    halves.calls = 0
    a = Trainer(make_model(dropout=0.0).double(), halves, causal_lm_loss, config(steps=1, grad_accum=2))
    a.train()
    b = Trainer(make_model(dropout=0.0).double(), lambda s, g: {"idx": rows[:, :-1], "targets": rows[:, 1:]},
                causal_lm_loss, config(steps=1, grad_accum=1))
    b.train()
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)


@pytest.mark.slow
def test_training_reduces_the_loss():
    t = Trainer(make_model(dropout=0.0), batch_fn, causal_lm_loss, config(steps=60, eval_interval=0, lr=1e-2))
    before = t.evaluate()["val"]
    history = t.train()
    assert history["evals"][-1]["val"] < before - 0.5
    assert len(history["train_loss"]) == 60 and len(history["ms"]) == 60


@pytest.mark.slow
def test_resume_gives_bitwise_the_same_weights(tmp_path):
    """k + m steps in one go == k steps, save, fresh objects, load, m steps (dropout and accumulation on)."""
    straight = Trainer(make_model(), batch_fn, causal_lm_loss, config())
    straight.train()
    first = Trainer(make_model(), batch_fn, causal_lm_loss, config())
    first.train(until=5)
    first.save_checkpoint(tmp_path / "ck")
    torch.manual_seed(999)  # disturb every global RNG: the checkpoint must restore them
    torch.rand(7)
    resumed = Trainer(make_model(seed=123), batch_fn, causal_lm_loss, config())
    resumed.load_checkpoint(tmp_path / "ck")
    assert resumed.step == 5
    resumed.train()
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert resumed.history["train_loss"] == straight.history["train_loss"]
    # and without restoring the data generator the run would differ (so the test can fail)
    broken = Trainer(make_model(seed=123), batch_fn, causal_lm_loss, config())
    broken.load_checkpoint(tmp_path / "ck")
    broken.generator.manual_seed(1)
    broken.train()
    assert not torch.equal(broken.model.lm_head.weight, straight.model.lm_head.weight)


@pytest.mark.slow
def test_evaluating_does_not_change_the_training_run():
    a = Trainer(make_model(), batch_fn, causal_lm_loss, config(eval_interval=1))
    b = Trainer(make_model(), batch_fn, causal_lm_loss, config(eval_interval=0))
    torch.manual_seed(5)  # dropout draws from the global RNG: start both runs from the same state
    a.train()
    torch.manual_seed(5)
    b.train()
    assert torch.equal(a.model.lm_head.weight, b.model.lm_head.weight)


def test_corrupt_checkpoint_files_name_the_file(tmp_path):
    t = Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=2))
    t.train()
    ck = t.save_checkpoint(tmp_path / "ck")
    (ck / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors: changed since the checkpoint at step 2"):
        Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=2)).load_checkpoint(ck)
    t.save_checkpoint(ck)
    data = (ck / "trainer_state.pt").read_bytes()
    (ck / "trainer_state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trainer_state.pt: changed since the checkpoint at step 2"):
        Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=2)).load_checkpoint(ck)
    refresh_manifest(ck)  # even a damaged file that the manifest vouches for is caught when read
    with pytest.raises(CheckpointError, match="trainer_state.pt: corrupt or unsafe checkpoint"):
        Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=2)).load_checkpoint(ck)
    with pytest.raises(CheckpointError, match="nowhere: no such checkpoint"):
        Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=2)).load_checkpoint(tmp_path / "nowhere")


def refresh_manifest(ck):
    """Re-sign a checkpoint's files, as an attacker (or a bug) that also rewrites the manifest would."""
    import hashlib
    import json

    manifest = json.loads((ck / "manifest.json").read_text())
    manifest["files"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in ck.iterdir() if p.name != "manifest.json"}
    (ck / "manifest.json").write_text(json.dumps(manifest))


class Evil:
    def __reduce__(self):
        return (print, ("this code must never run",))


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    t = Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=2))
    ck = t.save_checkpoint(tmp_path / "ck")
    torch.save({"step": 0, "payload": Evil()}, ck / "trainer_state.pt")
    refresh_manifest(ck)
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=2)).load_checkpoint(ck)


def test_mismatched_model_or_config_is_a_clear_error(tmp_path):
    t = Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=2))
    ck = t.save_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"n_embd=16 \(saved\) vs 32 \(model\)"):
        Trainer(make_model(n_embd=32), batch_fn, causal_lm_loss, config(steps=2)).load_checkpoint(ck)
    with pytest.raises(CheckpointError, match=r"steps=2 \(checkpoint\) vs 3 \(now\)"):
        Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=3)).load_checkpoint(ck)
    (ck / "config.json").unlink()  # without the config, the weight shapes still catch it
    refresh_manifest(ck)
    with pytest.raises(CheckpointError, match="cannot load weights into GPT"):
        Trainer(make_model(n_embd=32), batch_fn, causal_lm_loss, config(steps=2)).load_checkpoint(ck)


def test_a_checkpoint_saved_under_the_old_field_names_still_resumes(tmp_path):
    """Checkpoints written before TrainConfig's rename stored max_iters, warmup_iters and eval_iters."""
    first = Trainer(make_model(), batch_fn, causal_lm_loss, config())
    first.train(until=5)
    ck = first.save_checkpoint(tmp_path / "ck")
    state = torch.load(ck / "trainer_state.pt", weights_only=True)
    saved = state["train_config"]
    for old, new in RENAMED_FIELDS.items():
        saved[old] = saved.pop(new)
    assert {"max_iters", "warmup_iters", "eval_iters"} <= set(saved) and "steps" not in saved
    torch.save(state, ck / "trainer_state.pt")
    refresh_manifest(ck)
    resumed = Trainer(make_model(seed=123), batch_fn, causal_lm_loss, config())
    resumed.load_checkpoint(ck)
    assert resumed.step == 5
    # the renamed fields are still compared: an old checkpoint of another length is refused
    with pytest.raises(CheckpointError, match=r"steps=10 \(checkpoint\) vs 11 \(now\)"):
        Trainer(make_model(), batch_fn, causal_lm_loss, config(steps=11)).load_checkpoint(ck)
    assert saved_train_config({"max_iters": 3, "lr": 0.1}) == {"steps": 3, "lr": 0.1}


def test_train_config_is_frozen():
    cfg = config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3
    assert dataclasses.replace(cfg, steps=3).steps == 3 and cfg.steps == 10


@pytest.mark.slow
def test_an_interrupted_run_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    """Ctrl-C in the middle of step 7 (between two micro-batches): nothing is lost."""
    straight = Trainer(make_model(), batch_fn, causal_lm_loss, config())
    straight.train()
    calls = {"n": 0}

    def interrupting_batch_fn(split, generator):
        calls["n"] += split == "train"
        if calls["n"] == 14:  # the second micro-batch of step 7 (grad_accum=2)
            raise KeyboardInterrupt
        return batch_fn(split, generator)

    first = Trainer(make_model(), interrupting_batch_fn, causal_lm_loss, config())
    with pytest.raises(KeyboardInterrupt):
        first.train(checkpoint_dir=tmp_path / "ck")
    resumed = Trainer(make_model(seed=5), batch_fn, causal_lm_loss, config())
    resumed.load_checkpoint(tmp_path / "ck")
    assert resumed.step == 6
    resumed.train()
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_periodic_checkpoints_are_written(tmp_path):
    trainer = Trainer(make_model(), batch_fn, causal_lm_loss, config())
    trainer.train(checkpoint_dir=tmp_path / "ck", checkpoint_every=4)
    saved = Trainer(make_model(seed=9), batch_fn, causal_lm_loss, config())
    saved.load_checkpoint(tmp_path / "ck")
    assert saved.step == 8  # the last multiple of 4 before steps=10
    with pytest.raises(ValueError, match="checkpoint_every"):
        trainer.train(checkpoint_dir=tmp_path / "ck", checkpoint_every=-1)


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run_and_checkpoints_the_plain_model(tmp_path):
    """TrainConfig.compile trains through torch.compile (gcc on a CPU): same losses up to float
    rounding, and a checkpoint whose weights load into an ordinary, uncompiled model."""
    eager = Trainer(make_model(dropout=0.0), batch_fn, causal_lm_loss, config(steps=4, eval_interval=0))
    compiled = Trainer(make_model(dropout=0.0), batch_fn, causal_lm_loss,
                       config(steps=4, eval_interval=0, compile=True))
    assert compiled.train_model is not compiled.model
    eager.train()
    compiled.train()
    assert compiled.history["train_loss"] == pytest.approx(eager.history["train_loss"], rel=1e-4)
    compiled.save_checkpoint(tmp_path / "ck")
    plain = Trainer(make_model(dropout=0.0), batch_fn, causal_lm_loss, config(steps=4, eval_interval=0))
    plain.load_checkpoint(tmp_path / "ck")  # the compile setting is not part of what must match
    torch.testing.assert_close(plain.model.lm_head.weight, compiled.model.lm_head.weight)
