"""Inference speed-ups: batching raises throughput, the KV cache changes no token and holds the bytes its
formula says, int8 quantisation shrinks the model, keeps the tied head tied and the loss nearly
unchanged, bf16 stays close to float32; bad arguments are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aigc_book.efficiency.inference import (
    _greedy,
    compare_dtypes,
    compare_int8,
    compare_kv_cache,
    kv_cache_bytes,
    model_bytes,
    quantize_int8,
    throughput_vs_batch,
)
from aigc_book.generation import generate
from aigc_book.training.evaluation import lm_loss

pytestmark = [
    pytest.mark.usefixtures("one_cpu_thread"),
    # torch.ao.quantization's deprecation notices (compare_int8 records them; the test below checks that)
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning"),
]

FAST = dict(repeats=1, min_seconds=0.001)  # timings here only need to exist, not to be precise


@pytest.fixture
def gpt32(make_tiny_gpt):
    """The tiny GPT in float32 (int8 kernels take float32 activations), context 32."""
    return make_tiny_gpt(dtype=torch.float32, block_size=32)


def test_throughput_grows_with_batch_size(gpt32):
    rows = throughput_vs_batch(gpt32, [1, 16], new_tokens=8, device="cpu", prompt_len=8, **FAST)
    assert [r["batch_size"] for r in rows] == [1, 16]
    for r in rows:
        assert r["tokens_per_s"] == pytest.approx(1000 * r["batch_size"] / r["ms_per_step"])
        assert r["prefill_ms"] > 0
    # a tiny model's step costs about the same for 1 row or 16: memory- and overhead-bound, not compute-bound
    assert rows[1]["tokens_per_s"] > 2 * rows[0]["tokens_per_s"]


def test_kv_cache_changes_no_token_and_holds_the_bytes_of_its_formula(make_tiny_gpt):
    model = make_tiny_gpt(block_size=32)  # float64
    r = compare_kv_cache(model, new_tokens=10, device="cpu", batch_size=2, prompt_len=6, **FAST)
    assert r["same_tokens"] is True
    c = model.config
    assert r["cache_bytes"] == 2 * c.n_layer * 2 * c.n_head * (6 + 10) * c.head_dim * 8  # keys + values, float64
    assert r["cache_bytes_per_token"] == 2 * c.n_layer * c.n_embd * 8
    assert r["with_cache_tokens_per_s"] > 0 and r["without_cache_tokens_per_s"] > 0
    assert kv_cache_bytes(model.new_kv_cache(1, 4)) == 2 * c.n_layer * c.n_head * 4 * c.head_dim * 8


def test_greedy_helper_gives_the_books_greedy_tokens(make_tiny_gpt):
    model = make_tiny_gpt(block_size=32)
    prompt = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(0))
    expected = generate(model, prompt, max_new_tokens=9).sequences[:, 5:]
    with torch.no_grad():
        assert torch.equal(_greedy(model, prompt, 9, use_cache=True), expected)
        assert torch.equal(_greedy(model, prompt, 9, use_cache=False), expected)


def test_int8_copy_quantises_the_blocks_and_keeps_the_tied_head(gpt32):
    before = {k: v.clone() for k, v in gpt32.state_dict().items()}
    q = quantize_int8(gpt32)
    assert isinstance(gpt32.transformer.h[0].attn.c_attn, nn.Linear)  # the original is untouched
    assert all(torch.equal(v, gpt32.state_dict()[k]) for k, v in before.items())
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert all(isinstance(m, dynamic) for m in (q.transformer.h[0].attn.c_attn, q.transformer.h[1].mlp.c_proj))
    assert type(q.lm_head) is nn.Linear and q.lm_head.weight is q.transformer.wte.weight
    x = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = gpt32(x).logits, q(x).logits
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()  # int8 rounding, not a different model


def test_model_bytes_counts_a_tied_matrix_once_and_shrinks_with_int8(gpt32, make_tiny_gpt):
    n = gpt32.num_parameters()  # a tied matrix counted once
    assert 4 * n < model_bytes(gpt32) < 4 * n * 1.1 + 20_000  # float32 tensors plus pickle's bookkeeping
    untied = make_tiny_gpt(dtype=torch.float32, block_size=32, tie_weights=False)
    assert model_bytes(untied) - model_bytes(gpt32) == pytest.approx(4 * 50 * 32, rel=0.1)
    assert model_bytes(quantize_int8(gpt32)) < 0.6 * model_bytes(gpt32)


def test_compare_int8_reports_size_speed_loss_and_the_deprecation(gpt32):
    val = torch.randint(0, 50, (600,), generator=torch.Generator().manual_seed(0))
    r = compare_int8(gpt32, val, "cpu", batch_size=4, max_tokens=400, **FAST)
    assert r["bytes_int8"] < r["bytes_fp32"] and r["device"] == "cpu" and r["backend"] == "torch"
    assert abs(r["loss_int8"] - r["loss_fp32"]) < 0.02
    assert r["perplexity_fp32"] == pytest.approx(torch.tensor(r["loss_fp32"]).exp().item())
    assert min(r["forward_ms_fp32"], r["forward_ms_int8"], r["decode_ms_fp32"], r["decode_ms_int8"]) > 0
    assert any("deprecated" in w for w in r["warnings"])  # torch.ao.quantization says so in torch 2.13
    sequences = torch.randint(0, 50, (6, 17), generator=torch.Generator().manual_seed(1))  # (N, L), as lm_loss reads
    r2 = compare_int8(gpt32, sequences, "cpu", batch_size=4, **FAST)
    assert r2["loss_fp32"] == pytest.approx(lm_loss(gpt32, sequences))


def test_torchao_backend_also_keeps_the_tie(gpt32):
    pytest.importorskip("torchao")
    q = quantize_int8(gpt32, backend="torchao")
    assert q.lm_head.weight is q.transformer.wte.weight
    x = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = gpt32(x).logits, q(x).logits
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_bf16_variants_stay_close_to_float32(gpt32):
    rows = compare_dtypes(gpt32, "cpu", batch_size=2, seq_len=16, **FAST)
    assert [r["variant"] for r in rows] == ["float32", "bf16 autocast", "bf16 weights"]
    assert rows[0]["max_abs_logit_diff"] == 0.0
    for r in rows[1:]:
        assert 0 < r["max_abs_logit_diff"] < 0.05  # bf16 keeps 8 bits of mantissa: about 2 decimal digits
        assert r["forward_ms"] > 0 and r["decode_ms"] > 0
    assert gpt32.transformer.wte.weight.dtype == torch.float32  # the model itself stays float32


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: throughput_vs_batch(m, [], 4, "cpu"), TypeError, "non-empty sequence"),
        (lambda m: throughput_vs_batch(m, [1, 0], 4, "cpu"), ValueError, "every batch size"),
        (lambda m: throughput_vs_batch(m, [1], 30, "cpu", prompt_len=8), ValueError, "exceeds the context"),
        (lambda m: compare_kv_cache(m, 0, "cpu"), ValueError, "new_tokens"),
        (lambda m: quantize_int8(m, backend="fp8"), ValueError, "backend must be one of"),
        (lambda m: quantize_int8("model"), TypeError, "nn.Module"),
        (lambda m: compare_int8(m, torch.zeros(2, 3, 4, dtype=torch.long), "cpu"), ValueError, "1-D held-out"),
        (lambda m: compare_int8(m, torch.zeros(2, 40, dtype=torch.long), "cpu"), ValueError, "batch_size=8"),
        (lambda m: compare_int8(m, torch.zeros(40, dtype=torch.long), "cpu"), ValueError, "needs"),
        (lambda m: compare_dtypes(m, "cpu", seq_len=64), ValueError, "exceeds the context"),
    ],
)
def test_bad_arguments_are_refused(gpt32, call, error, match):
    with pytest.raises(error, match=match):
        call(gpt32)
