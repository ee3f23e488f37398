"""The block and the encoder: equal to PyTorch's own layers with copied weights, differentiable
(gradcheck), bidirectional where they should be, and strict about padding masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.layers.block import FeedForward, LayerNorm, TransformerBlock
from aigc_book.models.transformer import Transformer, TransformerConfig

TOL = dict(rtol=1e-10, atol=1e-12)


def _block(norm_first: bool, causal: bool = True, seed: int = 0) -> TransformerBlock:
    torch.manual_seed(seed)
    block = TransformerBlock(16, 4, norm_first=norm_first, causal=causal).double().eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a swapped norm would show
        for ln in (block.ln_1, block.ln_2):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
    return block


def _torch_layer_from(block: TransformerBlock) -> nn.TransformerEncoderLayer:
    C = block.attn.n_embd
    layer = nn.TransformerEncoderLayer(
        C, block.attn.n_head, dim_feedforward=4 * C, dropout=0.0, batch_first=True,
        norm_first=block.norm_first, activation=lambda x: F.gelu(x, approximate="tanh"),
        dtype=torch.float64,
    )
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(block.attn.c_attn.weight)
        layer.self_attn.in_proj_bias.copy_(block.attn.c_attn.bias)
        layer.self_attn.out_proj.weight.copy_(block.attn.c_proj.weight)
        layer.self_attn.out_proj.bias.copy_(block.attn.c_proj.bias)
        layer.linear1.load_state_dict(block.mlp.c_fc.state_dict())
        layer.linear2.load_state_dict(block.mlp.c_proj.state_dict())
        layer.norm1.load_state_dict(block.ln_1.state_dict())
        layer.norm2.load_state_dict(block.ln_2.state_dict())
    return layer.eval()


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-LN", "post-LN"])
def test_block_equals_torch_transformer_encoder_layer(norm_first):
    block = _block(norm_first, causal=False)
    layer = _torch_layer_from(block)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(block(x), layer(x), **TOL)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(block(x, attn_mask=allowed), layer(x, src_mask=~allowed), **TOL)


def test_pre_and_post_ln_blocks_differ():
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    pre, post = _block(True), _block(False)
    post.load_state_dict(pre.state_dict())
    assert not torch.allclose(pre(x), post(x))


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-LN", "post-LN"])
def test_gradcheck_block(norm_first):
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, norm_first=norm_first).double().eval()
    x = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))
    # and with respect to a parameter (the q, k, v projection's bias)
    b = block.attn.c_attn.bias.detach().clone().requires_grad_(True)

    def with_bias(b):
        return torch.func.functional_call(block, {"attn.c_attn.bias": b}, (x.detach(),))

    assert torch.autograd.gradcheck(with_bias, (b,))


def test_layernorm_equals_torch_layernorm_and_can_drop_bias():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    ours = LayerNorm(8).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    ref = nn.LayerNorm(8, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    no_bias = LayerNorm(8, bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]
    y = LayerNorm(8).double()(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 5, dtype=torch.float64), rtol=0, atol=1e-12)


def test_feedforward_is_gpt2_mlp_with_tanh_gelu():
    torch.manual_seed(0)
    ff = FeedForward(8).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    h = x @ ff.c_fc.weight.T + ff.c_fc.bias
    gelu_new = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3)))  # GPT-2's gelu
    torch.testing.assert_close(ff(x), gelu_new @ ff.c_proj.weight.T + ff.c_proj.bias, **TOL)
    assert ff.c_fc.out_features == 32  # 4 * n_embd


def _encoder(**kw):
    """A tiny bidirectional Transformer, as a function from ids to final hidden states."""
    torch.manual_seed(0)
    config = TransformerConfig(
        **{**dict(vocab_size=30, block_size=12, n_layer=2, n_head=4, n_embd=16, causal=False), **kw}
    )
    model = Transformer(config).double().eval()

    def encode(idx, **options):
        return model(idx, **options).last_hidden_state

    encode.model = model
    return encode


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_is_bidirectional(pos_encoding, norm_first):
    enc = _encoder(pos_encoding=pos_encoding, norm_first=norm_first)
    idx = torch.randint(0, 30, (2, 8), generator=torch.Generator().manual_seed(0))
    h = enc(idx)
    assert h.shape == (2, 8, 16)
    idx2 = idx.clone()
    idx2[:, -1] = (idx2[:, -1] + 1) % 30  # change only the last token
    assert not torch.allclose(enc(idx2)[:, 0], h[:, 0])  # ... and the first position notices


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_encoder_encodes_position(pos_encoding):
    # without positions, self-attention is permutation-equivariant: shuffling the tokens would
    # only shuffle the outputs. Every encoding must break that.
    enc = _encoder(pos_encoding=pos_encoding)
    idx = torch.randint(0, 30, (1, 6), generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert not torch.allclose(enc(idx[:, perm]), enc(idx)[:, perm])


def test_encoder_without_positions_would_be_permutation_equivariant():
    enc = _encoder()
    enc.model.wpe.weight.data.zero_()  # remove the position information
    idx = torch.randint(0, 30, (1, 6), generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(enc(idx[:, perm]), enc(idx)[:, perm], **TOL)


def test_padding_mask_hides_padded_tokens():
    enc = _encoder()
    idx = torch.randint(1, 30, (2, 8), generator=torch.Generator().manual_seed(0))
    keep = torch.ones(2, 8, dtype=torch.bool)
    keep[0, 5:] = False  # sequence 0 is 5 tokens long
    h = enc(idx, padding_mask=keep)
    idx2 = idx.clone()
    idx2[0, 5:] = 0  # whatever sits in the padding ...
    h2 = enc(idx2, padding_mask=keep)
    torch.testing.assert_close(h[0, :5], h2[0, :5], **TOL)  # ... does not change the real tokens
    torch.testing.assert_close(h[0, :5], enc(idx[:1, :5])[0], **TOL)  # = running it unpadded
    torch.testing.assert_close(h[1], enc(idx[1:])[0], **TOL)


def test_encoder_rejects_bad_padding_mask_and_bad_ids():
    enc = _encoder()
    idx = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"padding_mask must have shape \(B, T_k\) = \(2, 8\)"):
        enc(idx, padding_mask=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"sequence length 13 is longer than the context: block_size=12"):
        enc(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids \(vocab_size=30\) must lie in \[0, 30\)"):
        enc(torch.full((1, 4), 30))
    with pytest.raises(ValueError, match="pos_encoding must be one of"):
        _encoder(pos_encoding="alibi")
    with pytest.raises(ValueError, match="not divisible"):
        _encoder(n_embd=18)
