r"""Update rules written out: gradient descent, momentum, Adam, and AdamW's decoupled weight decay.

Introduced in chapter 3, section "How a model learns: from gradient descent to AdamW". Each rule is
one pure function of the current weights ``theta``, their gradient ``grad`` and the rule's state;
it returns the new weights (and the new state) and changes nothing in place. They follow PyTorch's
conventions, so that each can be checked against ``torch.optim`` step for step (``tests/test_optim.py``
does, in float64); the book's :class:`aigc_book.training.trainer.Trainer` uses ``torch.optim.AdamW``.

With learning rate :math:`\eta` and gradient :math:`g_t` at step :math:`t = 1, 2, \dots`:

* gradient descent: :math:`\theta_t = \theta_{t-1} - \eta g_t`;
* momentum (Polyak 1964, in PyTorch's form): :math:`v_t = \mu v_{t-1} + g_t`,
  :math:`\theta_t = \theta_{t-1} - \eta v_t`, with :math:`v_0 = 0`;
* Adam (Kingma & Ba 2015, Algorithm 1): :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`,
  :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2`, :math:`\hat m_t = m_t / (1-\beta_1^t)`,
  :math:`\hat v_t = v_t / (1-\beta_2^t)`,
  :math:`\theta_t = \theta_{t-1} - \eta\,\hat m_t / (\sqrt{\hat v_t} + \epsilon)`;
* Adam with an L2 term :math:`\tfrac{\lambda}{2}\lVert\theta\rVert^2` in the loss: the same, with
  :math:`g_t + \lambda\theta_{t-1}` in place of :math:`g_t` (what ``torch.optim.Adam(weight_decay=λ)``
  does). The decay term then passes through the division by :math:`\sqrt{\hat v_t}`;
* AdamW (Loshchilov & Hutter 2019): first :math:`\theta \leftarrow \theta - \eta\lambda\theta`, then
  the Adam step with the plain gradient. The decay is *decoupled* from the adaptive scaling: every
  weight shrinks by the same fraction :math:`\eta\lambda` per step.

PyTorch (and this module) multiply the decay by the learning rate. The paper writes the update as
:math:`\theta_t = \theta_{t-1} - \eta_t(\alpha\,\hat m_t/(\sqrt{\hat v_t}+\epsilon) + \lambda\theta_{t-1})`
with :math:`\alpha` the step size and :math:`\eta_t` the schedule's multiplier, so PyTorch's
``weight_decay`` corresponds to the paper's :math:`\lambda / \alpha`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AdamState", "adam_step", "adamw_step", "gd_step", "momentum_step"]


def _check(theta: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
    if not isinstance(theta, torch.Tensor) or not isinstance(grad, torch.Tensor):
        raise TypeError(f"theta and grad must be tensors, got {type(theta).__name__} and {type(grad).__name__}")
    if theta.shape != grad.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)} but theta has {tuple(theta.shape)}; they must match")
    if not lr >= 0:  # also refuses NaN
        raise ValueError(f"lr must be >= 0, got {lr}")


def gd_step(theta: torch.Tensor, grad: torch.Tensor, *, lr: float) -> torch.Tensor:
    r"""One step of gradient descent: :math:`\theta - \eta g` (``torch.optim.SGD`` without momentum)."""
    _check(theta, grad, lr)
    return theta - lr * grad


def momentum_step(
    theta: torch.Tensor, grad: torch.Tensor, velocity: torch.Tensor | None, *, lr: float, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One step of gradient descent with momentum; returns ``(theta, velocity)``.

    :math:`v_t = \mu v_{t-1} + g_t` and :math:`\theta_t = \theta_{t-1} - \eta v_t`; ``velocity=None``
    on the first step means :math:`v_0 = 0`. Equal to ``torch.optim.SGD(lr=η, momentum=μ)``. The
    velocity is a running sum of past gradients with weights :math:`1, \mu, \mu^2, \dots`: directions
    where gradients agree build up speed, directions where they alternate cancel.
    """
    _check(theta, grad, lr)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    velocity = grad if velocity is None else momentum * velocity + grad
    return theta - lr * velocity, velocity


@dataclass
class AdamState:
    """Adam's running moments and step count for one tensor (``step`` counts completed steps)."""

    m: torch.Tensor  # first moment: running mean of gradients
    v: torch.Tensor  # second moment: running mean of squared gradients
    step: int = 0

    @classmethod
    def zeros_like(cls, theta: torch.Tensor) -> AdamState:
        return cls(torch.zeros_like(theta), torch.zeros_like(theta), 0)


def adam_step(
    theta: torch.Tensor,
    grad: torch.Tensor,
    state: AdamState,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    l2: float = 0.0,
) -> tuple[torch.Tensor, AdamState]:
    r"""One Adam step (Kingma & Ba 2015); returns ``(theta, state)``.

    ``l2`` adds :math:`\lambda\theta` to the gradient, as an L2 term :math:`\tfrac{\lambda}{2}\lVert\theta\rVert^2`
    in the loss would: equal to ``torch.optim.Adam(lr=η, betas=betas, eps=eps, weight_decay=l2)``.
    The bias corrections :math:`1 - \beta^t` undo the moments' start at zero, so the first step
    moves each weight by about :math:`\eta` whatever the gradient's scale.
    """
    _check(theta, grad, lr)
    beta1, beta2 = betas
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {betas}")
    if not eps > 0 or not l2 >= 0:
        raise ValueError(f"eps must be > 0 and l2 >= 0, got eps={eps}, l2={l2}")
    if state.m.shape != theta.shape:
        raise ValueError(f"state was made for shape {tuple(state.m.shape)}, theta has {tuple(theta.shape)}")
    g = grad + l2 * theta if l2 else grad
    t = state.step + 1
    m = beta1 * state.m + (1 - beta1) * g
    v = beta2 * state.v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return theta - lr * m_hat / (v_hat.sqrt() + eps), AdamState(m, v, t)


def adamw_step(
    theta: torch.Tensor,
    grad: torch.Tensor,
    state: AdamState,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> tuple[torch.Tensor, AdamState]:
    r"""One AdamW step (Loshchilov & Hutter 2019): decay, then Adam on the plain gradient.

    :math:`\theta \leftarrow (1 - \eta\lambda)\theta`, then :func:`adam_step` with ``l2=0``. Equal to
    ``torch.optim.AdamW(lr=η, betas=betas, eps=eps, weight_decay=λ)`` (whose default λ is 0.01).
    """
    _check(theta, grad, lr)
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decayed = theta * (1 - lr * weight_decay)
    return adam_step(decayed, grad, state, lr=lr, betas=betas, eps=eps)
