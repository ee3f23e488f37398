r"""Best-of-n sampling: draw n responses, keep the one a reward model likes best.

Introduced in chapter 5, section "Best-of-n sampling". The simplest way to optimise a reward at
inference time, with no training at all (also called rejection sampling; Nakano et al. 2021 used
it in WebGPT, Stiennon et al. 2020 to compare with RL). It moves the policy a measurable distance:

* :func:`best_of_n_kl`, the KL divergence from the base policy that everyone quotes,
  :math:`\log n - (n-1)/n`, exact only for a continuously distributed reward, an upper bound
  otherwise;
* :func:`best_of_n_distribution` and :func:`kl_divergence`: the exact best-of-n distribution over a
  finite set of outcomes, so the formula can be checked and its failure with ties shown;
* :func:`best_of_n_expectation`: the expected gold and proxy reward of best-of-n for every n at
  once, from N ≥ n samples per prompt, without bias (Gao et al. 2022's estimator for their
  over-optimisation curves);
* :func:`best_of_n`: the procedure itself, on a policy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from aigc_book.checks import is_int
from aigc_book.rlhf.reward_training import Reward, reward_scores
from aigc_book.rlhf.rollouts import Responses, sample_responses
from aigc_book.tasks.instructions import Instruction
from aigc_book.text.chat_tokenizer import ChatTokenizer

__all__ = ["best_of_n_kl", "best_of_n_distribution", "kl_divergence", "best_of_n_expectation", "best_of_n"]

ArrayLike = npt.ArrayLike | torch.Tensor


def _check_n(n: object, name: str = "n") -> int:
    if not is_int(n) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return int(n)


def best_of_n_kl(n: int) -> float:
    r""":math:`\mathrm{KL}(\pi_{\mathrm{BoN}} \,\|\, \pi) = \log n - \frac{n-1}{n}` nats.

    The formula used by Stiennon et al. 2020, Hilton & Gao 2022 (OpenAI, "Measuring Goodhart's law")
    and Gao, Schulman & Hilton 2022 (arXiv:2210.10760). It is exact when the reward of a sample
    has a continuous distribution (no single outcome carries probability): the best of n has
    density :math:`nF^{n-1}` against the policy's, and :math:`\mathbb{E}[\log F] = -1/n` for the
    maximum of n uniform draws. Over a finite set of outcomes it is only an upper bound (Beirami et
    al. 2024, "Theoretical guarantees on the best-of-n alignment policy", arXiv:2401.01879): close
    when the outcomes are many, each improbable and without ties, far above with few outcomes or
    ties. :func:`best_of_n_distribution` gives the exact value there. ``n = 1`` gives 0.
    """
    n = _check_n(n)
    return math.log(n) - (n - 1) / n


def _prob_vector(name: str, p: ArrayLike) -> np.ndarray:
    p = np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must hold finite probabilities >= 0")
    if not math.isclose(float(p.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name} must sum to 1, sums to {float(p.sum()):.6g}")
    return p


def best_of_n_distribution(probs: ArrayLike, rewards: ArrayLike, n: int) -> np.ndarray:
    r"""The exact distribution of best-of-n over a finite set of outcomes.

    Outcome :math:`i` has base probability :math:`p_i` and reward :math:`r_i`. Sort the outcomes by
    reward and let :math:`F(i) = \sum_{j:\,r_j \le r_i} p_j`. The best of n independent draws has a
    reward at most :math:`r_i` only if all n draws do, with probability :math:`F(i)^n`, so

    .. math:: P_{\mathrm{BoN}}(i) = F(i)^n - F(i^-)^n,

    with :math:`F(i^-)` the mass of the outcomes with a smaller reward. Outcomes that tie share
    their group's probability in proportion to :math:`p_i` (the picked draw is one of the tied ones,
    and which one does not depend on its identity). Returns a float64 array in the input's order.
    """
    p = _prob_vector("probs", probs)
    r = np.asarray(rewards.detach().cpu() if isinstance(rewards, torch.Tensor) else rewards, dtype=np.float64)
    if r.shape != p.shape:
        raise ValueError(f"rewards must have the shape of probs {p.shape}, got {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("rewards must be finite")
    n = _check_n(n)
    values, group = np.unique(r, return_inverse=True)  # groups of equal reward, in increasing order
    mass = np.bincount(group, weights=p, minlength=len(values))
    upper = np.minimum(np.cumsum(mass), 1.0)  # F at each group
    lower = np.concatenate([[0.0], upper[:-1]])
    group_prob = upper**n - lower**n
    share = np.divide(p, mass[group], out=np.zeros_like(p), where=mass[group] > 0)
    return group_prob[group] * share


def kl_divergence(p: ArrayLike, q: ArrayLike) -> float:
    r""":math:`\mathrm{KL}(p \,\|\, q) = \sum_i p_i \log(p_i / q_i)` in nats, for distributions on the same outcomes.

    Terms with :math:`p_i = 0` count 0; a :math:`p_i > 0` where :math:`q_i = 0` makes it infinite.
    """
    p, q = _prob_vector("p", p), _prob_vector("q", q)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have one shape, got {p.shape} and {q.shape}")
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    return float(np.sum(p[support] * (np.log(p[support]) - np.log(q[support]))))


def _as_matrix(name: str, x: ArrayLike) -> np.ndarray:
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty (prompts, samples) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def best_of_n_expectation(proxy: ArrayLike, gold: ArrayLike, ns: Iterable[int] | int) -> dict[str, np.ndarray]:
    r"""Expected gold and proxy reward of best-of-n, for each n in ``ns``, from N samples per prompt.

    ``proxy`` and ``gold`` are ``(P, N)``: for each of P prompts, N responses sampled from the
    policy, their proxy rewards (what best-of-n maximises, e.g. a reward model) and gold rewards.
    Best-of-n keeps the response with the highest proxy among n draws. Rather than draw random
    n-subsets, average over *all* :math:`\binom{N}{n}` of them exactly: sort a prompt's samples
    by proxy; the k-th smallest (k = 1..N) is the maximum of a random n-subset with probability

    .. math:: w_k = \binom{k-1}{n-1} \Big/ \binom{N}{n},

    so :math:`\hat R_n = \sum_k w_k\, R_{(k)}` is an unbiased estimate of the best-of-n reward
    (the estimator Gao et al. 2022 take from WebGPT, Nakano et al. 2021), with much less variance
    than sampling subsets. Equal proxies are broken in favour of the earlier sample, as :func:`best_of_n`
    does. Needs ``n <= N``.

    Returns:
        ``{"n": ..., "gold": ..., "proxy": ..., "kl": ...}``: arrays over ``ns``, the rewards averaged
        over prompts, and :func:`best_of_n_kl` of each n.
    """
    proxy, gold = _as_matrix("proxy", proxy), _as_matrix("gold", gold)
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold must have one (prompts, samples) shape, got {proxy.shape} and {gold.shape}")
    P, N = proxy.shape
    ns = [_check_n(n, "every n in ns") for n in np.atleast_1d(np.asarray(ns, dtype=object))]
    if not ns or max(ns) > N:
        raise ValueError(f"ns must be non-empty with every n in [1, {N}] (the samples per prompt), got {ns}")
    # Sort ascending by proxy; among equal proxies the earlier sample ranks higher (it wins the tie).
    order = np.lexsort((-np.arange(N)[None, :].repeat(P, 0), proxy), axis=1)  # (P, N)
    proxy_sorted = np.take_along_axis(proxy, order, 1)
    gold_sorted = np.take_along_axis(gold, order, 1)
    k = np.arange(1, N + 1, dtype=np.float64)
    out_gold, out_proxy = [], []
    for n in ns:
        # log C(k-1, n-1) - log C(N, n) with lgamma (exact integers would be huge for large N).
        log_w = np.array([math.lgamma(kk) - math.lgamma(n) - math.lgamma(kk - n + 1) if kk >= n else -np.inf
                          for kk in k])
        w = np.exp(log_w - log_w.max())
        w /= w.sum()  # sums to 1 exactly in theory; this removes lgamma's rounding
        out_gold.append(float((gold_sorted @ w).mean()))
        out_proxy.append(float((proxy_sorted @ w).mean()))
    return {"n": np.array(ns), "gold": np.array(out_gold), "proxy": np.array(out_proxy),
            "kl": np.array([best_of_n_kl(n) for n in ns])}


def best_of_n(policy: nn.Module, tokenizer: ChatTokenizer, prompts: Sequence[str | Instruction], reward_fn: Reward, *,
              n: int, max_new_tokens: int, generator: torch.Generator) -> Responses:
    """Sample ``n`` responses per prompt from ``policy`` (temperature 1) and keep the best by ``reward_fn``.

    ``reward_fn`` is a function ``Responses -> (B,)`` rewards (e.g.
    :func:`~aigc_book.rlhf.preferences.gold_rewards`) or a
    :class:`~aigc_book.rlhf.heads.RewardModel` (its ``score`` is used, without gradients). On a tie
    the first sample wins. Returns one row per prompt, in the prompts' order.
    """
    n = _check_n(n)
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("pass a torch.Generator: sampling never draws from the global RNG")
    if not (callable(reward_fn) or hasattr(reward_fn, "score")):
        raise TypeError(f"reward_fn must be a function of Responses or a RewardModel, got {type(reward_fn).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts")
    samples = sample_responses(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, generator=generator,
                               temperature=1.0, num_return_sequences=n)  # rows i*n .. i*n + n-1 answer prompt i
    scores = reward_scores(reward_fn, samples).view(len(prompts), n)  # (P, n)
    best = scores.argmax(1)  # the first maximum on ties
    return samples.select(torch.arange(len(prompts)) * n + best)
