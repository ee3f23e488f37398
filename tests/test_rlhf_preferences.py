"""The RLHF setting: gold reward, simulated labelers, preference pairs, and reward-model training."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.rlhf.heads import RewardModel
from aigc_book.rlhf.preferences import (
    Labelers,
    PreferencePairs,
    bayes_accuracy,
    collect_preferences,
    gold_reward,
    gold_rewards,
)
from aigc_book.rlhf.reward_training import (
    RewardConfig,
    pair_rewards,
    preference_accuracy,
    reward_scores,
    train_reward_model,
    true_preference_accuracy,
)
from aigc_book.rlhf.rollouts import pack, sample_responses
from aigc_book.tasks.instructions import CHARS, Instruction, InstructionConfig, sample_instructions
from aigc_book.text.chat_tokenizer import ChatTokenizer

TOK = ChatTokenizer(CHARS)
pytestmark = pytest.mark.usefixtures("one_cpu_thread")




def ids(text: str) -> list[int]:
    """A closed response: its characters, then ``<|end|>``."""
    return TOK.encode(text, allow_special=False) + [TOK.end_id]


@pytest.fixture
def chat_gpt() -> GPT:
    """A tiny random GPT over the chat tokenizer's vocabulary (1 layer, 2 heads, 32 wide)."""
    torch.manual_seed(0)
    return GPT(TransformerConfig(vocab_size=TOK.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=32)).eval()


def make_pairs(prompts, chosen, rejected, p_chosen=None) -> PreferencePairs:
    c, r = pack(TOK, prompts, [ids(t) for t in chosen]), pack(TOK, prompts, [ids(t) for t in rejected])
    p = torch.ones(len(prompts)) if p_chosen is None else torch.tensor(p_chosen, dtype=torch.float32)
    return PreferencePairs(c, r, p, gold_rewards(c), gold_rewards(r))


# ---- gold reward -------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, response, expected", [
    ("reverse abcd", "dcba", 1.0),
    ("reverse abcd", " dcba ", 1.0),  # surrounding whitespace is ignored
    ("reverse abcd", "dcbx", 0.5 * 0.75),  # one substitution in four characters, x not in the argument
    ("reverse abcd", "dcab", 0.5 + 0.5 * 0.5),  # well formed (a permutation), two substitutions
    ("reverse abcd", "dcbaa", 0.5 * 0.8),  # one insertion: 1 - 1/5, and too long
    ("add 7+12", "", 0.0),  # two deletions in two characters
    ("add 7+12", "18", 0.5 + 0.5 * 0.5),  # a two-digit number: well formed
    ("count a in abab", "3", 0.5),  # well formed, wrong
    ("close ([", "])", 1.0),
    ("close ([", ")]", 0.5),  # closers in the wrong order: well formed, no character in place
])
def test_gold_reward_is_half_form_half_graded_content(prompt, response, expected):
    assert gold_reward(prompt, response) == pytest.approx(expected)


def test_gold_rewards_scores_each_row_text_against_its_prompt():
    inst = Instruction("reverse", "reverse ab", "ba")
    batch = pack(TOK, [inst, "sort ba", "add 1+2"], [ids("ba"), ids("ba"), ids("3")])
    out = gold_rewards(batch)
    assert out.shape == (3,) and out.dtype == torch.get_default_dtype()
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5, 1.0]))  # "ba" for "sort ba" is well formed


def test_gold_reward_rejects_what_is_not_text():
    with pytest.raises(TypeError, match="response_text must be a str"):
        gold_reward("reverse ab", ["b", "a"])
    with pytest.raises(TypeError, match="prompt must be"):
        gold_reward(3, "a")
    with pytest.raises(TypeError, match="Responses"):
        gold_rewards(["ba"])


# ---- labelers ----------------------------------------------------------------------------------


def test_labelers_probability_by_hand():
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    p = Labelers(temperature=0.1).prob_prefers_first(torch.tensor([0.8, 0.5]), torch.tensor([0.6, 0.5]),
                                                     torch.tensor([3, 3]), torch.tensor([3, 9]))
    torch.testing.assert_close(p, torch.tensor([sig(2.0), 0.5]))  # length is ignored without a bias
    biased = Labelers(temperature=0.2, length_bias=0.5)
    # (0.5 - 0.7) / 0.2 + 0.5 * (6 - 2) = -1 + 2 = 1
    assert float(biased.prob_prefers_first(0.5, 0.7, 6, 2)) == pytest.approx(sig(1.0), rel=1e-6)
    # Swapping the two answers gives the complementary probability.
    assert float(biased.prob_prefers_first(0.7, 0.5, 2, 6)) == pytest.approx(1 - sig(1.0), rel=1e-6)


def test_label_frequencies_match_the_probabilities():
    lab = Labelers(temperature=0.25, length_bias=0.1)
    n = 20_000
    gold_a = torch.tensor([0.9, 0.5, 0.2]).repeat_interleave(n)
    gold_b = torch.tensor([0.6, 0.5, 0.4]).repeat_interleave(n)
    len_a = torch.tensor([2, 5, 1]).repeat_interleave(n)
    len_b = torch.tensor([2, 1, 4]).repeat_interleave(n)
    p = lab.prob_prefers_first(gold_a, gold_b, len_a, len_b).view(3, n)[:, 0]
    labels = lab.label(gold_a, gold_b, len_a, len_b, generator=torch.Generator().manual_seed(0))
    freq = labels.view(3, n).float().mean(1)
    sd = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() < 4 * sd).all(), (freq, p)  # 4 standard errors
    again = lab.label(gold_a, gold_b, len_a, len_b, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels, again)  # one seed, one set of labels
    # Guessing the likelier side on every pair reaches the Bayes accuracy on the drawn labels.
    guess_right = torch.where(p.repeat_interleave(n) > 0.5, labels, ~labels).float().mean()
    assert float(guess_right) == pytest.approx(bayes_accuracy(p), abs=0.01)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-1.0), "temperature must be > 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(temperature=float("inf")), "temperature must be a finite number"),
    (dict(temperature=True), "temperature must be a finite number"),
    (dict(length_bias=float("nan")), "length_bias must be a finite number"),
    (dict(length_bias="long"), "length_bias must be a finite number"),
])
def test_labelers_reject_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Labelers(**kwargs)


def test_labelers_reject_bad_pairs():
    lab = Labelers()
    with pytest.raises(ValueError, match="one shape"):
        lab.prob_prefers_first(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        lab.prob_prefers_first(0.5, 0.5, -1, 2)
    with pytest.raises(ValueError, match="gold_a must be finite"):
        lab.prob_prefers_first(float("nan"), 0.5, 1, 2)
    with pytest.raises(TypeError, match="torch.Generator"):
        lab.label(0.5, 0.4, 1, 1, generator=None)


def test_bayes_accuracy_by_hand():
    assert bayes_accuracy(torch.tensor([0.9, 0.2, 0.5])) == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    assert bayes_accuracy([1.0, 0.0]) == 1.0  # noiseless labels can be predicted perfectly
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        bayes_accuracy([1.2])
    with pytest.raises(ValueError, match="empty"):
        bayes_accuracy(torch.tensor([]))


# ---- preference pairs --------------------------------------------------------------------------


def test_pairs_select_and_split_keep_rows_together():
    pairs = make_pairs(["reverse ab", "sort ba", "add 1+2"], ["ba", "ab", "3"], ["ab", "b", "4"], [0.9, 0.6, 0.4])
    assert len(pairs) == 3
    sub = pairs.select([2, 0])
    assert sub.chosen.texts == ["3", "ba"] and sub.rejected.texts == ["4", "ab"]
    torch.testing.assert_close(sub.p_chosen, torch.tensor([0.4, 0.9]))
    torch.testing.assert_close(sub.gold_rejected, torch.tensor([0.5, 0.5]))  # wrong, but well formed
    first, rest = pairs.split(1)
    assert first.chosen.prompts == ["reverse ab"] and rest.chosen.prompts == ["sort ba", "add 1+2"]
    with pytest.raises(ValueError, match="n_first"):
        pairs.split(3)  # the second part would be empty
    with pytest.raises(IndexError, match="out of range"):
        pairs.select([5])


def test_pairs_reject_inconsistent_parts():
    c = pack(TOK, ["reverse ab", "sort ba"], [ids("ba"), ids("ab")])
    r = pack(TOK, ["reverse ab", "add 1+2"], [ids("ab"), ids("4")])
    with pytest.raises(ValueError, match="same prompts"):
        PreferencePairs(c, r, torch.ones(2), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"p_chosen must be a \(2,\) tensor"):
        PreferencePairs(c, c, torch.ones(3), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="rows"):
        PreferencePairs(c, c.select([0]), torch.ones(2), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="at least one token"):  # pack refuses an empty response up front
        pack(TOK, ["reverse ab", "sort ba"], [[], ids("ab")])


# ---- collecting preferences from a policy ------------------------------------------------------


@pytest.fixture
def two_letter_gpt(chat_gpt) -> GPT:
    """A GPT whose every next token is 'a', 'b' or <|end|> with probabilities 0.4, 0.4, 0.2: many sampled
    pairs come out identical, and lengths vary."""
    with torch.no_grad():
        chat_gpt.transformer.ln_f.weight.zero_()
        chat_gpt.transformer.ln_f.bias.zero_()
        chat_gpt.transformer.ln_f.bias[0] = 1.0  # every final hidden state is the unit vector e0
        head = nn.Linear(32, TOK.vocab_size, bias=False)  # an untied head: the embeddings stay as they were
        head.weight.zero_()
        head.weight[TOK.encode("a")[0], 0] = head.weight[TOK.encode("b")[0], 0] = 20.0
        head.weight[TOK.end_id, 0] = 20.0 + math.log(0.5)
    chat_gpt.lm_head = head
    return chat_gpt


PROMPTS = [i.prompt for i in sample_instructions(40, seed=0, config=InstructionConfig(
    kinds=("reverse", "sort"), letters="ab", max_len=3))]


def test_collect_preferences_drops_identical_pairs_and_orders_by_the_labels(two_letter_gpt):
    lab = Labelers(temperature=0.2, length_bias=0.3)
    pairs = collect_preferences(two_letter_gpt, TOK, PROMPTS, lab, max_new_tokens=2,
                                generator=torch.Generator().manual_seed(0))
    # The same draws by hand: two samples per prompt, then one uniform per kept pair.
    g = torch.Generator().manual_seed(0)
    both = sample_responses(two_letter_gpt, TOK, PROMPTS, max_new_tokens=2, generator=g, num_return_sequences=2)
    keep = [i for i in range(len(PROMPTS)) if both.texts[2 * i] != both.texts[2 * i + 1]]
    assert 0 < len(keep) < len(PROMPTS)  # the policy does repeat itself, so something was dropped
    assert len(pairs) == len(keep)
    a, b = both.select([2 * i for i in keep]), both.select([2 * i + 1 for i in keep])
    len_a, len_b = torch.tensor([len(t) for t in a.texts]), torch.tensor([len(t) for t in b.texts])
    a_wins = lab.label(gold_rewards(a), gold_rewards(b), len_a, len_b, generator=g)
    for j, (i, w) in enumerate(zip(keep, a_wins.tolist())):
        winner, loser = (2 * i, 2 * i + 1) if w else (2 * i + 1, 2 * i)
        assert pairs.chosen.prompts[j] == pairs.rejected.prompts[j] == PROMPTS[i]
        assert (pairs.chosen.texts[j], pairs.rejected.texts[j]) == (both.texts[winner], both.texts[loser])
        assert torch.equal(pairs.chosen.tokens[j], both.tokens[winner])
        assert torch.equal(pairs.rejected.tokens[j], both.tokens[loser])
    assert 0 < sum(a_wins.tolist()) < len(keep)  # both orders occur
    # p_chosen is the labelers' probability of the choice that was made; gold is each side's.
    lens = [torch.tensor([len(t) for t in side.texts]) for side in (pairs.chosen, pairs.rejected)]
    torch.testing.assert_close(pairs.p_chosen, lab.prob_prefers_first(pairs.gold_chosen, pairs.gold_rejected, *lens))
    torch.testing.assert_close(pairs.gold_chosen, gold_rewards(pairs.chosen))
    torch.testing.assert_close(pairs.gold_rejected, gold_rewards(pairs.rejected))


def test_a_nearly_noiseless_labeler_prefers_the_better_answer(two_letter_gpt):
    pairs = collect_preferences(two_letter_gpt, TOK, PROMPTS, Labelers(temperature=1e-3), max_new_tokens=2,
                                generator=torch.Generator().manual_seed(1))
    differ = pairs.gold_chosen != pairs.gold_rejected
    assert differ.sum() >= 5
    assert (pairs.gold_chosen[differ] > pairs.gold_rejected[differ]).all()
    # A strong length bias overrides the gold reward: the longer answer wins.
    pairs = collect_preferences(two_letter_gpt, TOK, PROMPTS, Labelers(temperature=1.0, length_bias=30.0),
                                max_new_tokens=2, generator=torch.Generator().manual_seed(1))
    lc = torch.tensor([len(t) for t in pairs.chosen.texts])
    lr = torch.tensor([len(t) for t in pairs.rejected.texts])
    assert (lc != lr).sum() >= 5 and (lc[lc != lr] > lr[lc != lr]).all()


def test_collect_preferences_rejects_bad_arguments(chat_gpt):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match="labelers must be a Labelers"):
        collect_preferences(chat_gpt, TOK, PROMPTS, 0.1, max_new_tokens=2, generator=g)
    with pytest.raises(TypeError, match="torch.Generator"):
        collect_preferences(chat_gpt, TOK, PROMPTS, Labelers(), max_new_tokens=2, generator=0)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        collect_preferences(chat_gpt, TOK, PROMPTS, Labelers(), max_new_tokens=0, generator=g)
    with pytest.raises(ValueError, match="no prompts"):
        collect_preferences(chat_gpt, TOK, [], Labelers(), max_new_tokens=2, generator=g)


# ---- reward-model accuracy and training --------------------------------------------------------


class TableReward:
    """A stub reward: a fixed number per response text."""

    def __init__(self, table: dict[str, float]):
        self.table = table

    def __call__(self, responses) -> torch.Tensor:
        return torch.tensor([self.table[t] for t in responses.texts])


def test_preference_accuracies_by_hand():
    pairs = make_pairs(["reverse ab"] * 4, ["ba", "ab", "a", "b"], ["bb", "aa", "aaa", "bbb"], [0.9, 0.3, 0.8, 0.5])
    stub = TableReward({"ba": 2.0, "bb": 1.0, "ab": 0.0, "aa": 1.0, "a": 5.0, "aaa": 5.0, "b": 1.0, "bbb": 0.0})
    r_c, r_r = pair_rewards(stub, pairs)
    torch.testing.assert_close(r_c, torch.tensor([2.0, 0.0, 5.0, 1.0]))
    # Ranks the chosen one first in pairs 0 and 3, the rejected one in pair 1, ties in pair 2.
    assert preference_accuracy(stub, pairs) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    # Against the truth: pair 1's chosen answer was the unlikely side (0.3), so ranking it second is
    # right; pair 3 has no true direction (0.5) and counts half.
    assert true_preference_accuracy(stub, pairs) == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)


def test_a_fresh_reward_model_scores_chance_and_scores_in_batches_as_whole(chat_gpt):
    pairs = make_pairs(["reverse ab", "sort ba", "add 1+2"], ["ba", "ab", "3"], ["ab", "b", "4"])
    rm = RewardModel(chat_gpt)
    assert preference_accuracy(rm, pairs) == 0.5  # the zero head gives every response 0: all ties
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(0))
    whole = rm.score(pairs.chosen).detach()
    torch.testing.assert_close(reward_scores(rm, pairs.chosen, batch_size=2), whole)
    with pytest.raises(TypeError, match="reward must be"):
        reward_scores(3, pairs.chosen)
    with pytest.raises(ValueError, match="batch_size"):
        reward_scores(rm, pairs.chosen, batch_size=0)
    with pytest.raises(ValueError, match="expected"):
        reward_scores(lambda r: torch.zeros(2, 2), pairs.chosen)


def xyz_pairs(n: int, seed: int) -> PreferencePairs:
    """Chosen: the correct answer. Rejected: the same with one character replaced by x, y or z, which
    the prompts never use: an obvious rule a reward model can find."""
    rng = random.Random(seed)
    inst = sample_instructions(n, seed=seed, config=InstructionConfig(kinds=("reverse", "sort"), max_len=5))
    good = [i.answer for i in inst]
    bad = []
    for a in good:
        j = rng.randrange(len(a))
        bad.append(a[:j] + rng.choice("xyz") + a[j + 1:])
    return make_pairs(inst, good, bad)


@pytest.mark.slow
def test_train_reward_model_learns_a_rule_that_holds_out(chat_gpt):
    train, held_out = xyz_pairs(256, seed=0), xyz_pairs(128, seed=1)
    rm = RewardModel(chat_gpt)
    assert preference_accuracy(rm, held_out) == 0.5
    history = train_reward_model(rm, train, RewardConfig(steps=60, batch_size=32, lr=3e-3), seed=0,
                                 eval_pairs=held_out)
    assert len(history["train_loss"]) == 60
    assert history["train_loss"][0] == pytest.approx(math.log(2), abs=1e-6)  # zero head: every pair a coin flip
    assert sum(history["train_loss"][-10:]) / 10 < 0.2
    assert not rm.training
    assert preference_accuracy(rm, held_out) >= 0.95
    assert history["evals"][-1]["val_accuracy"] == pytest.approx(preference_accuracy(rm, held_out))


def test_train_reward_model_is_reproducible_from_its_seed(chat_gpt):
    train = xyz_pairs(64, seed=0)
    runs = [train_reward_model(RewardModel(chat_gpt), train, RewardConfig(steps=3, batch_size=8, lr=3e-3), seed=s)[
            "train_loss"]
            for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0][1:] != runs[2][1:]  # another seed draws other batches


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(eval_interval=-1), "eval_interval must be an int >= 0"),
    (dict(lr=0.0), "lr must be a finite number > 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
])
def test_reward_config_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(seed=1.5), ValueError, "seed must be an int"),
    (dict(pairs="pairs"), TypeError, "pairs must be PreferencePairs"),
    (dict(reward_model="rm"), TypeError, "reward_model must be an nn.Module"),
    (dict(config={"steps": 2}), TypeError, "config must be a RewardConfig"),
])
def test_train_reward_model_rejects_bad_arguments(chat_gpt, kwargs, error, match):
    args = dict(reward_model=RewardModel(chat_gpt), pairs=make_pairs(["add 1+2"], ["3"], ["4"]),
                config=RewardConfig(steps=2, batch_size=2, lr=1e-3), seed=0)
    with pytest.raises(error, match=match):
        train_reward_model(**{**args, **kwargs})
