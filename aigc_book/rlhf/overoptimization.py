r"""Gao, Schulman & Hilton's functional forms for reward-model over-optimisation.

Introduced in chapter 5, section "Over-optimisation". Optimise a proxy reward (a reward model) and
the gold reward first rises, then falls: Goodhart's law. Gao, Schulman & Hilton 2022 ("Scaling laws
for reward model overoptimization", arXiv:2210.10760) found that the gold reward gain
over the initial policy follows simple curves in the distance

.. math:: d = \sqrt{\mathrm{KL}(\pi \,\|\, \pi_\mathrm{init})}

that the optimisation has moved the policy:

.. math::
    R_\mathrm{BoN}(d) = d\,(\alpha_\mathrm{BoN} - \beta_\mathrm{BoN}\, d), \qquad
    R_\mathrm{RL}(d) = d\,(\alpha_\mathrm{RL} - \beta_\mathrm{RL} \log d),

both 0 at :math:`d = 0`. Both are linear in :math:`(\alpha, \beta)`, so a least-squares fit without
intercept finds them (:func:`fit_best_of_n`, :func:`fit_rl`), and each has one maximiser
(:func:`peak_of_best_of_n`, :func:`peak_of_rl`): how far optimisation can go before the gold reward
starts to fall. :math:`\alpha` is the initial slope; :math:`\beta` measures how fast the proxy stops
tracking the gold reward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from aigc_book.checks import is_number

__all__ = ["fit_best_of_n", "fit_rl", "predict_best_of_n", "predict_rl", "peak_of_best_of_n", "peak_of_rl"]


def _distances(d: npt.ArrayLike, name: str = "d") -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if not np.isfinite(d).all():
        raise ValueError(f"{name} must be finite")
    if (d < 0).any():
        raise ValueError(f"{name} = sqrt(KL) must be >= 0, got a minimum of {float(d.min()):.4g}")
    return d


def _coefficient(name: str, value: object) -> float:
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _d_log_d(d: np.ndarray) -> np.ndarray:
    """``d log d``, continued by its limit 0 at d = 0."""
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


def _fit(d: npt.ArrayLike, gain: npt.ArrayLike,
         columns: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    d = _distances(d)
    gain = np.asarray(gain, dtype=np.float64)
    if d.ndim != 1 or gain.shape != d.shape:
        raise ValueError(f"d and gain must be 1-D arrays of one length, got shapes {d.shape} and {gain.shape}")
    if d.size < 2:
        raise ValueError(f"need at least 2 points to fit alpha and beta, got {d.size}")
    if not np.isfinite(gain).all():
        raise ValueError("gain must be finite")
    X = np.stack(columns(d), axis=1)  # (points, 2)
    (alpha, beta), _, rank, _ = np.linalg.lstsq(X, gain, rcond=None)
    if rank < 2:
        raise ValueError("the points cannot separate alpha from beta: use at least two distinct d > 0 "
                         "(and, for the RL form, not only d = 1, where d log d = 0)")
    return float(alpha), float(beta)


def fit_best_of_n(d: npt.ArrayLike, gain: npt.ArrayLike) -> tuple[float, float]:
    r"""``(alpha, beta)`` of :math:`R(d) = d(\alpha - \beta d)` by least squares (Gao et al. 2022).

    ``d`` holds :math:`\sqrt{\mathrm{KL}}` (e.g. ``sqrt(best_of_n_kl(n))``) and ``gain`` the gold
    reward minus the initial policy's, one per point. The fit has no intercept: :math:`R(0) = 0`
    by definition. Needs two points with distinct :math:`d > 0`.
    """
    return _fit(d, gain, lambda x: (x, -(x**2)))


def fit_rl(d: npt.ArrayLike, gain: npt.ArrayLike) -> tuple[float, float]:
    r"""``(alpha, beta)`` of :math:`R(d) = d(\alpha - \beta \log d)` by least squares (Gao et al. 2022).

    As :func:`fit_best_of_n`, for a policy trained by reinforcement learning, with ``d`` measured
    along training; :math:`d \log d` is taken as 0 at :math:`d = 0`.
    """
    return _fit(d, gain, lambda x: (x, -_d_log_d(x)))


def _output(x: np.ndarray, d_in: npt.ArrayLike) -> float | np.ndarray:
    return float(x) if np.ndim(d_in) == 0 else x


def predict_best_of_n(d: npt.ArrayLike, alpha: float, beta: float) -> float | np.ndarray:
    r""":math:`R_\mathrm{BoN}(d) = d(\alpha - \beta d)` (Gao et al. 2022); a float for a number, an array
    for an array."""
    a, b = _coefficient("alpha", alpha), _coefficient("beta", beta)
    x = _distances(d)
    return _output(x * (a - b * x), d)


def predict_rl(d: npt.ArrayLike, alpha: float, beta: float) -> float | np.ndarray:
    r""":math:`R_\mathrm{RL}(d) = d(\alpha - \beta \log d)` (Gao et al. 2022), with :math:`R(0) = 0`
    (its limit); a float for a number, an array for an array."""
    a, b = _coefficient("alpha", alpha), _coefficient("beta", beta)
    x = _distances(d)
    return _output(a * x - b * _d_log_d(x), d)


def peak_of_best_of_n(alpha: float, beta: float) -> float:
    r"""The :math:`d \ge 0` that maximises :math:`d(\alpha - \beta d)`: :math:`d^* = \alpha / (2\beta)`.

    There the gold gain is :math:`\alpha^2 / (4\beta)`. When :math:`\beta \le 0` there is no peak:
    the curve grows without end (``inf``), unless :math:`\beta = 0` and :math:`\alpha \le 0`, when
    it never rises above 0 and the best is not to optimise (``0.0``). With :math:`\alpha \le 0 < \beta`
    the best is also ``0.0``.
    """
    a, b = _coefficient("alpha", alpha), _coefficient("beta", beta)
    if b > 0:
        return max(a / (2 * b), 0.0)
    return math.inf if b < 0 or a > 0 else 0.0


def peak_of_rl(alpha: float, beta: float) -> float:
    r"""The :math:`d > 0` that maximises :math:`d(\alpha - \beta \log d)`: :math:`d^* = e^{\alpha/\beta - 1}`.

    Setting the derivative :math:`\alpha - \beta(\log d + 1)` to 0 gives :math:`d^*`, where the gold
    gain is :math:`\beta d^* > 0`, so for :math:`\beta > 0` the peak exists for every :math:`\alpha`.
    When :math:`\beta < 0` the curve grows without end (``inf``); when :math:`\beta = 0` it is the
    line :math:`\alpha d`: ``inf`` for :math:`\alpha > 0`, ``0.0`` otherwise.
    """
    a, b = _coefficient("alpha", alpha), _coefficient("beta", beta)
    if b > 0:
        exponent = a / b - 1
        return math.exp(exponent) if exponent < 709 else math.inf  # exp overflows a float beyond ~709
    return math.inf if b < 0 or a > 0 else 0.0
