"""Cross-attention and the decoder block equal PyTorch's nn.MultiheadAttention and nn.TransformerDecoderLayer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.layers.cross_attention import CrossAttention, DecoderBlock

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TOL = dict(rtol=1e-10, atol=1e-10)  # float64: only rounding differs
C, H = 16, 4


def _inputs(seed: int = 0, B: int = 2, T: int = 5, S: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    memory = torch.randn(B, S, C, generator=g, dtype=torch.float64)
    keep = torch.ones(B, S, dtype=torch.bool)  # True = real memory position
    keep[1, -3:] = False  # the second memory has 3 padded positions
    return x, memory, keep


def _load_cross(mha: nn.MultiheadAttention, ours: CrossAttention) -> None:
    """Copy our projections into PyTorch's packed ``in_proj`` (rows: W_q, W_k, W_v) and ``out_proj``."""
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([ours.q_attn.weight, ours.c_attn.weight]))
        mha.in_proj_bias.copy_(torch.cat([ours.q_attn.bias, ours.c_attn.bias]))
        mha.out_proj.weight.copy_(ours.c_proj.weight)
        mha.out_proj.bias.copy_(ours.c_proj.bias)


def _load_self(mha: nn.MultiheadAttention, ours) -> None:
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.c_attn.weight)  # our fused q, k, v Linear has the same row layout
        mha.in_proj_bias.copy_(ours.c_attn.bias)
        mha.out_proj.weight.copy_(ours.c_proj.weight)
        mha.out_proj.bias.copy_(ours.c_proj.bias)


def _load_norm(theirs: nn.LayerNorm, ours) -> None:
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)


@pytest.mark.parametrize("fused", [True, False])
def test_cross_attention_equals_torch_multiheadattention(fused):
    torch.manual_seed(0)
    ours = CrossAttention(C, H, fused=fused).double().eval()
    mha = nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64).eval()
    _load_cross(mha, ours)
    x, memory, keep = _inputs()
    torch.testing.assert_close(ours(x, memory), mha(x, memory, memory, need_weights=False)[0], **TOL)
    # PyTorch's key_padding_mask is True where a key is *ignored*: the opposite of ours
    masked = ours(x, memory, keep)
    torch.testing.assert_close(masked, mha(x, memory, memory, key_padding_mask=~keep, need_weights=False)[0], **TOL)
    assert not torch.allclose(masked[1], ours(x, memory)[1])  # the mask did hide something


def test_cross_attention_weights_match_torch_and_ignore_padding():
    torch.manual_seed(0)
    ours = CrossAttention(C, H).double().eval()
    mha = nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64).eval()
    _load_cross(mha, ours)
    x, memory, keep = _inputs()
    out, w = ours(x, memory, keep, need_weights=True)
    assert w.shape == (2, H, 5, 7)  # (B, n_head, T, S)
    ones = torch.ones(2, H, 5, dtype=torch.float64)
    torch.testing.assert_close(w.sum(-1), ones, **TOL)  # each query's weights sum to one over the memory
    assert torch.all(w[1, :, :, -3:] == 0)  # and put nothing on the padded positions
    assert torch.all(w[0] > 0)
    _, theirs = mha(x, memory, memory, key_padding_mask=~keep, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(w, theirs, **TOL)
    torch.testing.assert_close(out, ours(x, memory, keep), **TOL)  # written-out path == fused path


def test_cross_attention_never_looks_at_other_queries():
    """Each decoder position's output depends on its own query and the memory only (no causal mixing)."""
    torch.manual_seed(0)
    ours = CrossAttention(C, H).double().eval()
    x, memory, _ = _inputs()
    changed = x.clone()
    changed[:, 0] += 1.0
    a, b = ours(x, memory), ours(changed, memory)
    torch.testing.assert_close(a[:, 1:], b[:, 1:], **TOL)
    assert not torch.allclose(a[:, 0], b[:, 0])


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_block_equals_torch_transformer_decoder_layer(norm_first):
    torch.manual_seed(0)
    ours = DecoderBlock(C, H, norm_first=norm_first).double().eval()
    theirs = nn.TransformerDecoderLayer(
        C, H, dim_feedforward=4 * C, dropout=0.0, activation=lambda t: F.gelu(t, approximate="tanh"),
        batch_first=True, norm_first=norm_first, dtype=torch.float64,
    ).eval()
    _load_self(theirs.self_attn, ours.attn)
    _load_cross(theirs.multihead_attn, ours.cross_attn)
    with torch.no_grad():
        for t_lin, o_lin in ((theirs.linear1, ours.mlp.c_fc), (theirs.linear2, ours.mlp.c_proj)):
            t_lin.weight.copy_(o_lin.weight)
            t_lin.bias.copy_(o_lin.bias)
    for t_norm, o_norm in ((theirs.norm1, ours.ln_1), (theirs.norm2, ours.ln_2), (theirs.norm3, ours.ln_3)):
        _load_norm(t_norm, o_norm)
    x, memory, keep = _inputs()
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)  # -inf above the diagonal
    expected = theirs(x, memory, tgt_mask=tgt_mask, memory_key_padding_mask=~keep)
    torch.testing.assert_close(ours(x, memory, keep), expected, **TOL)
    # our self-attention is causal by default: a later token cannot change an earlier output
    later = x.clone()
    later[:, -1] += 1.0
    torch.testing.assert_close(ours(later, memory, keep)[:, :-1], expected[:, :-1], **TOL)


def test_decoder_block_returns_cross_attention_weights():
    torch.manual_seed(0)
    block = DecoderBlock(C, H).double().eval()
    x, memory, keep = _inputs()
    out, w = block(x, memory, keep, need_weights=True)
    torch.testing.assert_close(out, block(x, memory, keep), **TOL)
    assert w.shape == (2, H, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, H, 5, dtype=torch.float64), **TOL)


def test_cross_attention_rejects_memory_of_the_wrong_width():
    attn = CrossAttention(C, H)
    with pytest.raises(ValueError, match=r"memory must have shape \(B, S, n_embd=16\), got \(2, 7, 8\)"):
        attn(torch.randn(2, 5, C), torch.randn(2, 7, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, n_embd=16\)"):
        attn(torch.randn(2, 5), torch.randn(2, 7, C))
    with pytest.raises(ValueError, match=r"differ in batch size \(2 != 3\)"):
        attn(torch.randn(2, 5, C), torch.randn(3, 7, C))


def test_cross_attention_rejects_a_mask_of_the_wrong_shape_or_kind():
    attn = CrossAttention(C, H)
    x, memory = torch.randn(2, 5, C), torch.randn(2, 7, C)
    with pytest.raises(ValueError, match=r"memory_mask must have shape \(B, S\) = \(2, 7\).*got \(2, 5\)"):
        attn(x, memory, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean or 0/1 integers"):
        attn(x, memory, torch.zeros(2, 7))  # an additive float mask is not a padding mask
    out = attn(x, memory, torch.ones(2, 7, dtype=torch.long))  # 0/1 integers are accepted
    torch.testing.assert_close(out, attn(x, memory))


def test_cross_attention_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match=r"n_embd=30 is not divisible .* n_head=4"):
        CrossAttention(30, 4)
