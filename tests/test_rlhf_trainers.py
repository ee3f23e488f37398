"""Chapter 5's machinery on a tiny chat GPT: rollouts, the scalar heads, PPO, GRPO, DPO and the pipeline.

The trainers are checked by what they are for: on a toy reward they raise it (and, with the reward
negated, lower it), they never touch the reference model, and DPO widens the chosen-minus-rejected
margin. Every model here is 1 layer, 2 heads, 32 wide, so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.rlhf.best_of_n import best_of_n_kl
from aigc_book.rlhf.dpo import DPOConfig, train_dpo
from aigc_book.rlhf.grpo import GRPOConfig, GRPOTrainer
from aigc_book.rlhf.heads import PolicyWithValue, RewardModel
from aigc_book.rlhf.pipeline import METHODS, RLHFConfig, prompt_sampler, run_rlhf
from aigc_book.rlhf.ppo import AdaptiveKLController, FixedKLController, PPOConfig, PPOTrainer
from aigc_book.rlhf.preferences import PreferencePairs
from aigc_book.rlhf.reward_training import RewardConfig
from aigc_book.rlhf.rollouts import pack, sample_responses, sequence_logprobs, token_logprobs
from aigc_book.rlhf.sft_policy import PolicyConfig, build_sft_policy
from aigc_book.tasks.instructions import CHARS
from aigc_book.text.chat_tokenizer import ChatTokenizer
from aigc_book.training.objectives import sequence_lm_batch

TOK = ChatTokenizer(CHARS)
BLOCK = 32
TOY_PROMPTS = ("add 1+2", "sort cab")  # 10 and 11 tokens in the chat template
TOY_NEW_TOKENS = 3
pytestmark = pytest.mark.usefixtures("one_cpu_thread")




def chat_gpt(seed: int = 0) -> GPT:
    """A tiny random float32 GPT over the chat vocabulary, in eval mode."""
    torch.manual_seed(seed)
    return GPT(TransformerConfig(vocab_size=TOK.vocab_size, block_size=BLOCK, n_layer=1, n_head=2, n_embd=32)).eval()


def ids(text: str) -> list[int]:
    """A closed response: its characters, then ``<|end|>``."""
    return TOK.encode(text, allow_special=False) + [TOK.end_id]


def prompt_len(prompt: str) -> int:
    return len(TOK.encode_chat(prompt)[0])


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), f"{k} changed"


# --------------------------------------------------------------------------------------------------
# Rollouts: pack, sample_responses, token_logprobs, sequence_logprobs
# --------------------------------------------------------------------------------------------------


def test_pack_lays_out_prompt_then_response_right_padded():
    prompts, responses = ["add 1+2", "sort cab"], [ids("3"), ids("abc")]
    r = pack(TOK, prompts, responses)
    p0, p1 = TOK.encode_chat(prompts[0])[0], TOK.encode_chat(prompts[1])[0]
    L = max(len(p0) + 2, len(p1) + 4)
    assert r.tokens.shape == (2, L) and r.tokens.dtype == torch.long
    row0 = p0 + responses[0] + [TOK.pad_id] * (L - len(p0) - 2)
    row1 = p1 + responses[1] + [TOK.pad_id] * (L - len(p1) - 4)
    assert r.tokens.tolist() == [row0, row1]
    expected_mask = torch.zeros(2, L, dtype=torch.bool)
    expected_mask[0, len(p0): len(p0) + 2] = True
    expected_mask[1, len(p1): len(p1) + 4] = True
    assert torch.equal(r.response_mask, expected_mask)
    assert torch.equal(r.action_mask, expected_mask[:, 1:])  # aligned with the targets tokens[:, 1:]
    assert r.last_index().tolist() == [len(p0) + 1, len(p1) + 3]
    assert r.response_lengths().tolist() == [2, 4]
    assert r.texts == ["3", "abc"] and r.prompts == prompts and len(r) == 2
    assert r.finished(TOK.end_id) == [True, True]
    assert pack(TOK, ["add 1+2"], [TOK.encode("3")]).finished(TOK.end_id) == [False]


def test_pack_refuses_empty_responses_and_mismatched_counts():
    with pytest.raises(ValueError, match="at least one token"):
        pack(TOK, ["add 1+2", "sort cab"], [ids("3"), []])
    with pytest.raises(ValueError, match="one response per prompt"):
        pack(TOK, ["add 1+2", "sort cab"], [ids("3")])
    with pytest.raises(ValueError, match="one response per prompt"):
        pack(TOK, [], [])


def test_sample_responses_stop_at_end_or_at_max_new_tokens():
    model, n_new = chat_gpt(), 20
    r = sample_responses(model, TOK, ["add 1+2"] * 64, max_new_tokens=n_new,
                         generator=torch.Generator().manual_seed(0))
    start = prompt_len("add 1+2")
    closed = 0
    for i, resp in enumerate(r.response_ids):
        assert 1 <= len(resp) <= n_new
        assert TOK.end_id not in resp[:-1]  # nothing is kept after the first <|end|>
        if resp[-1] == TOK.end_id:
            closed += 1
        else:
            assert len(resp) == n_new  # an open response ran out of tokens
        assert r.tokens[i, start: start + len(resp)].tolist() == resp
        assert r.response_mask[i].sum().item() == len(resp)
        assert (r.tokens[i, start + len(resp):] == TOK.pad_id).all()
    assert 0 < closed < 64  # both endings occur, so both branches were checked
    assert sum(r.finished(TOK.end_id)) == closed


def test_num_return_sequences_puts_a_prompts_samples_in_adjacent_rows():
    model = chat_gpt(seed=1)
    with torch.no_grad():  # a random GPT with tied embeddings repeats its last input token, <|assistant|>, after
        model.transformer.wte.weight[TOK.assistant_id].zero_()  # any prompt; without it the answer follows the prompt
    prompts = ["sort cab", "add 1+2", "sort ab"]  # 11, 10 and 10 tokens: two length groups, out of order
    # At a temperature near 0 every sample is the greedy response, so each row shows whose it is.
    # (temperature=0 itself refuses num_return_sequences > 1: greedy decoding has one answer.)
    cold = sample_responses(model, TOK, prompts, max_new_tokens=5, temperature=1e-3, num_return_sequences=3,
                            generator=torch.Generator().manual_seed(0))
    assert cold.prompts == [p for p in prompts for _ in range(3)]
    for i, p in enumerate(prompts):
        alone = sample_responses(model, TOK, [p], max_new_tokens=5, temperature=0).response_ids[0]
        assert cold.response_ids[3 * i: 3 * i + 3] == [alone] * 3
        for row in range(3 * i, 3 * i + 3):
            assert cold.tokens[row, : prompt_len(p)].tolist() == TOK.encode_chat(p)[0]
    assert len({tuple(cold.response_ids[3 * i]) for i in range(3)}) == 3  # each prompt has its own answer
    sampled = sample_responses(model, TOK, ["add 1+2"], max_new_tokens=8, num_return_sequences=4,
                               generator=torch.Generator().manual_seed(0))
    assert len(sampled) == 4 and len({tuple(x) for x in sampled.response_ids}) > 1  # independent samples


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_sample_responses_rejects_a_non_positive_max_new_tokens(bad):
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        sample_responses(chat_gpt(), TOK, ["add 1+2"], max_new_tokens=bad)


def test_sample_responses_rejects_responses_beyond_the_context():
    model = chat_gpt()
    fits = BLOCK + 1 - prompt_len("add 1+2")  # 23: the last token is scored, never fed
    r = sample_responses(model, TOK, ["add 1+2"], max_new_tokens=fits, generator=torch.Generator().manual_seed(0))
    assert r.tokens.size(1) <= BLOCK + 1
    with pytest.raises(ValueError, match="context"):
        sample_responses(model, TOK, ["add 1+2"], max_new_tokens=fits + 1)


def test_token_logprobs_equal_log_softmax_gathered_by_hand():
    model = chat_gpt()
    r = pack(TOK, ["add 1+2", "sort cab"], [ids("3"), ids("abc")])
    got, hidden = token_logprobs(model, r.tokens, return_hidden=True)
    B, L = r.tokens.shape
    assert got.shape == (B, L - 1) and hidden.shape == (B, L - 1, 32)
    with torch.no_grad():
        logits = model(r.tokens[:, :-1]).logits.double()
    expected = torch.empty(B, L - 1, dtype=torch.float64)
    for b in range(B):
        for t in range(L - 1):
            expected[b, t] = torch.log_softmax(logits[b, t], -1)[r.tokens[b, t + 1]]
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


def test_sequence_logprobs_sum_or_average_the_response_tokens():
    """Each row scored alone, unpadded: the sum of its response tokens' log-probabilities; right padding
    changes nothing, and ``average`` divides by the response length."""
    model = chat_gpt()
    prompts, responses = ["add 1+2", "sort cab"], [ids("3"), ids("abc")]
    r = pack(TOK, prompts, responses)
    expected = []
    with torch.no_grad():
        for p, resp in zip(prompts, responses):
            row = torch.tensor([TOK.encode_chat(p)[0] + resp])
            logp = F.log_softmax(model(row[:, :-1]).logits.double(), -1)[0]  # (T - 1, V)
            n = prompt_len(p)
            expected.append(sum(logp[t - 1, row[0, t]] for t in range(n, n + len(resp))))
    expected = torch.stack(expected)
    with torch.no_grad():
        total = sequence_logprobs(model, r)
        mean = sequence_logprobs(model, r, average=True)
    torch.testing.assert_close(total.double(), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(mean.double(), expected / torch.tensor([2.0, 4.0], dtype=torch.float64),
                               rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


def test_reward_model_starts_at_zero_and_reads_the_last_real_token():
    rm = RewardModel(chat_gpt()).eval()
    r = pack(TOK, ["add 1+2", "sort cab"], [ids("3"), ids("abc")])  # row 0 is padded after its last token
    with torch.no_grad():
        assert torch.equal(rm.score(r), torch.zeros(2))
        torch.manual_seed(1)
        torch.nn.init.normal_(rm.head.weight)
        base = rm.score(r)
        last = r.last_index()[0].item()
        after = r.tokens.clone()
        after[0, last + 1] = TOK.encode("7")[0]  # a token after the last real one: invisible
        torch.testing.assert_close(rm(after, r.last_index()), base, rtol=0, atol=1e-6)
        before = r.tokens.clone()
        before[0, last - 1] = TOK.encode("4")[0]  # the response "3" becomes "4": seen
        changed = rm(before, r.last_index())
    assert abs(changed[0] - base[0]) > 1e-4
    torch.testing.assert_close(changed[1], base[1], rtol=0, atol=1e-6)  # the other row is untouched


def test_reward_model_trunk_is_a_copy_of_the_gpt():
    gpt = chat_gpt()
    rm = RewardModel(gpt)
    before = snapshot(rm)
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(1.0)
    assert_same_weights(rm, before)  # training the reward model never moves the policy, and vice versa


def test_policy_with_value_shapes_and_zero_start():
    gpt = chat_gpt()
    model = PolicyWithValue(gpt)
    r = pack(TOK, ["add 1+2", "sort cab"], [ids("3"), ids("abc")])
    with torch.no_grad():
        logprobs, values = model(r.tokens)
        B, L = r.tokens.shape
        assert logprobs.shape == values.shape == (B, L - 1)
        assert torch.equal(values, torch.zeros(B, L - 1))
        torch.testing.assert_close(logprobs, token_logprobs(gpt, r.tokens))
        torch.nn.init.normal_(model.value_head.weight)
        _, values = model(r.tokens)
        hidden = gpt(r.tokens[:, :-1]).last_hidden_state
        torch.testing.assert_close(values, model.value_head(hidden).squeeze(-1))  # read at every position
    assert model.policy is gpt  # trained in place


# --------------------------------------------------------------------------------------------------
# PPO and GRPO on a toy reward: the first response character should be a digit
# --------------------------------------------------------------------------------------------------


def first_is_digit(responses) -> torch.Tensor:
    return torch.tensor([float(bool(t) and t[0].isdigit()) for t in responses.texts])


def toy_prompts(n: int, generator: torch.Generator) -> list[str]:
    return [TOY_PROMPTS[i % len(TOY_PROMPTS)] for i in range(n)]


def digit_rate(model: GPT) -> float:
    """Share of 256 fresh samples (a fixed generator) whose first character is a digit."""
    r = sample_responses(model, TOK, list(TOY_PROMPTS) * 128, max_new_tokens=TOY_NEW_TOKENS,
                         generator=torch.Generator().manual_seed(1234))
    return first_is_digit(r).mean().item()


def make_trainer(method: str, policy: GPT, reference: GPT, reward_fn, seed: int = 0):
    if method == "ppo":
        config = PPOConfig(batch_size=32, minibatch_size=16, ppo_epochs=2, lr=3e-3, kl_coef=0.01,
                           max_new_tokens=TOY_NEW_TOKENS)
        return PPOTrainer(policy, reference, TOK, reward_fn, toy_prompts, config, seed=seed)
    config = GRPOConfig(prompts_per_step=2, group_size=16, minibatch_size=16, epochs=2, lr=3e-3, kl_coef=0.01,
                        max_new_tokens=TOY_NEW_TOKENS)
    return GRPOTrainer(policy, reference, TOK, reward_fn, toy_prompts, config, seed=seed)


def train_on_toy(method: str, sign: float, *, steps: int = 15, seed: int = 0):
    """``(digit rate before, per-step mean scores, digit rate after)`` for ``sign * first_is_digit``.
    Also checks that the reference model's weights never moved while the policy's did."""
    policy = chat_gpt(seed)
    reference = copy.deepcopy(policy)
    ref_before, policy_before = snapshot(reference), snapshot(policy)
    before = digit_rate(policy)
    trainer = make_trainer(method, policy, reference, lambda r: sign * first_is_digit(r), seed=seed)
    scores = [trainer.step()["score"] for _ in range(steps)]
    assert trainer.policy is policy
    after = digit_rate(policy)
    assert_same_weights(reference, ref_before)
    assert any(not torch.equal(v, policy_before[k]) for k, v in policy.state_dict().items())
    return before, scores, after


@pytest.mark.parametrize("method", ["ppo", "grpo"])
@pytest.mark.slow
def test_trainer_raises_a_toy_reward(method):
    """About 1 response in 5 starts with a digit at first (10 of 51 tokens); 15 steps make it most.
    (Seeds 0-19 all pass with margins of at least 0.5 and 0.7.)"""
    before, scores, after = train_on_toy(method, +1.0)
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.3, scores
    assert after > before + 0.4, (before, after)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
@pytest.mark.slow
def test_trainer_lowers_a_negated_toy_reward(method):
    """The same run with the reward's sign flipped drives the digit rate down: the sign is followed."""
    before, scores, after = train_on_toy(method, -1.0)
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3  # scores are negative: they rise towards 0
    assert after < before / 2, (before, after)


def test_fixed_kl_controller_never_moves():
    c = FixedKLController(0.05)
    for kl in (0.0, 1.0, 100.0):
        c.update(kl, 64)
    assert c.value == 0.05


@pytest.mark.parametrize(
    "kl, n, factor",
    [
        (4.4, 100, 1 + 0.1 * 100 / 1000),  # 10% over the target: e = 0.1
        (40.0, 100, 1 + 0.2 * 100 / 1000),  # far over: e clipped at +0.2
        (40.0, 500, 1 + 0.2 * 500 / 1000),  # the step grows with the rollouts since the last update
        (4.0, 100, 1.0),  # on target: unchanged
        (3.6, 100, 1 - 0.1 * 100 / 1000),  # 10% under: e = -0.1
        (0.0, 100, 1 - 0.2 * 100 / 1000),  # far under: e clipped at -0.2
    ],
)
def test_adaptive_kl_controller_steers_beta_towards_the_target(kl, n, factor):
    """Ziegler et al. (2019, §2.2), as their code (openai/lm-human-preferences) and trl compute it:
    beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""
    c = AdaptiveKLController(0.1, target=4.0, horizon=1000)
    c.update(kl, n)
    assert c.value == pytest.approx(0.1 * factor, rel=1e-12)


def test_ppo_feeds_the_adaptive_controller_its_batch_kl():
    config = PPOConfig(batch_size=8, minibatch_size=4, ppo_epochs=1, lr=3e-3, kl_coef=0.1, target_kl=1.0,
                       horizon=100, max_new_tokens=TOY_NEW_TOKENS)
    policy = chat_gpt()
    trainer = PPOTrainer(policy, copy.deepcopy(policy), TOK, first_is_digit, toy_prompts, config)
    assert isinstance(trainer.kl_ctl, AdaptiveKLController)
    stats = trainer.step()  # the rollouts come from the reference itself: KL 0, far under the target
    assert stats["kl_coef"] == 0.1 and abs(stats["kl"]) < 1e-5
    assert trainer.kl_ctl.value == pytest.approx(0.1 * (1 - 0.2 * 8 / 100))
    assert isinstance(PPOTrainer(policy, copy.deepcopy(policy), TOK, first_is_digit, toy_prompts,
                                 PPOConfig(batch_size=8, minibatch_size=4)).kl_ctl, FixedKLController)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(batch_size=10, minibatch_size=4), "multiple of minibatch_size"),
        (dict(minibatch_size=0), "minibatch_size must be a positive int"),
        (dict(kl_coef=-0.1), "kl_coef must be a finite number >= 0"),
        (dict(vf_coef=-1.0), "vf_coef must be a finite number >= 0"),
        (dict(ptx_coef=float("nan")), "ptx_coef must be a finite number >= 0"),
        (dict(lr=0.0), "lr must be a finite number > 0"),
        (dict(target_kl=-1.0), "target_kl must be None or a finite number > 0"),
        (dict(gamma=1.5), "gamma and lam must lie in"),
    ],
)
def test_ppo_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(group_size=1), "group_size must be an int >= 2"),
        (dict(prompts_per_step=3, group_size=3, minibatch_size=4), "multiple of minibatch_size"),
        (dict(kl_coef=-0.01), "kl_coef must be a finite number >= 0"),
        (dict(epochs=0), "epochs must be a positive int"),
        (dict(clip_eps=0.0), "clip_eps must be a finite number > 0"),
    ],
)
def test_grpo_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**overrides)


def test_ppo_ptx_needs_a_batch_source_and_reports_its_loss():
    config = PPOConfig(batch_size=8, minibatch_size=4, ppo_epochs=1, ptx_coef=0.5, max_new_tokens=TOY_NEW_TOKENS)
    policy = chat_gpt()
    with pytest.raises(ValueError, match="ptx_batch_fn"):
        PPOTrainer(policy, copy.deepcopy(policy), TOK, first_is_digit, toy_prompts, config)
    seqs = torch.randint(0, 29, (16, 17), generator=torch.Generator().manual_seed(0))  # bracket-language ids
    calls = []

    def ptx_batch_fn(generator):
        calls.append(1)
        return sequence_lm_batch(seqs, 4, generator)

    trainer = PPOTrainer(policy, copy.deepcopy(policy), TOK, first_is_digit, toy_prompts, config,
                         ptx_batch_fn=ptx_batch_fn)
    stats = trainer.step()
    assert len(calls) == 2  # one pretraining batch per minibatch
    assert math.isfinite(stats["ptx_loss"]) and stats["ptx_loss"] > 0
    plain = PPOTrainer(policy, copy.deepcopy(policy), TOK, first_is_digit, toy_prompts,
                       PPOConfig(batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=TOY_NEW_TOKENS))
    assert "ptx_loss" not in plain.step()


# --------------------------------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------------------------------


def addition_pairs() -> PreferencePairs:
    """Chosen: the right sum; rejected: the sum plus one."""
    sums = [(a, b) for a in range(1, 5) for b in range(1, 5)]  # 16 prompts, every sum below 9
    prompts = [f"add {a}+{b}" for a, b in sums]
    chosen = pack(TOK, prompts, [ids(str(a + b)) for a, b in sums])
    rejected = pack(TOK, prompts, [ids(str(a + b + 1)) for a, b in sums])
    n = len(prompts)
    return PreferencePairs(chosen, rejected, torch.ones(n), torch.ones(n), torch.zeros(n))


@torch.no_grad()
def dpo_margin(policy: GPT, reference: GPT, pairs: PreferencePairs) -> float:
    """Mean of (log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected): DPO's implicit reward gap / beta."""
    chosen = sequence_logprobs(policy, pairs.chosen) - sequence_logprobs(reference, pairs.chosen)
    rejected = sequence_logprobs(policy, pairs.rejected) - sequence_logprobs(reference, pairs.rejected)
    return (chosen - rejected).mean().item()


def test_dpo_widens_the_chosen_minus_rejected_margin_and_leaves_the_reference():
    pairs = addition_pairs()
    reference = chat_gpt()
    policy = copy.deepcopy(reference)
    ref_before = snapshot(reference)
    assert dpo_margin(policy, reference, pairs) == 0.0
    history = train_dpo(policy, reference, pairs, DPOConfig(steps=30, batch_size=8, lr=3e-3, beta=0.1))
    assert_same_weights(reference, ref_before)
    assert dpo_margin(policy, reference, pairs) > 1.0
    losses = history["train_loss"]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference: -log sigmoid(0)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.03


def test_dpo_with_averaged_logprobs_takes_another_path():
    pairs = addition_pairs()
    reference = chat_gpt()
    summed, averaged = copy.deepcopy(reference), copy.deepcopy(reference)
    h_sum = train_dpo(summed, reference, pairs, DPOConfig(steps=10, batch_size=8, lr=1e-3))
    h_avg = train_dpo(averaged, reference, pairs, DPOConfig(steps=10, batch_size=8, lr=1e-3, average=True))
    assert all(math.isfinite(x) for x in h_avg["train_loss"])
    assert h_sum["train_loss"][1:] != h_avg["train_loss"][1:]
    assert any(not torch.equal(a, b) for a, b in zip(summed.parameters(), averaged.parameters()))
    assert dpo_margin(averaged, reference, pairs) > 0  # it still learns, only otherwise


def test_train_dpo_rejects_bad_arguments():
    pairs, reference = addition_pairs(), chat_gpt()
    with pytest.raises(ValueError, match="steps must be a positive int"):
        DPOConfig(steps=0)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        DPOConfig(steps=1, beta=0.0)
    with pytest.raises(TypeError, match="config must be a DPOConfig"):
        train_dpo(copy.deepcopy(reference), reference, pairs, {"steps": 1})


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------

TINY_SETTINGS = RLHFConfig(
    policy=PolicyConfig(n_layer=1, n_head=2, n_embd=32, pretrain_seqs=500, pretrain_steps=20, sft_pairs=200,
                        sft_steps=20, batch_size=8),
    pairs=200, reward=RewardConfig(steps=10), eval_prompts=32,
    ppo=PPOConfig(batch_size=8, minibatch_size=4, ppo_epochs=1),
    grpo=GRPOConfig(prompts_per_step=2, group_size=4, minibatch_size=4, epochs=1),
)


@pytest.fixture(scope="module")
def sft():
    """The tiny SFT policy, built once (on one thread: this runs before the function-scoped fixture)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = build_sft_policy(TINY_SETTINGS.policy, seed=0)
    finally:
        torch.set_num_threads(before)
    return policy


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.slow
def test_run_rlhf_returns_the_summary_the_command_prints(method, sft):
    sft_before = snapshot(sft.model)
    summary, policy, tok = run_rlhf(method, steps=2, settings=TINY_SETTINGS, sft=sft)
    assert_same_weights(sft.model, sft_before)  # the reused SFT model stays as it was
    assert isinstance(policy, GPT) and isinstance(tok, ChatTokenizer)
    assert policy.config.vocab_size == tok.vocab_size
    assert summary["method"] == method and summary["steps"] == 2
    for key in ("gold_reward_before", "gold_reward_after"):
        assert 0.0 <= summary[key] <= 1.0
    if method in ("dpo", "grpo"):
        assert summary["proxy_reward_after"] is None
    else:
        assert isinstance(summary["proxy_reward_after"], float) and math.isfinite(summary["proxy_reward_after"])
    assert isinstance(summary["kl"], float) and summary["kl"] >= 0
    assert isinstance(summary["wall_s"], float) and summary["wall_s"] >= 0
    if method == "best-of-n":
        assert summary["kl"] == round(best_of_n_kl(2), 4)
        assert_same_weights(policy, sft_before)  # best-of-n wraps the SFT model, it trains nothing
    assert policy is not sft.model


@pytest.mark.parametrize(
    "method, steps, message",
    [("nope", 2, "method must be one of"), ("ppo", 0, "steps must be a positive int"),
     ("dpo", 1.5, "steps must be a positive int"), ("grpo", True, "steps must be a positive int")],
)
def test_run_rlhf_rejects_a_bad_method_or_steps(method, steps, message):
    with pytest.raises(ValueError, match=message):
        run_rlhf(method, steps=steps, settings=TINY_SETTINGS)


def test_check_fields_names_the_first_bad_field():
    from types import SimpleNamespace

    from aigc_book.rlhf.common import check_fields

    good = SimpleNamespace(n=3, lr=0.1, coef=0.0)
    check_fields(good, positive_ints=("n",), positive=("lr",), nonnegative=("coef",))
    for bad, match in ((dict(n=0), "n must be a positive int"), (dict(n=True), "n must be a positive int"),
                       (dict(lr=0.0), "lr must be a finite number > 0"), (dict(lr=float("nan")), "lr must be"),
                       (dict(coef=-1e-9), "coef must be a finite number >= 0"), (dict(coef=True), "coef must be")):
        with pytest.raises(ValueError, match=match):
            check_fields(SimpleNamespace(**{**vars(good), **bad}), positive_ints=("n",), positive=("lr",),
                         nonnegative=("coef",))


def test_optimizer_step_refuses_a_non_finite_loss_before_changing_anything():
    from aigc_book.rlhf.common import optimizer_step

    layer = torch.nn.Linear(2, 1)
    before = layer.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="step 3: the loss is nan"):
        optimizer_step(layer(torch.ones(1, 2)).sum() * float("nan"), layer, opt, 1.0, "step 3")
    assert torch.equal(layer.weight, before)
    optimizer_step(layer(torch.ones(1, 2)).sum(), layer, opt, 1.0, "step 4")
    assert not torch.equal(layer.weight, before)


def test_reward_model_trains_its_trunk_even_when_copied_from_a_frozen_policy():
    gpt = chat_gpt().requires_grad_(False)
    rm = RewardModel(gpt)
    assert all(p.requires_grad for p in rm.parameters())
    assert rm.config is not gpt.config and rm.config == gpt.config


def test_the_feedback_stage_draws_only_its_kinds_of_instruction(sft):
    from aigc_book.rlhf.pipeline import make_preferences

    assert RLHFConfig().instruction_config.kinds == ("sort", "count")
    settings = dataclasses.replace(TINY_SETTINGS, kinds=("count",))
    prefs = make_preferences(sft, settings, seed=0)
    prompts = prefs.train.chosen.prompts + prefs.held_out.chosen.prompts
    assert prompts and all(p.startswith("count ") for p in prompts)
    prompt_fn = prompt_sampler(settings.instruction_config)
    assert all(p.startswith("count ") for p in prompt_fn(20, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="kinds"):
        dataclasses.replace(TINY_SETTINGS, kinds=("poetry",))
