"""Tokenizers: byte-level BPE from scratch (vs Hugging Face), characters, and the shipped corpus."""

import pytest

from aigc_book.text.bpe import ByteBPE, train_hf_bpe
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import python_docs_text, split_train_val


@pytest.fixture(scope="module")
def docs():
    train, val = split_train_val(python_docs_text())
    return train[:150_000], val[:20_000]


@pytest.fixture(scope="module")
def bpe(docs):
    return ByteBPE.train(docs[0], vocab_size=512)


def test_python_docs_corpus_is_deterministic_english():
    text = python_docs_text()
    assert len(text) > 100_000 and text == python_docs_text()
    assert " the " in text and "def " in text


def test_split_holds_out_the_tail():
    train, val = split_train_val("abcdefghij", 0.1)
    assert (train, val) == ("abcdefghi", "j")
    with pytest.raises(ValueError, match="too short"):
        split_train_val("ab", 0.1)


def test_first_merge_is_the_most_frequent_pair():
    # "ab" occurs 3 times inside the pre-token "aab"/"ab" words; "aa" twice
    bpe = ByteBPE.train("aab aab ab", vocab_size=257, min_frequency=1)
    assert bpe.merges == [(ord("a"), ord("b"))]
    assert bpe.vocab[256] == b"ab"


def test_merges_never_cross_pre_token_boundaries():
    bpe = ByteBPE.train("a b " * 50, vocab_size=300)
    assert all(b" " not in tok[1:] for tok in bpe.vocab[256:])  # a space only ever leads a token


def test_round_trip_is_exact_for_any_unicode(bpe, docs):
    for text in (docs[1], "naïve café — 中文 😀\n\ttabs  and  spaces ", ""):
        assert bpe.decode(bpe.encode(text)) == text


def test_training_is_deterministic(docs):
    assert ByteBPE.train(docs[0][:30_000], 300).merges == ByteBPE.train(docs[0][:30_000], 300).merges


def test_bpe_compresses_like_hugging_face_tokenizers(bpe, docs):
    """Same algorithm, same pre-tokenisation: token counts on held-out text agree within 1%."""
    pytest.importorskip("tokenizers")  # in the [book] extra
    hf = train_hf_bpe(docs[0], vocab_size=512)
    ours, theirs = len(bpe.encode(docs[1])), len(hf.encode(docs[1]).ids)
    assert hf.decode(hf.encode(docs[1]).ids) == docs[1]
    assert abs(ours - theirs) / theirs < 0.01
    assert len(docs[1].encode("utf-8")) / ours > 2.0  # > 2 bytes per token at 512 tokens


def test_save_and_load_round_trip(bpe, tmp_path, docs):
    bpe.save(tmp_path / "bpe.json")
    again = ByteBPE.load(tmp_path / "bpe.json")
    assert again.merges == bpe.merges and again.encode(docs[1][:2000]) == bpe.encode(docs[1][:2000])


def test_corrupt_or_wrong_file_gives_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid byte-BPE file"):
        ByteBPE.load(bad)
    CharTokenizer.train("abc").save(tmp_path / "char.json")
    with pytest.raises(ValueError, match="expected 'byte_bpe'"):
        ByteBPE.load(tmp_path / "char.json")
    with pytest.raises(ValueError, match="refers to a token that does not exist"):
        ByteBPE([(300, 1)])


def test_bad_training_arguments_are_rejected():
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        ByteBPE.train("abc", 100)
    with pytest.raises(ValueError, match="empty"):
        ByteBPE.train("", 300)
    with pytest.raises(ValueError, match="out of range"):
        ByteBPE([]).decode([256])


def test_char_tokenizer_round_trip_and_unknown_character(tmp_path):
    tok = CharTokenizer.train("hello world")
    assert tok.vocab_size == 8 and tok.decode(tok.encode("low")) == "low"
    with pytest.raises(ValueError, match="character 'a' is not in the tokenizer's vocabulary"):
        tok.encode("lazy")
    tok.save(tmp_path / "t.json")
    assert CharTokenizer.load(tmp_path / "t.json").itos == tok.itos
    (tmp_path / "t.json").write_text("[]")
    with pytest.raises(ValueError, match="t.json: not a valid character-tokenizer file"):
        CharTokenizer.load(tmp_path / "t.json")
