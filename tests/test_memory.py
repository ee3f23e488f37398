"""The memory of one training step, by kind, equals a hand count on a tiny two-layer network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aigc_book.adaptation.lora import apply_lora
from aigc_book.efficiency.memory import TrainingMemory, tensor_bytes, training_memory

F32 = 4  # bytes per float32


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # 40 + 18 = 58 parameters


def _sum_loss(model, x):
    return model(x).sum()  # sum saves nothing for backward


def test_memory_of_an_adamw_step_equals_the_hand_count():
    x = torch.randn(3, 4)
    report = training_memory(_net(), lambda ps: torch.optim.AdamW(ps, lr=1e-3), x, _sum_loss)
    n = 4 * 8 + 8 + 8 * 2 + 2
    assert report.parameters == report.trainable_parameters == n * F32
    assert report.gradients == n * F32
    # AdamW: two moments per parameter, plus a float32 step counter per parameter tensor (4 tensors)
    assert report.optimizer_state == 2 * n * F32 + 4 * F32
    # saved for backward: the input x (for the first weight's gradient) and the ReLU output, which the
    # ReLU and the second Linear both save: one storage, counted once (3 * 4 + 3 * 8 floats, not + 3 * 8 more)
    assert report.activations == (3 * 4 + 3 * 8) * F32
    assert report.peak_cuda is None
    assert report.total == (n + n + 2 * n + 4 + 3 * 4 + 3 * 8) * F32
    assert report.as_dict(unit=F32)["total"] == report.total / F32


def test_freezing_removes_gradients_state_and_the_activations_only_frozen_layers_needed():
    model = _net()
    model[0].requires_grad_(False)
    report = training_memory(model, lambda ps: torch.optim.AdamW(ps, lr=1e-3), torch.randn(3, 4), _sum_loss)
    trainable = 8 * 2 + 2
    assert report.trainable_parameters == report.gradients == trainable * F32
    assert report.optimizer_state == 2 * trainable * F32 + 2 * F32
    assert report.activations == 3 * 8 * F32  # x and the ReLU's own save are no longer needed
    assert report.parameters == 58 * F32


def test_sgd_without_momentum_keeps_no_state_and_the_step_is_real():
    model = _net()
    before = model[0].weight.detach().clone()
    report = training_memory(model, lambda ps: torch.optim.SGD(ps, lr=0.1), torch.randn(3, 4), _sum_loss)
    assert report.optimizer_state == 0
    assert not torch.equal(model[0].weight, before)
    assert all(p.grad is None for p in model.parameters())  # cleared after measuring


def test_lora_cuts_gradient_and_optimizer_memory(make_tiny_gpt, tiny_ids):
    def loss(model, ids):
        return model(ids, ids).loss

    full = training_memory(make_tiny_gpt(), lambda ps: torch.optim.AdamW(ps), tiny_ids, loss)
    lora_model = make_tiny_gpt()
    apply_lora(lora_model, r=2)
    lora = training_memory(lora_model, lambda ps: torch.optim.AdamW(ps), tiny_ids, loss)
    n_lora = 2 * 2 * (32 + 96)  # two layers of r (d_in + d_out)
    assert lora.gradients == n_lora * 8  # float64
    assert lora.optimizer_state == 2 * n_lora * 8 + 4 * 4  # four LoRA tensors, a float32 step each
    assert full.gradients == full.parameters and lora.parameters == full.parameters + n_lora * 8
    assert 0 < lora.activations and 0 < full.activations


def test_tensor_bytes_counts_each_tensor_once():
    t = torch.zeros(5, dtype=torch.float64)
    assert tensor_bytes([t, t, torch.zeros(2, dtype=torch.int8)]) == 5 * 8 + 2


def test_training_memory_refuses_bad_arguments():
    model, x = _net(), torch.randn(3, 4)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        training_memory(model, lambda ps: None, x, _sum_loss)
    with pytest.raises(ValueError, match="scalar tensor"):
        training_memory(model, lambda ps: torch.optim.SGD(ps, lr=0.1), x, lambda m, b: m(b))
    with pytest.raises(TypeError, match="callables"):
        training_memory(model, "adamw", x, _sum_loss)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        training_memory(model, lambda ps: torch.optim.SGD(ps, lr=0.1), x, _sum_loss)
    assert isinstance(TrainingMemory(1, 1, 1, 1, 1).total, int)
