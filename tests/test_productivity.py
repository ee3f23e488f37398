"""The productivity studies, their forest plot, and the Amdahl model of a job (chapter 6)."""

from __future__ import annotations

import csv
import math
import re
from importlib import resources

import matplotlib
import pytest

from aigc_book.productivity import (
    DESIGN_MARKERS,
    MEASURED_TIME_SAVED,
    PENG_TIME_SAVED,
    PRODUCTIVITY_CSV_COLUMNS,
    average_time_saved,
    design_kind,
    forest_plot,
    job_time_saved,
    load_studies,
    overall_speedup,
    plot_time_saved,
    productivity_calculator_widget,
    share_needed,
    speedup_from_time_saved,
    worker_effect,
)

matplotlib.use("Agg")

CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def raw_rows() -> list[dict[str, str]]:
    text = resources.files("aigc_book").joinpath("data", "productivity.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def by_key():
    return {(s.study, s.outcome): s for s in load_studies()}


@pytest.fixture
def ax():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


# ------------------------------------------------------------------------------------ loading


def test_load_studies_returns_every_csv_row_with_typed_fields():
    studies, raw = load_studies(), raw_rows()
    assert len(studies) == len(raw) == 10
    for s, r in zip(studies, raw):
        assert (s.study, s.outcome, s.source) == (r["study"], r["outcome"], r["source"])
        assert isinstance(s.year, int) and isinstance(s.n, int) and isinstance(s.effect_pct, float)
        assert s.effect_pct == float(r["effect_pct"])
        for value, cell in ((s.ci_low_pct, r["ci_low_pct"]), (s.ci_high_pct, r["ci_high_pct"])):
            assert value is None if cell == "" else value == float(cell)
        assert s.note is None if r["note"] == "" else s.note == r["note"]
        assert s.confidence == "V"


def test_known_rows_keep_their_published_numbers():
    rows = by_key()
    peng = rows["Peng Kalliamvakou Cihon & Demirer", "speed (time reduction)"]
    assert (peng.n, peng.effect_pct, peng.ci_low_pct, peng.ci_high_pct) == (95, 55.8, 21.0, 89.0)
    metr = rows["Becker Rush Barnes & Rein (METR)", "time taken"]
    assert (metr.year, metr.n, metr.effect_pct, metr.ci_low_pct, metr.ci_high_pct) == (2025, 16, 19.0, 2.0, 39.0)
    noy_quality = rows["Noy & Zhang", "graded quality"]
    assert noy_quality.note is None and noy_quality.ci_low_pct is None
    # The module's constants are the table's numbers.
    assert PENG_TIME_SAVED * 100 == pytest.approx(peng.effect_pct)
    humlum = rows["Humlum & Vestergaard", "time saved (share of work hours)"]
    assert MEASURED_TIME_SAVED * 100 == pytest.approx(humlum.effect_pct)


def test_malformed_study_rows_are_reported_with_their_line(tmp_path):
    header = ",".join(PRODUCTIVITY_CSV_COLUMNS)
    bad_year = tmp_path / "bad_year.csv"
    bad_year.write_text(header + "\nX,twenty,s,10,RCT,time taken,-5,,,,src,V\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: column 'year' is not an integer"):
        load_studies(bad_year)
    no_effect = tmp_path / "no_effect.csv"
    no_effect.write_text(header + "\nX,2024,s,10,RCT,time taken,,,,,src,V\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: column 'effect_pct' must not be empty"):
        load_studies(no_effect)


def test_design_kind_tells_a_rollout_from_an_rct_despite_the_letters():
    assert design_kind("staggered rollout (not an RCT)") == "staggered roll-out"
    assert design_kind("RCT (task-level randomisation)") == "RCT"
    assert design_kind("3 RCTs pooled") == "RCT"
    assert design_kind("survey linked to administrative records") == "survey"
    assert {design_kind(s.design) for s in load_studies()} == set(DESIGN_MARKERS)
    with pytest.raises(ValueError, match="unknown study design"):
        design_kind("natural experiment")


def test_worker_effect_turns_time_taken_into_time_saved():
    rows = by_key()
    assert worker_effect(rows["Becker Rush Barnes & Rein (METR)", "time taken"]) == (-19.0, -39.0, -2.0)  # slower
    assert worker_effect(rows["Noy & Zhang", "time taken"]) == (40.0, None, None)
    assert worker_effect(rows["Peng Kalliamvakou Cihon & Demirer", "speed (time reduction)"]) == (55.8, 21.0, 89.0)
    assert worker_effect(rows["Dell'Acqua et al.", "correct answers (percentage points)"])[0] == -19.0  # worse


# ------------------------------------------------------------------------------------ forest plot


def test_forest_plot_draws_one_marker_per_study_outcome(ax):
    studies = load_studies()
    forest_plot(ax, studies)
    markers = [line for line in ax.lines if line.get_marker() not in (None, "None", "")]
    assert len(markers) == len(studies)
    assert [m.get_xdata()[0] for m in markers] == [worker_effect(s)[0] for s in studies]
    assert {m.get_marker() for m in markers} == set(DESIGN_MARKERS.values())
    # Whiskers only where the source gives a CI: Peng, Cui et al., METR.
    (whiskers,) = ax.collections
    with_ci = [s for s in studies if s.ci_low_pct is not None]
    assert len(whiskers.get_segments()) == len(with_ci) == 3
    # A vertical line at zero.
    assert any(list(line.get_xdata()) == [0.0, 0.0] for line in ax.lines)


def test_forest_plot_labels_name_year_and_n_and_explain_the_sign(ax):
    studies = load_studies()
    forest_plot(ax, studies)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == len(studies)
    for label, s in zip(labels, studies):
        assert s.study in label and str(s.year) in label and f"N={s.n:,}" in label
    assert "positive = better" in ax.get_xlabel() and "METR" in ax.get_xlabel()
    texts = labels + [ax.get_xlabel(), ax.get_title()] + [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any(CJK.search(t) for t in texts)


def test_forest_plot_refuses_an_empty_list(ax):
    with pytest.raises(ValueError, match="at least one study"):
        forest_plot(ax, [])


# ------------------------------------------------------------------------------------ Amdahl


def test_job_time_saved_and_overall_speedup_by_hand():
    assert job_time_saved(0.5, 2.0) == pytest.approx(0.25)
    assert overall_speedup(0.5, 2.0) == pytest.approx(1 / 0.75)
    assert job_time_saved(0.2, 5.0) == pytest.approx(0.2 * 0.8)
    assert overall_speedup(0.2, 5.0) == pytest.approx(1 / (0.8 + 0.04))
    assert job_time_saved(0.3, math.inf) == pytest.approx(0.3)  # the task takes no time at all
    assert job_time_saved(0.5, 1 / 1.19) == pytest.approx(-0.5 * 0.19)  # METR-like slow-down costs time


def test_overall_speedup_is_one_over_the_time_left_and_bounded_by_amdahl():
    for s in (0.0, 0.1, 0.5, 0.9):
        for k in (0.5, 1.0, 2.0, 10.0, 1e6):
            assert overall_speedup(s, k) == pytest.approx(1 / (1 - job_time_saved(s, k)))
            if k >= 1:
                assert overall_speedup(s, k) <= 1 / (1 - s) + 1e-12


def test_share_needed_inverts_job_time_saved():
    for s in (0.0, 0.01, 0.3, 1.0):
        for k in (0.5, 1.25, 2.26, 10.0):
            assert share_needed(job_time_saved(s, k), k) == pytest.approx(s, abs=1e-12)


def test_a_peng_sized_speedup_on_five_percent_of_hours_gives_the_measured_2_8_percent():
    k = speedup_from_time_saved(PENG_TIME_SAVED)
    assert k == pytest.approx(160.89 / 71.17, rel=1e-3)  # Peng et al.'s minutes
    s = share_needed(MEASURED_TIME_SAVED, k)
    assert s == pytest.approx(0.028 / 0.558)
    assert 0.049 < s < 0.051
    assert job_time_saved(s, k) == pytest.approx(0.028)


def test_speedup_from_time_saved_by_hand():
    assert speedup_from_time_saved(0.5) == pytest.approx(2.0)
    assert speedup_from_time_saved(-0.19) == pytest.approx(1 / 1.19)
    with pytest.raises(ValueError, match="below 1"):
        speedup_from_time_saved(1.0)


def test_average_time_saved_scales_with_adoption():
    assert average_time_saved(0.5, 2.0, 0.4) == pytest.approx(0.4 * 0.25)
    assert average_time_saved(0.5, 2.0, 0.0) == 0.0


def test_amdahl_functions_reject_bad_input():
    with pytest.raises(ValueError, match=r"share_assisted is a fraction and must be in \[0, 1\]"):
        job_time_saved(1.5, 2.0)
    with pytest.raises(TypeError, match="share_assisted must be a number"):
        overall_speedup("0.5", 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_speedup .* must be positive"):
        job_time_saved(0.5, 0.0)
    with pytest.raises(ValueError, match="saves no time"):
        share_needed(0.028, 1.0)
    with pytest.raises(ValueError, match="no share of hours"):
        share_needed(0.6, 2.0)  # at most half the time can be saved with k = 2
    with pytest.raises(ValueError, match="adoption is a fraction"):
        average_time_saved(0.5, 2.0, 2.0)


def test_plot_time_saved_draws_each_speedup_and_the_measured_line(ax):
    plot_time_saved(ax, speedups=(1.25, 2.0, math.inf), max_share=0.5)
    curves = [line for line in ax.lines if len(line.get_xdata()) > 2]
    assert len(curves) == 3
    assert curves[-1].get_ydata()[-1] == pytest.approx(50.0)  # k = inf saves the whole 50% share
    assert any(list(line.get_ydata()) == pytest.approx([2.8, 2.8]) for line in ax.lines)
    (dot,) = [line for line in ax.lines if line.get_marker() == "o"]
    assert dot.get_xdata()[0] == pytest.approx(100 * 0.028 / 0.558)


# ------------------------------------------------------------------------------------ widget


def test_productivity_widget_builds_and_rerenders_its_text():
    import ipywidgets as widgets

    box = productivity_calculator_widget()
    assert isinstance(box, widgets.VBox)
    share, speedup, adoption, result = box.children
    assert "16.7%" in result.value  # a third of the hours at k = 2
    share.value, speedup.value, adoption.value = 0.5, 2.0, 0.5
    assert "25.0%" in result.value and "12.5%" in result.value
