"""The capstone's tokenizer: byte-level BPE plus chat specials, a drop-in for ChatTokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from aigc_book.capstone.chat import CHAT_MODEL_TOKENIZERS
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.rlhf.rollouts import sample_responses
from aigc_book.tasks.instructions import CHARS
from aigc_book.tasks.sft import encode_sft, generate_responses, sft_batch
from aigc_book.text.bpe import DIGIT_SPLIT_PATTERN, GPT2_SPLIT_PATTERN, ByteBPE
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.chat_tokenizer import SPECIALS, BPEChatTokenizer, ChatTokenizer, format_chat
from aigc_book.text.corpora import python_docs_text
from aigc_book.text.load import load_tokenizer
from aigc_book.training.objectives import IGNORE

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TEXTS = ["The quick brown fox, 2024 times.", "你好，世界。机器学习", "emoji 🙂👍🏽 and a family 👨‍👩‍👧 ok"]


@pytest.fixture(scope="module")
def tok() -> BPEChatTokenizer:
    return BPEChatTokenizer.train(python_docs_text()[:40_000] + " 你好世界 " * 20, vocab_size=400)


@pytest.fixture
def tiny_chat_gpt(tok) -> GPT:
    torch.manual_seed(0)
    return GPT(TransformerConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()


def test_digit_pattern_makes_every_digit_its_own_token():
    text = " ".join(str(n) for n in range(10_000, 13_000)) + " 12345" * 200
    digits = BPEChatTokenizer.train(text, vocab_size=320)
    gpt2 = BPEChatTokenizer.train(text, vocab_size=320, pattern=GPT2_SPLIT_PATTERN)
    assert DIGIT_SPLIT_PATTERN != GPT2_SPLIT_PATTERN
    assert len(digits.encode("12345")) == 5
    assert len(gpt2.encode("12345")) < 5  # GPT-2's pattern lets BPE merge digits


@pytest.mark.parametrize("text", TEXTS)
def test_any_text_round_trips_with_or_without_specials(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allow_special=False)) == text


def test_special_tokens_are_one_id_each_after_the_bpe_ids(tok):
    n = tok.bpe.vocab_size
    assert tok.vocab_size == len(tok) == n + len(SPECIALS)
    assert [tok.user_id, tok.assistant_id, tok.end_id, tok.pad_id] == list(range(n, n + 4))
    for s in SPECIALS:
        assert tok.encode(s) == [tok.special_ids[s]]
        typed = tok.encode(s, allow_special=False)
        assert len(typed) > 1 and max(typed) < n and tok.decode(typed) == s


def test_typed_end_token_in_a_prompt_never_becomes_the_end_id(tok):
    prompt, response = "say <|end|> now", "ok 好"
    ids, n_prompt = tok.encode_chat(prompt, response)
    assert ids.count(tok.end_id) == 2  # the template's two, not the typed one
    assert ids[n_prompt - 1] == tok.assistant_id
    assert tok.decode(ids) == format_chat(prompt, response)
    assert tok.decode(ids, skip_special=True) == prompt + response


def test_decode_joins_the_bytes_of_a_run_and_only_a_run(tok):
    b = list("你".encode())  # the three byte ids 0..255 of one character
    assert tok.decode(b) == "你"
    assert tok.decode([b[0], tok.end_id, *b[1:]]) == "\ufffd<|end|>\ufffd\ufffd"
    assert tok.token_strings([*tok.encode("hi"), tok.end_id])[-1] == "<|end|>"


def test_bad_ids_and_text_raise_the_errors_bytebpe_raises(tok):
    message = f"token id {tok.vocab_size} is out of range for a vocabulary of {tok.vocab_size} "
    with pytest.raises(ValueError, match=message):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match=message):  # ByteBPE's own words, for the same id and size
        ByteBPE(tok.bpe.merges + [(97, 97)] * 4).decode([tok.vocab_size])
    with pytest.raises(TypeError, match="token ids must be integers"):
        tok.decode([1.5])
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(b"bytes")


def test_constructor_and_training_refuse_bad_arguments(tok):
    with pytest.raises(TypeError, match="bpe must be a trained ByteBPE"):
        BPEChatTokenizer("merges")
    with pytest.raises(ValueError, match="'<|pad|>' is missing"):
        BPEChatTokenizer(tok.bpe, SPECIALS[:3])
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        BPEChatTokenizer.train("some text", vocab_size=100)


def test_save_and_load_give_the_same_tokenizer(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["type"] == "bpe_chat"
    again = BPEChatTokenizer.load(path)
    assert (again.bpe.merges, again.bpe.pattern, again.specials) == (tok.bpe.merges, tok.bpe.pattern, tok.specials)
    assert all(again.encode(t) == tok.encode(t) for t in TEXTS)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("content", ["not json", '{"type": "chat", "chars": ["a"]}',
                                     '{"type": "bpe_chat", "pattern": "x", "merges": [[300, 1]], "specials": []}'])
def test_loading_a_file_that_is_not_a_bpe_chat_tokenizer_names_it(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json: not a valid BPE chat-tokenizer file") as err:
        BPEChatTokenizer.load(path)
    assert "\n" not in str(err.value)


def test_load_tokenizer_reads_every_kind_of_tokenizer_file(tok, tmp_path):
    tok.save(tmp_path / "bpe.json")
    ChatTokenizer(CHARS).save(tmp_path / "chat.json")
    CharTokenizer.train("hello").save(tmp_path / "chars.json")
    assert isinstance(load_tokenizer(tmp_path / "bpe.json"), BPEChatTokenizer)
    assert isinstance(load_tokenizer(tmp_path / "chat.json"), ChatTokenizer)
    assert type(load_tokenizer(tmp_path / "chars.json")) is CharTokenizer
    with pytest.raises(ValueError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")


def test_sft_batches_train_on_the_response_and_its_end(tok):
    pairs = [("add 1+2", "3"), ("translate 你好", "hello 🙂 there")]
    data = encode_sft(tok, pairs)
    assert data.tokens.shape[0] == 2 and data.pad_id == tok.pad_id
    batch = sft_batch(data, 8, torch.Generator().manual_seed(0))
    for idx, targets in zip(batch["idx"], batch["targets"]):
        kept = targets[targets != IGNORE].tolist()
        assert kept[-1] == tok.end_id and tok.decode(kept[:-1]) in {r for _, r in pairs}
        assert tok.pad_id not in kept and idx[0].item() == tok.user_id


def test_generation_and_rollouts_work_with_a_random_tiny_gpt(tok, tiny_chat_gpt):
    prompts = ["add 1+2", "你好", "what is a list?"]
    responses = generate_responses(tiny_chat_gpt, tok, prompts, max_new_tokens=5)
    assert len(responses) == 3 and all(isinstance(r, str) for r in responses)
    generator = torch.Generator().manual_seed(0)
    rollouts = sample_responses(tiny_chat_gpt, tok, prompts, max_new_tokens=5, generator=generator)
    assert len(rollouts.texts) == 3 and all(0 < len(ids) <= 5 for ids in rollouts.response_ids)
    assert rollouts.tokens.max().item() < tok.vocab_size


def test_load_of_a_bytebpe_file_is_refused_by_the_chat_loader(tok, tmp_path):
    path = tmp_path / "plain.json"
    ByteBPE(tok.bpe.merges).save(path)
    assert type(load_tokenizer(path)) is ByteBPE  # every type loads, unless the caller names the types it can use
    with pytest.raises(ValueError, match="plain.json: a tokenizer of type 'byte_bpe'"):
        load_tokenizer(path, types=CHAT_MODEL_TOKENIZERS)
