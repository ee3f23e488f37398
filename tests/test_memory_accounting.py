"""The memory formulas of chapter 6 equal what a real training step of the book's GPT keeps, byte for byte."""

from __future__ import annotations

import pytest
import torch

from aigc_book.efficiency.checkpointing import checkpointed_blocks, checkpointing_tradeoff
from aigc_book.efficiency.memory import (
    KV_CACHE_SHAPES,
    activation_bytes,
    activation_reconciliation,
    activation_terms,
    korthikanti_activation_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    lm_training_setup,
    memory_by_precision,
    saved_tensors,
    training_memory,
    training_state_bytes,
)
from aigc_book.layers.kv_cache import KVCache
from aigc_book.models.transformer import TransformerConfig
from aigc_book.training.objectives import causal_lm_loss

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
B, T = 3, 11  # T not a power of two, B not T: a swapped factor would show


def _config(**overrides) -> TransformerConfig:
    return TransformerConfig(**{**TINY, **overrides})


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


def _measure(config, dtype=torch.float32, **kwargs):
    model, data = lm_training_setup(config, B, T)
    return training_memory(model.to(dtype), _adamw, data, causal_lm_loss, **kwargs)


# ----------------------------------------------------------------------------- training state


def test_training_state_formula_equals_a_real_adamw_step():
    model, data = lm_training_setup(_config(), B, T)
    n_tensors = len(list(model.parameters()))  # the tied embedding once, as the optimiser sees it
    report = training_memory(model, _adamw, data, causal_lm_loss)
    state = training_state_bytes(model.num_parameters(), n_param_tensors=n_tensors)
    assert state["parameters"] == report.parameters
    assert state["gradients"] == report.gradients
    assert state["momentum"] + state["variance"] + state["step counters"] == report.optimizer_state
    assert state["step counters"] == 4 * n_tensors > 0  # one float32 step per tensor, not per parameter
    assert state["total"] == report.parameters + report.gradients + report.optimizer_state


def test_sgd_keeps_no_state_and_momentum_keeps_one_buffer():
    model, data = lm_training_setup(_config(), B, T)
    n = model.num_parameters()
    momentum = training_memory(model, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), data, causal_lm_loss)
    assert training_state_bytes(n, optimizer="sgd_momentum")["momentum"] == momentum.optimizer_state == 4 * n
    plain = training_memory(model, lambda ps: torch.optim.SGD(ps, lr=0.1), data, causal_lm_loss)
    assert plain.optimizer_state == 0
    assert training_state_bytes(n, optimizer="sgd")["total"] == 8 * n  # weights and gradients only


def test_mixed_precision_adamw_costs_zeros_16_bytes_per_parameter():
    mixed = training_state_bytes(1000, param_bytes=2, grad_bytes=2, master_copy=True)
    assert (mixed["parameters"], mixed["gradients"]) == (2000, 2000)
    assert mixed["master parameters"] + mixed["momentum"] + mixed["variance"] == 12 * 1000  # ZeRO §3.1's K = 12
    assert mixed["total"] == 16 * 1000 == training_state_bytes(1000)["total"]  # float32 AdamW: 4 + 4 + 8


def test_training_state_bytes_refuses_bad_input():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        training_state_bytes(10, optimizer="adam")
    with pytest.raises(ValueError, match="n_params must be an int >= 0"):
        training_state_bytes(-1)
    with pytest.raises(TypeError, match="n_params must be an int"):
        training_state_bytes(1.5)
    with pytest.raises(ValueError, match="master_copy"):
        training_state_bytes(10, master_copy=True)
    with pytest.raises(ValueError, match="param_bytes"):
        training_state_bytes(10, param_bytes=3)


# ----------------------------------------------------------------------------- activations

CONFIGS = {
    "gpt2-like": {},
    "rope": dict(pos_encoding="rope"),
    "sinusoidal": dict(pos_encoding="sinusoidal"),
    "post-LN": dict(norm_first=False),
    "no bias, untied": dict(bias=False, tie_weights=False),
    "3 layers, 2 heads": dict(n_layer=3, n_head=2),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_formula_equals_the_saved_tensors_of_a_training_step(overrides, dtype):
    config = _config(**overrides)
    measured = _measure(config, dtype).activations
    assert activation_bytes(config, B, T, bytes_per_element=dtype.itemsize) == measured


def test_one_more_layer_adds_exactly_one_layer_of_activations():
    # an independent check of the per-layer count: the difference of two measurements
    two, three = _measure(_config(n_layer=2)).activations, _measure(_config(n_layer=3)).activations
    c = _config()
    assert three - two == layer_activation_bytes(c, B, T) == 4 * B * T * (16 * c.n_embd + 4 + c.n_head)


def test_autocast_formula_equals_measurement_and_weight_copies_are_not_activations():
    config = _config()
    mixed = _measure(config, autocast=torch.bfloat16)
    assert mixed.activations == activation_bytes(config, B, T, autocast_bytes=2)
    model, _ = lm_training_setup(config, B, T)
    matrices = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert mixed.parameter_copies == 2 * matrices  # one bf16 copy of each weight matrix, lm_head included
    assert mixed.total == mixed.parameters + mixed.gradients + mixed.optimizer_state + mixed.activations \
        + mixed.parameter_copies
    full = _measure(config)
    assert full.parameter_copies is None and "parameter_copies" not in full.as_dict()  # the default is unchanged
    assert full.activations * 0.5 < mixed.activations < full.activations * 0.7


def test_under_autocast_layernorm_attention_statistics_and_loss_stay_float32():
    model, data = lm_training_setup(_config(), B, T)
    rows = saved_tensors(model, data, causal_lm_loss, autocast=torch.bfloat16)
    dtypes = {(r.op, r.name): r.dtype for r in rows if r.kind == "activation"}
    assert dtypes[("NativeLayerNormBackward0", "input")] == torch.float32
    assert dtypes[("NativeLayerNormBackward0", "result2")] == torch.float32  # 1/std
    assert dtypes[("LogSoftmaxBackward0", "result")] == torch.float32  # the loss's log-probabilities
    attention = next(op for op, _ in dtypes if op.startswith("ScaledDotProduct"))
    assert dtypes[(attention, "logsumexp")] == torch.float32
    assert dtypes[(attention, "query")] == torch.bfloat16
    assert dtypes[("AddmmBackward0", "mat1")] == torch.bfloat16  # a matrix product's input
    assert {r.kind for r in rows} == {"parameter", "parameter copy", "activation"}
    measured = training_memory(model, _adamw, data, causal_lm_loss, autocast=torch.bfloat16).activations
    assert sum(r.nbytes for r in rows if r.first and r.kind == "activation") == measured


def test_memory_by_precision_reports_measurement_and_formula():
    out = memory_by_precision(_config(), B, T)
    assert out["float32"] == out["float32 formula"] and out["autocast"] == out["autocast formula"]
    assert out["parameter copies"] > 0


def test_activation_terms_name_the_attention_matrix_only_where_it_is_stored():
    terms = activation_terms(_config(), B, T)
    assert not any("softmax" in k for k in terms)  # the fused kernel keeps a log-sum-exp instead
    assert terms["blocks: attention log-sum-exp (fused kernel)"] == 2 * B * T * 4 * 4
    assert terms["log-probabilities (cross-entropy)"] == B * T * 50 * 4


def test_activation_formulas_refuse_what_they_do_not_model():
    with pytest.raises(ValueError, match="dropout=0"):
        activation_bytes(_config(dropout=0.1), B, T)
    with pytest.raises(ValueError, match="longer than the context"):
        activation_bytes(_config(), B, 17)
    with pytest.raises(TypeError, match="TransformerConfig"):
        activation_bytes(dict(TINY), B, T)
    with pytest.raises(ValueError, match="bytes_per_element"):
        activation_bytes(_config(), B, T, bytes_per_element=3)
    with pytest.raises(ValueError, match="autocast must be None"):
        _measure(_config(), autocast=torch.float32)


# ----------------------------------------------------------------------------- Korthikanti et al.


def test_korthikanti_formula_by_hand_for_one_gpt3_layer():
    s, b, h, a = 2048, 1, 12288, 96
    assert korthikanti_activation_bytes(s, b, h, a, 1) == s * b * h * 34 + 5 * a * s * s * b
    assert korthikanti_activation_bytes(s, b, h, a, 96) == 96 * 2_868_903_936  # 2.67 GiB per layer, by hand
    with pytest.raises(ValueError, match="heads must be an int >= 1"):
        korthikanti_activation_bytes(s, b, h, 0, 1)


def test_reconciliation_columns_sum_to_both_formulas():
    for overrides in ({}, dict(pos_encoding="rope")):
        config = _config(**overrides)
        rows = activation_reconciliation(config, B, T)
        theirs = korthikanti_activation_bytes(T, B, config.n_embd, config.n_head, 1)
        assert sum(r["korthikanti"] for r in rows) == theirs
        assert sum(r["ours"] for r in rows) == layer_activation_bytes(config, B, T)
    # their 34 sbh is our sixteen h-sized tensors at 2 bytes plus two 1-byte dropout masks
    masks = sum(r["korthikanti"] for r in rows if "dropout mask (1 byte)" in r["term"])
    assert masks == 2 * B * T * config.n_embd


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_formula_equals_what_a_kvcache_allocates(dtype):
    n_layer, batch, n_kv_head, max_len, head_dim = 3, 2, 2, 9, 8
    cache = KVCache(n_layer, batch, n_kv_head, max_len, head_dim, dtype=dtype)
    allocated = cache.k.nbytes + cache.v.nbytes
    assert kv_cache_bytes(n_layer, n_kv_head, head_dim, max_len, batch, dtype.itemsize) == allocated


def test_grouped_query_attention_divides_the_cache_by_the_group_size():
    mha = kv_cache_bytes(80, 64, 128, 4096, 1)
    gqa = kv_cache_bytes(80, 8, 128, 4096, 1)
    assert mha == 8 * gqa
    with pytest.raises(ValueError, match="n_kv_head must be an int >= 1"):
        kv_cache_bytes(80, 0, 128, 4096, 1)


def test_published_kv_cache_shapes_by_hand():
    gpt3, llama = KV_CACHE_SHAPES["GPT-3 175B"], KV_CACHE_SHAPES["Llama 2 70B"]
    assert gpt3.n_head * gpt3.head_dim == 12288 and llama.n_head * llama.head_dim == 8192  # d_model
    assert gpt3.kv_cache_bytes() == 2 * 96 * 96 * 128 * 2048 * 2 == 9_663_676_416  # 9 GiB per 2048-token sequence
    assert llama.kv_cache_bytes() == 2 * 80 * 8 * 128 * 4096 * 2 == 1_342_177_280  # 1.25 GiB per 4096 tokens
    assert all(s.source for s in KV_CACHE_SHAPES.values())


# ----------------------------------------------------------------------------- checkpointing


def _grads(model, data, seed):
    torch.manual_seed(seed)  # the same dropout masks in both runs
    model.zero_grad(set_to_none=True)
    causal_lm_loss(model, data).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_gives_the_same_gradients(make_tiny_gpt, dropout):
    model = make_tiny_gpt(dropout=dropout).train()  # float64
    data = {"idx": torch.randint(0, 50, (2, 9)), "targets": torch.randint(0, 50, (2, 9))}
    plain = _grads(model, data, seed=3)
    with checkpointed_blocks(model):
        ckpt = _grads(model, data, seed=3)
    assert plain.keys() == ckpt.keys()
    for name in plain:  # float64; the recomputation repeats the same operations
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-12, atol=1e-14, msg=name)


def test_checkpointing_changes_no_state_dict_key_and_is_undone_on_exit(tiny_gpt):
    keys = list(tiny_gpt.state_dict())
    with checkpointed_blocks(tiny_gpt) as same:
        assert same is tiny_gpt and list(tiny_gpt.state_dict()) == keys
        assert all("forward" in vars(b) for b in tiny_gpt.transformer.h)
    assert not any("forward" in vars(b) for b in tiny_gpt.transformer.h)


def test_checkpointed_activations_are_the_block_inputs_and_the_rest_of_the_model():
    config = _config()
    model, data = lm_training_setup(config, B, T)
    plain = training_memory(model, _adamw, data, causal_lm_loss).activations
    with checkpointed_blocks(model):
        ckpt = training_memory(model, _adamw, data, causal_lm_loss).activations
    assert ckpt == activation_bytes(config, B, T, checkpointed=True) < plain
    saved_by_blocks = activation_bytes(config, B, T) - activation_bytes(config, B, T, checkpointed=True)
    assert plain - ckpt == saved_by_blocks  # only the blocks' internals went away
    assert activation_terms(config, B, T, checkpointed=True)["blocks: block inputs (checkpoints)"] == \
        config.n_layer * B * T * config.n_embd * 4


def test_with_rope_the_hooks_miss_the_cos_sin_tables_the_checkpoints_hold():
    config = _config(pos_encoding="rope")
    model, data = lm_training_setup(config, B, T)
    with checkpointed_blocks(model):
        ckpt = training_memory(model, _adamw, data, causal_lm_loss).activations
    assert ckpt == activation_bytes(config, B, T, checkpointed=True) - 2 * T * config.head_dim * 4


def test_generation_is_unchanged_inside_checkpointed_blocks(tiny_gpt):
    prompt = torch.tensor([[1, 2, 3]])
    expected = tiny_gpt.generate(prompt, 4, temperature=0)
    with checkpointed_blocks(tiny_gpt):
        assert torch.equal(tiny_gpt.generate(prompt, 4, temperature=0), expected)


def test_checkpointed_blocks_refuses_bad_input(tiny_gpt):
    with pytest.raises(ValueError, match="no TransformerBlock"):
        with checkpointed_blocks(torch.nn.Linear(2, 2)):
            pass
    with pytest.raises(TypeError, match="nn.Module"):
        with checkpointed_blocks("gpt"):
            pass
    with checkpointed_blocks(tiny_gpt), pytest.raises(ValueError, match="already checkpointed"):
        with checkpointed_blocks(tiny_gpt):
            pass


def test_checkpointing_tradeoff_reports_memory_saved_and_time_spent():
    out = checkpointing_tradeoff(_config(), B, T, repeats=1, min_seconds=0.0)
    assert out["activations"] == out["activations formula"]
    assert out["activations checkpointed"] == out["activations checkpointed formula"]
    assert 0.5 < out["memory saved"] < 1
    assert out["ms per step"] > 0 and out["ms per step checkpointed"] > 0
    assert "peak" not in out  # CPU
    with pytest.raises(ValueError, match="repeats"):
        checkpointing_tradeoff(_config(), B, T, repeats=0)


def test_saved_tensors_refuses_a_checkpointed_model_it_would_recompute(tiny_gpt, tiny_ids):
    with checkpointed_blocks(tiny_gpt), pytest.raises(ValueError, match="checkpointed"):
        saved_tensors(tiny_gpt, {"idx": tiny_ids, "targets": tiny_ids}, causal_lm_loss)
