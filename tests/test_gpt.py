"""The GPT: config checks, causal language-model loss, KV-cached generation equal to uncached,
parameter/FLOP accounting, and equality with Hugging Face's GPT2LMHeadModel after conversion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aigc_book.models.transformer import TransformerConfig

TOL = dict(rtol=1e-10, atol=1e-12)
POS = ["learned", "sinusoidal", "rope"]


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (dict(n_embd=30, n_head=4), ValueError, r"n_embd=30 is not divisible by the number of heads n_head=4"),
        (dict(pos_encoding="alibi"), ValueError, r"pos_encoding must be one of \('learned', 'sinusoidal', 'rope'\)"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(vocab_size=0), ValueError, r"vocab_size must be a positive int, got 0"),
        (dict(block_size=16.0), ValueError, r"block_size must be a positive int, got 16.0"),
        (dict(n_embd=12, n_head=4, pos_encoding="rope"), ValueError, r"rotary .* even head dimension, .* = 3"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(tiny_config, overrides, error, message):
    fields = {**tiny_config.__dict__, **overrides}
    with pytest.raises(error, match=message):
        TransformerConfig(**fields)


# ------------------------------------------------------------------ forward and loss


@pytest.mark.parametrize("pos_encoding", POS)
def test_forward_shapes_and_loss_is_mean_cross_entropy(make_tiny_gpt, tiny_ids, pos_encoding):
    model = make_tiny_gpt(pos_encoding=pos_encoding)
    targets = torch.roll(tiny_ids, -1, dims=1)
    targets[:, -1] = -100  # no next token for the last position: ignored
    logits, loss = model(tiny_ids, targets)
    assert logits.shape == (2, 7, 50)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    manual = -logp.gather(-1, targets[:, :-1, None]).mean()
    torch.testing.assert_close(loss, manual, **TOL)
    assert model(tiny_ids)[1] is None


def test_initial_loss_is_close_to_log_vocab(make_tiny_gpt):
    # GPT-2 init (std 0.02) gives nearly uniform predictions: loss ~ ln V at step 0
    model = make_tiny_gpt(seed=3)
    idx = torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(0))
    _, loss = model(idx, torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(1)))
    assert abs(loss.item() - math.log(50)) < 0.05


@pytest.mark.parametrize("pos_encoding", POS)
def test_logits_do_not_depend_on_future_tokens(make_tiny_gpt, tiny_ids, pos_encoding):
    model = make_tiny_gpt(pos_encoding=pos_encoding)
    logits = model(tiny_ids)[0]
    changed = tiny_ids.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 50
    logits2 = model(changed)[0]
    torch.testing.assert_close(logits[:, :4], logits2[:, :4], **TOL)
    assert not torch.allclose(logits[:, 4:], logits2[:, 4:])


def test_attn_mask_replaces_the_causal_mask(tiny_gpt, tiny_ids):
    T = tiny_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    torch.testing.assert_close(tiny_gpt(tiny_ids, attn_mask=causal)[0], tiny_gpt(tiny_ids)[0], **TOL)
    # an all-True mask makes the model bidirectional: position 0 now sees position 6
    full = torch.ones(T, T, dtype=torch.bool)
    changed = tiny_ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 50
    assert not torch.allclose(tiny_gpt(tiny_ids, attn_mask=full)[0][:, 0], tiny_gpt(changed, attn_mask=full)[0][:, 0])
    # a per-example, per-head mask (B, n_head, T, T), e.g. XLNet-style permutations
    perm_mask = torch.rand(2, 4, T, T, generator=torch.Generator().manual_seed(0)) > 0.5
    perm_mask |= torch.eye(T, dtype=torch.bool)
    logits = tiny_gpt(tiny_ids, attn_mask=perm_mask)[0]
    assert logits.shape == (2, T, 50) and torch.isfinite(logits).all()


def test_reference_and_fused_attention_give_the_same_model(tiny_gpt, tiny_ids):
    fused = tiny_gpt(tiny_ids)[0]
    for block in tiny_gpt.transformer.h:
        block.attn.fused = False
    torch.testing.assert_close(tiny_gpt(tiny_ids)[0], fused, **TOL)


def test_weights_are_tied_unless_asked_not_to(make_tiny_gpt):
    tied = make_tiny_gpt()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = make_tiny_gpt(tie_weights=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_parameters() - tied.num_parameters() == 50 * 32


def test_gpt2_initialisation_scales_residual_projections(make_tiny_gpt):
    model = make_tiny_gpt(n_layer=8, n_embd=64, dtype=torch.float32)
    std = lambda name: torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith(name)]).std().item()  # noqa: E731
    assert std("c_fc.weight") == pytest.approx(0.02, rel=0.05)
    assert std("c_proj.weight") == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_and_says_what_was_expected(tiny_gpt):
    with pytest.raises(ValueError, match=r"sequence length 17 is longer than the context: block_size=16"):
        tiny_gpt(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids \(vocab_size=50\) must lie in \[0, 50\), got values in \[0, 50\]"):
        tiny_gpt(torch.tensor([[0, 50]]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 3\]"):
        tiny_gpt(torch.tensor([[-1, 3]]))
    with pytest.raises(TypeError, match=r"integer tensor of shape \(B, T\)"):
        tiny_gpt(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"must have shape \(B, T\), got shape \(4,\)"):
        tiny_gpt(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"does not broadcast .*\(1, 4, 3, 3\)"):
        tiny_gpt(torch.zeros(1, 3, dtype=torch.long), attn_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"targets must have the shape of the input \(B, T\) = \(1, 3\)"):
        tiny_gpt(torch.zeros(1, 3, dtype=torch.long), targets=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int"):
        tiny_gpt.generate(torch.zeros(1, 3, dtype=torch.long), -1)
    with pytest.raises(ValueError, match=r"temperature must be >= 0 \(0 = greedy\)"):
        tiny_gpt.generate(torch.zeros(1, 3, dtype=torch.long), 2, temperature=-1.0)


# ------------------------------------------------------------------ generation


@pytest.mark.parametrize("pos_encoding", POS)
@pytest.mark.parametrize("new_tokens", [5, 30], ids=["within-context", "past-context"])
@pytest.mark.slow
def test_kv_cache_generates_exactly_the_uncached_tokens(make_tiny_gpt, tiny_ids, pos_encoding, new_tokens):
    model = make_tiny_gpt(pos_encoding=pos_encoding)
    greedy = [model.generate(tiny_ids, new_tokens, temperature=0, use_cache=c) for c in (True, False)]
    assert torch.equal(greedy[0], greedy[1])
    sampled = [
        model.generate(tiny_ids, new_tokens, temperature=1.5, top_k=10, use_cache=c,
                       generator=torch.Generator().manual_seed(7))
        for c in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])
    assert not torch.equal(sampled[0], greedy[0])
    assert torch.equal(greedy[0][:, :7], tiny_ids) and greedy[0].shape == (2, 7 + new_tokens)


def test_greedy_generation_is_argmax_of_the_forward_pass(tiny_gpt, tiny_ids):
    idx = tiny_ids
    for _ in range(4):
        nxt = tiny_gpt(idx)[0][:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
    assert torch.equal(tiny_gpt.generate(tiny_ids, 4, temperature=0), idx)


def test_top_k_1_sampling_is_greedy(tiny_gpt, tiny_ids):
    out = tiny_gpt.generate(tiny_ids, 6, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, tiny_gpt.generate(tiny_ids, 6, temperature=0))


def test_generate_restores_training_mode_and_output_can_be_trained_on(tiny_gpt, tiny_ids):
    tiny_gpt.train()
    out = tiny_gpt.generate(tiny_ids, 2)
    assert tiny_gpt.training
    _, loss = tiny_gpt(out[:, :-1], out[:, 1:])  # e.g. RLHF trains on generated text
    loss.backward()
    assert tiny_gpt.transformer.wte.weight.grad is not None


def test_attention_maps_are_causal_distributions(tiny_gpt, tiny_ids):
    maps = tiny_gpt.attention_maps(tiny_ids)
    assert maps.shape == (2, 2, 4, 7, 7)  # (n_layer, B, n_head, T, T)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 4, 7, dtype=torch.float64), **TOL)
    assert torch.all(maps.triu(diagonal=1) == 0)


# ------------------------------------------------------------------ accounting


def test_parameter_count_matches_the_closed_form(tiny_gpt):
    L, C, V, T = 2, 32, 50, 16
    per_layer = 12 * C * C + 13 * C  # attention 4C^2+4C, MLP 8C^2+5C, two LayerNorms 4C
    assert tiny_gpt.num_parameters(exclude_embeddings=True) == L * per_layer + 2 * C
    assert tiny_gpt.num_parameters() == L * per_layer + 2 * C + V * C + T * C
    assert sum(tiny_gpt.parameter_counts().values()) == tiny_gpt.num_parameters()
    assert tiny_gpt.parameter_counts()["attention"] == L * (4 * C * C + 4 * C)


def test_flops_per_token_follows_kaplan(tiny_gpt):
    n = tiny_gpt.num_parameters(exclude_embeddings=True)
    assert tiny_gpt.flops_per_token() == 2 * n + 2 * 2 * 16 * 32
    assert tiny_gpt.flops_per_token(seq_len=8, training=True) == 3 * (2 * n + 2 * 2 * 8 * 32)


# ------------------------------------------------------------------ Hugging Face GPT-2


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("transformers")
    from aigc_book.models import hf_gpt2

    return hf_gpt2


def test_our_gpt_equals_hf_gpt2_after_conversion(hf, tiny_gpt, tiny_ids):
    hf_model = hf.to_hf_gpt2(tiny_gpt)
    assert hf_model.dtype == torch.float64 and not hf_model.training
    torch.testing.assert_close(tiny_gpt(tiny_ids)[0], hf_model(tiny_ids).logits, **TOL)
    ours = tiny_gpt.generate(tiny_ids, 8, temperature=0)
    theirs = hf_model.generate(tiny_ids, attention_mask=torch.ones_like(tiny_ids), max_new_tokens=8,
                               do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_hf_gpt2_converts_to_ours_and_back(hf, tiny_config, tiny_ids):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(hf.to_hf_config(tiny_config)).double().eval()
    ours = hf.from_hf_gpt2(hf_model)
    assert ours.config == tiny_config
    torch.testing.assert_close(ours(tiny_ids)[0], hf_model(tiny_ids).logits, **TOL)
    targets = torch.roll(tiny_ids, -1, 1)
    hf_loss = F.cross_entropy(hf_model(tiny_ids).logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(ours(tiny_ids, targets)[1], hf_loss, **TOL)
    back = hf.to_hf_gpt2(ours).state_dict()
    for name, tensor in hf_model.state_dict().items():
        if name in back:
            assert torch.equal(back[name], tensor), name


def test_configs_without_a_gpt2_counterpart_are_refused(hf, tiny_config):
    rope = TransformerConfig(**{**tiny_config.__dict__, "pos_encoding": "rope", "norm_first": False})
    with pytest.raises(ValueError, match=r"no GPT-2 counterpart: pos_encoding='rope' .*; norm_first=False"):
        hf.to_hf_config(rope)
