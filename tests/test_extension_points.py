"""The seams later chapters build on, each proven on the tiny GPT: explicit positions, input
embeddings and key/value prefixes, final hidden states, wrapped Linear layers, a reorderable cache,
attention maps on request, and a forward pass that torch.compile traces without a graph break."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aigc_book.layers.surgery import replace_linear
from aigc_book.models.transformer import position_ids_from_padding

POS = ["learned", "sinusoidal", "rope"]
TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pos_encoding", POS)
def test_explicit_position_ids_equal_the_default(make_tiny_gpt, tiny_ids, pos_encoding):
    model = make_tiny_gpt(pos_encoding=pos_encoding)
    T = tiny_ids.size(1)
    default = model(tiny_ids).logits
    torch.testing.assert_close(model(tiny_ids, position_ids=torch.arange(T)).logits, default, **TOL)
    torch.testing.assert_close(model(tiny_ids, position_ids=torch.arange(T).expand(2, T)).logits, default, **TOL)
    reversed_order = model(tiny_ids, position_ids=torch.arange(T).flip(0)).logits
    assert not torch.allclose(reversed_order, default)  # positions are really used
    shifted = model(tiny_ids, position_ids=torch.arange(3, 3 + T)).logits
    assert torch.allclose(shifted, default, **TOL) == (pos_encoding == "rope")  # only RoPE is purely relative


@pytest.mark.parametrize("pos_encoding", POS)
def test_a_left_padded_row_gives_the_logits_of_the_unpadded_one(make_tiny_gpt, pos_encoding):
    model = make_tiny_gpt(pos_encoding=pos_encoding)
    g = torch.Generator().manual_seed(2)
    short, long = torch.randint(0, 50, (1, 4), generator=g), torch.randint(0, 50, (1, 7), generator=g)
    batch = torch.cat([torch.cat([torch.full((1, 3), 7), short], dim=1), long])  # row 0: 3 pads, then 4 tokens
    padding_mask = torch.ones(2, 7, dtype=torch.bool)
    padding_mask[0, :3] = False
    positions = position_ids_from_padding(padding_mask)
    assert positions[0].tolist() == [0, 0, 0, 0, 1, 2, 3]
    logits = model(batch, padding_mask=padding_mask, position_ids=positions).logits
    torch.testing.assert_close(logits[0, 3:], model(short).logits[0], **TOL)
    torch.testing.assert_close(logits[1], model(long).logits[0], **TOL)


def test_inputs_embeds_equal_token_ids_and_soft_prompts_train_alone(tiny_gpt, tiny_ids):
    embeds = tiny_gpt.transformer.wte(tiny_ids)
    torch.testing.assert_close(tiny_gpt(inputs_embeds=embeds).logits, tiny_gpt(tiny_ids).logits, **TOL)
    # prompt tuning: three trained vectors in front of the tokens, the model frozen
    for p in tiny_gpt.parameters():
        p.requires_grad_(False)
    prompt = nn.Parameter(torch.randn(1, 3, 32, dtype=torch.float64))
    out = tiny_gpt(inputs_embeds=torch.cat([prompt.expand(2, -1, -1), embeds], dim=1))
    out.logits[:, 3:].sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="exactly one of idx"):
        tiny_gpt(tiny_ids, inputs_embeds=embeds)


@pytest.mark.parametrize("pos_encoding", POS)
def test_a_prefix_of_keys_and_values_acts_like_the_tokens_it_came_from(make_tiny_gpt, pos_encoding):
    model = make_tiny_gpt(pos_encoding=pos_encoding)
    full = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    P = 4
    cache = model.new_kv_cache(2)
    model(full[:, :P], kv_cache=cache)  # the keys and values the prefix tokens leave behind
    prefix_kv = [(cache.k[i, :, :, :P], cache.v[i, :, :, :P]) for i in range(model.config.n_layer)]
    rest = model(full[:, P:], prefix_kv=prefix_kv, position_ids=torch.arange(P, 9)).logits
    torch.testing.assert_close(rest, model(full).logits[:, P:], **TOL)
    # a prefix broadcast over the batch (prefix tuning trains one for all rows)
    one = [(k[:1], v[:1]) for k, v in prefix_kv]
    torch.testing.assert_close(model(full[:1, P:], prefix_kv=one, position_ids=torch.arange(P, 9)).logits,
                               rest[:1], **TOL)
    with pytest.raises(ValueError, match="one \\(keys, values\\) pair per layer"):
        model(full, prefix_kv=prefix_kv[:1])


def test_final_hidden_states_feed_any_head(tiny_gpt, tiny_ids):
    out = tiny_gpt(tiny_ids)
    assert out.last_hidden_state.shape == (2, 7, 32)
    torch.testing.assert_close(tiny_gpt.lm_head(out.last_hidden_state), out.logits, **TOL)
    value_head = nn.Linear(32, 1, dtype=torch.float64)  # e.g. PPO's value function
    assert value_head(out.last_hidden_state).squeeze(-1).shape == (2, 7)


class LowRankDelta(nn.Module):
    """A minimal LoRA-style wrapper: ``base(x) + B(A(x))`` with ``B`` zero at the start."""

    def __init__(self, base: nn.Linear, r: int = 2):
        super().__init__()
        self.base = base
        self.A = nn.Linear(base.in_features, r, bias=False, dtype=base.weight.dtype)
        self.B = nn.Linear(r, base.out_features, bias=False, dtype=base.weight.dtype)
        nn.init.zeros_(self.B.weight)

    def forward(self, x):
        return self.base(x) + self.B(self.A(x))


def test_any_linear_can_be_wrapped_from_outside(make_tiny_gpt, tiny_ids):
    model = make_tiny_gpt()
    before = model(tiny_ids).logits
    names = replace_linear(model, lambda name, linear: LowRankDelta(linear), ["*.attn.c_attn", "*.attn.c_proj"])
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                     "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"]
    torch.testing.assert_close(model(tiny_ids).logits, before, **TOL)  # zero delta: same model
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.B.weight.normal_()
    assert not torch.allclose(model(tiny_ids).logits, before)  # the wrapper is on the path
    everything = replace_linear(make_tiny_gpt(), lambda name, linear: LowRankDelta(linear))
    assert len(everything) == 4 * 2 + 1  # four per block, and the (tied) output head
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        replace_linear(model, lambda name, linear: linear, ["*.q_proj"])


def test_kv_cache_reorders_and_copies_like_beam_search_needs(tiny_gpt):
    prompts = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(4))
    cache = tiny_gpt.new_kv_cache(2)
    tiny_gpt(prompts, kv_cache=cache)
    cache.reorder(torch.tensor([1, 1, 0]))  # three beams: two continue prompt 1, one prompt 0
    assert cache.batch_size == 3
    nxt = torch.tensor([[3], [4], [5]])
    branch = cache.copy()
    step = tiny_gpt(nxt, kv_cache=cache).logits[:, -1]
    full = torch.cat([prompts[[1, 1, 0]], nxt], dim=1)
    torch.testing.assert_close(step, tiny_gpt(full).logits[:, -1], **TOL)
    assert branch.length == 5 and cache.length == 6  # the copy did not move
    other = tiny_gpt(torch.tensor([[9], [9], [9]]), kv_cache=branch).logits[:, -1]
    other_full = torch.cat([prompts[[1, 1, 0]], torch.full((3, 1), 9)], dim=1)
    torch.testing.assert_close(other, tiny_gpt(other_full).logits[:, -1], **TOL)
    cache.crop(5)
    torch.testing.assert_close(tiny_gpt(nxt, kv_cache=cache).logits[:, -1], step, **TOL)
    with pytest.raises(ValueError, match="crop a cache of 6 positions"):
        cache.crop(7)


def test_attention_maps_come_back_on_request(tiny_gpt, tiny_ids):
    out = tiny_gpt(tiny_ids, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(out.logits, tiny_gpt(tiny_ids).logits, **TOL)  # same numbers, other kernel
    assert tiny_gpt(tiny_ids).attentions is None


def test_the_forward_pass_compiles_without_a_graph_break(make_tiny_gpt, tiny_ids):
    model = make_tiny_gpt(dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    torch.testing.assert_close(compiled(tiny_ids, tiny_ids).loss, model(tiny_ids, tiny_ids).loss)
