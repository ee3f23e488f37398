"""Instruction following: generator, exact checker, rewards, JSONL files, chat template and SFT batches."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.models.gpt import GPT
from aigc_book.models.surgery import grow_vocabulary
from aigc_book.models.transformer import TransformerConfig
from aigc_book.tasks.instructions import (
    CHARS,
    KINDS,
    Instruction,
    InstructionConfig,
    answer,
    check,
    read_jsonl,
    sample_instructions,
    score,
    well_formed,
    write_jsonl,
)
from aigc_book.tasks.sft import encode_sft, generate_responses, instruction_accuracy, sft_batch
from aigc_book.text.chat_tokenizer import END, USER, ChatTokenizer, format_chat
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.objectives import IGNORE, causal_lm_loss

TOK = ChatTokenizer(CHARS)


# ---- the family ------------------------------------------------------------------------------


def test_generator_is_seeded_and_covers_every_kind():
    a, b = sample_instructions(60, seed=3), sample_instructions(60, seed=3)
    assert a == b
    assert a != sample_instructions(60, seed=4)
    assert {i.kind for i in a} == set(KINDS)


def test_every_generated_answer_passes_the_checker_and_uses_the_fixed_characters():
    for inst in sample_instructions(300, seed=0):
        assert check(inst, inst.answer)
        assert inst.answer == answer(inst.prompt)
        assert set(inst.prompt) <= set(CHARS) and set(inst.answer) <= set(CHARS)


@pytest.mark.parametrize("prompt, expected", [
    ("close ([e{i", "}])"),  # innermost first; e agrees with [, i with {
    ("close (a)[", "]"),
    ("reverse abcd", "dcba"),
    ("sort dbca", "abcd"),
    ("count a in abab", "2"),
    ("count h in abab", "0"),
    ("add 7+12", "19"),
])
def test_answers_by_hand(prompt, expected):
    assert answer(prompt) == expected
    assert check(prompt, expected) and check(prompt, f" {expected}\n")
    assert not check(prompt, expected + "x")


def test_close_answers_complete_a_well_formed_sequence():
    lang = BracketLanguage()
    for inst in sample_instructions(200, seed=1, config=InstructionConfig(kinds=("close",))):
        prefix = inst.prompt.removeprefix("close ")
        ids = lang.encode("^" + prefix + inst.answer)
        assert lang.is_well_formed(ids)
        depth = sum(t in lang.open_ids for t in ids) - sum(t in lang.close_ids for t in ids)
        assert depth == 0  # every bracket closed


@pytest.mark.parametrize("prompt, message", [
    ("close ([)", "not a valid prefix"),  # a closer that does not match
    ("multiply 2*3", "cannot parse"),
    ("add 2+", "cannot parse"),
    ("count ab in abab", "cannot parse"),
    ("close (Q", "not in the language"),
])
def test_checker_refuses_prompts_it_cannot_answer(prompt, message):
    with pytest.raises(ValueError, match=message):
        check(prompt, "x")


def test_score_is_one_only_for_a_correct_response():
    assert score("reverse abcd", "dcba") == 1.0
    assert score("reverse abcd", "dcbx") == 0.0
    assert score("reverse abcd", "dcbx", partial=True) == pytest.approx(0.75)  # one substitution in 4
    assert score("reverse abcd", "", partial=True) == 0.0
    assert 0.0 < score("add 7+12", "18", partial=True) < 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"kinds": ("close", "divide")}, "kinds"),
    ({"max_len": 1}, "max_len"),
    ({"letters": "ab("}, "letters"),
    ({"max_operand": 0}, "max_operand"),
])
def test_bad_generator_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InstructionConfig(**kwargs)


# ---- JSON Lines ------------------------------------------------------------------------------


def test_jsonl_round_trip_skips_blank_lines(tmp_path):
    path = tmp_path / "pairs.jsonl"
    insts = sample_instructions(5, seed=0)
    assert write_jsonl(path, insts) == 5
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n   \n" + json.dumps({"prompt": "p", "response": "r", "note": "extra keys are ignored"}) + "\n")
    pairs = read_jsonl(path)
    assert pairs[:5] == [{"prompt": i.prompt, "response": i.answer} for i in insts]
    assert pairs[5] == {"prompt": "p", "response": "r"}
    _, numbers = read_jsonl(path, line_numbers=True)
    assert numbers == [1, 2, 3, 4, 5, 8]  # the blank lines 6 and 7 are skipped but counted


def test_jsonl_keeps_unicode_line_breaks_inside_strings(tmp_path):
    path = tmp_path / "pairs.jsonl"
    pairs = [("a\u2028b", "c\u0085d"), ("e\u2029f", "g")]
    write_jsonl(path, pairs)
    assert read_jsonl(path) == [{"prompt": p, "response": r} for p, r in pairs]


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n', r"bad\.jsonl:2: not valid JSON"),
    ('{"prompt": "a", "response": "b"}\n\n{"prompt": "a"}\n', r"bad\.jsonl:3: missing key 'response'"),
    ('["a", "b"]\n', r"bad\.jsonl:1: expected a JSON object"),
    ('{"prompt": "a", "response": 3}\n', r"bad\.jsonl:1: 'response' must be a string"),
    ("", "holds no prompt/response pairs"),
    ("\n  \n", "holds no prompt/response pairs"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_jsonl(path)


def test_jsonl_missing_file_and_bad_pairs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(TypeError, match="pair 1"):
        write_jsonl(tmp_path / "x.jsonl", [("a", "b"), ("a", 3)])
    with pytest.raises(ValueError, match="no pairs"):
        write_jsonl(tmp_path / "x.jsonl", [])
    assert not (tmp_path / "x.jsonl").exists()


# ---- chat tokenizer and template -------------------------------------------------------------


def test_chat_tokenizer_keeps_the_language_ids_and_gives_each_special_one_id():
    lang = BracketLanguage()
    assert TOK.itos[: lang.vocab_size] == lang.itos
    assert TOK.encode("([e])") == lang.encode("([e])")
    ids = TOK.encode(format_chat("add 1+2", "3"))
    assert ids[0] == TOK.user_id and ids.count(TOK.end_id) == 2 and TOK.assistant_id in ids
    assert len({TOK.user_id, TOK.assistant_id, TOK.end_id, TOK.pad_id}) == 4
    assert TOK.decode(ids) == format_chat("add 1+2", "3")
    assert TOK.decode(ids, skip_special=True) == "add 1+23"


def test_text_cannot_smuggle_in_a_special_token():
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        TOK.encode_chat(f"add 1+2{END}", "3")
    with pytest.raises(ValueError, match="could also be typed"):
        ChatTokenizer(CHARS, specials=(USER, "<|assistant|>", END, "<|pad|>", "ab"))


def test_chat_tokenizer_saves_and_loads(tmp_path):
    TOK.save(tmp_path / "tok.json")
    again = ChatTokenizer.load(tmp_path / "tok.json")
    assert again.itos == TOK.itos and again.end_id == TOK.end_id
    (tmp_path / "bad.json").write_text('{"type": "char", "chars": ["a"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid chat-tokenizer file"):
        ChatTokenizer.load(tmp_path / "bad.json")


# ---- SFT batches -----------------------------------------------------------------------------


def sft_data():
    return encode_sft(TOK, [("add 1+2", "3"), ("reverse abcdef", "fedcba"), {"prompt": "sort ba", "response": "ab"}])


def test_sft_targets_cover_the_response_and_the_closing_end_only():
    data = sft_data()
    b = sft_batch(data, 16, torch.Generator().manual_seed(0))
    x, y = b["idx"], b["targets"]
    for row in range(16):
        kept = (y[row] != IGNORE).nonzero().flatten()
        ids = x[row].tolist()
        prompt = TOK.decode(ids[1 : ids.index(TOK.end_id)])  # between <|user|> and the first <|end|>
        response = TOK.decode(y[row, kept])
        assert response == answer(prompt) + END  # exactly the response, then <|end|>
        assert x[row, kept[0]] == TOK.assistant_id  # the first predicted token follows <|assistant|>
        assert (kept.diff() == 1).all()  # one contiguous stretch


def test_training_on_all_tokens_keeps_the_prompt_targets_but_not_the_padding():
    data = sft_data()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    only, every = sft_batch(data, 8, g1), sft_batch(data, 8, g2, train_on_prompt=True)
    assert torch.equal(only["idx"], every["idx"])
    real = every["padding_mask"]  # idx and targets line up: target t is real iff idx t+1 is
    n_real_targets = (real[:, 1:].sum() + (every["targets"][:, -1] != IGNORE).sum()).item()
    assert (every["targets"] != IGNORE).sum().item() == n_real_targets
    assert ((every["targets"] != IGNORE) & ~(only["targets"] != IGNORE)).any()
    assert ((only["targets"] != IGNORE) <= (every["targets"] != IGNORE)).all()
    assert (every["targets"][~real] == IGNORE).all()


def test_sft_loss_is_the_cross_entropy_of_the_response_tokens(make_tiny_gpt):
    model = make_tiny_gpt(vocab_size=TOK.vocab_size, block_size=32)
    b = sft_batch(sft_data(), 4, torch.Generator().manual_seed(2))
    logits = model(b["idx"]).logits
    keep = b["targets"] != IGNORE
    by_hand = F.cross_entropy(logits[keep], b["targets"][keep])
    torch.testing.assert_close(causal_lm_loss(model, b), by_hand, rtol=0, atol=1e-12)


def test_encode_sft_refuses_conversations_longer_than_the_context():
    with pytest.raises(ValueError, match="pair 1 is 24 tokens long"):
        encode_sft(TOK, [("add 1+2", "3"), ("reverse abcdef", "fedcba")], max_length=20)
    with pytest.raises(ValueError, match="batch_size"):
        sft_batch(sft_data(), 0, torch.Generator())


# ---- a pretrained model meets the new tokens ---------------------------------------------------


def test_grow_vocabulary_keeps_old_logits_and_the_tied_head(make_tiny_gpt):
    model = make_tiny_gpt(vocab_size=29)
    idx = torch.randint(0, 29, (2, 9), generator=torch.Generator().manual_seed(0))
    before = model(idx).logits
    grow_vocabulary(model, TOK.vocab_size)
    after = model(idx).logits
    assert after.shape[-1] == TOK.vocab_size == model.config.vocab_size
    torch.testing.assert_close(after[..., :29], before, rtol=0, atol=1e-12)
    assert model.lm_head.weight is model.transformer.wte.weight
    model(torch.tensor([[TOK.user_id, TOK.end_id]]))  # the new ids are accepted
    with pytest.raises(ValueError, match="only added"):
        grow_vocabulary(model, 10)


def test_grow_vocabulary_grows_an_untied_head_too(make_tiny_gpt):
    model = make_tiny_gpt(vocab_size=29, tie_weights=False)
    idx = torch.randint(0, 29, (1, 5), generator=torch.Generator().manual_seed(0))
    before = model(idx).logits
    grow_vocabulary(model, 40)
    torch.testing.assert_close(model(idx).logits[..., :29], before, rtol=0, atol=1e-12)
    assert model.lm_head.weight.shape == (40, model.config.n_embd)


# ---- generation and checker accuracy ---------------------------------------------------------


class Scripted(nn.Module):
    """A stand-in model whose generate() appends fixed text, to test the plumbing around it."""

    def __init__(self, text: str):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.continuation = TOK.encode(text)

    def generate(self, idx, max_new_tokens, **kwargs):
        new = torch.tensor(self.continuation[:max_new_tokens]).expand(idx.size(0), -1)
        return torch.cat([idx, new], dim=1)


def test_responses_are_cut_at_the_first_end_token():
    model = Scripted(f"19{END}junk{END}")
    assert generate_responses(model, TOK, ["add 7+12", "add 1+1"]) == ["19", "19"]
    acc = instruction_accuracy(model, TOK, [Instruction("add", "add 7+12", "19"), Instruction("add", "add 1+1", "2")])
    assert acc == {"all": 0.5, "add": 0.5}
    assert generate_responses(Scripted("abc"), TOK, ["reverse cba"]) == ["abc"]  # no <|end|>: all of it


def test_a_real_gpt_generates_through_the_template():
    torch.manual_seed(0)
    model = GPT(TransformerConfig(TOK.vocab_size, 32, n_layer=1, n_head=2, n_embd=16))
    out = generate_responses(model, TOK, sample_instructions(4, seed=0), max_new_tokens=5)
    assert len(out) == 4 and all(isinstance(s, str) and len(s) <= 5 for s in out)
    with pytest.raises(ValueError, match="Instruction objects"):
        instruction_accuracy(model, TOK, ["add 1+2"])


@pytest.mark.parametrize("prompt, response, expected", [
    ("reverse abcd", "dcba", True),  # correct
    ("reverse abcd", "abcd", True),  # wrong, but the right length and letters
    ("reverse abcd", "dcbx", False),  # x is not in the argument
    ("reverse abcd", "dcb", False),  # too short
    ("add 7+12", "18", True),
    ("add 7+12", "1a", False),
    ("count a in abab", "7", True),
    ("close ([", ")]", True),  # closers, right number, wrong order
    ("close ([", "]a", False),
])
def test_well_formed_checks_length_and_alphabet_only(prompt, response, expected):
    assert well_formed(prompt, response) is expected


def test_well_formed_rejects_a_non_string_response():
    with pytest.raises(TypeError, match="must be a str"):
        well_formed("add 1+2", 3)
