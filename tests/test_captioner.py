"""Patches, the image encoder and the two captioners: shapes, the loss, greedy generation, what each model sees."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.vision.captioner import (
    Captioner,
    CaptionerConfig,
    PooledCaptioner,
    caption_batch,
    caption_loss,
)
from aigc_book.vision.patches import ImageEncoder, PatchEmbedding, patches_to_image_grid, patchify

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TOL = dict(rtol=1e-10, atol=1e-10)
# 8x8 pictures in 4x4 patches (4 patches), 32 wide, 1 encoder and 2 decoder layers
TINY = dict(vocab_size=12, image_size=8, patch_size=4, channels=3, n_embd=32, n_head=4, n_enc_layer=1,
            n_dec_layer=2, max_len=8, pad_id=0)
MODELS = [Captioner, PooledCaptioner]


def _model(cls, seed=0, dtype=torch.float64, **overrides):
    torch.manual_seed(seed)
    return cls(CaptionerConfig(**{**TINY, **overrides})).to(dtype).eval()


def _batch(B=3, T=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, 8, 8, generator=g, dtype=dtype)
    tokens = torch.randint(1, TINY["vocab_size"], (B, T), generator=g)
    return images, tokens


# ---------------------------------------------------------------------------------------------
# Patches and the encoder
# ---------------------------------------------------------------------------------------------


def test_patch_embedding_equals_a_conv2d_with_stride_equal_to_kernel():
    torch.manual_seed(0)
    emb = PatchEmbedding(8, 4, 3, 16).double()
    conv = nn.Conv2d(3, 16, kernel_size=4, stride=4, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(emb.proj.weight.view(16, 3, 4, 4))  # (C, ch, P, P): the flattening order of patchify
        conv.bias.copy_(emb.proj.bias)
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    # pixels standardised to [-1, 1] first; (B, C, 2, 2) -> (B, 4, C), patches in reading order
    by_conv = conv((images - 0.5) / 0.5).flatten(2).transpose(1, 2)
    torch.testing.assert_close(emb(images), by_conv + emb.wpe.weight, **TOL)


def test_patchify_reads_patches_row_by_row_and_flattens_channel_first():
    images = torch.arange(2 * 4 * 4, dtype=torch.float64).view(1, 2, 4, 4)  # 2 channels, 4x4, patches of 2
    patches = patchify(images, 2)
    assert patches.shape == (1, 4, 8)
    # patch 1 is the top-right one: rows 0-1, columns 2-3 of channel 0, then of channel 1
    assert patches[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]
    assert patches[0, 2].tolist() == [8, 9, 12, 13, 24, 25, 28, 29]  # bottom-left


def test_patch_embedding_rejects_a_non_positive_pixel_std():
    with pytest.raises(ValueError, match="pixel_std must be > 0, got 0"):
        PatchEmbedding(8, 4, 3, 16, pixel_std=0)


def test_patch_size_must_divide_the_image_size():
    with pytest.raises(ValueError, match=r"image_size=30 is not divisible by patch_size=8"):
        PatchEmbedding(30, 8, 3, 16)
    with pytest.raises(ValueError, match=r"image_size=30 is not divisible by patch_size=8"):
        CaptionerConfig(vocab_size=10, image_size=30, patch_size=8)


def test_image_encoder_rejects_pictures_of_the_wrong_shape():
    enc = ImageEncoder(8, 4, channels=3, n_embd=16, n_head=2, n_layer=1)
    with pytest.raises(ValueError, match=r"shape \(B, channels, H, W\) = \(B, 3, 8, 8\).*\(2, 1, 8, 8\)"):
        enc(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):
        enc(torch.rand(3, 8, 8))  # a single picture without its batch dimension
    with pytest.raises(TypeError, match="floating-point"):
        enc(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_image_encoder_is_bidirectional_and_position_aware():
    torch.manual_seed(0)
    enc = ImageEncoder(8, 4, channels=3, n_embd=16, n_head=2, n_layer=1).double().eval()
    images = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    memory = enc(images)
    assert memory.shape == (1, 4, 16)  # (B, n_patches, C)
    changed = images.clone()
    changed[..., 4:, 4:] += 0.5  # only the last patch (bottom right)
    assert not torch.allclose(enc(changed)[:, 0], memory[:, 0])  # the first patch sees the last one
    # swapping the two top patches does not just swap their outputs: positions are added
    swapped = torch.cat([images[..., :4, 4:], images[..., :4, :4]], dim=-1)
    swapped = torch.cat([swapped, images[..., 4:, :]], dim=-2)
    assert not torch.allclose(enc(swapped)[:, [1, 0]], memory[:, :2])
    assert enc.transformer.wte is None  # no unused token embedding inside


def test_patches_to_image_grid_copies_each_patch_over_its_pixels():
    grid = patches_to_image_grid(torch.tensor([0.1, 0.2, 0.3, 0.4]), image_size=4, patch_size=2)
    expected = torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4], [0.3, 0.3, 0.4, 0.4]])
    torch.testing.assert_close(grid, expected)
    assert patches_to_image_grid(torch.rand(2, 5, 4), 4, 2).shape == (2, 5, 4, 4)
    with pytest.raises(ValueError, match=r"n_patches = \(4/2\)\^2 = 4 values, got shape \(5,\)"):
        patches_to_image_grid(torch.rand(5), 4, 2)


# ---------------------------------------------------------------------------------------------
# The captioners
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MODELS)
def test_forward_gives_logits_per_token_and_a_loss(cls):
    model = _model(cls)
    images, tokens = _batch()
    logits, loss = model(images, tokens, tokens)
    assert logits.shape == (3, 5, TINY["vocab_size"])
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model(images, tokens).loss is None


@pytest.mark.parametrize("cls", MODELS)
def test_loss_ignores_padding_targets(cls):
    model = _model(cls)
    images, tokens = _batch()
    targets = tokens.clone()
    targets[0, 3:] = TINY["pad_id"]
    targets[2, 1:] = -100  # the other convention counts as padding too
    logits, loss = model(images, tokens, targets)
    real = (targets != TINY["pad_id"]) & (targets != -100)
    expected = F.cross_entropy(logits[real], targets[real])  # by hand: real positions only
    torch.testing.assert_close(loss, expected, **TOL)
    other = targets.masked_fill(~real, 5)  # the same positions counted as real targets change the loss
    assert not torch.isclose(model(images, tokens, other).loss, loss)


def test_captioner_ties_the_output_head_to_the_token_embedding():
    model = _model(Captioner)
    assert model.lm_head.weight is model.wte.weight


def _hand_count(c: CaptionerConfig, pooled: bool) -> int:
    """Parameters counted from the architecture, not from the modules."""
    C, N = c.n_embd, c.n_patches
    block = 12 * C * C + 13 * C  # attention 4C^2+4C, MLP 8C^2+5C, two LayerNorms 4C
    encoder = c.channels * c.patch_size**2 * C + C + N * C + c.n_enc_layer * block + 2 * C
    if pooled:  # projection of the mean + a GPT with one more position (for the image vector)
        return encoder + C * C + C + c.vocab_size * C + (c.max_len + 1) * C + c.n_dec_layer * block + 2 * C
    dec_block = block + 4 * C * C + 4 * C + 2 * C  # + cross-attention and a third LayerNorm
    return encoder + c.vocab_size * C + c.max_len * C + c.n_dec_layer * dec_block + 2 * C


@pytest.mark.parametrize("cls", MODELS)
def test_parameter_count_matches_a_hand_count(cls):
    model = _model(cls)
    assert model.num_parameters() == _hand_count(model.config, pooled=cls is PooledCaptioner)


@pytest.mark.parametrize("cls", MODELS)
def test_generate_is_greedy_consistent_with_forward(cls):
    model = _model(cls, seed=3)
    images, _ = _batch(B=4, seed=1)
    seq = model.generate(images, max_new_tokens=6, bos_id=1)  # no eos: every row runs 6 steps
    assert seq.shape == (4, 7) and torch.all(seq[:, 0] == 1)
    logits = model(images, seq[:, :-1]).logits
    assert torch.equal(logits.argmax(-1), seq[:, 1:])


class _ScriptedCaptioner(Captioner):
    """A captioner whose decoder "predicts" a fixed script: row b's token after t inputs is SCRIPT[b][t - 1]."""

    SCRIPT = [[5, 2, 7, 7, 7, 7], [6, 6, 6, 2, 9, 9], [2, 8, 8, 8, 8, 8]]

    def decode(self, memory, tokens):
        B, T = tokens.shape
        nxt = torch.tensor([row[T - 1] for row in self.SCRIPT])  # (B,)
        return F.one_hot(nxt, self.config.vocab_size).double()[:, None].expand(B, T, -1)  # only the last counts


def test_generate_pads_after_eos_and_stops_when_all_rows_end():
    model = _model(_ScriptedCaptioner)
    images, _ = _batch()
    seq = model.generate(images, max_new_tokens=6, bos_id=1, eos_id=2)
    expected = torch.tensor([[1, 5, 2, 0, 0], [1, 6, 6, 6, 2], [1, 2, 0, 0, 0]])  # pad (0) after each eos
    assert torch.equal(seq, expected)  # and the loop stopped once the last row ended (5 columns, not 7)
    without_eos = model.generate(images, max_new_tokens=6, bos_id=1)
    assert torch.equal(without_eos[:, 1:], torch.tensor(_ScriptedCaptioner.SCRIPT))


def test_generate_rejects_bad_arguments():
    model = _model(Captioner)
    images, _ = _batch()
    with pytest.raises(ValueError, match=r"max_new_tokens=9 needs prefixes longer than max_len=8"):
        model.generate(images, 9, bos_id=1)
    with pytest.raises(ValueError, match=r"bos_id must be a token id in \[0, 12\), got 12"):
        model.generate(images, 3, bos_id=12)


@pytest.mark.parametrize("cls", MODELS)
def test_models_reject_tokens_that_do_not_fit(cls):
    model = _model(cls)
    images, tokens = _batch(T=9)
    with pytest.raises(ValueError, match=r"captions of 9 tokens are longer than max_len=8"):
        model(images, tokens)
    with pytest.raises(ValueError, match=r"tokens have batch size 3 but there are 2 images"):
        model(images[:2], tokens[:, :4])
    with pytest.raises(ValueError, match=r"targets must have the shape of tokens"):
        model(images, tokens[:, :4], tokens[:, :3])


def test_cross_attention_maps_sum_to_one_over_patches():
    model = _model(Captioner)
    images, tokens = _batch()
    maps = model.cross_attention_maps(images, tokens)
    assert maps.shape == (2, 3, 4, 5, 4)  # (n_dec_layer, B, n_head, T, n_patches)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 3, 4, 5, dtype=torch.float64), **TOL)
    assert not torch.allclose(maps[0, 0, 0], maps[0, 1, 0])  # another picture, another map


def test_pooled_captioner_sees_only_the_mean_of_the_patches():
    """Two memories with the same mean give the pooled baseline the same logits, not the cross-attention model."""
    images, tokens = _batch()
    g = torch.Generator().manual_seed(5)
    memory = torch.randn(3, 4, 32, generator=g, dtype=torch.float64)
    shift = torch.randn(3, 4, 32, generator=g, dtype=torch.float64)
    same_mean = memory + shift - shift.mean(dim=1, keepdim=True)  # contents change, the mean does not
    pooled, attending = _model(PooledCaptioner), _model(Captioner)
    torch.testing.assert_close(pooled.decode(memory, tokens), pooled.decode(same_mean, tokens), **TOL)
    assert not torch.allclose(attending.decode(memory, tokens), attending.decode(same_mean, tokens))


def test_pooled_decoder_receives_exactly_one_image_vector():
    model = _model(PooledCaptioner)
    images, tokens = _batch()
    seen = {}

    def record(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    handle = model.decoder.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model(images, tokens)
    finally:
        handle.remove()
    embeds = seen["embeds"]
    assert embeds.shape == (3, 1 + 5, 32)  # one image vector, then the tokens
    torch.testing.assert_close(embeds[:, 1:], model.decoder.transformer.wte(tokens), **TOL)
    torch.testing.assert_close(embeds[:, 0], model.image_vector(model.encode(images)), **TOL)


def test_caption_batch_shifts_tokens_into_inputs_and_targets():
    images = torch.rand(4, 3, 8, 8)
    tokens = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 8, 9, 10, 2], [1, 3, 2, 0, 0]])
    batch = caption_batch(images, tokens, 6, torch.Generator().manual_seed(0))
    assert batch["tokens"].shape == batch["targets"].shape == (6, 4)
    rows = [int((tokens[:, :-1] == r).all(1).nonzero()[0]) for r in batch["tokens"]]
    assert torch.equal(batch["targets"], tokens[rows, 1:])
    assert torch.equal(batch["images"], images[rows])
    with pytest.raises(ValueError, match="one caption per image: 4 images, 3 captions"):
        caption_batch(images, tokens[:3], 2, torch.Generator())


@pytest.mark.parametrize("cls", MODELS)
def test_tiny_model_overfits_a_handful_of_captioned_pictures(cls):
    """Six pictures with six different captions (padding included) are learned in 50 full-batch steps."""
    model = _model(cls, dtype=torch.float32).train()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 8, 8, generator=g)
    tokens = torch.randint(3, TINY["vocab_size"], (6, 7), generator=g)
    tokens[:, 0] = 1  # <bos>
    tokens[::2, 5], tokens[::2, 6] = 2, 0  # half the captions end early: <eos> then padding
    batch = {"images": images, "tokens": tokens[:, :-1], "targets": tokens[:, 1:]}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = caption_loss(model, batch).item()
    for _ in range(50):
        opt.zero_grad()
        loss = caption_loss(model, batch)
        loss.backward()
        opt.step()
    assert first > 2.0 and loss.item() < 0.05, (first, loss.item())
    model.eval()
    assert torch.equal(model.generate(images, 6, bos_id=1)[1::2], tokens[1::2])  # the full-length captions
