"""Every bad input a user can type at the command line: one line on stderr, a non-zero exit, and
never a traceback. The table is the documentation: input, exit status, what the message says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aigc_book.cli import main
from aigc_book.commands.train_gpt import MAX_TEXT_BYTES
from aigc_book.text.corpora import python_docs_text

REPO = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--steps", "4",
        "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Text files of every kind, and one trained run to sample from and to resume."""
    tmp = tmp_path_factory.mktemp("bad")
    good = tmp / "docs.txt"
    good.write_text(python_docs_text()[:4000], encoding="utf-8")
    (tmp / "empty.txt").write_text("   \n", encoding="utf-8")
    (tmp / "binary.bin").write_bytes(b"\x7fELF\x00\x01" * 100)
    (tmp / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 500)
    (tmp / "short.txt").write_text("abc", encoding="utf-8")
    with open(tmp / "sparse.txt", "wb") as f:  # 2 GB of zero bytes that take no disk space
        f.truncate(2 * 2**30)
    (tmp / "huge.txt").write_bytes(b"text " * (MAX_TEXT_BYTES // 5 + 1))
    (tmp / "a_file").write_text("x", encoding="utf-8")
    run = tmp / "run"
    assert main(["train-gpt", "--text", str(good), "--out", str(run), *TINY, "--checkpoint-interval", "2"]) == 0
    return tmp


def edited_run(files, tmp_path, edit) -> str:
    """A copy of the trained run with ``edit(directory)`` applied."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(files / "run", copy)
    edit(copy)
    return str(copy)


def set_config(field, value):
    def edit(d):
        config = json.loads((d / "config.json").read_text())
        config[field] = value
        (d / "config.json").write_text(json.dumps(config))
    return edit


def rewrite_both_configs(field, value):
    """Edit config.json and the copy in the weights' header alike (a crafted file, not an edit)."""
    def edit(d):
        from safetensors.torch import load_file, save_file

        config = json.loads((d / "config.json").read_text())
        config[field] = value
        (d / "config.json").write_text(json.dumps(config))
        header = {"config": json.dumps(config, sort_keys=True)}
        save_file(load_file(d / "model.safetensors"), d / "model.safetensors", metadata=header)
    return edit


def set_tokenizer(d):
    (d / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": list("abc")}))


def jsonl(t, text: str) -> str:
    """``text`` written to ``t / "data.jsonl"``; returns the path."""
    (t / "data.jsonl").write_text(text, encoding="utf-8")
    return str(t / "data.jsonl")


PAIR = '{"prompt": "ab", "response": "ba"}\n'


# (id, argv builder, exit status, a phrase the message must contain)
TRAIN = lambda f, *extra: ["train-gpt", "--text", str(f / "docs.txt"), "--out", str(f / "new"), *TINY, *extra]  # noqa: E731
SAMPLE = lambda f, *extra: ["sample", "--model", str(f / "run"), *extra]  # noqa: E731
EDITED = lambda f, t, edit: ["sample", "--model", edited_run(f, t, edit)]  # noqa: E731
FINETUNE = lambda f, t, *extra, data=PAIR: ["finetune", "--model", str(f / "run"), "--data", jsonl(t, data),  # noqa: E731
                                            "--method", "full", "--out", str(t / "ft"), "--steps", "2",
                                            "--no-progress", "--device", "cpu", *extra]
CASES = [
    ("text missing", lambda f, t: ["train-gpt", "--text", str(f / "nope.txt")], 2, "no such file"),
    ("text is a directory", lambda f, t: ["train-gpt", "--text", str(f)], 2, "not a regular file"),
    ("text empty", lambda f, t: ["train-gpt", "--text", str(f / "empty.txt")], 2, "the file is empty"),
    ("text binary", lambda f, t: ["train-gpt", "--text", str(f / "binary.bin")], 2, "binary"),
    ("text not UTF-8", lambda f, t: ["train-gpt", "--text", str(f / "latin1.txt")], 2, "not valid UTF-8"),
    ("text too short", lambda f, t: ["train-gpt", "--text", str(f / "short.txt")], 2, "too short"),
    ("text too large", lambda f, t: ["train-gpt", "--text", str(f / "huge.txt")], 2, "more than train-gpt reads"),
    ("text sparse 2 GB", lambda f, t: ["train-gpt", "--text", str(f / "sparse.txt")], 2, "binary"),
    ("seed negative", lambda f, t: TRAIN(f, "--seed", "-1"), 2, "--seed must be in [0, 4294967295]"),
    ("seed too large", lambda f, t: TRAIN(f, "--seed", "4294967296"), 2, "--seed must be in"),
    ("dropout negative", lambda f, t: TRAIN(f, "--dropout", "-0.5"), 2, "--dropout must be in [0, 1)"),
    ("dropout one", lambda f, t: TRAIN(f, "--dropout", "1"), 2, "--dropout must be in [0, 1)"),
    ("dropout nan", lambda f, t: TRAIN(f, "--dropout", "nan"), 2, "--dropout must be in [0, 1)"),
    ("lr nan", lambda f, t: TRAIN(f, "--lr", "nan"), 2, "--lr must be a finite number > 0"),
    ("lr inf", lambda f, t: TRAIN(f, "--lr", "inf"), 2, "--lr must be a finite number > 0"),
    ("lr zero", lambda f, t: TRAIN(f, "--lr", "0"), 2, "--lr must be a finite number > 0"),
    ("lr 1e30 diverges", lambda f, t: TRAIN(f, "--lr", "1e30"), 1, "the loss is"),
    ("layers zero", lambda f, t: TRAIN(f, "--n-layer", "0"), 2, "--n-layer must be >= 1"),
    ("embd not divisible", lambda f, t: TRAIN(f, "--n-embd", "30", "--n-head", "4"), 2, "not divisible"),
    ("embd too large for memory", lambda f, t: TRAIN(f, "--n-embd", "1000000", "--n-head", "1"), 2, "GiB"),
    ("batch too large for memory", lambda f, t: TRAIN(f, "--batch-size", "100000000"), 2, "GiB"),
    ("eval interval negative", lambda f, t: TRAIN(f, "--eval-interval", "-1"), 2, "--eval-interval must be >= 0"),
    ("checkpoint interval negative", lambda f, t: TRAIN(f, "--checkpoint-interval", "-1"), 2,
     "--checkpoint-interval must be >= 0"),
    ("device cpu:1", lambda f, t: TRAIN(f, "--device", "cpu:1"), 2, "one CPU device"),
    ("device unknown", lambda f, t: TRAIN(f, "--device", "tpu"), 2, "unknown device"),
    ("out is a file", lambda f, t: [*TRAIN(f), "--out", str(f / "a_file")], 2, "exists and is not a directory"),
    ("out under a file", lambda f, t: [*TRAIN(f), "--out", str(f / "a_file" / "run")], 2, "cannot write there"),
    ("out holds a run", lambda f, t: [*TRAIN(f), "--out", str(f / "run")], 2, "add --resume to continue it"),
    ("resume and overwrite", lambda f, t: TRAIN(f, "--resume", "--overwrite"), 2, "choose one"),
    ("resume without checkpoint", lambda f, t: [*TRAIN(f), "--out", str(t / "empty"), "--resume"], 2,
     "no such checkpoint"),
    ("resume with another batch", lambda f, t: [*TRAIN(f, "--batch-size", "3"), "--out", str(f / "run"), "--resume"], 2,
     "batch=4 (checkpoint) vs 3 (now)"),
    ("sample top-k zero", lambda f, t: SAMPLE(f, "--top-k", "0"), 2, "--top-k must be >= 1"),
    ("sample temperature nan", lambda f, t: ["sample", "--model", str(f / "run"), "--temperature", "nan"], 2,
     "--temperature must be a finite number >= 0"),
    ("sample temperature negative", lambda f, t: ["sample", "--model", str(f / "run"), "--temperature", "-1"], 2,
     "--temperature must be"),
    ("sample seed huge", lambda f, t: SAMPLE(f, "--seed", str(2**70)), 2, "--seed must be in"),
    ("sample tokens huge", lambda f, t: ["sample", "--model", str(f / "run"), "--max-new-tokens", str(10**12)], 2,
     "--max-new-tokens must be in [0, 100000]"),
    ("sample tokens negative", lambda f, t: SAMPLE(f, "--max-new-tokens", "-1"), 2, "--max-new-tokens must be"),
    ("sample without a run", lambda f, t: ["sample", "--model", str(t / "nothing")], 2, "no such directory"),
    ("sample unknown prompt characters", lambda f, t: ["sample", "--model", str(f / "run"), "--prompt", "龍"], 2,
     "--prompt"),
    ("sample top-p above one", lambda f, t: SAMPLE(f, "--top-p", "1.5"), 2, "--top-p must be in [0, 1]"),
    ("sample top-p nan", lambda f, t: SAMPLE(f, "--top-p", "nan"), 2, "--top-p must be in [0, 1]"),
    ("sample min-p negative", lambda f, t: SAMPLE(f, "--min-p", "-0.1"), 2, "--min-p must be in [0, 1]"),
    ("sample repetition penalty zero", lambda f, t: SAMPLE(f, "--repetition-penalty", "0"), 2,
     "--repetition-penalty must be a finite number > 0"),
    ("sample repetition penalty inf", lambda f, t: SAMPLE(f, "--repetition-penalty", "inf"), 2,
     "--repetition-penalty must be a finite number > 0"),
    ("sample num-beams zero", lambda f, t: SAMPLE(f, "--num-beams", "0"), 2, "--num-beams must be in [1, 64]"),
    ("sample num-beams huge", lambda f, t: SAMPLE(f, "--num-beams", "1000"), 2, "--num-beams must be in [1, 64]"),
    ("sample length-penalty nan", lambda f, t: SAMPLE(f, "--num-beams", "2", "--length-penalty", "nan"), 2,
     "--length-penalty must be a finite number"),
    ("config is a JSON list", lambda f, t: EDITED(f, t, lambda d: (d / "config.json").write_text("[1]")), 2,
     "expected a JSON object"),
    ("config n_head edited", lambda f, t: EDITED(f, t, set_config("n_head", 1)), 2,
     "differs from the config the weights were saved with in n_head"),
    ("config absurd n_layer", lambda f, t: EDITED(f, t, rewrite_both_configs("n_layer", 10**7)), 2,
     "do not belong together"),
    ("tokenizer from another run", lambda f, t: EDITED(f, t, set_tokenizer), 2,
     "come from different runs"),
    ("finetune JSON line malformed", lambda f, t: FINETUNE(f, t, data=PAIR + '{"prompt": "ab",\n'), 2,
     "data.jsonl:2: not valid JSON"),
    ("finetune line not an object", lambda f, t: FINETUNE(f, t, data='["ab", "ba"]\n'), 2,
     "data.jsonl:1: expected a JSON object"),
    ("finetune key missing", lambda f, t: FINETUNE(f, t, data=PAIR + '{"prompt": "ab"}\n'), 2,
     "data.jsonl:2: missing key 'response'"),
    ("finetune response not a string", lambda f, t: FINETUNE(f, t, data='{"prompt": "ab", "response": 3}\n'), 2,
     "data.jsonl:1: 'response' must be a string"),
    ("finetune data empty", lambda f, t: FINETUNE(f, t, data="\n  \n"), 2, "holds no prompt/response pairs"),
    ("finetune data missing", lambda f, t: [*FINETUNE(f, t), "--data", str(t / "nope.jsonl")], 2, "no such file"),
    ("finetune data is a directory", lambda f, t: [*FINETUNE(f, t), "--data", str(t)], 2, "not a regular file"),
    ("finetune characters the base cannot encode",
     lambda f, t: FINETUNE(f, t, data=PAIR + '{"prompt": "a\u9f8d", "response": "\u00e9"}\n'), 2,
     "data.jsonl:2: the base model's tokenizer cannot encode 'é', '龍'"),
    ("finetune pair longer than the context",
     lambda f, t: FINETUNE(f, t, data='{"prompt": "' + "a" * 20 + '", "response": "b"}\n'), 2,
     "data.jsonl:1: the conversation is 25 tokens"),
    ("finetune base not a model", lambda f, t: [*FINETUNE(f, t), "--model", str(t)], 2,
     "written by save_pretrained or train-gpt"),
    ("finetune base missing", lambda f, t: [*FINETUNE(f, t), "--model", str(t / "nothing")], 2, "no such directory"),
    ("finetune base without tokenizer",
     lambda f, t: [*FINETUNE(f, t), "--model", edited_run(f, t, lambda d: (d / "tokenizer.json").unlink())], 2,
     "tokenizer.json"),
    ("finetune out holds a model", lambda f, t: [*FINETUNE(f, t), "--out", edited_run(f, t, lambda d: None)], 2,
     "add --overwrite"),
    ("finetune out is the base", lambda f, t: [*FINETUNE(f, t, "--overwrite"), "--out", str(f / "run")], 2,
     "is the base model's directory"),
    ("finetune overwrite out with other files", lambda f, t: [*FINETUNE(f, t, "--overwrite"), "--out", str(f)], 2,
     "holds files that are not a model"),
    ("finetune out is a file", lambda f, t: [*FINETUNE(f, t), "--out", str(f / "a_file")], 2,
     "exists and is not a directory"),
    ("finetune steps zero", lambda f, t: FINETUNE(f, t, "--steps", "0"), 2, "--steps must be >= 1"),
    ("finetune batch zero", lambda f, t: FINETUNE(f, t, "--batch-size", "0"), 2, "--batch-size must be >= 1"),
    ("finetune lr zero", lambda f, t: FINETUNE(f, t, "--lr", "0"), 2, "--lr must be a finite number > 0"),
    ("finetune lr nan", lambda f, t: FINETUNE(f, t, "--lr", "nan"), 2, "--lr must be a finite number > 0"),
    ("finetune lora rank zero", lambda f, t: FINETUNE(f, t, "--method", "lora", "--lora-r", "0"), 2,
     "--lora-r must be >= 1"),
    ("finetune lora alpha negative", lambda f, t: FINETUNE(f, t, "--method", "lora", "--lora-alpha", "-1"), 2,
     "--lora-alpha must be a finite number > 0"),
    ("finetune lora rank with full", lambda f, t: FINETUNE(f, t, "--lora-r", "4"), 2,
     "apply to --method lora only"),
    ("finetune seed negative", lambda f, t: FINETUNE(f, t, "--seed", "-1"), 2, "--seed must be in"),
    ("finetune device unknown", lambda f, t: FINETUNE(f, t, "--device", "tpu"), 2, "unknown device"),
    ("finetune lr 1e30 diverges", lambda f, t: FINETUNE(f, t, "--lr", "1e30", "--steps", "4"), 1,
     "the loss is"),
    ("finetune lora lr 1e30 diverges",
     lambda f, t: FINETUNE(f, t, "--method", "lora", "--lr", "1e30", "--steps", "4"), 1, "nothing was saved"),
]


@pytest.mark.parametrize("name, argv, status, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(name, argv, status, phrase, files, tmp_path, capsys):
    code = main(argv(files, tmp_path))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == status, err
    assert "Traceback" not in err
    assert phrase in lines[-1], lines
    assert lines[-1].startswith("aigc-book: error: ")
    assert len([line for line in lines if line.startswith("aigc-book:")]) == 1


def test_a_diverged_run_leaves_no_nan_model(files, capsys):
    out = files / "new"
    assert not (out / "model.safetensors").exists()  # "lr 1e30" stopped before saving anything


def test_ctrl_c_while_starting_up_is_one_line(tmp_path):
    """SIGINT while Python is still importing PyTorch: exit 130 and a sentence, not a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "aigc_book", "sample", "--model", str(tmp_path)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # inside `import torch` (about two seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 2), err  # 2 if the import won the race and the bad --out answered
    assert "Traceback" not in err and err.strip().startswith("aigc-book:")


@pytest.mark.slow
def test_ctrl_c_while_sampling_keeps_what_was_printed(files):
    code = ("import os, signal, threading, sys\n"
            "from aigc_book.cli import main\n"
            "threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
            f"sys.exit(main(['sample', '--model', {str(files / 'run')!r}, '--max-new-tokens', '100000']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "--resume" not in proc.stderr
    assert "interrupted after" in proc.stderr and len(proc.stdout) > 10  # the text so far stays on screen
