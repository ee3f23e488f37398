"""Chapter 5 in one call: SFT, preferences, a reward model, one method, measured against the gold reward.

Introduced in chapter 5, section "All the methods on one chart". :func:`run_rlhf` is what
``python -m aigc_book rlhf`` runs and what the chapter calls for each method:

1. rebuild the supervised policy (:func:`~aigc_book.rlhf.sft_policy.build_sft_policy`);
2. sample pairs of its responses and have the simulated labelers rank them
   (:func:`~aigc_book.rlhf.preferences.collect_preferences`);
3. train a reward model on the pairs (not needed by GRPO, which is given the checker);
4. run the method: ``ppo``, ``dpo``, ``grpo`` or ``best-of-n``;
5. measure the policy before and after on held-out prompts: the gold reward (which no method sees),
   the reward model's score, and the KL to the SFT model, in nats per response.

Each stage is also a function of its own, so the chapter can show and reuse them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from aigc_book.checks import is_int
from aigc_book.models.gpt import GPT
from aigc_book.rlhf.best_of_n import best_of_n, best_of_n_kl
from aigc_book.rlhf.dpo import DPOConfig, train_dpo
from aigc_book.rlhf.grpo import GRPOConfig, GRPOTrainer
from aigc_book.rlhf.heads import RewardModel
from aigc_book.rlhf.losses import kl_estimates
from aigc_book.rlhf.ppo import PPOConfig, PPOTrainer
from aigc_book.rlhf.preferences import Labelers, PreferencePairs, collect_preferences, gold_rewards
from aigc_book.rlhf.reward_training import RewardConfig, preference_accuracy, reward_scores, train_reward_model
from aigc_book.rlhf.rollouts import Responses, sample_responses, token_logprobs
from aigc_book.rlhf.sft_policy import PolicyConfig, SFTPolicy, build_sft_policy
from aigc_book.tasks import instructions
from aigc_book.text.chat_tokenizer import ChatTokenizer
from aigc_book.training.objectives import sequence_lm_batch

__all__ = ["METHODS", "RLHFConfig", "prompt_sampler", "checker_reward", "evaluate", "Preferences",
           "make_preferences", "fit_reward_model", "run_steps", "run_rlhf"]

METHODS = ("ppo", "dpo", "grpo", "best-of-n")


@dataclass(frozen=True)
class RLHFConfig:
    """Everything :func:`run_rlhf` needs besides the method, its steps and the seed.

    Each method's own hyper-parameters are its config: :attr:`policy` builds the SFT model,
    :attr:`reward` trains the reward model, and :attr:`ppo`, :attr:`grpo`, :attr:`dpo` tune the policy
    (:func:`run_rlhf` sets DPO's ``steps``). ``ptx_batch_size`` is PPO-ptx's pretraining sequences per step.
    """

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # The kinds of instruction of the feedback stage: those whose answers a small reward model can judge
    # best (a sorted answer has its letters in order; a count is one digit), so that a learned reward
    # can help at all. Chapter 5's exercises ask what happens with every kind.
    kinds: tuple[str, ...] = ("sort", "count")
    pairs: int = 12_000  # preference prompts (pairs with two identical answers are dropped)
    labeler_temperature: float = 0.1
    length_bias: float = 0.3  # the labelers' bias per character of response length
    reward: RewardConfig = field(default_factory=RewardConfig)
    max_new_tokens: int = 10
    eval_prompts: int = 512
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(lr=1e-4, kl_coef=0.3))
    grpo: GRPOConfig = field(default_factory=lambda: GRPOConfig(lr=1e-4, kl_coef=0.01))
    dpo: DPOConfig = field(default_factory=DPOConfig)
    ptx_batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        self.instruction_config  # noqa: B018 -- builds the config, whose checks name a bad kind

    @property
    def instruction_config(self) -> instructions.InstructionConfig:
        """The instruction family of the feedback stage (:attr:`kinds`, chapter 4's other settings)."""
        return instructions.InstructionConfig(kinds=self.kinds)


def prompt_sampler(config: instructions.InstructionConfig | None = None) -> Callable:
    """``prompt_fn(n, generator)``: n fresh instructions' prompts from the family, drawn with the generator."""
    def prompt_fn(n: int, generator: torch.Generator) -> list[str]:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return [i.prompt for i in instructions.sample_instructions(n, seed=seed, config=config)]
    return prompt_fn


def checker_reward(responses: Responses) -> torch.Tensor:
    """GRPO's verifiable reward: 1 for a response the checker accepts, else 0."""
    return torch.tensor([float(instructions.check(p, t)) for p, t in zip(responses.prompts, responses.texts)])


@torch.no_grad()
def evaluate(policy: GPT, reference: GPT, tokenizer: ChatTokenizer, prompts, *, max_new_tokens: int,
             reward_model: RewardModel | None = None, seed: int = 0, responses: Responses | None = None) -> dict:
    """Sample one response per prompt (temperature 1) and measure: mean ``gold`` reward, mean
    ``proxy`` (reward-model) score, ``kl`` = mean of the summed k1 estimate of KL(π‖π_ref) in nats per
    response, ``accuracy`` (share the checker accepts) and mean response ``length`` in characters.
    Pass ``responses`` to measure given samples instead (best-of-n)."""
    if responses is None:
        responses = sample_responses(policy, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     generator=torch.Generator(device=_device(policy)).manual_seed(seed))
    mask = responses.action_mask
    k1, _ = kl_estimates(token_logprobs(policy, responses.tokens), token_logprobs(reference, responses.tokens))
    out = {"gold": gold_rewards(responses).mean().item(), "kl": (k1 * mask).sum(1).mean().item(),
           "accuracy": checker_reward(responses).mean().item(),
           "length": sum(len(t) for t in responses.texts) / len(responses)}
    if reward_model is not None:
        out["proxy"] = reward_scores(reward_model, responses).mean().item()
    return out


@dataclass
class Preferences:
    """The labelled pairs, split into training and held-out comparisons."""

    train: PreferencePairs
    held_out: PreferencePairs


def make_preferences(sft: SFTPolicy, settings: RLHFConfig, *, seed: int) -> Preferences:
    """Pairs of the SFT model's responses to fresh prompts, ranked by the simulated labelers; 20% held out."""
    labelers = Labelers(settings.labeler_temperature, settings.length_bias)
    prompts = instructions.sample_instructions(settings.pairs, seed=seed + 1000, config=settings.instruction_config)
    pairs = collect_preferences(sft.model, sft.tokenizer, prompts, labelers, max_new_tokens=settings.max_new_tokens,
                                generator=torch.Generator(device=_device(sft.model)).manual_seed(seed + 1001))
    n_train = int(0.8 * len(pairs))
    train, held_out = pairs.split(n_train)
    return Preferences(train, held_out)


def fit_reward_model(sft: SFTPolicy, pairs: PreferencePairs, settings: RLHFConfig, *, seed: int,
                     progress: bool = False) -> RewardModel:
    """A reward model started from the SFT model, trained on ``pairs`` with the Bradley–Terry loss."""
    torch.manual_seed(seed)
    rm = RewardModel(sft.model)
    train_reward_model(rm, pairs, settings.reward, seed=seed, progress=progress)
    return rm


def run_rlhf(method: str, *, steps: int, seed: int = 0, settings: RLHFConfig | None = None, device=None,
             progress: bool = False, sft: SFTPolicy | None = None,
             log: Callable[[str], None] | None = None) -> tuple[dict, GPT, ChatTokenizer]:
    """The whole pipeline for one method; returns ``(summary, policy, tokenizer)``: the summary is
    what the command prints as JSON, the policy the tuned model (for best-of-n, the SFT model that
    the sampling wraps).

    ``steps``: PPO or GRPO iterations, DPO optimizer steps, or n for best-of-n. ``sft`` reuses an
    already-built SFT policy (the chapter builds it once).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    s = settings or RLHFConfig()
    say = log or (lambda message: None)
    t0 = time.perf_counter()
    if sft is None:
        say("building the SFT policy (pretraining, then supervised fine-tuning)")
        sft = build_sft_policy(s.policy, seed=seed, device=device, progress=progress)
    tok, reference = sft.tokenizer, sft.model
    held_out = instructions.sample_instructions(s.eval_prompts, seed=seed + 2000, config=s.instruction_config)
    measure = dict(max_new_tokens=s.max_new_tokens, seed=seed + 3)
    summary: dict = {"method": method, "steps": steps, "seed": seed}
    rm = None
    if method != "grpo":
        say("collecting preferences and training the reward model")
        prefs = make_preferences(sft, s, seed=seed)
        summary["pairs"] = len(prefs.train)
        if method != "dpo":
            rm = fit_reward_model(sft, prefs.train, s, seed=seed, progress=progress)
            summary["reward_model_accuracy"] = round(preference_accuracy(rm, prefs.held_out), 4)
    before = evaluate(reference, reference, tok, held_out, reward_model=rm, **measure)
    policy = copy.deepcopy(reference)
    say(f"running {method}")
    if method == "ppo":
        ptx = (lambda g: sequence_lm_batch(sft.pretrain_seqs, s.ptx_batch_size, g)) if s.ppo.ptx_coef > 0 else None
        trainer = PPOTrainer(policy, reference, tok, rm.score, prompt_sampler(s.instruction_config), s.ppo,
                             ptx_batch_fn=ptx, seed=seed)
        run_steps(trainer, steps, progress=progress)
        after = evaluate(policy, reference, tok, held_out, reward_model=rm, **measure)
    elif method == "grpo":
        trainer = GRPOTrainer(policy, reference, tok, checker_reward, prompt_sampler(s.instruction_config), s.grpo,
                              seed=seed)
        run_steps(trainer, steps, progress=progress)
        after = evaluate(policy, reference, tok, held_out, **measure)
    elif method == "dpo":
        train_dpo(policy, reference, prefs.train, dataclasses.replace(s.dpo, steps=steps), seed=seed,
                  progress=progress)
        after = evaluate(policy, reference, tok, held_out, **measure)
    else:
        picked = best_of_n(reference, tok, held_out, rm, n=steps, max_new_tokens=s.max_new_tokens,
                           generator=torch.Generator(device=_device(reference)).manual_seed(seed + 3))
        after = evaluate(reference, reference, tok, held_out, reward_model=rm, responses=picked, **measure)
        after["kl"] = best_of_n_kl(steps)  # the analytic value (an upper bound for discrete responses)
    summary.update({
        "gold_reward_before": round(before["gold"], 4), "gold_reward_after": round(after["gold"], 4),
        "accuracy_before": round(before["accuracy"], 4), "accuracy_after": round(after["accuracy"], 4),
        "proxy_reward_after": None if "proxy" not in after else round(after["proxy"], 4),
        "kl": round(max(after["kl"], 0.0), 4), "length_before": round(before["length"], 3),
        "length_after": round(after["length"], 3), "wall_s": round(time.perf_counter() - t0, 1),
    })
    if "proxy" in before:
        summary["proxy_reward_before"] = round(before["proxy"], 4)
    return summary, policy, tok


def _device(model) -> torch.device:
    return next(model.parameters()).device


def run_steps(trainer, steps: int, *, progress: bool = False) -> None:
    """Call ``trainer.step()`` ``steps`` times (a PPO or GRPO trainer), stopping at a non-finite statistic.

    A ``FloatingPointError`` names the step and its statistics; ``progress`` shows a bar with the
    step's mean score and KL. The trainer's callback, if any, sees every step as usual.
    """
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), disable=not progress, desc=type(trainer).__name__.replace("Trainer", ""))
    for _ in bar:
        stats = trainer.step()
        if not all(math.isfinite(v) for v in stats.values() if isinstance(v, float)):
            raise FloatingPointError(f"step {stats['step']}: a non-finite statistic {stats}")
        bar.set_postfix(score=f"{stats['score']:.3f}", kl=f"{stats['kl']:.2f}")


