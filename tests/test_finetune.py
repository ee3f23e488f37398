"""The finetune command: a train-gpt model fine-tuned on prompt/response pairs, fully or with LoRA,
saved so that GPT.from_pretrained and `sample` use it unchanged, and written whole or not at all."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aigc_book.adaptation import finetune as ft
from aigc_book.adaptation.lora import LoRALinear, lora_parameter_count, merge_lora
from aigc_book.cli import main
from aigc_book.models.gpt import GPT
from aigc_book.models.io import load_model
from aigc_book.tasks.instructions import CHARS, write_jsonl
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.chat_tokenizer import END, BaseChatTokenizer, ChatTokenizer, format_chat
from aigc_book.text.corpora import python_docs_text
from aigc_book.text.load import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
BASE = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "24", "--batch-size", "4", "--steps", "60",
        "--lr", "1e-2", "--no-progress", "--device", "cpu"]
PAIRS = [("reverse abc", "cba"), ("reverse dog", "god"), ("sort cab", "abc"), ("sort fed", "def"),
         ("reverse pin", "nip"), ("sort tea", "aet")]
QUIET = ["--no-progress", "--device", "cpu"]


def run(argv) -> tuple[int, str]:
    """``main(argv)`` with stdout captured: (exit status, stdout)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny GPT from train-gpt on text holding '<', '|' and '>' (so the special tokens' characters
    are all in its vocabulary), and the pairs as JSON Lines."""
    tmp = tmp_path_factory.mktemp("finetune")
    (tmp / "text.txt").write_text(python_docs_text()[:3000] + "\nx | y < z > w\n", encoding="utf-8")
    assert run(["train-gpt", "--text", str(tmp / "text.txt"), "--out", str(tmp / "base"), *BASE])[0] == 0
    write_jsonl(tmp / "pairs.jsonl", PAIRS)
    return tmp


def finetune_cli(base: Path, out: Path, method: str, *extra) -> dict:
    code, stdout = run(["finetune", "--model", str(base / "base"), "--data", str(base / "pairs.jsonl"),
                        "--method", method, "--out", str(out), *QUIET, *extra])
    assert code == 0
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_full_finetune_lowers_the_response_loss_and_saves_a_model_sample_can_use(base, tmp_path, capsys):
    out = tmp_path / "full"
    result = finetune_cli(base, out, "full", "--steps", "30", "--lr", "1e-2")
    assert result["method"] == "full" and result["steps"] == 30 and result["pairs"] == len(PAIRS)
    assert result["final_loss"] < 0.7 * result["initial_loss"]
    assert result["trainable_params"] == result["params"] and result["out"] == str(out)
    model = GPT.from_pretrained(out)
    n_chars = CharTokenizer.load(base / "base" / "tokenizer.json").vocab_size
    assert model.config.vocab_size == n_chars + 4  # <|user|>, <|assistant|>, <|end|>, <|pad|>
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied after growing
    load_model(GPT(model.config), out)  # a plain GPT of the saved config takes the weights strictly
    assert json.loads((out / "finetune_log.json").read_text())["result"] == result
    assert main(["sample", "--model", str(out), "--prompt", "sort cab", "--max-new-tokens", "5", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith(format_chat("sort cab"))


@pytest.mark.slow
def test_lora_trains_its_matrices_and_the_special_rows_and_saves_merged(base, tmp_path):
    out = tmp_path / "lora"
    result = finetune_cli(base, out, "lora", "--steps", "30", "--lr", "3e-2", "--lora-r", "4")
    C, n_special = 16, 4
    shapes = ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C))  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    per_layer = sum(lora_parameter_count(d_in, d_out, 4) for d_in, d_out in shapes)
    assert result["trainable_params"] == per_layer + n_special * C  # one layer; the tied head adds nothing
    assert result["final_loss"] < 0.8 * result["initial_loss"]
    model = GPT.from_pretrained(out)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert result["params"] == model.num_parameters()


@pytest.mark.slow
def test_lora_leaves_every_pretrained_weight_unchanged_but_the_new_rows(base):
    model, tok = ft.load_base(base / "base")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    n_chars = tok.chars.vocab_size
    result = ft.finetune(model, tok, PAIRS, ft.FinetuneConfig(method="lora", steps=8, lr=1e-2, lora_r=2, merge=False),
                         progress=False)
    lora = dict(model.named_parameters())
    for name, old in before.items():
        new = lora[name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
                   if name not in lora else name]
        if name == "transformer.wte.weight":
            assert torch.equal(new[:n_chars], old[:n_chars])  # pretrained rows: bitwise the same
            assert not torch.equal(new[n_chars:], old[n_chars:])  # the special tokens' rows trained
        else:
            assert torch.equal(new, old), name
    assert all(m.lora_B.weight.abs().sum() > 0 for m in model.modules() if isinstance(m, LoRALinear))
    lora_sizes = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert result.trainable == lora_sizes + (tok.vocab_size - n_chars) * model.config.n_embd
    assert len([m for m in model.modules() if isinstance(m, LoRALinear)]) == 4  # c_attn, c_proj, c_fc, c_proj
    ids = torch.tensor([tok.encode_chat("sort cab", "abc")[0]])
    with torch.no_grad():
        unmerged = model(ids).logits
        merged = merge_lora(model)(ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_model_fine_tuned_on_one_pair_answers_it_and_stops_at_end(base, tmp_path, capsys):
    write_jsonl(tmp_path / "one.jsonl", [("reverse abc", "cba")])
    out = tmp_path / "one"
    code, _ = run(["finetune", "--model", str(base / "base"), "--data", str(tmp_path / "one.jsonl"), "--method",
                   "full", "--out", str(out), "--steps", "60", "--lr", "1e-2", "--batch-size", "2", *QUIET])
    assert code == 0
    assert main(["sample", "--model", str(out), "--prompt", "reverse abc", "--max-new-tokens", "20", "--greedy"]) == 0
    assert capsys.readouterr().out == format_chat("reverse abc", "cba") + "\n"  # the answer, then <|end|> stops it


def test_chat_tokenizer_of_a_base_keeps_the_base_ids_and_never_reads_text_as_special(base, tmp_path):
    plain, ours = ChatTokenizer(CHARS), BaseChatTokenizer(CHARS)  # no clash: the same tokenizer
    assert (ours.itos, ours.special_ids) == (plain.itos, plain.special_ids)
    assert ours.encode(format_chat("add 1+2", "3")) == plain.encode(format_chat("add 1+2", "3"))
    chars = CharTokenizer.load(base / "base" / "tokenizer.json")
    with pytest.raises(ValueError, match="could also be typed"):
        ChatTokenizer(chars.itos)  # '<', '|' and '>' are in the docs text
    tok = BaseChatTokenizer(chars.itos)
    assert tok.itos[: chars.vocab_size] == chars.itos and tok.end_id == chars.vocab_size + 2
    ids, _ = tok.encode_chat(f"x {END}", "y")
    assert ids.count(tok.end_id) == 2  # the template's two; the typed one stays 7 characters
    assert tok.decode(ids) == format_chat(f"x {END}", "y")
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(again, ChatTokenizer) and again.itos == tok.itos
    assert isinstance(load_tokenizer(base / "base" / "tokenizer.json"), CharTokenizer)


def test_rerunning_with_overwrite_replaces_the_output(base, tmp_path):
    out = tmp_path / "out"
    finetune_cli(base, out, "full", "--steps", "2")
    finetune_cli(base, out, "lora", "--steps", "2", "--overwrite")
    assert json.loads((out / "finetune_log.json").read_text())["result"]["method"] == "lora"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or set-aside copy is left


@pytest.mark.slow
def test_a_fine_tuned_model_can_be_fine_tuned_again_without_new_special_tokens(base, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    finetune_cli(base, first, "full", "--steps", "2")
    code, _ = run(["finetune", "--model", str(first), "--data", str(base / "pairs.jsonl"), "--method", "lora",
                   "--out", str(second), "--steps", "2", *QUIET])
    assert code == 0
    assert GPT.from_pretrained(second).config.vocab_size == GPT.from_pretrained(first).config.vocab_size
    assert load_tokenizer(second / "tokenizer.json").itos == load_tokenizer(first / "tokenizer.json").itos


def test_a_diverged_run_stops_with_one_line_and_saves_nothing(base, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(base / "base"), "--data", str(base / "pairs.jsonl"), "--method", "full",
            "--out", str(out), "--steps", "4", "--lr", "1e30", *QUIET]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("aigc-book: error: step ") and "the loss is nan" in err and "\n" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_failed_save_leaves_the_previous_output_as_it_was(base, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    finetune_cli(base, out, "full", "--steps", "2")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(model, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ft, "save_model", full_disk)
    argv = ["finetune", "--model", str(base / "base"), "--data", str(base / "pairs.jsonl"), "--method", "lora",
            "--out", str(out), "--steps", "2", "--overwrite", *QUIET]
    assert main(argv) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_swap_cut_short_by_a_kill_is_completed_on_the_next_run(tmp_path):
    aside = tmp_path / ".out.old"  # killed after moving the old output aside, before renaming the new one in
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="add --overwrite"):
        ft.check_output_dir(tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file() and not aside.exists()


@pytest.mark.slow
def test_ctrl_c_during_finetune_saves_nothing(base, tmp_path):
    out = tmp_path / "out"
    code = ("import os, signal, threading, sys\n"
            "from aigc_book.cli import main\n"
            "threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
            f"sys.exit(main(['finetune', '--model', {str(base / 'base')!r}, '--data', {str(base / 'pairs.jsonl')!r}, "
            f"'--method', 'full', '--out', {str(out)!r}, '--steps', '1000000', '--no-progress']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AIGC_CPU_THREADS": "1"})
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr
    assert not out.exists() and not (tmp_path / ".out.tmp").exists()


def test_library_refuses_bad_arguments_with_what_to_fix(base):
    model, tok = ft.load_base(base / "base")
    with pytest.raises(ValueError, match="method must be one of"):
        ft.FinetuneConfig(method="prefix")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        ft.FinetuneConfig(steps=0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        ft.FinetuneConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="lora_r must be an int >= 1"):
        ft.FinetuneConfig(method="lora", lora_r=0)
    with pytest.raises(ValueError, match=r"pair 1: .*cannot encode '€'"):
        ft.finetune(model, tok, [("ab", "ba"), ("a€", "b")])
    with pytest.raises(ValueError, match="pair 0: the conversation is 34 tokens"):
        ft.finetune(model, tok, [("a" * 30, "")])
    with pytest.raises(ValueError, match="grow the model first"):
        ft.finetune(GPT(dataclasses.replace(model.config, vocab_size=5)), tok, PAIRS)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # refused before anything changed


def test_supervised_fine_tune_trains_lora_and_the_new_rows_only_and_removes_its_hooks():
    """Chapter 4's SFT step (also build_sft_policy's): LoRA changes the special-token rows, not the
    pretrained ones, and leaves no gradient hook behind; "full" counts every parameter."""
    from aigc_book.models.surgery import grow_vocabulary
    from aigc_book.models.transformer import TransformerConfig
    from aigc_book.tasks.instructions import sample_instructions
    from aigc_book.tasks.sft import encode_sft

    tok = ChatTokenizer(CHARS)
    data = encode_sft(tok, sample_instructions(40, seed=6), max_length=33)
    first_new_row = 20
    torch.manual_seed(0)
    model = grow_vocabulary(GPT(TransformerConfig(vocab_size=first_new_row, block_size=32, n_layer=1, n_head=2,
                                                  n_embd=16)), tok.vocab_size)
    before = model.transformer.wte.weight.detach().clone()
    trainable = ft.supervised_fine_tune(model, data, steps=5, lr=1e-2, batch_size=4, method="lora",
                                        first_new_row=first_new_row)
    after = model.transformer.wte.weight.detach()
    assert torch.equal(after[:first_new_row], before[:first_new_row])
    assert not torch.equal(after[first_new_row:], before[first_new_row:])
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora" in name)
    assert lora > 0 and trainable == lora + (tok.vocab_size - first_new_row) * 16
    assert not model.transformer.wte.weight._backward_hooks
    full = GPT(TransformerConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    assert ft.supervised_fine_tune(full, data, steps=2, lr=1e-3, batch_size=4) == full.num_parameters()
