"""Bad input to the public API is refused with one clear error that says what was expected, and files are
written atomically. Attention checks run in float64."""

from __future__ import annotations

import json
import os

import pytest
import torch

from aigc_book.layers.attention import attention_fused, attention_reference
from aigc_book.text.bpe import ByteBPE
from aigc_book.text.char_tokenizer import CharTokenizer

TOL = dict(rtol=1e-10, atol=1e-12)  # float64: differences are rounding only
ATTENTION = [attention_reference, attention_fused]


def _qkv(Tq, Tk, d_q=8, d_k=8, T_v=None, B=2, H=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, d_q, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, Tk, d_k, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, Tk if T_v is None else T_v, 4, generator=g, dtype=torch.float64)
    return q, k, v


# ------------------------------------------------------------------ attention: shapes


@pytest.mark.parametrize(
    "shapes, message",
    [
        (dict(Tq=5, Tk=5, T_v=4), r"keys and values differ in length T_k \(5 != 4\)"),
        (dict(Tq=5, Tk=3, T_v=6), r"keys and values differ in length T_k \(3 != 6\)"),
        (dict(Tq=5, Tk=5, d_q=8, d_k=6), r"queries and keys differ in their last dimension d_k \(8 != 6\)"),
    ],
)
def test_attention_refuses_q_k_v_that_do_not_fit_together(shapes, message):
    q, k, v = _qkv(**shapes)
    errors = []
    for attend in ATTENTION:
        with pytest.raises(ValueError, match=message) as info:
            attend(q, k, v)
        errors.append(str(info.value))
    assert errors[0] == errors[1]  # one check, one message, whichever function is called
    assert f"got q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)}" in errors[0]


@pytest.mark.parametrize("attend", ATTENTION)
def test_attention_refuses_non_tensors_and_vectors(attend):
    q, k, v = _qkv(5, 5)
    with pytest.raises(TypeError, match="attention k must be a torch.Tensor, got list"):
        attend(q, k.tolist(), v)
    with pytest.raises(ValueError, match=r"attention q must have shape \(..., T, dim\), got \(8,\)"):
        attend(q[0, 0, 0], k, v)


# ------------------------------------------------------------------ attention: causal rows with no key


@pytest.mark.parametrize("with_mask", [False, True], ids=["causal", "causal+mask"])
@pytest.mark.parametrize("Tq, Tk", [(6, 3), (5, 5), (3, 6)], ids=["Tq>Tk", "Tq=Tk", "Tq<Tk"])
def test_reference_and_fused_agree_for_every_causal_shape(Tq, Tk, with_mask):
    q, k, v = _qkv(Tq, Tk)
    mask = None
    if with_mask:
        mask = torch.rand(Tq, Tk, generator=torch.Generator().manual_seed(3)) > 0.4
        mask[-1] = False  # and one row hidden by the extra mask itself
    ref = attention_reference(q, k, v, mask, is_causal=True)
    fused = attention_fused(q, k, v, mask, is_causal=True)
    torch.testing.assert_close(ref, fused, **TOL)
    assert torch.isfinite(ref).all()
    # bottom-right alignment: the first Tq - Tk queries come before every key and get zeros
    assert torch.all(ref[..., : max(Tq - Tk, 0), :] == 0)
    if with_mask:
        assert torch.all(ref[..., -1, :] == 0)


@pytest.mark.parametrize("attend", ATTENTION)
def test_rows_with_no_visible_key_have_zero_gradient_not_nan(attend):
    q, k, v = (t.requires_grad_() for t in _qkv(5, 3, B=1, H=1, d_q=3, d_k=3))
    attend(q, k, v, is_causal=True).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[..., :2, :] == 0)
    assert torch.autograd.gradcheck(lambda q, k, v: attend(q, k, v, is_causal=True), (q.detach(), k, v))


# ------------------------------------------------------------------ tokenizers: decoding bad ids


@pytest.fixture(scope="module")
def tokenizers():
    return {"char": CharTokenizer.train("hello world"), "bpe": ByteBPE.train("low lower lowest " * 20, 260)}


@pytest.mark.parametrize(
    "name, ids, error, message",
    [
        ("bpe", [-1], ValueError, r"token id -1 is out of range for a vocabulary of 260 \(ids 0..259\)"),
        ("bpe", [260], ValueError, r"token id 260 is out of range"),
        ("bpe", [1.7], TypeError, r"token ids must be integers, got 1.7 \(float\)"),
        ("bpe", [108.0], TypeError, r"got 108.0 \(float\)"),
        ("bpe", [True], TypeError, r"got True \(bool\)"),
        ("bpe", ["l"], TypeError, r"got 'l' \(str\)"),
        ("bpe", torch.tensor([1.0]), TypeError, r"got 1.0 \(float\)"),
        ("char", [1.7], TypeError, r"token ids must be integers, got 1.7 \(float\)"),
        ("char", [False], TypeError, r"got False \(bool\)"),
        ("char", torch.tensor([0.5]), TypeError, r"got 0.5 \(float\)"),
        ("char", [-1], ValueError, r"token id -1 is out of range for a vocabulary of 8"),
        ("char", [8], ValueError, r"token id 8 is out of range"),
    ],
)
def test_decode_refuses_ids_that_are_not_valid_token_ids(tokenizers, name, ids, error, message):
    tok = tokenizers[name]
    with pytest.raises(error, match=message):
        tok.decode(ids)
    if name == "bpe":
        with pytest.raises(error, match=message):
            tok.token_strings(ids)


@pytest.mark.parametrize("name", ["char", "bpe"])
def test_decode_still_takes_lists_tensors_and_numpy_ints(tokenizers, name):
    np = pytest.importorskip("numpy")
    tok = tokenizers[name]
    ids = tok.encode("hello low")
    text = tok.decode(ids)
    assert tok.decode(torch.tensor(ids)) == tok.decode(list(torch.tensor(ids))) == text
    assert tok.decode(np.array(ids)) == text


# ------------------------------------------------------------------ tokenizer files


@pytest.mark.parametrize(
    "merges",
    [[[-1, 108]], [[108, -5]], [[108, 111], [256, 257]], [[300, 1]], [[1.5, 2]], [[108]]],
    ids=["negative-first", "negative-second", "not-yet-defined", "beyond-vocab", "float", "not-a-pair"],
)
def test_bpe_load_refuses_merges_that_are_not_earlier_tokens(tmp_path, merges):
    path = tmp_path / "edited.json"
    path.write_text(json.dumps({"type": "byte_bpe", "pattern": r"\S+", "merges": merges}), encoding="utf-8")
    with pytest.raises(ValueError, match="edited.json: not a valid byte-BPE file"):
        ByteBPE.load(path)


def test_bpe_merge_message_names_the_merge_and_the_allowed_range():
    message = r"merge 1 \(256, 257\) refers to a token that does not exist yet: .*ids 0..256"
    with pytest.raises(ValueError, match=message):
        ByteBPE([(108, 111), (256, 257)])
    with pytest.raises(ValueError, match=r"merge 0 \(-1, 108\) refers to a token that does not exist yet"):
        ByteBPE([(-1, 108)])


def test_char_tokenizer_refuses_lone_surrogates_when_fitted():
    with pytest.raises(ValueError, match="U\\+D800 is a lone surrogate"):
        CharTokenizer.train("a\ud800b")
    with pytest.raises(ValueError, match="lone surrogate"):
        CharTokenizer(["a", "\udfff"])


def test_char_tokenizer_file_with_a_surrogate_is_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"type": "char", "chars": ["a", "\\ud800"]}', encoding="utf-8")  # valid JSON, not valid text
    with pytest.raises(ValueError, match="t.json: not a valid character-tokenizer file .*lone surrogate"):
        CharTokenizer.load(path)


def test_char_tokenizer_save_that_fails_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "t.json"
    CharTokenizer.train("ab").save(path)
    edited = CharTokenizer.train("ab")
    edited.itos[1] = "\ud800"  # bypassing the check in __init__
    with pytest.raises(ValueError, match="lone surrogate"):
        edited.save(path)
    assert CharTokenizer.load(path).itos == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]  # no temporary file left behind


@pytest.mark.parametrize("name", ["char", "bpe"])
def test_save_is_atomic(tokenizers, tmp_path, monkeypatch, name):
    tok, load = tokenizers[name], {"char": CharTokenizer.load, "bpe": ByteBPE.load}[name]
    path = tmp_path / "tok.json"
    path.write_text("old contents", encoding="utf-8")

    def rename_fails(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", rename_fails)  # a failure after writing, before the file is in place
        with pytest.raises(OSError, match="disk full"):
            tok.save(path)
    assert path.read_text(encoding="utf-8") == "old contents"  # the old file, not an empty or partial one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]
    tok.save(path)
    again = load(path)
    assert again.decode(again.encode("hello low")) == tok.decode(tok.encode("hello low"))


def test_a_gpt_on_an_empty_batch_and_attention_without_heads_say_what_is_wrong(tiny_gpt):
    from aigc_book.layers.attention import MultiHeadAttention

    with pytest.raises(ValueError, match="the batch is empty"):
        tiny_gpt(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_head must be a positive int, got 0"):
        MultiHeadAttention(10, 0)


def test_saved_model_files_get_the_usual_permissions(tiny_gpt, tmp_path):
    import stat

    umask = os.umask(0o022)
    try:
        tiny_gpt.save_pretrained(tmp_path)
    finally:
        os.umask(umask)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name  # safetensors alone writes 0600
