"""Decoding: each logits transformation equals its Hugging Face processor (ties and min_tokens_to_keep
included), and greedy decoding, sampling and beam search give Hugging Face GPT-2's tokens and beam
scores on the same weights; the KV cache changes nothing; bad arguments are refused clearly."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from aigc_book.generation import (
    GenerationConfig,
    apply_repetition_penalty,
    apply_temperature,
    generate,
    min_p_filter,
    next_token_distribution,
    process_scores,
    top_k_filter,
    top_p_filter,
)
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

EXACT = dict(rtol=0, atol=0)  # the same operations in the same order: bit for bit


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hundreds of tiny decoding steps gain nothing from a second thread, and on a busy 2-core machine
    the threads wait on each other (measured: 5 s for this file with one thread, minutes with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
V = 12


def score_rows() -> dict[str, torch.Tensor]:
    """(4, V) float64 logits: spread out, with ties, with tokens already at -inf, nearly flat."""
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(4, V, generator=g, dtype=torch.float64) * 2
    ties = torch.randint(0, 3, (4, V), generator=g).double()  # many equal scores per row
    masked = spread.clone()
    masked[:, ::3] = float("-inf")  # as after an earlier filter
    flat = torch.randn(4, V, generator=g, dtype=torch.float64) * 1e-3
    return {"spread": spread, "ties": ties, "masked": masked, "flat": flat}


SCORES = score_rows()
INPUT_IDS = torch.tensor([[0, 1, 1, 5], [2, 2, 2, 2], [11, 0, 3, 7], [4, 4, 9, 10]])  # repeats included


# ------------------------------------------------------------------ logits transformations vs Hugging Face


@pytest.mark.parametrize("kind", SCORES)
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_temperature_equals_hf_temperature_warper(kind, temperature):
    s = SCORES[kind]
    torch.testing.assert_close(apply_temperature(s, temperature),
                               TemperatureLogitsWarper(temperature)(INPUT_IDS, s.clone()), **EXACT)


@pytest.mark.parametrize("kind", SCORES)
@pytest.mark.parametrize("top_k, keep", [(1, 1), (3, 1), (3, 5), (V, 1), (V + 5, 1), (1, 2)])
def test_top_k_equals_hf_top_k_warper(kind, top_k, keep):
    s = SCORES[kind]
    ours = top_k_filter(s, top_k, min_tokens_to_keep=keep)
    torch.testing.assert_close(ours, TopKLogitsWarper(top_k, min_tokens_to_keep=keep)(INPUT_IDS, s.clone()), **EXACT)


@pytest.mark.parametrize("kind", SCORES)
@pytest.mark.parametrize("top_p, keep", [(0.0, 1), (0.3, 1), (0.9, 1), (1.0, 1), (0.5, 3), (0.0, 2)])
def test_top_p_equals_hf_top_p_warper(kind, top_p, keep):
    s = SCORES[kind]
    ours = top_p_filter(s, top_p, min_tokens_to_keep=keep)
    torch.testing.assert_close(ours, TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(INPUT_IDS, s.clone()), **EXACT)


@pytest.mark.parametrize("kind", SCORES)
@pytest.mark.parametrize("min_p, keep", [(0.0, 1), (0.05, 1), (0.5, 1), (1.0, 1), (0.5, 3), (1.0, V + 3)])
def test_min_p_equals_hf_min_p_warper(kind, min_p, keep):
    s = SCORES[kind]
    ours = min_p_filter(s, min_p, min_tokens_to_keep=keep)
    torch.testing.assert_close(ours, MinPLogitsWarper(min_p, min_tokens_to_keep=keep)(INPUT_IDS, s.clone()), **EXACT)


@pytest.mark.parametrize("kind", SCORES)
@pytest.mark.parametrize("penalty", [0.5, 1.2, 3.0])
def test_repetition_penalty_equals_hf_processor(kind, penalty):
    s = SCORES[kind]
    ours = apply_repetition_penalty(s, INPUT_IDS, penalty)
    torch.testing.assert_close(ours, RepetitionPenaltyLogitsProcessor(penalty)(INPUT_IDS, s.clone()), **EXACT)


def test_top_k_keeps_every_token_tied_with_the_kth():
    s = torch.tensor([[3.0, 1.0, 3.0, 2.0]])
    assert torch.isfinite(top_k_filter(s, 1)).tolist() == [[True, False, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p_and_min_p_scales_with_the_top():
    s = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(top_p_filter(s, 0.75)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(s, 0.85)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(min_p_filter(s, 0.4)).tolist() == [[True, True, False, False]]  # 0.4 * 0.5 = 0.2
    assert torch.isfinite(min_p_filter(s, 0.2)).tolist() == [[True, True, True, False]]  # 0.1


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores_once():
    s = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(s, torch.tensor([[0, 1, 0, 0]]), 2.0)  # token 0 three times: penalised once
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]


def test_process_scores_chains_in_hf_order_and_greedy_only_applies_the_penalty():
    from transformers.generation.logits_process import LogitsProcessorList

    s = SCORES["spread"]
    settings = dict(temperature=0.7, top_k=6, top_p=0.8, min_p=0.1, repetition_penalty=1.3)
    hf = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7),
                              TopKLogitsWarper(6), TopPLogitsWarper(0.8), MinPLogitsWarper(0.1)])
    sampling = GenerationConfig(do_sample=True, **settings)
    torch.testing.assert_close(process_scores(s, sampling, INPUT_IDS), hf(INPUT_IDS, s.clone()), **EXACT)
    greedy = process_scores(s, GenerationConfig(**settings), INPUT_IDS)
    torch.testing.assert_close(greedy, apply_repetition_penalty(s, INPUT_IDS, 1.3), **EXACT)


def test_next_token_distribution_is_the_softmax_of_the_filtered_scores():
    s = SCORES["spread"]
    p = next_token_distribution(s, temperature=0.8, top_k=8, top_p=0.9, min_p=0.05)
    filters = GenerationConfig(do_sample=True, temperature=0.8, top_k=8, top_p=0.9, min_p=0.05)
    expected = torch.softmax(process_scores(s, filters), dim=-1)
    torch.testing.assert_close(p, expected, **EXACT)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, dtype=torch.float64))
    assert ((p == 0) == torch.isinf(process_scores(s, filters))).all()
    one_row = next_token_distribution(s[0], top_k=1)  # (V,) works too; top_k=1 is one-hot
    assert one_row.shape == (V,) and one_row.max() == 1.0 and one_row.argmax() == s[0].argmax()
    torch.testing.assert_close(next_token_distribution(s), torch.softmax(s, -1), **EXACT)


# ------------------------------------------------------------------ decoding a GPT vs Hugging Face GPT-2

PROMPT = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))  # (B, T)
NEW = 12


@pytest.fixture(scope="module")
def model() -> GPT:
    """2 layers, 32 wide, vocabulary 50, context 24, float64, eval mode (GPT-2 shaped)."""
    torch.manual_seed(0)
    return GPT(TransformerConfig(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32)).double().eval()


@pytest.fixture(scope="module")
def hf_model(model):
    from aigc_book.models.hf_gpt2 import to_hf_gpt2

    return to_hf_gpt2(model)


def hf_generate(hf_model, **kwargs):
    eos = kwargs.get("eos_token_id")
    pad = None if eos is None else (eos if isinstance(eos, int) else eos[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs.setdefault("top_k", 0)  # Hugging Face's default top_k is 50, ours None (no limit)
        return hf_model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=NEW,
                                 pad_token_id=pad, **kwargs)


def an_eos_that_occurs(model, **kwargs) -> int:
    """A token the decoder picks early on, so that using it as eos really ends sequences."""
    return int(generate(model, PROMPT, max_new_tokens=4, **kwargs).sequences[0, -1])


@pytest.mark.parametrize("penalty", [None, 1.5])
@pytest.mark.parametrize("with_eos", [False, True])
def test_greedy_decoding_equals_hf_greedy(model, hf_model, penalty, with_eos):
    eos = an_eos_that_occurs(model, repetition_penalty=penalty) if with_eos else None
    ours = generate(model, PROMPT, max_new_tokens=NEW, repetition_penalty=penalty, eos_token_id=eos).sequences
    theirs = hf_generate(hf_model, do_sample=False, repetition_penalty=penalty, eos_token_id=eos)
    assert torch.equal(ours, theirs)
    if with_eos:  # row 0 ended after 4 tokens and is filled with eos from there on
        assert (ours[0, PROMPT.size(1) + 3:] == eos).all()


BEAM_SETTINGS = {
    "3 beams, no eos": dict(num_beams=3, length_penalty=1.0, early_stopping=False),
    "4 beams, eos, early_stopping=True": dict(num_beams=4, length_penalty=0.5, early_stopping=True, eos=1),
    "4 beams, two eos, never, all returned": dict(num_beams=4, length_penalty=1.0, early_stopping="never", eos=2,
                                                  num_return_sequences=4),
    "3 beams, eos, shorter favoured, all returned": dict(num_beams=3, length_penalty=-1.0, early_stopping=False,
                                                          eos=1, num_return_sequences=3),
    "2 beams, eos, repetition penalty": dict(num_beams=2, length_penalty=1.0, early_stopping=False, eos=1,
                                             repetition_penalty=1.4, num_return_sequences=2),
}


def beam_kwargs(model, setting: dict) -> dict:
    kwargs = {k: v for k, v in setting.items() if k != "eos"}
    n_eos = setting.get("eos", 0)
    if n_eos:  # eos tokens the beams do reach: the most frequent new tokens without eos
        plain = generate(model, PROMPT, max_new_tokens=NEW, **kwargs).sequences[:, PROMPT.size(1):]
        eos = plain.flatten().bincount().argsort(descending=True, stable=True)[:n_eos].tolist()
        kwargs["eos_token_id"] = eos[0] if n_eos == 1 else eos
    return kwargs


@pytest.mark.parametrize("name", BEAM_SETTINGS)
def test_beam_search_equals_hf_sequences_and_sequences_scores(model, hf_model, name):
    kwargs = beam_kwargs(model, BEAM_SETTINGS[name])
    ours = generate(model, PROMPT, max_new_tokens=NEW, **kwargs)
    theirs = hf_generate(hf_model, do_sample=False, output_scores=True, return_dict_in_generate=True, **kwargs)
    assert torch.equal(ours.sequences, theirs.sequences)
    # Hugging Face sums log-probabilities in float32, we in float64
    torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores.double(), rtol=2e-6, atol=1e-5)
    if "eos_token_id" in kwargs:
        eos = torch.tensor(kwargs["eos_token_id"])
        assert torch.isin(ours.sequences[:, PROMPT.size(1):], eos).any()  # eos really ended some hypotheses


def test_beam_scores_are_summed_log_probs_over_length_to_the_penalty(model):
    T, lp = PROMPT.size(1), 0.7
    eos = beam_kwargs(model, dict(num_beams=3, eos=1))["eos_token_id"]
    out = generate(model, PROMPT, max_new_tokens=NEW, num_beams=3, length_penalty=lp, eos_token_id=eos,
                   num_return_sequences=3)
    log_probs = torch.log_softmax(model(out.sequences).logits, dim=-1)[:, T - 1:-1]  # (B*3, n, V)
    token_lp = log_probs.gather(-1, out.sequences[:, T:, None]).squeeze(-1)  # (B*3, n)
    is_eos = (out.sequences[:, T:] == eos).long()
    n = torch.where(is_eos.any(1), is_eos.argmax(1) + 1, torch.full_like(is_eos[:, 0], NEW))  # up to the first eos
    mine = torch.stack([token_lp[i, : n[i]].sum() / int(n[i]) ** lp for i in range(len(n))])
    torch.testing.assert_close(out.sequences_scores, mine, rtol=1e-10, atol=1e-10)
    assert (out.sequences_scores.view(2, 3).diff(dim=1) <= 0).all()  # best first


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7, top_k=10), dict(top_p=0.8, temperature=1.3),
                                      dict(min_p=0.1, repetition_penalty=1.3), dict(num_return_sequences=3, top_p=0.9),
                                      dict(num_beams=3, temperature=0.8, top_p=0.9)],
                         ids=["plain", "top-k", "top-p", "min-p+penalty", "3 per prompt", "beam sampling"])
def test_sampling_draws_hf_tokens_from_the_same_random_stream(model, hf_model, settings):
    """Same weights, same global seed, same tokens: the transformations run in Hugging Face's order and
    consume the random stream exactly as it does."""
    eos = an_eos_that_occurs(model)
    torch.manual_seed(3)
    ours = generate(model, PROMPT, max_new_tokens=NEW, do_sample=True, eos_token_id=eos, **settings).sequences
    torch.manual_seed(3)
    theirs = hf_generate(hf_model, do_sample=True, eos_token_id=eos, **settings)
    assert torch.equal(ours, theirs)


# ------------------------------------------------------------------ the cache, seeds, streaming


@pytest.mark.parametrize("new_tokens", [NEW, 40], ids=["within-context", "past-context"])
@pytest.mark.parametrize("settings", [dict(), dict(do_sample=True, top_p=0.9, repetition_penalty=1.2),
                                      dict(num_beams=3, length_penalty=0.5), dict(num_beams=3, do_sample=True)],
                         ids=["greedy", "sampling", "beam", "beam sampling"])
def test_kv_cache_gives_the_tokens_of_the_uncached_model(model, new_tokens, settings):
    runs = [generate(model, PROMPT, max_new_tokens=new_tokens, use_cache=c, **settings,
                     generator=torch.Generator().manual_seed(5)) for c in (True, False)]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert runs[0].sequences.shape == (2, 5 + new_tokens)
    if settings.get("num_beams", 1) > 1:
        torch.testing.assert_close(runs[0].sequences_scores, runs[1].sequences_scores, rtol=1e-10, atol=1e-10)
    else:
        assert runs[0].sequences_scores is None


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(model):
    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, PROMPT, max_new_tokens=NEW, do_sample=True, generator=g)

    assert torch.equal(sample(0).sequences, sample(0).sequences)
    assert not torch.equal(sample(0).sequences, sample(1).sequences)
    assert not torch.equal(sample(0).sequences, generate(model, PROMPT, max_new_tokens=NEW).sequences)


def test_gpt_generate_is_this_generate_with_hf_names(model):
    g = torch.Generator().manual_seed(2)
    old = model.generate(PROMPT, NEW, temperature=0.9, top_k=5, generator=g)
    new = generate(model, PROMPT, max_new_tokens=NEW, do_sample=True, temperature=0.9, top_k=5,
                   generator=torch.Generator().manual_seed(2)).sequences
    assert torch.equal(old, new)
    greedy = generate(model, PROMPT, max_new_tokens=NEW).sequences
    assert torch.equal(model.generate(PROMPT, NEW, temperature=0), greedy)


def test_on_token_streams_each_column_and_stops_when_every_row_has_ended(model):
    eos = an_eos_that_occurs(model)
    columns = []
    out = generate(model, PROMPT, max_new_tokens=30, eos_token_id=eos, on_token=columns.append).sequences
    assert torch.equal(torch.stack(columns, dim=1), out[:, PROMPT.size(1):])
    ended = (out[:, PROMPT.size(1):] == eos).any(dim=1)
    assert ended.all() == (out.size(1) < PROMPT.size(1) + 30)  # stopped early only if every row ended


def test_generate_restores_training_mode_and_returns_trainable_tensors(model):
    model.train()
    try:
        out = generate(model, PROMPT, max_new_tokens=3, num_beams=2)
        assert model.training
        assert not out.sequences.is_inference() and not out.sequences_scores.is_inference()
    finally:
        model.eval()


def test_zero_new_tokens_returns_the_prompt(model):
    assert torch.equal(generate(model, PROMPT, max_new_tokens=0).sequences, PROMPT)
    beams = generate(model, PROMPT, max_new_tokens=0, num_beams=3, num_return_sequences=2)
    assert torch.equal(beams.sequences, PROMPT.repeat_interleave(2, dim=0))


# ------------------------------------------------------------------ bad input

BAD_GENERATE = [
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be an int >= 0"),
    (dict(num_beams=0), ValueError, "num_beams must be an int >= 1"),
    (dict(num_beams=2.0), TypeError, "num_beams must be an int >= 1"),
    (dict(do_sample=True, temperature=0.0), ValueError, "for greedy decoding use do_sample=False"),
    (dict(temperature=float("nan")), ValueError, "temperature must be a finite number > 0"),
    (dict(top_k=0), ValueError, r"top_k must be a positive int or None \(no limit\), got 0"),
    (dict(top_p=1.5), ValueError, r"top_p must be a number in \[0, 1\]"),
    (dict(min_p=-0.1), ValueError, r"min_p must be a number in \[0, 1\]"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty must be a finite number > 0"),
    (dict(length_penalty=float("inf")), ValueError, "length_penalty must be a finite number"),
    (dict(early_stopping="sometimes"), ValueError, "early_stopping must be True, False or 'never'"),
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences=3 must be <= num_beams=2"),
    (dict(num_return_sequences=2), ValueError, "greedy decoding gives one sequence per prompt"),
    (dict(num_beams=2, on_token=print), ValueError, "beam search knows its tokens only at the end"),
    (dict(eos_token_id=50), ValueError, r"eos_token_id must lie in \[0, 50\)"),
    (dict(eos_token_id="</s>"), TypeError, "eos_token_id must be an int, a non-empty list of ints, or None"),
    (dict(eos_token_id=[]), TypeError, "non-empty list of ints"),
    (dict(do_sample=1), TypeError, "do_sample must be True or False"),
    (dict(input_ids=torch.tensor([[1, 50]])), ValueError, r"token ids \(vocab_size=50\) must lie in \[0, 50\)"),
    (dict(input_ids=torch.ones(1, 3)), TypeError, r"integer tensor of shape \(B, T\)"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_GENERATE, ids=[m for _, _, m in BAD_GENERATE])
def test_generate_refuses_bad_arguments_with_a_clear_message(model, overrides, error, message):
    kwargs = dict(input_ids=PROMPT, max_new_tokens=2) | overrides
    with pytest.raises(error, match=message):
        generate(model, **kwargs)


def test_transformations_refuse_bad_input_with_a_clear_message():
    s = SCORES["spread"]
    with pytest.raises(TypeError, match=r"floating-point tensor of shape \(B, V\)"):
        top_k_filter(torch.ones(2, 3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"scores must have shape \(B, V\) with V >= 1, got shape \(12,\)"):
        top_p_filter(s[0], 0.5)
    with pytest.raises(ValueError, match="min_tokens_to_keep must be a positive int, got 0"):
        min_p_filter(s, 0.1, min_tokens_to_keep=0)
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, T\) with B = 4"):
        apply_repetition_penalty(s, INPUT_IDS[:2], 1.2)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 12\)"):
        apply_repetition_penalty(s, INPUT_IDS + 1, 1.2)
    with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
        apply_repetition_penalty(s, INPUT_IDS.double(), 1.2)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        apply_temperature(s, -1.0)
    with pytest.raises(ValueError, match="the repetition penalty needs input_ids"):
        process_scores(s, GenerationConfig(repetition_penalty=1.2))
    with pytest.raises(ValueError, match=r"top_p must be a number in \[0, 1\]"):
        next_token_distribution(s, top_p=math.nan)
