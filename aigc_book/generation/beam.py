"""Beam search over a KV-cached GPT, step for step as Hugging Face's ``GenerationMixin._beam_search``.

Introduced in chapter 4, section "Decoding". Greedy decoding commits to the most probable token at
every step; beam search keeps the ``K = num_beams`` most probable partial sequences ("beams") and
extends all of them, so a token that looks worse now can win later. A hypothesis ``y`` of ``n``
generated tokens is ranked, once finished, by

    score(y) = sum_t log p(y_t | prompt, y_<t) / n ** length_penalty

(Wu et al. 2016, "Google's Neural Machine Translation System", §7 used a different normaliser;
this is Hugging Face's, and ``n`` counts the generated tokens, eos included, not the prompt).

Each step, as in ``transformers`` 5 (``_beam_search`` and its helpers in ``generation/utils.py``):

1. every running beam proposes all ``V`` next tokens, scored by its running sum of log-probabilities
   plus the new token's; the best ``2K`` of the ``K * V`` candidates are kept (``(1 + #eos) * K``
   with several eos tokens), so that ``K`` of them are still running even if ``K`` just ended;
2. a candidate ends when its token is an eos token or the length limit is reached. Among the first
   ``K`` candidates, each that ended becomes a finished hypothesis (scored as above) if it beats the
   worst of the ``K`` kept so far;
3. the ``K`` best candidates that did not end are the next running beams; the KV cache follows them
   with :meth:`~aigc_book.layers.kv_cache.KVCache.reorder`;
4. the search stops when no running beam can beat the worst finished hypothesis (``early_stopping``
   decides how optimistically that is judged, see :func:`~aigc_book.generation.search.generate`),
   or the length limit is reached.

With ``do_sample=True`` step 1 draws the ``2K`` candidates at random, without replacement, from
``softmax`` of their running scores (Hugging Face's beam sampling); the sampling transformations
then keep at least ``1 + #eos`` tokens (at least 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from aigc_book.generation.common import GenerateOutput, NextLogits
from aigc_book.generation.config import GenerationConfig
from aigc_book.generation.logits import process_scores

if TYPE_CHECKING:
    from aigc_book.models.gpt import GPT

__all__ = ["beam_search"]

NEG_INF = float("-inf")


def beam_search(
    model: GPT,
    input_ids: torch.Tensor,
    generation_config: GenerationConfig,
    *,
    generator: torch.Generator | None = None,
) -> GenerateOutput:
    """Beam search (or beam sampling); called by :func:`~aigc_book.generation.search.generate`, which
    checks the prompt and the eos tokens, puts the model in eval mode and turns off autograd.

    ``generation_config`` is the :class:`~aigc_book.generation.config.GenerationConfig` that
    ``generate`` decodes with (``num_beams > 1``, ``max_new_tokens`` set); ``generator`` draws the
    candidates of beam sampling.

    Returns:
        ``sequences`` ``(B * num_return_sequences, T + n)``, the best hypotheses of each prompt,
        best first, cut after the longest of those returned (shorter ones filled with the first eos
        token), and their ``sequences_scores``.
    """
    c = generation_config
    B, T = input_ids.shape
    K, r = c.num_beams, c.num_return_sequences
    length_penalty, early_stopping = float(c.length_penalty), c.early_stopping
    L = T + c.max_new_tokens  # the length limit
    device = input_ids.device
    if c.max_new_tokens == 0:
        return GenerateOutput(input_ids.repeat_interleave(r, dim=0), torch.zeros(B * r, device=device))
    eos = c.eos_token_ids
    K2 = max(2, 1 + len(eos)) * K  # candidates kept per step
    eos_ids = torch.tensor(eos, device=device) if eos else None
    fill = eos[0] if eos else -1  # what follows the end of a finished hypothesis (never seen without eos)
    first_k = torch.arange(K2, device=device) < K  # (K2,) only these candidates may become finished
    batch_offset = torch.arange(B, device=device)[:, None] * K  # (B, 1) row of beam 0 of each prompt
    keep_at_least = max(2, len(eos) + 1)  # the sampling filters leave enough candidates

    running = input_ids.new_full((B, K, L), fill)  # (B, K, L) the running beams
    running[:, :, :T] = input_ids[:, None]
    finished = running.clone()  # (B, K, L) the best finished hypotheses, best first
    finished_len = torch.zeros(B, K, dtype=torch.long, device=device)  # generated tokens of each
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)  # False: an empty slot
    improvable = torch.ones(B, dtype=torch.bool, device=device)  # can a running beam still beat them?
    next_logits = NextLogits(model, B, c.use_cache)

    cur = T  # tokens in every running beam
    while True:
        if cur == T:  # the prompt is read once, then copied into the K beams (cache included)
            copies = torch.arange(B, device=device).repeat_interleave(K)  # (B * K,)
            logits = next_logits(input_ids)[copies]  # (B * K, V)
            next_logits.reorder(copies)
            score_dtype = torch.promote_types(logits.dtype, torch.float32)
            running_scores = torch.zeros(B, K, dtype=score_dtype, device=device)  # (B, K) sum of log p
            running_scores[:, 1:] = NEG_INF  # the copies start out of the race: step one expands the prompt once
            finished_scores = torch.full((B, K), NEG_INF, dtype=score_dtype, device=device)
        else:
            logits = next_logits(running[:, :, :cur].reshape(B * K, cur))  # (B * K, V)
        log_probs = torch.log_softmax(logits.to(score_dtype), dim=-1)
        log_probs = process_scores(log_probs, c, running[:, :, :cur].reshape(B * K, cur),
                                   min_tokens_to_keep=keep_at_least)
        V = log_probs.size(-1)
        total = (log_probs.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)  # every extension

        # 1. the K2 best (or sampled) candidates, best first
        if c.do_sample:
            index = torch.multinomial(torch.softmax(total, dim=-1), K2, generator=generator)  # (B, K2)
            cand_scores = total.gather(1, index)
            cand_scores, order = cand_scores.sort(dim=-1, descending=True)
            index = index.gather(1, order)
        else:
            cand_scores, index = torch.topk(total, K2, dim=-1)  # (B, K2)
        source, token = index // V, index % V  # (B, K2) which beam each extends, with which token
        P = cur + 1  # only this prefix is moved around: every position after it is still `fill`
        cand = running[:, :, :P].gather(1, source[:, :, None].expand(B, K2, P))  # (B, K2, P)
        cand[:, :, cur] = token

        # 2. which candidates end here
        if cur + 1 >= L:
            ended = torch.ones_like(token, dtype=torch.bool)
        elif eos_ids is not None:
            ended = torch.isin(token, eos_ids)
        else:
            ended = torch.zeros_like(token, dtype=torch.bool)

        # 3. the next running beams: the best K candidates that go on
        alive_scores = cand_scores.masked_fill(ended, NEG_INF)
        keep = torch.topk(alive_scores, K, dim=-1).indices  # (B, K)
        running[:, :, :P] = cand.gather(1, keep[:, :, None].expand(B, K, P))
        running_scores = alive_scores.gather(1, keep)
        next_logits.reorder((source.gather(1, keep) + batch_offset).flatten())  # the cache follows its beams

        # 2 (cont.) ended candidates among the first K join the finished ones if they are among the K best
        n_gen = cur + 1 - T
        accept = ended & first_k & improvable[:, None]
        if early_stopping is True:
            accept &= ~is_finished.all(dim=1, keepdim=True)  # full: no more hypotheses
        new_scores = (cand_scores / n_gen**length_penalty).masked_fill(~accept, NEG_INF)
        merged_scores = torch.cat([finished_scores, new_scores], dim=1)  # (B, K + K2)
        finished_scores, pick = torch.topk(merged_scores, K, dim=-1)  # (B, K) best first
        finished[:, :, :P] = torch.cat([finished[:, :, :P], cand], dim=1).gather(1, pick[:, :, None].expand(B, K, P))
        finished_len = torch.cat([finished_len, torch.full_like(token, n_gen)], dim=1).gather(1, pick)
        is_finished = torch.cat([is_finished, accept], dim=1).gather(1, pick)
        cur += 1

        # 4. stop?
        if early_stopping == "never" and length_penalty > 0:
            best_len = L - T  # the longest a running beam may grow (a score only rises with length here)
        else:
            best_len = cur - T  # Hugging Face's heuristic: the running beam scored at its current length
        best_possible = running_scores[:, 0] / best_len**length_penalty  # (B,)
        improvable &= ~is_finished.all(dim=1) | (best_possible > finished_scores.min(dim=1).values)
        if not bool(improvable.any()) or (early_stopping is True and bool(is_finished.all())) or bool(ended.all()):
            break

    n_out = T + int(finished_len[:, :r].max())  # cut after the longest hypothesis returned
    sequences = finished[:, :r, :n_out].reshape(B * r, n_out)
    return GenerateOutput(sequences, finished_scores[:, :r].reshape(B * r))
