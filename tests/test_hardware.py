"""Peak FLOP/s, bandwidth, the roofline's counts, MFU accounting and decoding speed (chapter 6)."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from aigc_book.efficiency.hardware import (
    ADAMW_BYTES_PER_PARAM,
    attainable_flops,
    decode_speed,
    matmul_peak,
    memory_bandwidth,
    plot_roofline,
    roofline,
    training_mfu,
)
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TINY = TransformerConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
F32 = 4


@pytest.fixture(scope="module")
def rows():
    """The roofline at tiny sizes, measured once for the module."""
    return roofline("cpu", sizes=(64, 96), matvec_n=128, shape=(8, 64), gpt_config=TINY, train_batch=2,
                    repeats=1, min_seconds=0.0)


def test_matmul_peak_and_bandwidth_are_positive_and_finite():
    for value in (matmul_peak("cpu", n=128, repeats=1, min_seconds=0.01),
                  matmul_peak("cpu", torch.bfloat16, n=128, repeats=1, min_seconds=0.01),
                  memory_bandwidth("cpu", nbytes=2**20, repeats=1, min_seconds=0.01)):
        assert math.isfinite(value) and value > 0


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "n must be an int >= 1"),
                                           ({"dtype": "int8"}, "dtype must be one of"),
                                           ({"device": "meta"}, "cpu or cuda")])
def test_matmul_peak_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        matmul_peak(**{"device": "cpu", **kwargs})


def test_matmul_rows_count_flops_and_bytes_by_hand(rows):
    row = next(r for r in rows if r["name"] == "matmul 64")
    assert row["flops"] == 2 * 64**3 == 524_288
    assert row["bytes"] == 3 * 64 * 64 * F32 == 49_152  # A and B read once, C written once
    assert row["intensity"] == pytest.approx(2 * 64 / (3 * F32))  # 10.67 FLOP/byte
    assert row["flops_per_s"] == pytest.approx(row["flops"] / row["seconds"])


def test_matmul_flops_agree_with_pytorchs_flop_counter(rows):
    a, b = torch.randn(96, 96), torch.randn(96, 96)
    with FlopCounterMode(display=False) as counter:
        a @ b
    assert next(r for r in rows if r["name"] == "matmul 96")["flops"] == counter.get_total_flops()


def test_memory_bound_rows_have_the_hand_counted_intensity(rows):
    by_name = {r["name"]: r for r in rows}
    n, numel, cols = 128, 8 * 64, 64
    assert by_name["matvec 128"]["intensity"] == pytest.approx(2 * n * n / ((n * n + 2 * n) * F32))  # ~0.5
    assert by_name["softmax"]["intensity"] == pytest.approx(5 * numel / (2 * numel * F32))
    assert by_name["layernorm"]["intensity"] == pytest.approx(7 * numel / ((2 * numel + 2 * cols) * F32))
    assert by_name["gelu"]["intensity"] == pytest.approx(9 / (2 * F32))


def test_gpt_rows_count_weights_and_model_flops(rows):
    model = GPT(TINY)
    by_name = {r["name"]: r for r in rows}
    train = by_name["GPT train step (B=2)"]
    assert train["flops"] == 2 * 16 * model.flops_per_token(16, training=True, output_layer=True)
    assert train["bytes"] == ADAMW_BYTES_PER_PARAM * model.num_parameters()
    decode = by_name["GPT decode step"]
    context = 8  # half the context is cached
    kv = 2 * TINY.n_layer * context * TINY.n_embd
    assert decode["bytes"] == (model.num_parameters() + kv) * F32
    assert decode["flops"] == model.flops_per_token(context + 1, output_layer=True)
    assert decode["intensity"] < 1  # batch 1 decoding: about 2 FLOPs per 4-byte weight


def test_attainable_flops_is_the_minimum_of_the_two_roofs():
    assert attainable_flops(0.5, peak=100.0, bandwidth=10.0) == 5.0  # memory-bound
    assert attainable_flops(50.0, peak=100.0, bandwidth=10.0) == 100.0  # compute-bound


def test_plot_roofline_labels_axes_and_marks_the_ridge(rows):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    plot_roofline(ax, rows, peak=1e11, bandwidth=1e10)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert "FLOP/byte" in ax.get_xlabel() and "FLOP/s" in ax.get_ylabel()
    texts = [t.get_text() for t in ax.texts]
    assert any("ridge point: 10 FLOP/byte" in t for t in texts)
    assert {r["name"] for r in rows} <= set(texts)
    assert all(ord(ch) < 0x2E80 for t in [*texts, ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] for ch in t)
    plt.close(fig)
    with pytest.raises(ValueError, match="peak and bandwidth must be > 0"):
        plot_roofline(ax, rows, peak=0.0, bandwidth=1.0)


def test_training_mfu_counts_tokens_times_model_flops_per_token():
    result = training_mfu(TINY, batch=2, device="cpu", steps=2, peak=1e12)
    flops_per_token = GPT(TINY).flops_per_token(16, training=True, output_layer=True)
    assert result["tokens_per_step"] == 2 * 16
    assert result["flops_per_token"] == flops_per_token
    assert result["flops_per_step"] == 32 * flops_per_token
    seconds = result["ms_per_step"] / 1000
    assert result["achieved_flops"] == pytest.approx(32 * flops_per_token / seconds)
    assert result["tokens_per_s"] == pytest.approx(32 / seconds)
    assert result["mfu"] == pytest.approx(result["achieved_flops"] / 1e12)
    assert result["peak_memory_bytes"] is None and result["peak_flops"] == 1e12


def test_training_mfu_rejects_a_bad_peak_or_dtype():
    with pytest.raises(ValueError, match="peak must be a finite number"):
        training_mfu(TINY, batch=1, peak=-1.0)
    with pytest.raises(ValueError, match="'float32' or 'bfloat16'"):
        training_mfu(TINY, batch=1, dtype="float16", peak=1.0)


def test_decoding_with_the_cache_gives_the_same_tokens_and_a_rate(make_tiny_gpt):
    model = make_tiny_gpt(dtype=torch.float32)
    prompt = torch.randint(0, 50, (1, 3), generator=torch.Generator().manual_seed(0))
    cached = model.generate(prompt, 10, temperature=0, use_cache=True)
    uncached = model.generate(prompt, 10, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)
    rate = decode_speed(model, "cpu", new_tokens=8)
    assert math.isfinite(rate) and rate > 0
    with pytest.raises(ValueError, match="new_tokens must be an int >= 1"):
        decode_speed(model, "cpu", new_tokens=0)
