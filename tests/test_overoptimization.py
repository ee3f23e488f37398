"""Gao et al.'s over-optimisation curves: fits recover known coefficients, peaks by hand, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aigc_book.rlhf.best_of_n import best_of_n_kl
from aigc_book.rlhf.overoptimization import (
    fit_best_of_n,
    fit_rl,
    peak_of_best_of_n,
    peak_of_rl,
    predict_best_of_n,
    predict_rl,
)

D = np.sqrt([best_of_n_kl(n) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256)])  # d = sqrt(KL), from 0 to ~2.2


def test_predictions_by_hand():
    assert predict_best_of_n(2.0, 1.0, 0.25) == pytest.approx(2 * (1 - 0.5))
    assert predict_rl(math.e, 1.0, 0.5) == pytest.approx(math.e * (1 - 0.5))
    assert predict_rl(0.0, 1.0, 0.5) == 0.0  # d log d -> 0: no movement, no gain
    assert predict_best_of_n(0.0, 1.0, 0.5) == 0.0
    out = predict_rl(np.array([0.0, 1.0]), 0.3, 7.0)
    assert isinstance(out, np.ndarray) and np.allclose(out, [0.0, 0.3])  # log 1 = 0: beta plays no part
    assert isinstance(predict_best_of_n(1.0, 1.0, 1.0), float)


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.3), (0.5, 0.05), (2.0, -0.1)])
def test_fits_recover_known_coefficients_from_noiseless_data(alpha, beta):
    assert fit_best_of_n(D, predict_best_of_n(D, alpha, beta)) == pytest.approx((alpha, beta), abs=1e-10)
    d = np.linspace(0.0, 6.0, 13)  # RL moves further; d = 0 and d = 1 are included
    assert fit_rl(d, predict_rl(d, alpha, beta)) == pytest.approx((alpha, beta), abs=1e-10)


def test_fits_recover_coefficients_from_slightly_noisy_data():
    rng = np.random.default_rng(0)
    d = np.linspace(0.1, 4.0, 40)
    bon = predict_best_of_n(d, 0.8, 0.2) + rng.normal(0, 0.01, d.shape)
    rl = predict_rl(d, 0.6, 0.3) + rng.normal(0, 0.01, d.shape)
    alpha, beta = fit_best_of_n(d, bon)
    assert alpha == pytest.approx(0.8, abs=0.02) and beta == pytest.approx(0.2, abs=0.01)
    alpha, beta = fit_rl(d, rl)
    assert alpha == pytest.approx(0.6, abs=0.02) and beta == pytest.approx(0.3, abs=0.02)
    # The fitted best-of-n curve peaks where the true one does, to within a few percent.
    assert peak_of_best_of_n(*fit_best_of_n(d, bon)) == pytest.approx(0.8 / 0.4, rel=0.05)


def test_peaks_by_hand_and_the_gain_there_is_the_largest():
    assert peak_of_best_of_n(1.0, 0.25) == pytest.approx(2.0)  # alpha / (2 beta)
    assert peak_of_rl(1.0, 0.5) == pytest.approx(math.exp(1.0))  # exp(alpha / beta - 1)
    for alpha, beta in [(1.0, 0.25), (0.3, 0.7), (-0.2, 0.4)]:
        d = np.linspace(1e-6, 10.0, 20001)
        peak = peak_of_rl(alpha, beta)
        assert predict_rl(peak, alpha, beta) == pytest.approx(beta * peak)  # the gain at the peak is beta d*
        assert predict_rl(peak, alpha, beta) >= predict_rl(d, alpha, beta).max() - 1e-9
    assert predict_best_of_n(2.0, 1.0, 0.25) == pytest.approx(1.0**2 / (4 * 0.25))  # alpha^2 / (4 beta)


def test_peaks_without_a_turnover():
    # beta <= 0: the proxy never stops tracking the gold reward, so optimisation never has to stop.
    assert peak_of_best_of_n(1.0, 0.0) == math.inf and peak_of_rl(1.0, 0.0) == math.inf
    assert peak_of_best_of_n(1.0, -0.2) == math.inf and peak_of_rl(-1.0, -0.2) == math.inf
    # A curve that only falls is best left alone.
    assert peak_of_best_of_n(-1.0, 0.0) == 0.0 and peak_of_rl(-1.0, 0.0) == 0.0
    assert peak_of_best_of_n(-1.0, 0.5) == 0.0
    assert peak_of_rl(1000.0, 1.0) == math.inf  # exp(999) is beyond a float


@pytest.mark.parametrize("call, match", [
    (lambda: fit_best_of_n([0.5, -0.1], [0.1, 0.2]), "must be >= 0"),
    (lambda: fit_best_of_n([0.5, 1.0, 2.0], [0.1, 0.2]), "one length"),
    (lambda: fit_best_of_n([0.5], [0.1]), "at least 2 points"),
    (lambda: fit_best_of_n([[0.5, 1.0]], [[0.1, 0.2]]), "1-D"),
    (lambda: fit_best_of_n([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]), "cannot separate alpha from beta"),
    (lambda: fit_rl([1.0, 1.0, 0.0], [0.2, 0.2, 0.0]), "cannot separate alpha from beta"),
    (lambda: fit_rl([0.5, float("nan")], [0.1, 0.2]), "d must be finite"),
    (lambda: fit_rl([0.5, 1.0], [0.1, float("inf")]), "gain must be finite"),
    (lambda: predict_best_of_n(-1.0, 1.0, 0.1), "must be >= 0"),
    (lambda: predict_rl(1.0, float("nan"), 0.1), "alpha must be a finite number"),
    (lambda: peak_of_rl(1.0, "0.1"), "beta must be a finite number"),
    (lambda: peak_of_best_of_n(True, 0.1), "alpha must be a finite number"),
])
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
