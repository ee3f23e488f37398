"""The update rules written out (aigc_book.training.optim) against torch.optim, in float64."""

from __future__ import annotations

import pytest
import torch

from aigc_book.training.optim import AdamState, adam_step, adamw_step, gd_step, momentum_step

STEPS = 6
TOL = {"rtol": 0, "atol": 1e-12}


def gradients(n: int = STEPS, shape=(3, 4)) -> list[torch.Tensor]:
    """Gradients that change sign and scale from step to step, so that every moment matters."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g, dtype=torch.float64) * (1 + 3 * (t % 2)) for t in range(n)]


def theta0(shape=(3, 4)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def run_torch(opt_class, grads, **kwargs) -> list[torch.Tensor]:
    """Weights after each step of a torch.optim optimizer fed the given gradients."""
    p = torch.nn.Parameter(theta0())
    opt = opt_class([p], **kwargs)
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return out


def test_gradient_descent_matches_torch_sgd():
    grads = gradients()
    expected = run_torch(torch.optim.SGD, grads, lr=0.1)
    theta = theta0()
    for g, want in zip(grads, expected):
        theta = gd_step(theta, g, lr=0.1)
        torch.testing.assert_close(theta, want, **TOL)


def test_momentum_matches_torch_sgd_with_momentum_over_several_steps():
    grads = gradients()
    expected = run_torch(torch.optim.SGD, grads, lr=0.05, momentum=0.9)
    theta, velocity = theta0(), None
    for g, want in zip(grads, expected):
        theta, velocity = momentum_step(theta, g, velocity, lr=0.05, momentum=0.9)
        torch.testing.assert_close(theta, want, **TOL)


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_adam_matches_torch_adam_with_and_without_l2(l2):
    grads = gradients()
    expected = run_torch(torch.optim.Adam, grads, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=l2)
    theta = theta0()
    state = AdamState.zeros_like(theta)
    for g, want in zip(grads, expected):
        theta, state = adam_step(theta, g, state, lr=0.01, betas=(0.9, 0.99), eps=1e-8, l2=l2)
        torch.testing.assert_close(theta, want, **TOL)
    assert state.step == STEPS


def test_adamw_matches_torch_adamw():
    grads = gradients()
    expected = run_torch(torch.optim.AdamW, grads, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.3)
    theta = theta0()
    state = AdamState.zeros_like(theta)
    for g, want in zip(grads, expected):
        theta, state = adamw_step(theta, g, state, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.3)
        torch.testing.assert_close(theta, want, **TOL)


def test_l2_in_the_loss_and_decoupled_decay_give_different_updates_under_adam():
    theta, g = theta0(), gradients(1)[0]
    with_l2, _ = adam_step(theta, g, AdamState.zeros_like(theta), lr=0.01, l2=0.3)
    decoupled, _ = adamw_step(theta, g, AdamState.zeros_like(theta), lr=0.01, weight_decay=0.3)
    assert (with_l2 - decoupled).abs().max() > 1e-4


def test_decoupled_decay_shrinks_a_weight_without_gradient_by_exactly_lr_times_decay():
    theta = torch.tensor([2.0, -1.0], dtype=torch.float64)
    new, _ = adamw_step(theta, torch.zeros_like(theta), AdamState.zeros_like(theta), lr=0.1, weight_decay=0.5)
    torch.testing.assert_close(new, theta * (1 - 0.1 * 0.5), **TOL)


def test_l2_decay_under_adam_is_normalised_away():
    """With no data gradient, the L2 term's step is about lr whatever lambda is: Adam divides it out."""
    theta = torch.tensor([2.0], dtype=torch.float64)
    zero = torch.zeros_like(theta)
    small, _ = adam_step(theta, zero, AdamState.zeros_like(theta), lr=0.1, l2=1e-3)
    large, _ = adam_step(theta, zero, AdamState.zeros_like(theta), lr=0.1, l2=1.0)
    torch.testing.assert_close(theta - small, theta - large, rtol=1e-4, atol=0)
    torch.testing.assert_close(theta - large, torch.tensor([0.1], dtype=torch.float64), rtol=1e-6, atol=0)


def test_rules_do_not_modify_their_inputs():
    theta, g = theta0(), gradients(1)[0]
    before = theta.clone()
    state = AdamState.zeros_like(theta)
    adamw_step(theta, g, state, lr=0.1, weight_decay=0.1)
    momentum_step(theta, g, None, lr=0.1, momentum=0.9)
    assert torch.equal(theta, before) and state.step == 0 and not state.m.any()


def test_bad_inputs_are_refused_with_a_reason():
    theta = torch.zeros(3)
    with pytest.raises(ValueError, match="grad has shape"):
        gd_step(theta, torch.zeros(4), lr=0.1)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        gd_step(theta, theta, lr=-1.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        momentum_step(theta, theta, None, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="betas must be in"):
        adam_step(theta, theta, AdamState.zeros_like(theta), lr=0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="state was made for shape"):
        adam_step(theta, theta, AdamState.zeros_like(torch.zeros(2)), lr=0.1)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        adamw_step(theta, theta, AdamState.zeros_like(theta), lr=0.1, weight_decay=-0.1)
    with pytest.raises(TypeError, match="must be tensors"):
        gd_step([0.0], theta, lr=0.1)
