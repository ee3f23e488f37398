"""FLOPs per token: the formula agrees with PyTorch's counter, and every gap between them is named exactly."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from aigc_book.efficiency.flops import (
    causal_tile_fraction,
    count_flops,
    count_flops_by_operator,
    elementwise_flops_per_token,
    flops_differences,
    gpt3_175b_config,
    register_cpu_attention_flops,
    six_n_ratio,
)
from aigc_book.models.accounting import flops_per_token, non_embedding_parameters
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

CPU_KERNEL = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
CPU_KERNEL_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def random_config(seed: int, min_width: int = 32) -> tuple[TransformerConfig, int]:
    """A seeded random small GPT config and a sequence length ``T <= min(64, 2 n_embd)``.

    Widths from ``min_width`` up. Within ``n_embd >= 32, T <= 2 n_embd`` the formula stays within 5%
    of the counter: biases make it at most ``(13 L + 2) / (12 L n_embd)`` too high (4% at width 32),
    the fused backward's recomputed scores make it at most 4% too low (at ``T = 2 n_embd``); see
    ``EDGES`` and ``test_outside_the_regime_the_gap_grows_as_predicted``.
    """
    rng = random.Random(seed)
    n_head = rng.choice([1, 2, 4])
    head_dims = [d for d in (8, 16, 32, 64) if min_width <= n_head * d <= 128]
    n_embd = n_head * rng.choice(head_dims)
    block_size = rng.randint(8, 64)
    config = TransformerConfig(
        vocab_size=rng.randint(16, 400),
        block_size=block_size,
        n_layer=rng.randint(1, 3),
        n_head=n_head,
        n_embd=n_embd,
        bias=rng.random() < 0.5,
        pos_encoding=rng.choice(["learned", "sinusoidal", "rope"]),
        norm_first=rng.random() < 0.7,
        tie_weights=rng.random() < 0.7,
    )
    return config, rng.randint(1, min(block_size, 2 * n_embd))


def build(config: TransformerConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def set_fused(model: GPT, fused: bool) -> None:
    for block in model.transformer.h:
        block.attn.fused = fused


def token_ids(config: TransformerConfig, batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ the counter


def test_a_matrix_product_counts_two_flops_per_multiply_add():
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    assert count_flops(lambda: a @ b) == 2 * 3 * 5 * 7
    assert count_flops_by_operator(lambda: a @ b) == {"mm": 2 * 3 * 5 * 7}


def test_without_a_formula_the_cpu_attention_kernel_counts_zero():
    """The premise: PyTorch 2.13's counter has no formula for the CPU kernel, so attention vanishes."""
    q = k = v = torch.randn(2, 3, 16, 8)
    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        counter.flop_registry.pop(CPU_KERNEL, None)  # the counter's own copy, as PyTorch ships it
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert counter.get_total_flops() == 0


def test_registered_cpu_attention_counts_the_full_table_forward_and_five_products_backward():
    B, H, T, d = 2, 3, 16, 8
    q, k, v = (torch.randn(B, H, T, d, requires_grad=True) for _ in range(3))
    forward = count_flops_by_operator(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert forward == {CPU_KERNEL.__name__: 2 * (2 * B * H * T * T * d)}  # QK^T and AV, masked half included
    both = count_flops_by_operator(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward())
    assert both[CPU_KERNEL_BACKWARD.__name__] == 5 * (2 * B * H * T * T * d)  # 2.5 x the forward


def test_register_cpu_attention_flops_is_idempotent():
    register_cpu_attention_flops()
    formulas = flop_registry[CPU_KERNEL], flop_registry[CPU_KERNEL_BACKWARD]
    register_cpu_attention_flops()  # a second call neither raises nor replaces
    assert (flop_registry[CPU_KERNEL], flop_registry[CPU_KERNEL_BACKWARD]) == formulas


def test_operators_add_up_to_the_total_and_name_each_attention_path(tiny_config):
    model, idx = build(tiny_config), token_ids(tiny_config, 2, 16)
    for fused, attention_op in ((True, CPU_KERNEL.__name__), (False, "bmm")):
        set_fused(model, fused)
        by_op = count_flops_by_operator(lambda: model(idx))
        assert set(by_op) == {"addmm", "mm", attention_op}  # Linear with bias, the head, attention
        assert sum(by_op.values()) == count_flops(lambda: model(idx))


# ------------------------------------------------------------------------------ the formula


@pytest.mark.parametrize("seed", range(8))
def test_non_embedding_parameters_from_the_config_equal_the_built_model(seed):
    config, _ = random_config(seed, min_width=8)
    assert non_embedding_parameters(config) == build(config).num_parameters(exclude_embeddings=True)


def test_default_flops_per_token_is_still_kaplans_count(tiny_gpt):
    n, L, C, V = tiny_gpt.num_parameters(exclude_embeddings=True), 2, 32, 50
    assert tiny_gpt.flops_per_token() == 2 * n + 2 * L * 16 * C
    assert tiny_gpt.flops_per_token(8, training=True) == 3 * (2 * n + 2 * L * 8 * C)
    assert isinstance(tiny_gpt.flops_per_token(), float)
    assert tiny_gpt.flops_per_token(8, output_layer=True) == 2 * n + 2 * L * 8 * C + 2 * C * V
    assert tiny_gpt.flops_per_token(8, full_attention=True) == 2 * n + 4 * L * 8 * C
    full = tiny_gpt.flops_per_token(8, training=True, output_layer=True, full_attention=True)
    assert full == 6 * n + 12 * L * 8 * C + 6 * C * V  # PaLM's 6N + 12 L H Q T, plus the output layer


def test_the_method_uses_the_models_actual_parameter_count(tiny_gpt, tiny_config):
    tiny_gpt.extra = torch.nn.Linear(4, 4)  # a module added after building (an adapter, say)
    assert tiny_gpt.flops_per_token() == flops_per_token(tiny_config) + 2 * 20
    assert flops_per_token(tiny_config, n_params=1000) == 2 * 1000 + 2 * 2 * 16 * 32


# The corners of the regime: the largest bias share (narrowest, one token) and the largest
# attention share (longest context for the width, no bias, tiny vocabulary).
EDGES = {
    "most-bias": (TransformerConfig(vocab_size=16, block_size=64, n_layer=1, n_head=1, n_embd=32), 1),
    "most-attention": (
        TransformerConfig(vocab_size=16, block_size=64, n_layer=3, n_head=4, n_embd=32, bias=False, tie_weights=False),
        64,
    ),
}
CASES = [random_config(seed) for seed in range(20)] + list(EDGES.values())


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"seed{i}" for i in range(20)] + list(EDGES))
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "written-out"])
def test_formula_agrees_with_the_counter_within_five_percent(case, fused):
    config, T = CASES[case]
    model, B = build(config, case), 1 + case % 3
    set_fused(model, fused)
    idx = token_ids(config, B, T, case)
    params = [p for p in model.parameters() if p.requires_grad]
    forward = count_flops(lambda: model(idx)) / (B * T)
    training = count_flops(lambda: torch.autograd.grad(model(idx, idx).loss, params)) / (B * T)
    for counted, train in ((forward, False), (training, True)):
        formula = model.flops_per_token(T, training=train, output_layer=True, full_attention=True)
        assert formula == pytest.approx(counted, rel=0.05), (config, T, train)


# ------------------------------------------------------------------------------ the differences


@pytest.mark.parametrize("seed", range(6))
def test_every_gap_between_formula_and_counter_is_named_exactly(seed):
    config, T = random_config(100 + seed, min_width=8)
    d = flops_differences(build(config, seed), T, batch=2)
    assert d["counted_forward"] == d["weight_matrices"] + d["attention_full"] + d["output_layer"]
    assert d["counted_forward_fused"] == d["counted_forward"]
    assert d["formula_forward"] == d["counted_forward"] + d["biases_and_norms"]
    assert d["formula_training"] == 3 * d["formula_forward"]
    assert d["first_layer_input_grad_skipped"] == 0  # the token embedding is trained
    assert d["counted_training"] == 3 * d["counted_forward"]
    assert d["attention_recompute"] == d["attention_full"] // 2 == d["causal_half"]  # one more QK^T
    assert d["counted_training_fused"] == d["counted_training"] + d["attention_recompute"]
    assert d["embedding_lookups"] == 0


def test_biases_and_norms_are_two_flops_per_parameter_outside_the_matrices(tiny_gpt):
    d = flops_differences(tiny_gpt, 8)
    L, C = 2, 32
    assert d["biases_and_norms"] == 2 * (L * (9 * C + 4 * C) + 2 * C)  # Linear biases, LayerNorm gains and biases
    assert d["weight_matrices"] == 2 * 12 * L * C * C


def test_frozen_inputs_let_the_backward_skip_the_first_input_gradient():
    config = TransformerConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, tie_weights=False)
    model = build(config)
    for p in (model.transformer.wte.weight, model.transformer.wpe.weight, *model.transformer.h[0].ln_1.parameters()):
        p.requires_grad_(False)
    d = flops_differences(model, 16)
    assert d["first_layer_input_grad_skipped"] == 2 * 32 * (3 * 32)  # c_attn's input gradient, (T, 3C) @ (3C, C)


def test_outside_the_regime_the_gap_grows_as_predicted():
    """Narrow models with biases: the formula overshoots by 13 / (12 C); long contexts with the fused
    kernel: the counter overshoots by up to 1/7. Both beyond 5%, both equal to the named gap."""
    narrow = build(TransformerConfig(vocab_size=16, block_size=8, n_layer=2, n_head=1, n_embd=8))
    d = flops_differences(narrow, 8)
    assert d["formula_forward"] / d["counted_forward"] > 1.05
    assert d["formula_forward"] - d["counted_forward"] == d["biases_and_norms"]
    long = build(TransformerConfig(vocab_size=16, block_size=256, n_layer=2, n_head=2, n_embd=16, bias=False))
    d = flops_differences(long, 256)
    assert d["counted_training_fused"] / d["formula_training"] > 1.05
    assert d["counted_training_fused"] - d["formula_training"] == d["attention_recompute"] - 3 * d["biases_and_norms"]


def test_flops_differences_leaves_the_model_as_it_was(tiny_config):
    model = build(tiny_config).train()
    model.transformer.h[0].attn.fused = False
    flops_differences(model, 8)
    assert model.training
    assert [b.attn.fused for b in model.transformer.h] == [False, True]
    assert all(p.grad is None for p in model.parameters())


def test_elementwise_estimate_matches_a_hand_count(tiny_config):
    L, H, C, T = 2, 4, 32, 16
    assert elementwise_flops_per_token(tiny_config, T) == {
        "softmax": 6 * L * H * T,
        "gelu": 9 * L * 4 * C,
        "layernorm": 7 * (2 * L + 1) * C,
        "residual": 2 * L * C,
    }


# ------------------------------------------------------------------------------ 6N and long contexts


def test_gpt3_shape_has_175_billion_parameters():
    config = gpt3_175b_config()
    embeddings = config.vocab_size * config.n_embd + config.block_size * config.n_embd
    assert non_embedding_parameters(config) + embeddings == pytest.approx(175e9, rel=0.005)  # Brown et al. 2020


def test_six_n_ratio_grows_linearly_with_the_context():
    config = gpt3_175b_config()
    n, L, C, V = non_embedding_parameters(config), 96, 12288, 50257
    lens = [512, 2048, 8192, 32768, 131072]
    ratios = six_n_ratio(config, lens)
    for T, r in zip(lens, ratios):
        assert r == pytest.approx(1 + (12 * L * T * C + 6 * C * V) / (6 * n), rel=1e-12)
    assert ratios == sorted(ratios)
    assert ratios[1] == pytest.approx(1.031, abs=0.001)  # GPT-3's own context: 6N is 3% short
    assert ratios[-1] > 2.5  # at 128k tokens attention outweighs the weights
    causal = six_n_ratio(config, lens, full_attention=False)
    assert all(c < r for c, r in zip(causal, ratios))


def test_causal_tile_fraction_is_half_plus_the_diagonal_tiles():
    assert causal_tile_fraction(128) == 1.0  # one tile: everything is computed
    assert causal_tile_fraction(256) == 0.75  # three of four tiles
    assert causal_tile_fraction(4096) == 0.5 + 128 / (2 * 4096)
    assert causal_tile_fraction(100, block_q=1, block_k=1) == pytest.approx(101 / 200)  # exactly causal


# ------------------------------------------------------------------------------ bad input


def test_bad_inputs_raise_clear_errors(tiny_config, tiny_gpt):
    with pytest.raises(TypeError, match="function of no arguments"):
        count_flops(42)
    with pytest.raises(TypeError, match="TransformerConfig"):
        flops_per_token({"n_layer": 2})
    with pytest.raises(ValueError, match="seq_len must be an int >= 1"):
        flops_per_token(tiny_config, 0)
    with pytest.raises(TypeError, match="seq_len must be an int >= 1"):
        tiny_gpt.flops_per_token(8.5)
    with pytest.raises(ValueError, match="seq_lens is empty"):
        six_n_ratio(tiny_config, [])
    with pytest.raises(ValueError, match="longer than the model's context"):
        flops_differences(tiny_gpt, 17)
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        flops_differences(tiny_gpt, 8, batch=0)
    with pytest.raises(TypeError, match="aigc_book GPT"):
        flops_differences(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="block_q must be an int >= 1"):
        causal_tile_fraction(64, block_q=0)


def test_a_frozen_model_has_no_training_count(tiny_gpt):
    tiny_gpt.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        flops_differences(tiny_gpt, 8)
