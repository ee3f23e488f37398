"""One evaluation for the whole book: mean nats per token over held-out text."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aigc_book.training.evaluation import lm_loss


class Uniform(torch.nn.Module):
    """Every token equally likely: the loss must be log V exactly."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, idx):
        return torch.zeros(*idx.shape, 7), None


def test_uniform_model_scores_log_vocab_on_a_stream_and_on_sequences():
    ids = torch.randint(0, 7, (103,))
    assert lm_loss(Uniform(), ids, 16) == pytest.approx(math.log(7), rel=1e-6)  # float32 logits
    assert lm_loss(Uniform(), ids[:100].view(4, 25)) == pytest.approx(math.log(7), rel=1e-6)


def test_stream_windows_predict_every_token_but_the_first_once(tiny_gpt):
    ids = torch.randint(0, 50, (70,), generator=torch.Generator().manual_seed(0))  # 4 full windows + 5
    expected_sum, count = 0.0, 0
    for s in range(0, 69, 16):  # by hand: consecutive windows, the last one shorter
        w = ids[s:s + 17]
        logits, _ = tiny_gpt(w[None, :-1])
        expected_sum += F.cross_entropy(logits[0], w[1:], reduction="sum").item()
        count += len(w) - 1
    assert count == 69
    assert lm_loss(tiny_gpt, ids, 16, batch_size=3) == pytest.approx(expected_sum / count, rel=1e-12)
    assert lm_loss(tiny_gpt, ids, 16, max_tokens=33) == pytest.approx(lm_loss(tiny_gpt, ids[:33], 16), rel=1e-12)


def test_sequences_are_each_predicted_from_their_start(tiny_gpt):
    seqs = torch.randint(0, 50, (5, 9), generator=torch.Generator().manual_seed(1))
    logits, _ = tiny_gpt(seqs[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), seqs[:, 1:].flatten()).item()
    assert lm_loss(tiny_gpt, seqs, batch_size=2) == pytest.approx(expected, rel=1e-12)


def test_model_mode_is_restored_and_bad_shapes_are_refused(tiny_gpt):
    tiny_gpt.train()
    lm_loss(tiny_gpt, torch.arange(20) % 50, 8)
    assert tiny_gpt.training
    with pytest.raises(ValueError, match="at least 2 tokens"):
        lm_loss(tiny_gpt, torch.tensor([3]), 8)
    with pytest.raises(ValueError, match=r"1-D stream or \(N, L\) sequences"):
        lm_loss(tiny_gpt, torch.zeros(2, 2, 2, dtype=torch.long))
