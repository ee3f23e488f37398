"""Speculative decoding: greedy output is the target's own greedy output (and Hugging Face's assisted
generation, pass for pass); the sampling rule reproduces the target's distribution; a draft equal to
the target is always accepted; the theory's formula; bad arguments are refused."""

from __future__ import annotations

import math

import pytest
import torch

from aigc_book.generation import GenerationConfig, generate
from aigc_book.generation.speculative import (
    expected_speedup,
    expected_tokens_per_pass,
    greedy_acceptance,
    speculative_generate,
    speculative_sampling_acceptance,
    speculative_speedup,
)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

V = 50


@pytest.fixture
def target(make_tiny_gpt):
    return make_tiny_gpt(seed=0, block_size=40)


@pytest.fixture
def draft(make_tiny_gpt):
    """An untrained draft of another shape: it disagrees with the target about half the time."""
    return make_tiny_gpt(seed=1, block_size=40, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture
def prompts():
    return torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_speculative_output_is_the_targets_greedy_output(target, draft, prompts, k):
    expected = generate(target, prompts, max_new_tokens=30).sequences
    out = speculative_generate(target, draft, prompts, max_new_tokens=30, k=k)
    assert torch.equal(out.sequences, expected)
    assert 0 < out.accepted < out.proposed  # rejections happened: the caches were rolled back
    assert out.new_tokens == 3 * 30 and out.draft_passes == out.proposed
    assert out.accepted <= out.judged <= out.proposed


def test_a_draft_equal_to_the_target_is_always_accepted(target, prompts):
    k, new = 4, 30  # 30 = 6 rounds of k + 1 tokens per row
    out = speculative_generate(target, target, prompts, max_new_tokens=new, k=k)
    assert torch.equal(out.sequences, generate(target, prompts, max_new_tokens=new).sequences)
    assert out.acceptance_rate == 1.0 and out.alpha == 1.0
    assert out.target_passes == 3 * new // (k + 1)
    assert out.tokens_per_target_pass == k + 1 == expected_tokens_per_pass(1.0, k)


def test_greedy_rule_keeps_the_matching_prefix_then_the_targets_token():
    logits = torch.full((2, 4, 6), -1.0)
    logits[0, torch.arange(4), torch.tensor([2, 3, 5, 1])] = 1.0  # the target's argmax at each position
    logits[1, torch.arange(4), torch.tensor([2, 3, 5, 1])] = 1.0
    drafts = torch.tensor([[2, 3, 4], [2, 3, 5]])
    n, token = greedy_acceptance(logits, drafts)
    assert n.tolist() == [2, 3] and token.tolist() == [5, 1]  # a correction, then the bonus token


def test_matches_hugging_face_assisted_generation_token_and_pass_for_pass(target, draft):
    from aigc_book.models.hf_gpt2 import to_hf_gpt2

    hf_target, hf_draft = to_hf_gpt2(target), to_hf_gpt2(draft)
    passes = {"target": 0, "draft": 0}
    hf_target.register_forward_hook(lambda *_: passes.__setitem__("target", passes["target"] + 1))
    hf_draft.register_forward_hook(lambda *_: passes.__setitem__("draft", passes["draft"] + 1))
    # Hugging Face reads these from the assistant's own config: k tokens every round, no early stop
    hf_draft.generation_config.num_assistant_tokens_schedule = "constant"
    hf_draft.generation_config.assistant_confidence_threshold = 0.0
    for seed, k in ((0, 1), (1, 3), (2, 5)):
        ids = torch.randint(0, V, (1, 4), generator=torch.Generator().manual_seed(seed))
        hf_draft.generation_config.num_assistant_tokens = k
        passes.update(target=0, draft=0)
        hf = hf_target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=hf_draft,
                                do_sample=False, max_new_tokens=25)
        ours = speculative_generate(target, draft, ids, max_new_tokens=25, k=k)
        assert torch.equal(ours.sequences, hf)
        assert (ours.target_passes, ours.draft_passes) == (passes["target"], passes["draft"])


# ----------------------------------------------------------------------------- sampling


def _rule_samples(p, q, n, seed):
    """``n`` runs of the sampling rule on one (p, q): the first two emitted tokens and n_accepted."""
    g = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(q.expand(n, -1, -1).reshape(-1, q.size(-1)), 1, generator=g).view(n, -1)  # (n, k)
    n_acc, nxt = speculative_sampling_acceptance(p.expand(n, -1, -1), q.expand(n, -1, -1), drafts, g)
    first = torch.where(n_acc >= 1, drafts[:, 0], nxt)
    second = torch.where(n_acc >= 2, drafts[:, 1], nxt) if drafts.size(1) >= 2 else None
    return first, second, n_acc


def test_sampling_rule_emits_the_targets_distribution():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(3, 6, generator=g, dtype=torch.float64), -1)  # (k + 1, V), k = 2
    q = torch.softmax(2 * torch.randn(2, 6, generator=g, dtype=torch.float64), -1)  # (k, V): a different guess
    assert (p[0] - q[0]).abs().sum() / 2 > 0.2  # the draft's own distribution would fail the check below
    n = 200_000
    first, second, n_acc = _rule_samples(p, q, n, seed=1)
    freq = torch.bincount(first, minlength=6).double() / n
    tol = 5 * (p[0] * (1 - p[0]) / n).sqrt() + 1e-4  # five standard errors
    assert ((freq - p[0]).abs() <= tol).all(), (freq, p[0])
    # the first draft is kept with probability sum_x min(p(x), q(x)) (Leviathan et al., Definition 3.1)
    kept = (n_acc >= 1).double().mean()
    assert abs(kept - torch.minimum(p[0], q[0]).sum()) < 5 * math.sqrt(0.25 / n)
    # given the first token was a draft, the second again follows the target's next distribution
    second = second[n_acc >= 1]
    freq2 = torch.bincount(second, minlength=6).double() / len(second)
    assert ((freq2 - p[1]).abs() <= 5 * (p[1] * (1 - p[1]) / len(second)).sqrt() + 1e-4).all()


def test_sampling_rule_resamples_only_where_the_target_exceeds_the_draft():
    p = torch.tensor([[[0.3, 0.5, 0.2]] * 2], dtype=torch.float64)  # (1, k + 1, V), k = 1
    q = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)  # the draft always proposes token 0
    n = 20_000
    first, _, n_acc = _rule_samples(p, q, n, seed=2)
    assert abs((n_acc == 1).double().mean() - 0.3) < 0.02  # kept with probability p(0) / q(0)
    assert (first[n_acc == 0] != 0).all()  # a rejected token is never drawn again: max(0, p - q) is 0 there


def test_sampling_with_a_draft_equal_to_the_target_accepts_everything(target, prompts):
    out = speculative_generate(target, target, prompts, max_new_tokens=20, k=3, do_sample=True,
                               generator=torch.Generator().manual_seed(0))
    assert out.acceptance_rate == 1.0 and out.sequences.shape == (3, 25)


@pytest.mark.slow
def test_speculative_sampling_follows_the_target_end_to_end(make_tiny_gpt):
    """The first sampled token of the whole loop (draft, caches, rule) has the target's distribution."""
    target = make_tiny_gpt(seed=0, vocab_size=5, block_size=8)
    draft = make_tiny_gpt(seed=6, vocab_size=5, block_size=8, n_layer=1, n_embd=16, n_head=2)
    with torch.no_grad():  # larger block weights: untrained models that do not just repeat the last token
        for p in [*target.transformer.h.parameters(), *draft.transformer.h.parameters()]:
            p.mul_(10 if p.dim() == 2 else 1)
    prompt = torch.tensor([[1, 3]])
    temperature = 0.1  # sharper distributions, further apart
    with torch.no_grad():
        p = torch.softmax(target(prompt).logits[0, -1] / temperature, -1)
        q = torch.softmax(draft(prompt).logits[0, -1] / temperature, -1)
    assert (p - q).abs().sum() / 2 > 0.2  # the draft alone would fail
    n = 1500
    out = speculative_generate(target, draft, prompt.expand(n, -1), max_new_tokens=2, k=1, do_sample=True,
                               temperature=temperature, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out.sequences[:, 2], minlength=5).double() / n
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-3).all(), (freq, p)
    assert 0 < out.accepted < out.proposed


# ----------------------------------------------------------------------------- theory and measurement


def test_expected_tokens_per_pass_is_the_geometric_sum():
    assert expected_tokens_per_pass(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens_per_pass(0.0, 5) == 1.0 and expected_tokens_per_pass(1.0, 5) == 6.0
    assert expected_tokens_per_pass(0.999999, 3) == pytest.approx(4.0, rel=1e-5)  # continuous at alpha = 1
    assert expected_speedup(0.5, 2, 0.25) == pytest.approx(1.75 / 1.5)


def test_speculative_speedup_reports_time_theory_and_identical_tokens(target, draft, prompts):
    r = speculative_speedup(target, draft, prompts[:2], k=3, device="cpu", max_new_tokens=12)
    assert r["same_tokens"] is True and r["plain_s"] > 0 and r["speculative_s"] > 0
    assert r["speedup"] == pytest.approx(r["plain_s"] / r["speculative_s"])
    assert r["expected_tokens_per_pass"] == pytest.approx(expected_tokens_per_pass(r["alpha"], 3))
    assert r["new_tokens"] == 24 and 1 <= r["tokens_per_target_pass"] <= 4
    sampled = speculative_speedup(target, draft, prompts[:1], k=2, device="cpu", max_new_tokens=6, do_sample=True)
    assert sampled["same_tokens"] is None and sampled["new_tokens"] == 6


def test_models_keep_their_training_mode(target, draft, prompts):
    target.train()
    speculative_generate(target, draft, prompts, max_new_tokens=3, k=2)
    assert target.training and not draft.training


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(k=0), ValueError, "k must be an int >= 1"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be"),
        (dict(max_new_tokens=40), ValueError, "do not fit in the context"),
        (dict(do_sample=1), TypeError, "do_sample must be True or False"),
        (dict(do_sample=True, temperature=0.0), ValueError, "temperature must be"),
        (dict(top_k=5), ValueError, r"reads only max_new_tokens, do_sample, temperature; .* got top_k=5"),
        (dict(use_cache=False), ValueError, "got use_cache=False"),
        (dict(max_new_tokens=None), ValueError, "max_new_tokens must be an int >= 0, got None"),
        (dict(tokens=3), TypeError, "unexpected keyword argument 'tokens'"),
    ],
)
def test_bad_arguments_are_refused(target, draft, prompts, kwargs, error, match):
    args = dict(max_new_tokens=5, k=2) | kwargs
    with pytest.raises(error, match=match):
        speculative_generate(target, draft, prompts, **args)


def test_models_with_different_vocabularies_are_refused(target, make_tiny_gpt, prompts):
    other = make_tiny_gpt(vocab_size=60, block_size=40)
    with pytest.raises(ValueError, match="share one vocabulary"):
        speculative_generate(target, other, prompts, max_new_tokens=3)


def test_rules_and_theory_refuse_bad_shapes_and_numbers():
    with pytest.raises(ValueError, match=r"\(N, k \+ 1, V\)"):
        greedy_acceptance(torch.zeros(1, 2, 5), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="q must have shape"):
        speculative_sampling_acceptance(torch.ones(1, 3, 5) / 5, torch.ones(1, 1, 5) / 5,
                                        torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha must be a probability"):
        expected_tokens_per_pass(1.5, 2)
    with pytest.raises(ValueError, match="cost_ratio"):
        expected_speedup(0.5, 2, -1.0)


def test_a_generation_config_reads_as_its_keywords(target, draft, prompts):
    config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.9)
    given = speculative_generate(target, draft, prompts, config, k=2, generator=torch.Generator().manual_seed(1))
    spelled = speculative_generate(target, draft, prompts, max_new_tokens=6, do_sample=True, temperature=0.9, k=2,
                                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(given.sequences, spelled.sequences) and given.sequences.shape == (3, 11)
