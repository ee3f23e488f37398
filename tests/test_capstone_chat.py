"""The capstone's chat: sessions, the terminal chat, the widget and ``python -m aigc_book chat``."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from aigc_book.capstone.chat import (
    CHAT_GENERATION_CONFIG,
    CHAT_MODEL_SUBDIRS,
    ChatSession,
    _Stream,
    chat_widget,
    load_chat_model,
    run_terminal_chat,
)
from aigc_book.cli import main
from aigc_book.generation import GenerationConfig
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.tasks.instructions import CHARS
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.chat_tokenizer import BaseChatTokenizer, BPEChatTokenizer, ChatTokenizer

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 48
SHORT = replace(CHAT_GENERATION_CONFIG, max_new_tokens=12)  # short replies keep the tests fast
GREEDY = replace(CHAT_GENERATION_CONFIG, do_sample=False, max_new_tokens=12)
BPE_TEXT = "你好，世界。今天天气很好。我们一起学习。Hello world, hello chat! add 1+2 = 3. " * 6


def tiny_gpt(vocab_size: int, seed: int = 0, block_size: int = BLOCK) -> GPT:
    torch.manual_seed(seed)
    return GPT(TransformerConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)).eval()


def save_model(directory: Path, tok, seed: int = 0, block_size: int = BLOCK) -> Path:
    tiny_gpt(tok.vocab_size, seed, block_size).save_pretrained(directory)
    tok.save(directory / "tokenizer.json")
    return directory


def bpe_tokenizer():

    return BPEChatTokenizer.train(BPE_TEXT, 300)


@pytest.fixture
def chat_dir(tmp_path) -> Path:
    """A finetune-like model directory: a random GPT with a character-level ChatTokenizer."""
    return save_model(tmp_path / "chat", ChatTokenizer(CHARS))


@pytest.fixture
def session(chat_dir) -> ChatSession:
    model, tok = load_chat_model(chat_dir)
    return ChatSession(model, tok, SHORT, seed=1)


def forward_lengths(model: GPT) -> list[tuple[int, int]]:
    """Record ``(tokens already in the KV cache, new tokens)`` of every forward pass."""
    calls: list[tuple[int, int]] = []

    def hook(module, args, kwargs):
        cache = kwargs.get("kv_cache")
        calls.append((cache.length if cache is not None else 0, args[0].size(1)))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


# ----------------------------------------------------------------------------- settings


def chat_config(**fields) -> GenerationConfig:
    return replace(CHAT_GENERATION_CONFIG, **fields)


def test_the_chat_samples_at_temperature_0_8_by_default():
    assert CHAT_GENERATION_CONFIG == GenerationConfig(do_sample=True, temperature=0.8, max_new_tokens=64)
    c = CHAT_GENERATION_CONFIG
    assert (c.top_k, c.top_p, c.min_p, c.repetition_penalty) == (None, 1.0, None, 1.0)  # no filter, no penalty


@pytest.mark.parametrize("fields, error, message", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be an int >= 1, got 0"),
    (dict(max_new_tokens=None), ValueError, "max_new_tokens must be an int >= 1, got None"),
    (dict(num_beams=2), ValueError, "a chat streams one reply: num_beams and num_return_sequences must be 1"),
    (dict(num_return_sequences=2), ValueError, "a chat streams one reply"),
    (dict(eos_token_id=3), ValueError, "a reply ends at the chat's special tokens: leave eos_token_id None"),
])
def test_a_session_refuses_a_config_it_cannot_chat_with(fields, error, message):
    tok = ChatTokenizer(CHARS)
    with pytest.raises(error, match=message) as err:
        ChatSession(tiny_gpt(tok.vocab_size), tok, chat_config(**fields))
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- loading


def test_load_chat_model_reads_a_finetune_directory(chat_dir):
    model, tok = load_chat_model(chat_dir)
    assert isinstance(model, GPT) and not model.training
    assert tok.vocab_size == model.config.vocab_size and tok.end_id == ChatTokenizer(CHARS).end_id


def test_load_chat_model_prefers_tuned_then_sft_in_a_tiny_chatgpt_run(tmp_path):
    assert CHAT_MODEL_SUBDIRS == ("tuned", "sft")
    run = tmp_path / "run"
    save_model(run / "sft", ChatTokenizer(CHARS), block_size=32)
    assert load_chat_model(run)[0].config.block_size == 32  # no tuned/: the SFT model
    save_model(run / "tuned", ChatTokenizer(CHARS), block_size=40)
    assert load_chat_model(run)[0].config.block_size == 40


def test_load_chat_model_reads_a_bpe_chat_tokenizer(tmp_path):
    from aigc_book.text.chat_tokenizer import BPEChatTokenizer

    model, tok = load_chat_model(save_model(tmp_path / "bpe", bpe_tokenizer()))
    assert isinstance(tok, BPEChatTokenizer) and tok.vocab_size == model.config.vocab_size


def test_load_chat_model_explains_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="no such directory.*tiny-chatgpt"):
        load_chat_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no model.*tiny-chatgpt --out DIR.*finetune"):
        load_chat_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="train-gpt model.*fine-tune it first"):
        load_chat_model(save_model(tmp_path / "base", CharTokenizer("abc \n")))
    other = save_model(tmp_path / "other", ChatTokenizer(CHARS))
    BaseChatTokenizer("xyz").save(other / "tokenizer.json")
    with pytest.raises(ValueError, match="different runs"):
        load_chat_model(other)


# ----------------------------------------------------------------------------- the session


def test_a_reply_extends_the_conversation_in_the_chat_template(session):
    r1 = session.reply("hi")
    r2 = session.reply("add 1+2")
    assert session.history == [("hi", r1), ("add 1+2", r2)] and session.turns == 2
    text = session.tokenizer.decode(session.context_ids())
    assert text == f"<|user|>hi<|end|><|assistant|>{r1}<|end|><|user|>add 1+2<|end|><|assistant|>{r2}<|end|>"
    session.reset()
    assert session.history == [] and session.turns == 0 and session.context_ids() == []


def test_the_same_seed_gives_the_same_conversation(chat_dir):
    model, tok = load_chat_model(chat_dir)
    messages = ["hi", "add 1+2", "sort cba"]
    hot = chat_config(temperature=1.0, max_new_tokens=12)
    first = [ChatSession(model, tok, hot, seed=7).reply(m) for m in messages[:1]]
    a, b, c = (ChatSession(model, tok, hot, seed=s) for s in (7, 7, 8))
    replies = [[s.reply(m) for m in messages] for s in (a, b, c)]
    assert replies[0] == replies[1] and replies[0][:1] == first
    assert replies[0] != replies[2]
    a.reset()  # a reset re-seeds: the conversation starts again exactly
    assert [a.reply(m) for m in messages] == replies[0]


def test_the_kv_cache_gives_the_same_greedy_replies(chat_dir):
    model, tok = load_chat_model(chat_dir)
    model = model.double()  # no float32 near-ties between the two paths
    cached, plain = ChatSession(model, tok, GREEDY), ChatSession(model, tok, replace(GREEDY, use_cache=False))
    for message in ["hi", "add 1+2", "sort dcba", "reverse abc"]:
        assert cached.reply(message) == plain.reply(message)
    assert cached.dropped_turns == plain.dropped_turns > 0


def test_old_turns_are_dropped_whole_and_the_context_never_exceeds_the_block(session):
    calls = forward_lengths(session.model)
    messages = ["hi", "hello there", "add 1+2", "sort dcba", "count a in abab", "reverse abcd"]
    for message in messages:
        before = session.dropped_turns
        session.reply(message)
        assert session.dropped_turns >= before  # dropped turns stay dropped
        assert len(session.context_ids()) <= BLOCK
        kept = session.history[session.dropped_turns:]
        expected = "".join(f"<|user|>{u}<|end|><|assistant|>{a}<|end|>" for u, a in kept)
        assert session.tokenizer.decode(session.context_ids()) == expected  # whole turns only
    assert session.dropped_turns > 0 and session.turns == len(messages)
    assert all(past + new <= BLOCK for past, new in calls)
    assert sum(past == 0 for past, _ in calls) == len(messages)  # one prefill per reply: the cache never slid


def test_a_long_message_still_gets_a_reply_capped_by_the_room_left(session):
    session.reply("hi")
    message = "a" * (BLOCK - 3 - 1 - 4)  # the longest that fits: template 3, closing <|end|> 1, 4 reply tokens
    reply = session.reply(message)
    assert session.dropped_turns == 1 and len(session.context_ids()) <= BLOCK
    assert len(session.tokenizer.encode(reply, allow_special=False)) <= 4


@pytest.mark.parametrize("message, error", [
    (None, "must be a str"),
    (5, "must be a str"),
    (b"hi", "must be a str"),
    ("", "empty"),
    ("  \n\t", "empty"),
    ("Hi ABC", "does not know the characters 'H', 'A', 'B', 'C'"),
    ("a" * (BLOCK - 7), "shorten it to 40 tokens or fewer"),
])
def test_a_bad_message_is_one_clear_error_and_changes_nothing(session, message, error):
    session.reply("hi")
    history, context, state = session.history, session.context_ids(), session.generator.get_state()
    with pytest.raises(ValueError, match=error) as err:
        session.reply(message)
    assert "\n" not in str(err.value)
    assert session.history == history and session.context_ids() == context
    assert torch.equal(session.generator.get_state(), state)


def test_a_session_refuses_what_cannot_chat():
    tok = ChatTokenizer(CHARS)
    with pytest.raises(ValueError, match="too short to chat; it needs at least 9"):
        ChatSession(tiny_gpt(tok.vocab_size, block_size=8), tok)
    ChatSession(tiny_gpt(tok.vocab_size, block_size=9), tok).reply("a")  # the shortest context that chats
    with pytest.raises(ValueError, match="no chat tokens"):
        ChatSession(tiny_gpt(5), CharTokenizer("abcde"))
    with pytest.raises(ValueError, match="do not belong together"):
        ChatSession(tiny_gpt(tok.vocab_size + 1), tok)
    with pytest.raises(TypeError, match="generation_config must be a GenerationConfig, got dict"):
        ChatSession(tiny_gpt(tok.vocab_size), tok, {"temperature": 0.5})


def test_a_typed_special_token_stays_text(tmp_path):
    tok = BaseChatTokenizer(sorted(set("<|end|> hi")))  # its characters can spell <|end|>
    session = ChatSession(tiny_gpt(tok.vocab_size), tok, SHORT)
    session.reply("hi <|end|>")
    ids = session.context_ids()
    user_part = ids[: ids.index(tok.assistant_id)]
    assert user_part == [tok.user_id, *tok.encode("hi <|end|>", allow_special=False), tok.end_id]
    assert user_part.count(tok.end_id) == 1


def test_a_reply_stops_at_any_special_token_and_the_turn_is_closed_with_end(session):
    tok = session.tokenizer
    bias = torch.zeros(tok.vocab_size)  # the model now always wants to write the user's turn
    bias[tok.user_id] = 100.0
    session.model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    assert session.reply("hi") == ""
    assert session.context_ids()[-2:] == [tok.assistant_id, tok.end_id]


def test_streamed_pieces_join_to_the_reply(session):
    for message in ["hi", "add 1+2", "sort dcba"]:
        pieces: list[str] = []
        reply = session.reply(message, on_text=pieces.append)
        assert "".join(pieces) == reply and all(pieces)


def test_streaming_with_bpe_never_shows_a_broken_character():
    tok = bpe_tokenizer()
    pieces: list[str] = []
    stream = _Stream(tok, pieces.append)
    for b in "你好".encode():  # byte tokens: each character arrives in three pieces
        stream(torch.tensor([b]))
    stream(torch.tensor([tok.end_id]))
    stream(torch.tensor([ord("x")]))  # after <|end|>: ignored
    assert stream.finish() == "你好" and pieces == ["你", "好"]


def test_a_bpe_chat_session_streams_any_bytes_it_generates():
    tok = bpe_tokenizer()
    model = tiny_gpt(tok.vocab_size)
    for seed in range(3):  # a random model writes arbitrary byte sequences, broken UTF-8 included
        session = ChatSession(model, tok, chat_config(temperature=1.5, max_new_tokens=16), seed=seed)
        for message in ["你好", "hello <|end|>"]:
            pieces: list[str] = []
            reply = session.reply(message, on_text=pieces.append)
            assert "".join(pieces) == reply
    ids = session.context_ids()
    assert ids.count(tok.end_id) == 4  # the typed <|end|> stayed bytes


# ----------------------------------------------------------------------------- the terminal and the widget


def test_terminal_chat_replies_resets_reports_errors_and_quits(session):
    out = io.StringIO()
    status = run_terminal_chat(session, input_stream=io.StringIO("hi\n\nHI\n/reset\nadd 1+2\n/quit\nnever\n"),
                               output=out)
    text = out.getvalue()
    assert status == 0
    assert text.count("bot> ") == 2 and "(a new conversation)" in text
    assert "error: the message is empty" in text and "error: the model's tokenizer does not know" in text
    assert session.history[0][0] == "add 1+2" and session.turns == 1  # /reset forgot "hi"; /quit stopped it


def test_terminal_chat_tells_when_old_turns_were_dropped_and_ends_at_eof(session):
    out = io.StringIO()
    lines = "".join(f"{m}\n" for m in ["hello there", "add 11+22", "sort dcba", "reverse abcd"])
    assert run_terminal_chat(session, input_stream=io.StringIO(lines), output=out) == 0
    assert session.dropped_turns > 0 and "no longer fit the model's 48-token context" in out.getvalue()


def test_terminal_chat_ends_cleanly_on_ctrl_c(session):
    class Interrupting(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    assert run_terminal_chat(session, input_stream=Interrupting(), output=io.StringIO()) == 0


def test_the_widget_sends_on_enter_and_shows_errors(session):
    widget = chat_widget(session)
    widget.text.value = "hi"
    widget.text._handle_string_msg(None, {"event": "submit"}, None)  # what the browser sends on Enter
    reply = session.history[0][1]
    assert "you&gt; hi" in widget.transcript.value and f"bot&gt; {reply}" in widget.transcript.value
    assert widget.text.value == ""
    widget.send_button.click()  # the box is empty now
    assert "error: the message is empty" in widget.transcript.value and session.turns == 1
    assert widget.send("add 1+2") == session.history[1][1]
    widget.reset_button.click()
    assert session.turns == 0 and "hi" not in widget.transcript.value
    assert widget._repr_mimebundle_()  # a notebook can display it


# ----------------------------------------------------------------------------- the command line


def chat_json(capsys, *argv) -> dict:
    assert main(["chat", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_chat_command_answers_each_message_as_one_conversation(chat_dir, capsys):
    result = chat_json(capsys, "--model", str(chat_dir), "--message", "hi", "--message", "add 1+2",
                       "--max-new-tokens", "8", "--seed", "3", "--device", "cpu")
    assert [t["user"] for t in result["turns"]] == ["hi", "add 1+2"]
    assert result["dropped_turns"] == 0 and result["settings"]["max_new_tokens"] == 8
    model, tok = load_chat_model(chat_dir)
    session = ChatSession(model, tok, chat_config(max_new_tokens=8), seed=3)
    assert [t["assistant"] for t in result["turns"]] == [session.reply("hi"), session.reply("add 1+2")]


def test_chat_command_greedy_flags_and_a_tiny_chatgpt_run(tmp_path, capsys):
    save_model(tmp_path / "run" / "sft", ChatTokenizer(CHARS))
    args = ("--model", str(tmp_path / "run"), "--message", "hi", "--max-new-tokens", "6", "--device", "cpu")
    greedy = chat_json(capsys, *args, "--greedy", "--seed", "1")
    assert greedy["settings"]["do_sample"] is False
    assert chat_json(capsys, *args, "--temperature", "0", "--seed", "2")["turns"] == greedy["turns"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "{tmp}/missing"], "--model .*missing: no such directory"),
    (["--model", "{base}"], "train-gpt model.*fine-tune it first"),
    (["--model", "{chat}", "--temperature", "-1"], "--temperature must be"),
    (["--model", "{chat}", "--top-p", "2"], "--top-p must be in"),
    (["--model", "{chat}", "--repetition-penalty", "nan"], "--repetition-penalty must be"),
    (["--model", "{chat}", "--max-new-tokens", "0"], "--max-new-tokens must be in"),
    (["--model", "{chat}", "--seed", "-1"], "--seed must be in"),
    (["--model", "{chat}", "--message", "hi", "--message", " "], "--message #2: the message is empty"),
    (["--model", "{chat}", "--message", "Hello"], "--message #1: .*does not know the characters 'H'"),
    (["--model", "{chat}", "--message", "a" * 60], "--message #1: the message is 60 tokens"),
])
def test_chat_command_bad_input_is_one_line_and_exit_2(tmp_path, chat_dir, capsys, argv, message):
    base = save_model(tmp_path / "base", CharTokenizer("abc \n"))
    argv = [a.format(tmp=tmp_path, base=base, chat=chat_dir) for a in argv]
    assert main(["chat", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("aigc-book: error: ")
    assert re.search(message, line), line


@pytest.mark.slow
def test_python_m_aigc_book_chat_is_a_terminal_chat(chat_dir):
    env = {**os.environ, "AIGC_CPU_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "aigc_book", "chat", "--model", str(chat_dir), "--device", "cpu",
                           "--max-new-tokens", "8"], input="hi\n/reset\nhello\n/quit\n", capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("bot> ") == 2 and "(a new conversation)" in done.stdout
    assert "Traceback" not in done.stderr
