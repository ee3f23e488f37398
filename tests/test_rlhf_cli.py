"""``python -m aigc_book rlhf``: bad input is one clear line and exit status 2 before any training; a good
run prints one JSON line last and writes --out, which a second run replaces only with --overwrite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aigc_book.rlhf.pipeline as pipeline
from aigc_book.cli import main
from aigc_book.models.gpt import GPT
from aigc_book.rlhf.grpo import GRPOConfig
from aigc_book.rlhf.ppo import PPOConfig
from aigc_book.rlhf.reward_training import RewardConfig
from aigc_book.rlhf.sft_policy import PolicyConfig
from aigc_book.text.chat_tokenizer import ChatTokenizer

REPO = Path(__file__).resolve().parents[1]
OUT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "finetune_log.json")
SUMMARY_KEYS = ("method", "gold_reward_before", "gold_reward_after", "proxy_reward_after", "kl", "wall_s")

TINY_SETTINGS = pipeline.RLHFConfig(
    policy=PolicyConfig(n_layer=1, n_head=2, n_embd=32, pretrain_seqs=500, pretrain_steps=20, sft_pairs=200,
                        sft_steps=20, batch_size=8),
    pairs=200, reward=RewardConfig(steps=10), eval_prompts=32,
    ppo=PPOConfig(batch_size=8, minibatch_size=4, ppo_epochs=1),
    grpo=GRPOConfig(prompts_per_step=2, group_size=4, minibatch_size=4, epochs=1),
)


@pytest.fixture(autouse=True)
def one_cpu_thread(monkeypatch):
    """One PyTorch thread, also for the count the command's get_device("cpu") sets (AIGC_CPU_THREADS)."""
    before = torch.get_num_threads()
    monkeypatch.setenv("AIGC_CPU_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_runs(monkeypatch) -> list[str]:
    """``run_rlhf`` with the tiny settings by default (the command passes none); returns the methods run."""
    real, calls = pipeline.run_rlhf, []

    def tiny(method, *, steps, settings=None, **kwargs):
        calls.append(method)
        return real(method, steps=steps, settings=settings or TINY_SETTINGS, **kwargs)

    monkeypatch.setattr(pipeline, "run_rlhf", tiny)
    return calls


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the command gets as far as training."""
    def refuse(*args, **kwargs):
        raise AssertionError("run_rlhf was called: the bad input was not caught before training")

    monkeypatch.setattr(pipeline, "run_rlhf", refuse)


def rlhf(out, *extra) -> list[str]:
    return ["rlhf", "--method", "ppo", "--steps", "2", "--out", str(out), "--no-progress", "--device", "cpu", *extra]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    assert lines[0].startswith("aigc-book: error: "), lines
    return lines[0]


def a_file(t: Path) -> Path:
    (t / "a_file").write_text("x", encoding="utf-8")
    return t / "a_file"


def a_full_dir(t: Path) -> Path:
    (t / "full").mkdir()
    (t / "full" / "notes.txt").write_text("mine", encoding="utf-8")
    return t / "full"


# (id, argv builder, a phrase the one line must contain)
CASES = [
    ("steps zero", lambda t: rlhf(t / "o", "--steps", "0"), "--steps must be >= 1, got 0"),
    ("steps negative", lambda t: rlhf(t / "o", "--steps", "-3"), "--steps must be >= 1"),
    ("seed negative", lambda t: rlhf(t / "o", "--seed", "-1"), "--seed must be in [0, 4294967295]"),
    ("best-of-n n too large", lambda t: [*rlhf(t / "o", "--steps", "5000"), "--method", "best-of-n"],
     "at most 1024 samples per prompt, got 5000"),
    ("device nonsense", lambda t: rlhf(t / "o", "--device", "nonsense"), "--device: unknown device 'nonsense'"),
    ("out is a file", lambda t: rlhf(a_file(t)), "exists and is not a directory"),
    ("out holds files", lambda t: rlhf(a_full_dir(t)), "add --overwrite"),
    ("overwrite out of other files", lambda t: rlhf(a_full_dir(t), "--overwrite"),
     "holds files that are not a model"),
]


@pytest.mark.parametrize("name, argv, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_rlhf_input_is_one_line_and_exit_2(name, argv, phrase, tmp_path, no_training, capsys):
    code = main(argv(tmp_path))
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert phrase in one_error_line(captured.err)
    assert captured.out == ""
    assert not (tmp_path / "o").exists()


def test_an_unknown_method_is_refused_by_argparse(tmp_path, no_training, capsys):
    """argparse answers for a value outside --method's choices: its usage and one error line, status 2."""
    with pytest.raises(SystemExit) as exc:
        main(["rlhf", "--method", "nope", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "argument --method: invalid choice: 'nope'" in err.strip().splitlines()[-1]


@pytest.mark.slow
def test_python_m_aigc_book_rlhf_reports_bad_input_without_a_traceback(tmp_path):
    def run(*argv):
        proc = subprocess.run([sys.executable, "-m", "aigc_book", "rlhf", *argv, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
        return proc.stderr

    assert "--steps must be >= 1" in one_error_line(run("--method", "ppo", "--steps", "0"))
    assert "invalid choice: 'nope'" in run("--method", "nope")
    assert not (tmp_path / "o").exists()


def read_out(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUT_FILES}


@pytest.mark.slow
def test_rlhf_prints_one_json_line_writes_out_and_overwrites_only_when_asked(tmp_path, tiny_runs, capsys):
    out = tmp_path / "tuned"
    assert main(rlhf(out)) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1  # with --no-progress the JSON summary is all stdout holds
    summary = json.loads(lines[-1])
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["method"] == "ppo" and summary["steps"] == 2 and summary["out"] == str(out)
    assert isinstance(summary["proxy_reward_after"], float) and summary["kl"] >= 0
    assert 0 <= summary["gold_reward_before"] <= 1 and 0 <= summary["gold_reward_after"] <= 1
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)
    assert json.loads((out / "finetune_log.json").read_text())["result"] == summary
    model, tok = GPT.from_pretrained(out), ChatTokenizer.load(out / "tokenizer.json")
    assert model.config.vocab_size == tok.vocab_size
    assert tiny_runs == ["ppo"]

    saved = read_out(out)
    assert main(rlhf(out, "--method", "grpo")) == 2  # refused before any training
    assert "add --overwrite" in one_error_line(capsys.readouterr().err)
    assert read_out(out) == saved and tiny_runs == ["ppo"]

    assert main(rlhf(out, "--method", "grpo", "--seed", "1", "--overwrite")) == 0
    replaced = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert replaced["method"] == "grpo" and replaced["seed"] == 1 and replaced["proxy_reward_after"] is None
    assert json.loads((out / "finetune_log.json").read_text())["result"] == replaced
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)
    assert read_out(out) != saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned"]  # no staging directory left behind
