"""Speculative decoding: a small draft model guesses k tokens, the large target model checks them in one pass.

Introduced in chapter 6, section "Speculative decoding". Leviathan, Kalman & Matias (2023,
arXiv:2211.17192) and Chen et al. (2023, arXiv:2302.01318). Decoding is memory-bound: one forward pass
of the target over ``k + 1`` positions costs about as much as over one, so if a cheap draft model
guesses the next ``k`` tokens, the target can judge them all at once and keep the longest correct
prefix plus one token of its own. Every round therefore adds between 1 and ``k + 1`` tokens for one
target pass.

* Greedy (:func:`greedy_acceptance`): accept draft tokens while they equal the target's argmax, then
  append the target's argmax at the first disagreement (or after the last draft token). The output is
  the target's own greedy decoding, token for token.
* Sampling (:func:`speculative_sampling_acceptance`, Leviathan et al. Algorithm 1): accept draft token
  ``x ~ q`` with probability ``min(1, p(x) / q(x))``; at the first rejection draw from
  ``norm(max(0, p - q))``. Then ``P(x) = min(p(x), q(x)) + max(0, p(x) - q(x)) = p(x)``: the tokens
  follow the target's distribution exactly, whatever the draft.

Theory (Leviathan et al. eq. 1 and Theorem 3.8): with ``alpha`` the probability that one draft token
is accepted (independent of the others), a round adds ``(1 - alpha**(k+1)) / (1 - alpha)`` tokens in
expectation (:func:`expected_tokens_per_pass`), and with ``c`` the cost of a draft pass relative to a
target pass the wall-time speed-up is that divided by ``k c + 1`` (:func:`expected_speedup`).

Both models keep a :class:`~aigc_book.layers.kv_cache.KVCache`; rejected positions are forgotten with
:meth:`~aigc_book.layers.kv_cache.KVCache.crop` (the cache's ``length`` goes back; the stale keys and
values are overwritten by the next pass). Each round feeds a model only the tokens its cache has not
seen, so there is no separate prefill pass: the first round's passes read the prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from aigc_book.checks import is_int, is_number
from aigc_book.cpu_threads import check_cpu_load
from aigc_book.generation.config import FIELD_NAMES, GenerationConfig, resolve_generation_config
from aigc_book.generation.search import generate
from aigc_book.layers.checks import check_token_ids

__all__ = [
    "SpeculativeOutput",
    "speculative_generate",
    "greedy_acceptance",
    "speculative_sampling_acceptance",
    "expected_tokens_per_pass",
    "expected_speedup",
    "speculative_speedup",
]


@dataclass
class SpeculativeOutput:
    """What :func:`speculative_generate` returns.

    Attributes:
        sequences: ``(B, T + max_new_tokens)`` prompts followed by the new tokens.
        proposed: draft tokens put to the target (all rows).
        accepted: of those, how many the target kept.
        judged: draft tokens the target actually compared: the accepted ones plus the first rejected
            one of each round (the tokens after a rejection are discarded unseen). ``accepted / judged``
            estimates Leviathan et al.'s per-token acceptance probability alpha.
        target_passes: forward passes of the target (one per round).
        draft_passes: forward passes of the draft (one per proposed token).
    """

    sequences: torch.Tensor
    proposed: int = 0
    accepted: int = 0
    judged: int = 0
    target_passes: int = 0
    draft_passes: int = 0

    @property
    def acceptance_rate(self) -> float:
        """``accepted / proposed`` (1.0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 1.0

    @property
    def alpha(self) -> float:
        """``accepted / judged``: the per-token acceptance probability that eq. (1) assumes."""
        return self.accepted / self.judged if self.judged else 1.0

    @property
    def new_tokens(self) -> int:
        """New tokens over all rows."""
        return self.accepted + self.target_passes  # every round adds its accepted tokens plus one

    @property
    def tokens_per_target_pass(self) -> float:
        """Measured new tokens per target pass (compare with :func:`expected_tokens_per_pass`)."""
        return self.new_tokens / self.target_passes if self.target_passes else 0.0


# ----------------------------------------------------------------------------- acceptance rules


def greedy_acceptance(target_logits: torch.Tensor, drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep draft tokens while they are the target's argmax; return ``(n_accepted (N,), next_token (N,))``.

    ``target_logits``: ``(N, k + 1, V)``, position ``i`` scoring the token after ``i`` draft tokens;
    ``drafts``: ``(N, k)``. ``next_token`` is the target's argmax after the accepted prefix (its
    correction at the first mismatch, or the bonus token when all ``k`` are accepted).
    """
    _check_rule_shapes(target_logits, drafts)
    choice = target_logits.argmax(dim=-1)  # (N, k + 1)
    k = drafts.size(1)
    n_accepted = (choice[:, :k] == drafts).long().cumprod(dim=-1).sum(dim=-1)  # leading matches (N,)
    next_token = choice.gather(1, n_accepted[:, None]).squeeze(1)  # (N,)
    return n_accepted, next_token


def speculative_sampling_acceptance(
    p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leviathan et al. (2023) Algorithm 1 on probabilities; returns ``(n_accepted (N,), next_token (N,))``.

    Args:
        p: ``(N, k + 1, V)`` target probabilities, position ``i`` after ``i`` draft tokens.
        q: ``(N, k, V)`` draft probabilities the draft tokens were sampled from.
        drafts: ``(N, k)`` the draft tokens.
        generator: random generator on the tensors' device (None: PyTorch's global one).

    Draft token ``i`` is kept with probability ``min(1, p_i(x) / q_i(x))`` as long as all before it
    were. At the first rejection the next token is drawn from ``norm(max(0, p_i - q_i))``; when all
    ``k`` are kept, from ``p_{k+1}``. Each emitted token then has the target's distribution.
    """
    _check_rule_shapes(p, drafts)
    if tuple(q.shape) != (drafts.size(0), drafts.size(1), p.size(-1)):
        raise ValueError(f"q must have shape (N, k, V) = {(drafts.size(0), drafts.size(1), p.size(-1))}, "
                         f"got {tuple(q.shape)}")
    N, k = drafts.shape
    p_x = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)  # (N, k) target's probability of each draft
    q_x = q.gather(-1, drafts[..., None]).squeeze(-1)  # (N, k)
    r = torch.rand((N, k), generator=generator, device=p.device, dtype=p.dtype)
    kept = r * q_x < p_x  # r < p/q: always when p >= q, never when p = 0
    n_accepted = kept.long().cumprod(dim=-1).sum(dim=-1)  # (N,)
    rows = torch.arange(N, device=p.device)
    p_next = p[rows, n_accepted]  # (N, V)
    q_padded = torch.cat([q, q.new_zeros(N, 1, q.size(-1))], dim=1)  # (N, k + 1, V): no draft after the last
    residual = (p_next - q_padded[rows, n_accepted]).clamp(min=0)  # (N, V); equals p_next after k acceptances
    mass = residual.sum(dim=-1, keepdim=True)
    # p == q everywhere leaves nothing to resample from; then no rejection can happen, except by rounding
    residual = torch.where(mass > 0, residual / mass.clamp(min=torch.finfo(p.dtype).tiny), p_next)
    next_token = torch.multinomial(residual, 1, generator=generator).squeeze(1)  # (N,)
    return n_accepted, next_token


def _check_rule_shapes(scores: torch.Tensor, drafts: torch.Tensor) -> None:
    if drafts.dim() != 2 or drafts.dtype != torch.long:
        raise ValueError(f"drafts must be a (N, k) long tensor, got {drafts.dtype} of shape {tuple(drafts.shape)}")
    if scores.dim() != 3 or tuple(scores.shape[:2]) != (drafts.size(0), drafts.size(1) + 1):
        raise ValueError(f"target scores must have shape (N, k + 1, V) = ({drafts.size(0)}, {drafts.size(1) + 1}, V), "
                         f"got {tuple(scores.shape)}")


# ----------------------------------------------------------------------------- the decoding loop


def speculative_generate(
    target,
    draft,
    input_ids: torch.Tensor,
    generation_config: GenerationConfig | None = None,
    *,
    k: int = 4,
    generator: torch.Generator | None = None,
    **kwargs,
) -> SpeculativeOutput:
    """Continue each prompt by exactly ``max_new_tokens`` tokens, ``k`` draft guesses per target pass.

    Args:
        target, draft: :class:`~aigc_book.models.gpt.GPT` models (or anything with ``forward(idx,
            kv_cache=...)``, ``config`` and ``new_kv_cache``) on the same device, with the same vocabulary.
        input_ids: ``(B, T)`` prompts; rows are decoded one after another (rows accept different numbers
            of tokens, and a cache has one length), as Hugging Face's assisted generation, which takes
            one row only.
        generation_config: a :class:`~aigc_book.generation.config.GenerationConfig` (None: the
            defaults) overridden by ``kwargs``, as for :func:`~aigc_book.generation.search.generate`.
            Three fields are read: ``max_new_tokens``, the tokens to add (``T + max_new_tokens`` must
            fit in both models' ``block_size``); ``do_sample``: False gives greedy decoding, the target's
            own greedy tokens, True sampling at ``temperature`` with the rejection rule, the target's
            own distribution. Any other field left away from its default is refused.
        k: draft tokens per round (fewer in the last rounds, so as not to overshoot).
        generator: for sampling, on the models' device (None: PyTorch's global one).

    Both models run in eval mode under ``torch.inference_mode``; their modes are restored.
    """
    config = resolve_generation_config(generation_config, **kwargs)
    _check_args(target, draft, input_ids, config, k)
    max_new_tokens = config.max_new_tokens
    out = SpeculativeOutput(input_ids.new_empty(input_ids.size(0), input_ids.size(1) + max_new_tokens))
    modes = target.training, draft.training
    target.eval()
    draft.eval()
    try:
        with torch.inference_mode():
            for b in range(input_ids.size(0)):
                row = _decode_row(target, draft, input_ids[b:b + 1], max_new_tokens, k, config.do_sample,
                                  float(config.temperature), generator, out)
                out.sequences[b] = row[0]
    finally:
        target.train(modes[0])
        draft.train(modes[1])
    out.sequences = out.sequences.clone()  # an ordinary tensor again
    return out


SPECULATIVE_FIELDS = ("max_new_tokens", "do_sample", "temperature")  # what speculative decoding reads


def _check_args(target, draft, input_ids, config: GenerationConfig, k) -> None:
    config.required_max_new_tokens()
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    default = GenerationConfig()
    unsupported = [f"{name}={getattr(config, name)!r}" for name in FIELD_NAMES - set(SPECULATIVE_FIELDS)
                   if getattr(config, name) != getattr(default, name)]
    if unsupported:
        raise ValueError(f"speculative decoding here reads only {', '.join(SPECULATIVE_FIELDS)}; "
                         f"leave the other options at their defaults, got {', '.join(sorted(unsupported))}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"target and draft must share one vocabulary: vocab_size {target.config.vocab_size} "
                         f"vs {draft.config.vocab_size}")
    check_token_ids(input_ids, target.config.vocab_size)
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(f"input_ids must be (B, T) with T >= 1, got shape {tuple(input_ids.shape)}")
    total = input_ids.size(1) + config.max_new_tokens
    context = min(target.config.block_size, draft.config.block_size)
    if total > context:
        raise ValueError(f"prompt + new tokens = {total} do not fit in the context ({context} positions): "
                         f"speculative decoding here does not slide the window")


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: probabilities in fp32
    return torch.softmax(logits / temperature, dim=-1)


def _propose(draft, cache, seq: torch.Tensor, k: int, do_sample: bool, temperature: float, generator):
    """``k`` draft tokens ``(1, k)`` continuing ``seq`` ``(1, n)`` and, when sampling, their ``(1, k, V)`` q."""
    feed = seq[:, cache.length:]  # what the draft's cache has not seen: 1 or 2 tokens (the whole prompt at first)
    tokens, probs = [], []
    for _ in range(k):
        logits = draft(feed, kv_cache=cache).logits[:, -1]  # (1, V)
        if do_sample:
            q = _probs(logits, temperature)
            token = torch.multinomial(q, 1, generator=generator)  # (1, 1)
            probs.append(q)
        else:
            token = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
        tokens.append(token)
        feed = token
    return torch.cat(tokens, dim=1), (torch.stack(probs, dim=1) if do_sample else None)


def _decode_row(target, draft, prompt, max_new_tokens, k, do_sample, temperature, generator, stats):
    """One row: rounds of (draft proposes, target verifies in one pass, both caches cropped)."""
    total = prompt.size(1) + max_new_tokens
    target_cache, draft_cache = target.new_kv_cache(1, total), draft.new_kv_cache(1, total)
    seq = prompt
    while seq.size(1) < total:
        check_cpu_load()  # no optimiser step here: follow the machine's load from the loop
        n = seq.size(1)
        k_round = min(k, total - n - 1)  # a round adds up to k_round + 1 tokens
        drafts, q = (_propose(draft, draft_cache, seq, k_round, do_sample, temperature, generator) if k_round
                     else (seq.new_empty(1, 0), None))
        feed = torch.cat([seq[:, target_cache.length:], drafts], dim=1)  # (1, unseen + k_round)
        logits = target(feed, kv_cache=target_cache).logits[:, -(k_round + 1):]  # (1, k_round + 1, V)
        if do_sample:
            q = q if q is not None else logits.new_empty(1, 0, logits.size(-1))
            n_accepted, token = speculative_sampling_acceptance(_probs(logits, temperature), q, drafts, generator)
        else:
            n_accepted, token = greedy_acceptance(logits, drafts)
        j = int(n_accepted)
        seq = torch.cat([seq, drafts[:, :j], token[:, None]], dim=1)  # (1, n + j + 1)
        # The caches keep every token but the newest; what the target rejected is forgotten.
        target_cache.crop(n + j)
        draft_cache.crop(min(draft_cache.length, n + j))
        stats.proposed += k_round
        stats.accepted += j
        stats.judged += j + (j < k_round)
        stats.target_passes += 1
        stats.draft_passes += k_round
    return seq


# ----------------------------------------------------------------------------- theory and measurement


def _check_alpha_k(alpha: float, k: int) -> None:
    if not is_number(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a probability in [0, 1], got {alpha!r}")
    if not is_int(k) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")


def expected_tokens_per_pass(alpha: float, k: int) -> float:
    """Leviathan et al. (2023) eq. (1): ``(1 - alpha**(k+1)) / (1 - alpha)`` tokens per target pass.

    The sum ``1 + alpha + ... + alpha**k`` (``k + 1`` at ``alpha = 1``), for draft tokens accepted
    independently with probability ``alpha``.
    """
    _check_alpha_k(alpha, k)
    return float(k + 1) if alpha == 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, k: int, cost_ratio: float) -> float:
    """Leviathan et al. (2023) Theorem 3.8: ``(1 - alpha**(k+1)) / ((1 - alpha) (k c + 1))``.

    ``cost_ratio`` ``c``: time of one draft pass over time of one target pass.
    """
    if not is_number(cost_ratio) or not cost_ratio >= 0:
        raise ValueError(f"cost_ratio must be a number >= 0, got {cost_ratio!r}")
    return expected_tokens_per_pass(alpha, k) / (k * cost_ratio + 1.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    """``(result, seconds)`` of one call of ``fn``, the device synchronised around it."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def speculative_speedup(target, draft, prompts: torch.Tensor, k: int, device,
                        generation_config: GenerationConfig | None = None, *, seed: int = 0, **kwargs) -> dict:
    """Wall time of plain decoding (with the KV cache) vs speculative decoding, and the theory beside it.

    ``prompts`` ``(B, T)`` are decoded one row at a time both ways, after a short warm-up of each, by
    ``max_new_tokens`` tokens: greedily by default, or with ``do_sample=True`` by sampling at
    ``temperature`` (generators seeded with ``seed``). ``generation_config`` and ``kwargs`` are those
    of :func:`speculative_generate`. The models are moved to ``device`` (in place, as
    ``nn.Module.to``). Returns a dict:

    * ``plain_s`` (plain decoding, greedy or sampled), ``speculative_s``, ``speedup`` (their ratio);
      ``same_tokens``: greedy speculative decoding must give the target's own tokens (None when sampling);
    * ``acceptance_rate`` (accepted / proposed), ``alpha`` (accepted / judged), the pass counts;
    * ``tokens_per_target_pass`` measured and ``expected_tokens_per_pass`` (eq. 1 at ``alpha``; the
      last rounds of each row propose fewer than ``k`` tokens, so the measurement is a little lower);
    * ``cost_ratio`` ``c`` (draft over target seconds per token of plain decoding, measured the same way)
      and ``expected_speedup`` (Theorem 3.8 at ``alpha``, ``k``, ``c``).
    """
    config = resolve_generation_config(generation_config, **kwargs)
    new_tokens = config.required_max_new_tokens()
    device = torch.device(device)
    target, draft = target.to(device), draft.to(device)
    prompts = prompts.to(device)

    def plain(model):
        g = torch.Generator(device=device).manual_seed(seed)
        return torch.cat([generate(model, p[None], config, generator=g).sequences for p in prompts])

    def spec(rows=prompts, n=new_tokens):
        g = torch.Generator(device=device).manual_seed(seed)
        return speculative_generate(target, draft, rows, config, max_new_tokens=n, k=k, generator=g)

    warm = min(new_tokens, 4)
    for model in (target, draft):
        generate(model, prompts[:1], config, max_new_tokens=warm)
    spec(prompts[:1], warm)
    plain_tokens, plain_s = _timed(lambda: plain(target), device)
    _, draft_s = _timed(lambda: plain(draft), device)
    out, spec_s = _timed(spec, device)
    alpha, cost_ratio = out.alpha, draft_s / plain_s
    return {
        "k": k,
        "new_tokens": out.new_tokens,
        "plain_s": plain_s,
        "speculative_s": spec_s,
        "speedup": plain_s / spec_s,
        "same_tokens": None if config.do_sample else bool(torch.equal(out.sequences, plain_tokens)),
        "acceptance_rate": out.acceptance_rate,
        "alpha": alpha,
        "target_passes": out.target_passes,
        "draft_passes": out.draft_passes,
        "tokens_per_target_pass": out.tokens_per_target_pass,
        "expected_tokens_per_pass": expected_tokens_per_pass(alpha, k),
        "cost_ratio": cost_ratio,
        "expected_speedup": expected_speedup(alpha, k, cost_ratio),
    }
