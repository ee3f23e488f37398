"""The command line: train-gpt on one's own text, sample, and clear refusals of bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aigc_book.cli import main
from aigc_book.commands.train_gpt import min_chars
from aigc_book.text.corpora import python_docs_text

REPO = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--steps", "8",
        "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once on 4,000 characters of Python's docs; return (out dir, JSON result, stdout)."""
    tmp = tmp_path_factory.mktemp("cli")
    text = tmp / "docs.txt"
    text.write_text(python_docs_text()[:4000], encoding="utf-8")
    out = tmp / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["train-gpt", "--text", str(text), "--out", str(out), *TINY])
    assert code == 0
    lines = buf.getvalue().strip().splitlines()
    return out, json.loads(lines[-1])


def test_train_gpt_prints_a_json_summary_last(trained):
    out, result = trained
    for key in ("params", "ms_per_iter", "tokens_per_s", "train_loss", "val_loss", "device"):
        assert key in result
    assert result["device"] == "cpu" and result["params"] > 0
    assert result["tokens_per_s"] == pytest.approx(4 * 16 * 1000 / result["ms_per_iter"], rel=1e-3)
    assert result["val_chars"] == 400 and result["train_chars"] == 3600  # the last 10% is held out
    assert 0 < result["val_loss"] < math.log(result["vocab_size"]) + 0.5  # near-uniform after 8 steps, not broken
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_sample_continues_the_prompt(trained, capsys):
    out, _ = trained
    assert main(["sample", "--model", str(out), "--prompt", "The ", "--max-new-tokens", "20", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("The ") and len(text.rstrip("\n")) >= 4
    main(["sample", "--model", str(out), "--prompt", "The ", "--max-new-tokens", "20", "--seed", "1"])
    assert capsys.readouterr().out == text  # same seed, same sample


def sample_text(out, capsys, *flags) -> str:
    assert main(["sample", "--model", str(out), "--prompt", "The ", "--max-new-tokens", "20", *flags]) == 0
    return capsys.readouterr().out


def expected_text(out, **settings) -> str:
    """What the library's generate gives for the prompt "The " (the CLI must print exactly this)."""
    from aigc_book.generation import generate
    from aigc_book.models.gpt import GPT
    from aigc_book.text.char_tokenizer import CharTokenizer

    tok, model = CharTokenizer.load(out / "tokenizer.json"), GPT.from_pretrained(out)
    ids = generate(model, tok.encode_tensor("The ")[None], max_new_tokens=20, **settings).sequences[0]
    return tok.decode(ids.tolist()) + "\n"


def test_sample_greedy_flag_is_temperature_zero_and_ignores_the_seed(trained, capsys):
    out, _ = trained
    greedy = sample_text(out, capsys, "--greedy", "--seed", "1")
    assert greedy == sample_text(out, capsys, "--temperature", "0", "--seed", "2")
    assert greedy == expected_text(out)


def test_sample_flags_reach_generate(trained, capsys):
    out, _ = trained
    text = sample_text(out, capsys, "--top-p", "0.9", "--min-p", "0.05", "--repetition-penalty", "1.3",
                       "--top-k", "20", "--seed", "4")
    assert text == expected_text(out, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, min_p=0.05,
                                 repetition_penalty=1.3, generator=torch.Generator().manual_seed(4))


def test_sample_with_beams_prints_the_best_hypothesis(trained, capsys):
    out, _ = trained
    text = sample_text(out, capsys, "--num-beams", "3", "--greedy", "--length-penalty", "0.5")
    assert text.startswith("The ")
    assert text == expected_text(out, num_beams=3, length_penalty=0.5)
    sampled = sample_text(out, capsys, "--num-beams", "3", "--seed", "5")  # without --greedy: beam sampling
    assert sampled == expected_text(out, num_beams=3, do_sample=True, temperature=0.8,
                                    generator=torch.Generator().manual_seed(5))


def test_sample_greedy_and_do_sample_exclude_each_other(trained, capsys):
    out, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--model", str(out), "--greedy", "--do-sample"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_sampling_loads_the_model_without_the_training_code(trained):
    out, _ = trained
    probe = ("import sys; from aigc_book.cli import main; "
             "main(['sample', '--model', sys.argv[1], '--max-new-tokens', '3']); "
             "print(sorted(m for m in sys.modules if m.startswith('aigc_book.training')))")
    result = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_saved_model_loads_with_from_pretrained(trained):
    from aigc_book.models.gpt import GPT

    out, result = trained
    model = GPT.from_pretrained(out)
    assert model.num_parameters() == result["params"] and not model.training


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "aigc_book", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "the file is empty"),
        (b"\x00\x01\x02 binary" * 100, "binary file"),
        (b"\xff\xfe latin-1 \xe9" * 100, "not valid UTF-8"),
        (b"too short", "too short (9 characters)"),
    ],
)
def test_bad_text_files_exit_2_with_one_line(tmp_path, content, message, capsys):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    assert main(["train-gpt", "--text", str(path), "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(path) in err and len(err.splitlines()) == 1


def test_minimum_length_leaves_one_validation_window():
    assert min_chars(16) == 171  # 10% of 171 chars = 17 = block + 1


@pytest.mark.slow
def test_python_m_entry_point_reports_errors_with_exit_status_2(tmp_path):
    proc = run_cli("train-gpt", "--text", str(tmp_path / "missing.txt"))
    assert proc.returncode == 2 and "no such file" in proc.stderr and proc.stdout == ""
    proc = run_cli("sample", "--model", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_sample_from_a_corrupt_model_names_the_file(trained, tmp_path, capsys):
    import shutil

    out, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    assert main(["sample", "--model", str(broken)]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_bad_numbers_are_rejected(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 100)
    assert main(["train-gpt", "--text", str(text), "--n-embd", "30", "--n-head", "4"]) == 2
    assert "divisible" in capsys.readouterr().err
    assert main(["train-gpt", "--text", str(text), "--device", "tpu", "--steps", "1"]) == 2
    assert "--device" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_same_run(tmp_path, monkeypatch, capsys):
    from aigc_book.training.trainer import Trainer

    text = tmp_path / "docs.txt"
    text.write_text(python_docs_text()[:4000], encoding="utf-8")
    args = ["train-gpt", "--text", str(text), *TINY, "--steps", "12"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    straight = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    real_gradients = Trainer._gradients

    def gradients_then_interrupt(self):
        if self.step == 7:
            raise KeyboardInterrupt
        return real_gradients(self)

    monkeypatch.setattr(Trainer, "_gradients", gradients_then_interrupt)
    assert main([*args, "--out", str(tmp_path / "run")]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "_gradients", real_gradients)
    assert main([*args, "--out", str(tmp_path / "run"), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resuming from step 7" in captured.err
    resumed = json.loads(captured.out.strip().splitlines()[-1])
    assert resumed["val_loss"] == straight["val_loss"] and resumed["train_loss"] == straight["train_loss"]


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    text = tmp_path / "docs.txt"
    text.write_text(python_docs_text()[:4000], encoding="utf-8")
    assert main(["train-gpt", "--text", str(text), *TINY, "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
