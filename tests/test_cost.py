"""Training compute, implied MFU, days and dollars, and the roofline of a decoding step (chapter 6)."""

from __future__ import annotations

import math

import pytest

from aigc_book.efficiency.cost import (
    ACCELERATORS_CSV_COLUMNS,
    ACTIVE_PARAMS,
    COST_GROWTH_PER_YEAR,
    PUBLISHED_TRAINING_COSTS,
    compute_table,
    cost_calculator_widget,
    cost_per_million_tokens,
    cost_table,
    critical_batch,
    decode_step_bounds,
    describe_training_run,
    format_cost_table,
    implied_mfu,
    load_accelerators,
    training_flops,
    training_time_and_cost,
)
from aigc_book.efficiency.hardware import attainable_flops
from aigc_book.facts import load_models, training_flops_estimate

A100, H100 = 312e12, 989e12  # dense BF16 FLOP/s
A100_BW, H100_BW = 2039e9, 3350e9  # bytes/s


def rows_by_model():
    return {r.model: r for r in compute_table()}


# ------------------------------------------------------------------------------------ accelerators


def test_accelerators_are_the_dense_datasheet_figures_with_sources():
    acc = {a.name: a for a in load_accelerators()}
    assert set(acc) == {"A100 80GB SXM", "H100 SXM"}
    a100, h100 = acc["A100 80GB SXM"], acc["H100 SXM"]
    assert (a100.peak_flops, a100.memory_gb, a100.bandwidth) == (A100, 80, A100_BW)
    assert (h100.peak_flops, h100.memory_gb, h100.bandwidth) == (H100, 80, H100_BW)
    for a in acc.values():
        assert a.confidence == "V" and "datasheet" in a.source and "sparsity" in a.source


def test_malformed_accelerator_rows_are_reported_with_their_line(tmp_path):
    header = ",".join(ACCELERATORS_CSV_COLUMNS)
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "\nX,fast,80,2000,src,V\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: column 'bf16_dense_tflops' is not a number"):
        load_accelerators(bad)
    no_source = tmp_path / "no_source.csv"
    no_source.write_text(header + "\nX,100,80,2000,,V\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: column 'source' must not be empty"):
        load_accelerators(no_source)


# ------------------------------------------------------------------------------------ training compute


def test_six_nd_for_gpt3_is_within_one_percent_of_the_published_compute():
    gpt3 = rows_by_model()["GPT-3"]
    assert training_flops(175e9, 300e9) == pytest.approx(3.15e23, rel=1e-12)
    assert gpt3.published_flops == 3.14e23
    assert abs(gpt3.flops_6nd - gpt3.published_flops) / gpt3.published_flops < 0.01
    assert gpt3.ratio == pytest.approx(3.14 / 3.15)


def test_training_flops_is_the_facts_estimate_with_its_checks():
    assert training_flops(7e9, 2e12) == training_flops_estimate(7e9, 2e12) == 6 * 7e9 * 2e12
    with pytest.raises(ValueError, match="positive"):
        training_flops(0, 1e9)


def test_compute_table_has_one_row_per_model_in_release_order():
    assert [r.model for r in compute_table()] == [m.model for m in load_models()]
    rows = rows_by_model()
    assert rows["GPT-1"].flops_6nd is None and rows["GPT-1"].implied_mfu is None  # no token count
    assert rows["Llama 3.1 405B"].published_flops == 3.8e25
    assert rows["Llama 3.1 405B"].ratio == pytest.approx(1.0, abs=0.01)  # 3.79e25 by 6ND


def test_implied_mfu_matches_a_hand_computation_for_the_llamas():
    rows = rows_by_model()
    published = {  # model: (N, D, GPU-hours, peak of the GPU named in models.csv)
        "LLaMA-65B": (65e9, 1.4e12, 1_022_362, A100),
        "Llama 2 70B": (70e9, 2e12, 1_720_320, A100),
        "Llama 3 70B": (70e9, 15e12, 6.4e6, H100),
        "Llama 3.1 405B": (405e9, 15.6e12, 30.84e6, H100),
    }
    for model, (n, d, hours, peak) in published.items():
        by_hand = 6 * n * d / (hours * 3600 * peak)
        assert implied_mfu(n, d, hours, peak) == pytest.approx(by_hand, rel=1e-12), model
        assert rows[model].implied_mfu == pytest.approx(by_hand, rel=1e-12), model
    assert rows["LLaMA-65B"].implied_mfu == pytest.approx(0.475, abs=0.001)
    assert rows["Llama 3 70B"].implied_mfu == pytest.approx(0.276, abs=0.001)


def test_llama31_implied_mfu_sits_just_below_the_published_38_to_43_percent():
    # 30.84M GPU-hours count every hour the GPUs were held, not only steady training steps, so the
    # implied MFU (34.5%) is a lower bound on the 38-43% the paper measured on training steps.
    mfu = rows_by_model()["Llama 3.1 405B"].implied_mfu
    assert mfu == pytest.approx(0.345, abs=0.001)
    assert 0.38 * 0.85 < mfu < 0.38
    # With the published 3.8e25 FLOPs instead of 6ND the answer is the same to 1%.
    assert 3.8e25 / (30.84e6 * 3600 * H100) == pytest.approx(mfu, rel=0.01)


def test_deepseek_v3_uses_its_active_parameters_not_its_total():
    row = rows_by_model()["DeepSeek-V3"]
    assert ACTIVE_PARAMS == {"DeepSeek-V3": 37e9}
    assert "37e9" in row.source  # the constant and models.csv agree
    assert row.active_params == 37e9 and row.params == 671e9
    assert row.flops_6nd == pytest.approx(6 * 37e9 * 14.8e12, rel=1e-12)
    assert row.implied_mfu is None and "H800" in row.note  # no H800 peak in accelerators.csv


def test_implied_mfu_rejects_bad_input():
    with pytest.raises(ValueError, match="gpu_hours must be a finite number > 0"):
        implied_mfu(1e9, 1e9, 0, H100)
    with pytest.raises(TypeError, match="peak_flops must be a number"):
        implied_mfu(1e9, 1e9, 10, "989e12")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ time and money


def test_training_time_and_cost_by_hand():
    run = training_time_and_cost(3.6e21, 1e15, 10, 0.5, 2.0)
    # 3.6e21 / (1e15 * 0.5) = 7.2e6 accelerator-seconds = 2000 accelerator-hours.
    assert run["accelerator_hours"] == pytest.approx(2000)
    assert run["wall_clock_hours"] == pytest.approx(200)
    assert run["wall_clock_days"] == pytest.approx(200 / 24)
    assert run["cost"] == pytest.approx(4000)


def test_more_accelerators_shorten_the_run_but_cost_the_same():
    one = training_time_and_cost(1e24, H100, 1000, 0.4, 2.0)
    two = training_time_and_cost(1e24, H100, 2000, 0.4, 2.0)
    assert two["wall_clock_hours"] == pytest.approx(one["wall_clock_hours"] / 2)
    assert two["cost"] == pytest.approx(one["cost"])


def test_deepseek_published_cost_is_its_gpu_hours_at_two_dollars():
    costs = {c.model: c for c in PUBLISHED_TRAINING_COSTS}
    deepseek = costs["DeepSeek-V3"]
    assert deepseek.cost_usd == pytest.approx(2.788e6 * 2.0)
    flops = 2.788e6 * 3600 * H100 * 0.3  # any run that takes 2.788M accelerator-hours
    assert training_time_and_cost(flops, H100, 2048, 0.3, 2.0)["cost"] == pytest.approx(5.576e6)
    assert "final" in deepseek.basis and "assumed" in deepseek.basis
    assert {"GPT-3", "GPT-4", "Gemini Ultra"} <= set(costs)
    assert (costs["GPT-3"].cost_usd, costs["GPT-4"].cost_usd, costs["Gemini Ultra"].cost_usd) == (4.3e6, 78e6, 191e6)
    assert all(c.source for c in PUBLISHED_TRAINING_COSTS)
    assert COST_GROWTH_PER_YEAR == 2.4


def test_training_time_and_cost_rejects_bad_input():
    with pytest.raises(ValueError, match="mfu must be a finite number > 0 and <= 1"):
        training_time_and_cost(1e20, H100, 8, 1.5, 2.0)
    with pytest.raises(TypeError, match="n_accelerators must be an int"):
        training_time_and_cost(1e20, H100, 8.0, 0.4, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_accelerators must be at least 1"):
        training_time_and_cost(1e20, H100, 0, 0.4, 2.0)
    with pytest.raises(ValueError, match="price_per_hour must be a finite number >= 0"):
        training_time_and_cost(1e20, H100, 8, 0.4, -1.0)


def test_cost_table_runs_the_same_job_faster_on_the_faster_chip():
    rows = {r["accelerator"]: r for r in cost_table(175e9, 300e9, n_accelerators=1024, mfu=0.4, price_per_hour=2.0)}
    assert set(rows) == {"A100 80GB SXM", "H100 SXM"}
    ratio = rows["A100 80GB SXM"]["wall_clock_days"] / rows["H100 SXM"]["wall_clock_days"]
    assert ratio == pytest.approx(989 / 312)
    assert rows["H100 SXM"]["accelerator_hours"] == pytest.approx(3.15e23 / (H100 * 0.4) / 3600)
    text = format_cost_table(list(rows.values()))
    assert text.count("\n") == 2 and "H100 SXM" in text and "3.15e+23" in text


def test_describe_training_run_quotes_the_computed_days_and_dollars():
    text = describe_training_run(175e9, 300e9, peak_flops=H100, n_accelerators=1024, mfu=0.4, price_per_hour=2.0)
    run = training_time_and_cost(3.15e23, H100, 1024, 0.4, 2.0)
    assert f"{run['wall_clock_days']:,.1f} days" in text and f"${run['cost']:,.0f}" in text


# ------------------------------------------------------------------------------------ inference


def test_decode_step_bounds_by_hand_for_a_70b_model_on_an_h100():
    one = decode_step_bounds(70e9, 1, peak_flops=H100, bandwidth=H100_BW)
    assert one["compute_seconds"] == pytest.approx(2 * 70e9 / H100)
    assert one["memory_seconds"] == pytest.approx(140e9 / H100_BW)  # 2 bytes per parameter
    assert one["bound"] == "memory" and one["step_seconds"] == one["memory_seconds"]
    assert one["tokens_per_second"] == pytest.approx(H100_BW / 140e9)  # about 24 tokens/s
    big = decode_step_bounds(70e9, 4096, peak_flops=H100, bandwidth=H100_BW)
    assert big["bound"] == "compute" and big["tokens_per_second"] == pytest.approx(H100 / (2 * 70e9))


def test_decode_step_time_agrees_with_the_roofline_of_hardware_py():
    # An independent formulation: time = FLOPs / min(peak, intensity * bandwidth).
    for batch, kv in ((1, 0), (64, 5e9), (1000, 0)):
        b = decode_step_bounds(8e9, batch, kv_bytes=kv, peak_flops=A100, bandwidth=A100_BW)
        flops = 2 * 8e9 * batch
        expected = flops / attainable_flops(b["arithmetic_intensity"], A100, A100_BW)
        assert b["step_seconds"] == pytest.approx(expected, rel=1e-12)


def test_critical_batch_is_peak_over_bandwidth_times_half_the_bytes_per_parameter():
    for bytes_per_param in (1, 2, 4):
        b_star = critical_batch(70e9, bytes_per_param, H100, H100_BW)
        assert b_star == pytest.approx(H100 / H100_BW * bytes_per_param / 2, rel=1e-12)
    assert critical_batch(7e9, 2, H100, H100_BW) == pytest.approx(critical_batch(400e9, 2, H100, H100_BW))  # N cancels
    assert critical_batch(70e9, 2, H100, H100_BW) == pytest.approx(295.2, abs=0.1)


@pytest.mark.parametrize("kv_per_sequence", [0.0, 2e6, 1.5e8])
def test_critical_batch_is_where_compute_and_memory_times_meet(kv_per_sequence):
    n, b = 13e9, 2
    b_star = critical_batch(n, b, A100, A100_BW, kv_bytes_per_sequence=kv_per_sequence)
    # The two bounds, evaluated directly at B* (the formula needs an integer batch, so do it by hand).
    compute = 2 * n * b_star / A100
    memory = (n * b + b_star * kv_per_sequence) / A100_BW
    assert compute == pytest.approx(memory, rel=1e-12)
    # And through decode_step_bounds: below B* memory-bound, from ceil(B*) on compute-bound.
    below = math.floor(b_star)
    above = math.ceil(b_star)
    kw = dict(bytes_per_param=b, peak_flops=A100, bandwidth=A100_BW)
    assert decode_step_bounds(n, below, kv_bytes=below * kv_per_sequence, **kw)["bound"] == "memory"
    assert decode_step_bounds(n, above, kv_bytes=above * kv_per_sequence, **kw)["bound"] == "compute"
    if kv_per_sequence:
        assert b_star > critical_batch(n, b, A100, A100_BW)  # a KV cache pushes the crossing to larger batches


def test_a_kv_cache_larger_than_the_compute_keeps_every_batch_memory_bound():
    kv = 2 * 1e9 / A100 * A100_BW * 1.01  # reading it takes longer than the sequence's 2N FLOPs
    assert critical_batch(1e9, 2, A100, A100_BW, kv_bytes_per_sequence=kv) == math.inf
    step = decode_step_bounds(1e9, 100_000, kv_bytes=100_000 * kv, peak_flops=A100, bandwidth=A100_BW)
    assert step["bound"] == "memory"


def test_cost_per_million_tokens_by_hand():
    assert cost_per_million_tokens(2.0, 24.0) == pytest.approx(2.0 / 3600 / 24 * 1e6)  # $23.15
    assert cost_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0)  # $3.60/h at 1000 tok/s = $1/M
    with pytest.raises(ValueError, match="tokens_per_second must be a finite number > 0"):
        cost_per_million_tokens(2.0, 0.0)


def test_decode_step_bounds_rejects_bad_input():
    with pytest.raises(TypeError, match="batch must be an int"):
        decode_step_bounds(1e9, 1.5, peak_flops=H100, bandwidth=H100_BW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch must be at least 1"):
        decode_step_bounds(1e9, 0, peak_flops=H100, bandwidth=H100_BW)
    with pytest.raises(ValueError, match="kv_bytes must be a finite number >= 0"):
        decode_step_bounds(1e9, 1, kv_bytes=-1, peak_flops=H100, bandwidth=H100_BW)
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        critical_batch(1e9, 2, H100, 0)


# ------------------------------------------------------------------------------------ widget


def test_cost_widget_builds_and_rerenders_its_text():
    import ipywidgets as widgets

    box = cost_calculator_widget()
    assert isinstance(box, widgets.VBox)
    chip, custom_peak, count, mfu, price, params, tokens, result = box.children
    assert list(chip.options) == ["A100 80GB SXM", "H100 SXM", "custom peak"]
    before = result.value
    mfu.value = 0.2
    assert result.value != before
    expected = training_time_and_cost(training_flops(175e9, 300e9), H100, 1024, 0.2, 2.0)
    assert f"{expected['wall_clock_days']:,.1f} days" in result.value
    assert custom_peak.disabled
    chip.value = "custom peak"
    assert not custom_peak.disabled
    custom_peak.value = 100.0
    assert "100 TFLOP/s" in result.value
