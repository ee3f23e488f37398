"""Every command has one shape: listed by ``--help``, shared options from one parent parser, one flag
vocabulary, and the old spellings of renamed flags still working with a one-line deprecation note."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aigc_book.cli import build_parser, main
from aigc_book.commands import COMMANDS

REPO = Path(__file__).resolve().parents[1]

# What each command needs besides the flag under test.
REQUIRED = {
    "train-gpt": ["--text", "t.txt"],
    "sample": ["--model", "m"],
    "finetune": ["--model", "m", "--data", "d.jsonl", "--method", "full", "--out", "o"],
    "rlhf": ["--method", "ppo", "--out", "o"],
    "chat": ["--model", "m"],
    "tiny-chatgpt": ["--out", "o"],
    "measure": [],
}
# (command, old spelling, new spelling, a value)
ALIASES = [
    ("train-gpt", "--layers", "--n-layer", "3"), ("train-gpt", "--heads", "--n-head", "3"),
    ("train-gpt", "--embd", "--n-embd", "48"), ("train-gpt", "--block", "--block-size", "32"),
    ("train-gpt", "--batch", "--batch-size", "5"), ("train-gpt", "--iters", "--steps", "7"),
    ("sample", "--out", "--model", "runs/x"), ("sample", "--tokens", "--max-new-tokens", "9"),
    ("finetune", "--base", "--model", "runs/x"), ("finetune", "--batch", "--batch-size", "5"),
    ("measure", "--batch", "--batch-size", "5"), ("measure", "--new-tokens", "--max-new-tokens", "9"),
    ("tiny-chatgpt", "--layers", "--n-layer", "3"), ("tiny-chatgpt", "--heads", "--n-head", "3"),
    ("tiny-chatgpt", "--embd", "--n-embd", "48"), ("tiny-chatgpt", "--block", "--block-size", "64"),
    ("tiny-chatgpt", "--batch", "--batch-size", "5"), ("tiny-chatgpt", "--pretrain-iters", "--pretrain-steps", "7"),
    ("tiny-chatgpt", "--sft-iters", "--sft-steps", "7"),
]


def parse(argv, capsys):
    args = build_parser().parse_args(argv)
    return args, capsys.readouterr().err


@pytest.mark.parametrize("command, old, new, value", ALIASES, ids=[f"{c} {o}" for c, o, _, _ in ALIASES])
def test_an_old_flag_still_works_and_says_what_replaced_it(command, old, new, value, capsys):
    base = list(REQUIRED[command])
    if new in base:  # the old spelling stands in for a required flag
        i = base.index(new)
        del base[i:i + 2]
    args, err = parse([command, *base, old, value], capsys)
    expected, quiet = parse([command, *base, new, value], capsys)
    assert vars(args) == vars(expected)
    assert err.strip() == f"aigc-book: warning: {old} is deprecated; use {new}"
    assert quiet == ""


def test_old_flags_are_hidden_from_help(capsys):
    for command, old, new, _ in ALIASES:
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert f"{new} " in text and f"{old} " not in text and f"{old}," not in text, (command, old)


def test_an_old_flag_in_a_bad_command_gives_the_note_then_the_one_error_line(tmp_path, capsys):
    assert main(["train-gpt", "--text", str(tmp_path / "missing.txt"), "--iters", "3", "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["aigc-book: warning: --iters is deprecated; use --steps",
                     f"aigc-book: error: --text {tmp_path / 'missing.txt'}: no such file"]


def test_python_m_aigc_book_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "aigc_book", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for name, (_, text) in COMMANDS.items():
        assert name in done.stdout and text.split()[0] in done.stdout, name


def options(command: str) -> dict[str, object]:
    """The shared options a command's parser has: option string -> its action."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)]
    return {s: a for a in sub.choices[command]._actions for s in a.option_strings}


# Which command takes which shared option: --seed wherever there is randomness to fix, --device
# wherever a model runs on one, progress wherever something shows progress, --overwrite wherever --out is written.
TAKES = {
    "train-gpt": {"--seed", "--device", "--no-progress", "--overwrite"},
    "sample": {"--seed"},  # reads the model on the CPU
    "finetune": {"--seed", "--device", "--no-progress", "--overwrite"},
    "rlhf": {"--seed", "--device", "--no-progress", "--overwrite"},
    "chat": {"--seed", "--device"},
    "tiny-chatgpt": {"--seed", "--device", "--no-progress", "--overwrite"},
    "measure": {"--device", "--no-progress"},  # timings, no randomness to fix; writes nothing
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_takes_its_shared_options_from_the_one_parent(command):
    assert set(TAKES) == set(COMMANDS)
    have = options(command)
    shared = {"--seed", "--device", "--no-progress", "--overwrite"}
    assert {flag for flag in shared if flag in have} == TAKES[command]
    for flag in TAKES[command]:  # spelled and explained as in every other command
        others = [options(c)[flag] for c in COMMANDS if flag in TAKES[c] and c != command]
        assert all(o.help == have[flag].help and o.type == have[flag].type for o in others), flag


def test_default_seeds_are_the_documented_ones():
    seeds = {c: build_parser().parse_args([c, *REQUIRED[c]]).seed for c in COMMANDS if "--seed" in TAKES[c]}
    assert seeds == {"train-gpt": 1337, "finetune": 1337, "sample": 0, "rlhf": 0, "chat": 0, "tiny-chatgpt": 0}


def test_every_command_module_has_the_one_shape():
    for name, (module, text) in COMMANDS.items():
        assert callable(module.add_arguments) and callable(module.run) and callable(module.interrupted), name
        assert isinstance(module.SHARED, tuple) and text, name
