"""Attention: the written-out formula, the fused kernel and nn.MultiheadAttention agree; masks,
dropout, positional encodings and bad input behave as documented. All checks in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.layers.attention import MultiHeadAttention, attention_fused, attention_reference, causal_mask
from aigc_book.layers.kv_cache import KVCache
from aigc_book.layers.positions import RotaryEmbedding, apply_rope, sinusoidal_encoding

TOL = dict(rtol=1e-10, atol=1e-12)  # float64: differences are rounding only


def _qkv(B=2, H=3, Tq=5, Tk=5, d=8, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shape = lambda T: (B, H, T, d)  # noqa: E731
    q, k, v = (torch.randn(shape(T), generator=g, dtype=torch.float64) for T in (Tq, Tk, Tk))
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


def _masks(B=2, H=3, Tq=5, Tk=5):
    g = torch.Generator().manual_seed(5)
    padding = torch.ones(B, 1, 1, Tk, dtype=torch.bool)
    padding[0, ..., -2:] = False  # sequence 0 has two padded keys
    random_bool = torch.rand(Tq, Tk, generator=g) > 0.3
    random_bool[:, 0] = True  # no fully hidden row here
    additive = torch.randn(B, H, Tq, Tk, generator=g, dtype=torch.float64)
    return {"none": None, "padding": padding, "random_bool": random_bool, "additive": additive}


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_name", ["none", "padding", "random_bool", "additive"])
def test_reference_equals_fused(mask_name, is_causal):
    q, k, v = _qkv()
    mask = _masks()[mask_name]
    ref = attention_reference(q, k, v, mask, is_causal=is_causal)
    fused = attention_fused(q, k, v, mask, is_causal=is_causal)
    torch.testing.assert_close(ref, fused, **TOL)


def test_reference_is_the_textbook_formula_on_a_tiny_example():
    # One query, two keys: scores [1*1 + 0*0, 1*0 + 0*1] / sqrt(2) = [1/sqrt2, 0]
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[10.0], [20.0]], dtype=torch.float64)
    w0 = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1.0)
    out, weights = attention_reference(q, k, v, return_weights=True)
    torch.testing.assert_close(weights, torch.tensor([[w0, 1 - w0]], dtype=torch.float64), **TOL)
    torch.testing.assert_close(out, torch.tensor([[10 * w0 + 20 * (1 - w0)]], dtype=torch.float64), **TOL)


def test_causal_mask_hides_future_tokens():
    q, k, v = _qkv()
    out = attention_fused(q, k, v, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[..., 3:, :] += 5.0
    v2[..., 3:, :] -= 7.0  # change keys/values at positions 3 and 4 only
    out2 = attention_fused(q, k2, v2, is_causal=True)
    torch.testing.assert_close(out[..., :3, :], out2[..., :3, :], **TOL)
    assert not torch.allclose(out[..., 3:, :], out2[..., 3:, :])
    _, w = attention_reference(q, k, v, is_causal=True, return_weights=True)
    assert torch.all(w.triu(diagonal=1) == 0)


def test_causal_with_fewer_queries_than_keys_is_bottom_right_aligned():
    # the last 2 queries of a length-6 sequence (as after a KV cache): query i sits at position 4 + i
    q, k, v = _qkv(Tq=6, Tk=6)
    full = attention_reference(q, k, v, is_causal=True)
    for attend in (attention_reference, attention_fused):
        torch.testing.assert_close(attend(q[..., 4:, :], k, v, is_causal=True), full[..., 4:, :], **TOL)
    assert causal_mask(2, 6).tolist() == [[True] * 5 + [False], [True] * 6]


def test_fully_masked_query_row_returns_zeros_not_nan():
    q, k, v = _qkv()
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[2] = False
    for attend in (attention_reference, attention_fused):
        out = attend(q, k, v, mask)
        assert torch.isfinite(out).all()
        assert torch.all(out[..., 2, :] == 0)


def test_scale_defaults_to_one_over_sqrt_dk():
    q, k, v = _qkv(d=16)
    torch.testing.assert_close(attention_reference(q, k, v), attention_reference(q, k, v, scale=0.25), **TOL)
    assert not torch.allclose(attention_reference(q, k, v), attention_reference(q, k, v, scale=1.0))


def test_dot_product_variance_grows_like_dk():
    # the reason for the 1/sqrt(d_k): q.k of unit-variance components has variance d_k
    g = torch.Generator().manual_seed(0)
    for d in (4, 64, 256):
        q = torch.randn(20000, d, generator=g, dtype=torch.float64)
        k = torch.randn(20000, d, generator=g, dtype=torch.float64)
        dots = (q * k).sum(-1)
        assert abs(dots.var().item() / d - 1) < 0.05
        assert abs((dots / math.sqrt(d)).var().item() - 1) < 0.05


@pytest.mark.parametrize("attend", [attention_reference, attention_fused])
def test_gradcheck_attention(attend):
    q, k, v = _qkv(B=1, H=2, Tq=4, Tk=4, d=3, requires_grad=True)
    mask = torch.tensor([True, True, True, False]).expand(4, 4)
    assert torch.autograd.gradcheck(lambda q, k, v: attend(q, k, v, mask, is_causal=True), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: attend(q, k, v), (q, k, v))


def test_attention_dropout_drops_weights_and_keeps_the_mean():
    q, k, v = _qkv(B=1, H=1, Tq=4, Tk=4, d=4)
    torch.manual_seed(0)
    base, w = attention_reference(q, k, v, return_weights=True)
    _, wd = attention_reference(q, k, v, dropout_p=0.5, return_weights=True)
    dropped = wd == 0
    assert dropped.any() and (~dropped).any()
    torch.testing.assert_close(wd[~dropped], 2 * w[~dropped], **TOL)  # survivors scaled by 1/(1-p)
    n = 4000  # n independent dropout draws in one batch
    qn, kn, vn = (t.expand(n, 1, 4, 4) for t in (q, k, v))
    for attend in (attention_reference, attention_fused):
        torch.manual_seed(1)
        draws = attend(qn, kn, vn, dropout_p=0.3)  # (n, 1, 4, 4)
        torch.testing.assert_close(draws.mean(0, keepdim=True), base, rtol=0, atol=0.15)
        assert not torch.allclose(draws[:1], base)


def _copy_to_torch_mha(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    C, H = ours.n_embd, ours.n_head
    mha = nn.MultiheadAttention(C, H, bias=True, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.c_attn.weight)  # rows: W_q, W_k, W_v, as in our fused Linear
        mha.in_proj_bias.copy_(ours.c_attn.bias)
        mha.out_proj.weight.copy_(ours.c_proj.weight)
        mha.out_proj.bias.copy_(ours.c_proj.bias)
    return mha.eval()


@pytest.mark.parametrize("fused", [True, False])
def test_multihead_attention_equals_torch_multiheadattention(fused):
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4, causal=False, fused=fused).double().eval()
    mha = _copy_to_torch_mha(ours)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(ours(x), mha(x, x, x, need_weights=False)[0], **TOL)
    # causal: nn.MultiheadAttention's boolean mask is True where attention is *forbidden*
    allowed = causal_mask(6)
    torch.testing.assert_close(ours(x, attn_mask=allowed), mha(x, x, x, attn_mask=~allowed)[0], **TOL)
    # padding: sequence 1 has 2 padded keys
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, -2:] = False
    torch.testing.assert_close(
        ours(x, attn_mask=keep[:, None, None, :]), mha(x, x, x, key_padding_mask=~keep)[0], **TOL
    )
    # the default of a causal module equals the explicit causal mask
    ours.causal = True
    torch.testing.assert_close(ours(x), mha(x, x, x, attn_mask=~allowed)[0], **TOL)


def test_multihead_attention_weights_are_recorded_per_head():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).double().eval()
    out, w = attn(torch.randn(2, 5, 16, dtype=torch.float64), need_weights=True)
    assert out.shape == (2, 5, 16)
    assert w.shape == (2, 4, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5, dtype=torch.float64), **TOL)


def test_multihead_rejects_embedding_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"n_embd=30 is not divisible .* n_head=4"):
        MultiHeadAttention(30, 4)


@pytest.mark.parametrize("bad_shape", [(5, 4), (2, 5, 5), (2, 3, 5, 5, 1), (1, 1, 1, 7)])
def test_mask_that_does_not_broadcast_names_the_expected_shape(bad_shape):
    q, k, v = _qkv()
    mask = torch.ones(bad_shape, dtype=torch.bool)
    for attend in (attention_reference, attention_fused):
        with pytest.raises(ValueError, match=r"does not broadcast .*\(2, 3, 5, 5\)"):
            attend(q, k, v, mask)


def test_integer_mask_is_rejected_with_a_hint():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="boolean .* or floating point"):
        attention_fused(q, k, v, torch.ones(5, 5, dtype=torch.long))


def test_kv_cache_refuses_to_overflow():
    cache = KVCache(n_layer=1, batch=1, n_head=1, max_len=3, head_dim=2, dtype=torch.float64)
    kv = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    cache.update(0, kv, kv)
    cache.advance(2)
    with pytest.raises(ValueError, match="holds 3 positions"):
        cache.update(0, kv, kv)


# ------------------------------------------------------------------ positional encodings


def test_sinusoidal_encoding_matches_the_formula():
    pe = sinusoidal_encoding(10, 6, dtype=torch.float64)
    for pos in range(10):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-12)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-12)


def test_sinusoidal_dot_product_depends_only_on_offset():
    pe = sinusoidal_encoding(64, 16, dtype=torch.float64)
    gram = pe @ pe.T  # (64, 64)
    for offset in (0, 1, 5, 20):
        diag = torch.diagonal(gram, offset=offset)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), **TOL)


def test_rope_score_depends_only_on_offset():
    d, P = 8, 32
    rope = RotaryEmbedding(d, P)
    cos, sin = rope(0, P, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    rq = apply_rope(q.expand(P, d), cos, sin)  # q placed at every position
    rk = apply_rope(k.expand(P, d), cos, sin)
    scores = rq @ rk.T  # scores[m, n] = <R_m q, R_n k>
    for offset in (-7, 0, 3, 11):
        diag = torch.diagonal(scores, offset=offset)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), **TOL)
    assert not torch.allclose(torch.diagonal(scores, 0)[0], torch.diagonal(scores, 3)[0])
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(P), **TOL)  # a rotation keeps lengths
    torch.testing.assert_close(rq[0], q, **TOL)  # position 0 is not rotated


def test_rope_table_offset_matches_full_table():
    rope = RotaryEmbedding(8, 20)
    cos, sin = rope(0, 20)
    cos5, sin5 = rope(5, 3)
    torch.testing.assert_close(cos5, cos[5:8])
    torch.testing.assert_close(sin5, sin[5:8])
    with pytest.raises(ValueError, match="rotary table covers 0..19"):
        rope(18, 3)
    with pytest.raises(ValueError, match="even head dimension"):
        RotaryEmbedding(7, 20)


def test_torch_sdpa_is_what_the_fused_path_calls():
    q, k, v = _qkv()
    torch.testing.assert_close(
        attention_fused(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL
    )
