"""Tests for aigc_book.facts (chapter 1): the models table and the 6·N·D estimate."""

from __future__ import annotations

import math

import pytest

from aigc_book.facts import MODELS_CSV_COLUMNS, load_models, training_flops_estimate


def test_models_csv_loads_with_float_numbers_in_release_order():
    rows = load_models()
    assert len(rows) >= 10
    for row in rows:
        assert isinstance(row.params, float) and row.params > 0
        for value in (row.training_tokens, row.training_flops, row.gpu_hours):
            assert value is None or (isinstance(value, float) and value > 0)
    years = [r.released_year for r in rows]
    assert years == sorted(years)
    assert {r.model for r in rows} >= {"GPT-1", "GPT-2", "GPT-3", "Chinchilla", "Llama 3.1 405B"}


def test_every_row_names_a_source_and_a_confidence():
    for row in load_models():
        assert row.source.strip(), row.model
        assert row.confidence in ("V", "M"), row.model


def test_gpt3_published_figures():
    gpt3 = {r.model: r for r in load_models()}["GPT-3"]
    assert (gpt3.params, gpt3.training_tokens, gpt3.training_flops) == (175e9, 300e9, 3.14e23)
    assert "Brown et al. 2020" in gpt3.source


def test_six_nd_is_within_one_percent_of_gpt3_published_compute():
    gpt3 = {r.model: r for r in load_models()}["GPT-3"]
    estimate = training_flops_estimate(gpt3.params, gpt3.training_tokens)
    assert estimate == pytest.approx(3.15e23, rel=1e-12)
    assert abs(estimate - gpt3.training_flops) / gpt3.training_flops < 0.01


def test_training_flops_estimate_rejects_bad_input():
    assert training_flops_estimate(2, 3) == 36.0
    with pytest.raises(ValueError, match="positive"):
        training_flops_estimate(0, 1e9)
    with pytest.raises(ValueError, match="positive"):
        training_flops_estimate(1e9, math.inf)
    with pytest.raises(TypeError, match="number"):
        training_flops_estimate("175e9", 300e9)  # type: ignore[arg-type]


def test_malformed_rows_are_reported_with_their_line(tmp_path):
    header = ",".join(MODELS_CSV_COLUMNS)
    bad_source = tmp_path / "no_source.csv"
    bad_source.write_text(header + "\nX,2020-01,1e9,,,,,,V\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: column 'source'"):
        load_models(bad_source)
    bad_number = tmp_path / "bad_number.csv"
    bad_number.write_text(header + "\nX,2020-01,lots,,,,,src,V\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: column 'params' is not a number"):
        load_models(bad_number)
    bad_date = tmp_path / "bad_date.csv"
    bad_date.write_text(header + "\nX,2020,1e9,,,,,src,V\n", encoding="utf-8")
    with pytest.raises(ValueError, match="YYYY-MM"):
        load_models(bad_date)


def test_gopher_and_chinchilla_share_one_published_budget_that_six_nd_only_approximates():
    rows = {r.model: r for r in load_models()}
    gopher, chinchilla = rows["Gopher"], rows["Chinchilla"]
    # Hoffmann et al. 2022: Figure 2 caption (FLOPs used to train Gopher) and section 4 (same number of FLOPs).
    assert gopher.training_flops == chinchilla.training_flops == 5.76e23
    assert (gopher.params, gopher.training_tokens) == (280e9, 300e9)  # Hoffmann et al. 2022, Table 1
    assert (chinchilla.params, chinchilla.training_tokens) == (70e9, 1.4e12)
    est_gopher = training_flops_estimate(gopher.params, gopher.training_tokens)
    est_chinchilla = training_flops_estimate(chinchilla.params, chinchilla.training_tokens)
    assert est_gopher == pytest.approx(5.04e23, rel=1e-12)
    assert est_chinchilla == pytest.approx(5.88e23, rel=1e-12)
    assert est_chinchilla / est_gopher == pytest.approx(1.4e12 / 300e9 / 4, rel=1e-12)  # about 17% more
    for est in (est_gopher, est_chinchilla):  # an estimate: within 15% of the paper's own count ...
        assert abs(est / 5.76e23 - 1) < 0.15
    assert abs(est_gopher / 5.76e23 - 1) > 0.10  # ... but, unlike for GPT-3, not within 1% of it


def test_deepseek_v3_row_holds_the_abstract_figures():
    deepseek = {r.model: r for r in load_models()}["DeepSeek-V3"]
    assert (deepseek.params, deepseek.training_tokens, deepseek.gpu_hours) == (671e9, 14.8e12, 2.788e6)
    assert deepseek.training_flops is None  # the report gives GPU-hours, not FLOPs
    assert "arXiv:2412.19437" in deepseek.source and "37e9" in deepseek.source
