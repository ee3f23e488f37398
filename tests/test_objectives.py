"""Pretraining objectives: batch statistics, no leaked answers (masks and gradients), hand-checked losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import Transformer, TransformerConfig
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.objectives import (
    IGNORE,
    EncoderForPretraining,
    SpecialTokens,
    causal_lm_batch,
    causal_lm_loss,
    cross_entropy_written_out,
    mask_tokens,
    mlm_loss,
    mlm_nsp_loss,
    nsp_batch,
    plm_batch,
    plm_loss,
    prefix_lm_mask,
    random_spans_noise_mask,
    sample_factorization_ranks,
    sequence_lm_batch,
    span_corrupt,
    span_corruption_batch,
    span_corruption_loss,
    two_stream_logits,
    two_stream_mask,
)

LANG = BracketLanguage()
SPECIAL = SpecialTokens(LANG.vocab_size)


ENCODER_CONFIG = TransformerConfig(SPECIAL.vocab_size, 32, 1, 2, 16, causal=False)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def seqs():
    return LANG.sample(400, 24, seed=0)  # (400, 25): BOS + 24 tokens


def tiny_gpt(block=64, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return GPT(TransformerConfig(SPECIAL.vocab_size, block, n_layer=2, n_head=2, n_embd=16)).to(dtype).eval()


def embedding_grads(model, run):
    """Gradient of ``run(model)`` w.r.t. the token-embedding *output* of the first embedding call
    (one vector per input slot; for the two-stream model that is the content stream)."""
    store = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        store.setdefault("emb", output)

    handle = model.transformer.wte.register_forward_hook(hook) if hasattr(model, "transformer") else \
        model.encoder.wte.register_forward_hook(hook)
    try:
        run(model).backward()
    finally:
        handle.remove()
    return store["emb"].grad


def hand_cross_entropy(logits, targets):
    """float64 loop: mean over non-ignored positions of logsumexp(z) - z[y]."""
    total, n = 0.0, 0
    for z, y in zip(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1)):
        if y == IGNORE:
            continue
        total += math.log(sum(math.exp(v) for v in z.tolist())) - z[y].item()
        n += 1
    return total / n


# ---- causal LM -----------------------------------------------------------------------------------

def test_causal_batch_targets_are_inputs_shifted_by_one():
    data = torch.arange(100)
    b = causal_lm_batch(data, 8, 10, gen())
    assert torch.equal(b["targets"], b["idx"] + 1)
    with pytest.raises(ValueError, match="need at least block_size"):
        causal_lm_batch(torch.arange(5), 2, 10, gen())
    with pytest.raises(ValueError, match="torch.Generator"):
        causal_lm_batch(data, 2, 10, None)


def test_cross_entropy_matches_hand_computation():
    logits = torch.randn(2, 3, 5, generator=gen(1), dtype=torch.float64)
    targets = torch.tensor([[1, 4, IGNORE], [0, IGNORE, 2]])
    expected = hand_cross_entropy(logits, targets)
    assert cross_entropy_written_out(logits, targets).item() == pytest.approx(expected, abs=1e-12)
    assert F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item() == pytest.approx(expected, abs=1e-12)


def test_causal_lm_loss_matches_hand_computation(seqs):
    model = tiny_gpt()
    b = sequence_lm_batch(seqs, 2, gen())
    logits, _ = model(b["idx"])
    assert causal_lm_loss(model, b).item() == pytest.approx(hand_cross_entropy(logits, b["targets"]), abs=1e-10)


def test_causal_prediction_gets_no_gradient_from_the_future(seqs):
    model = tiny_gpt()
    idx = seqs[:1, :12]
    g = embedding_grads(model, lambda m: m(idx)[0][0, 5].sum())  # logits predicting token 6
    assert g[0, 6:].abs().max() == 0  # token 6 (the answer) and later: no influence
    assert g[0, :6].abs().sum(-1).min() > 0  # every earlier token matters


# ---- MLM / NSP ---------------------------------------------------------------------------------

def test_mlm_rates_are_15_percent_then_80_10_10():
    tokens = torch.randint(1, LANG.vocab_size, (400, 250), generator=gen(2))
    tokens[:, 0] = LANG.bos_id
    inputs, labels = mask_tokens(tokens, SPECIAL, gen(3), protected=(LANG.bos_id,), random_low=1)
    sel = labels != IGNORE
    n_rand_vocab = LANG.vocab_size - 1
    assert sel[:, 1:].float().mean().item() == pytest.approx(0.15, abs=0.003)
    assert not sel[:, 0].any()  # protected BOS is never selected
    masked = (inputs == SPECIAL.mask)[sel].float().mean().item()
    changed = ((inputs != tokens) & (inputs != SPECIAL.mask))[sel].float().mean().item()
    kept = (inputs == tokens)[sel].float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.01)
    assert changed == pytest.approx(0.1 * (1 - 1 / n_rand_vocab), abs=0.006)  # a random draw may hit the original
    assert kept == pytest.approx(0.1 + 0.1 / n_rand_vocab, abs=0.006)
    assert torch.equal(inputs[~sel], tokens[~sel])  # unselected positions untouched
    assert torch.equal(labels[sel], tokens[sel])


def test_mlm_loss_counts_selected_positions_only():
    torch.manual_seed(0)
    model = EncoderForPretraining(Transformer(ENCODER_CONFIG)).double().eval()
    idx = torch.randint(0, LANG.vocab_size, (2, 10), generator=gen(4))
    labels = torch.full_like(idx, IGNORE)
    labels[0, 3], labels[1, 7] = 5, 9
    batch = {"idx": idx, "mlm_labels": labels}
    token_logits, _ = model(idx)
    assert mlm_loss(model, batch).item() == pytest.approx(hand_cross_entropy(token_logits, labels), abs=1e-10)


def test_nsp_is_half_true_continuations(seqs):
    b = nsp_batch(seqs, 4000, SPECIAL, gen(5), mlm=False)
    assert b["nsp_labels"].float().mean().item() == pytest.approx(0.5, abs=0.025)
    x = b["idx"]
    half = 12
    assert (x[:, 0] == SPECIAL.cls).all() and (x[:, 1 + half] == SPECIAL.sep).all() and (x[:, -1] == SPECIAL.sep).all()
    a, bseg = x[:, 1 : 1 + half], x[:, 2 + half : -1]
    second_halves = {tuple(r) for r in seqs[:, 1 + half :].tolist()}
    for ai, bi, lab in zip(a.tolist()[:200], bseg.tolist()[:200], b["nsp_labels"].tolist()[:200]):
        row = next(r for r in seqs.tolist() if r[1 : 1 + half] == ai)
        assert (bi == row[1 + half :]) == bool(lab) or (not lab and bi == row[1 + half :])  # duplicates allowed
        assert tuple(bi) in second_halves
    with pytest.raises(ValueError, match="two equal halves"):
        nsp_batch(seqs[:, :24], 4, SPECIAL, gen())


def test_mlm_nsp_loss_is_sum_of_the_two_hand_losses(seqs):
    torch.manual_seed(0)
    model = (
        EncoderForPretraining(Transformer(TransformerConfig(SPECIAL.vocab_size, 32, 1, 2, 16, causal=False)))
        .double()
        .eval()
    )
    b = nsp_batch(seqs, 6, SPECIAL, gen(6))
    token_logits, nsp_logits = model(b["idx"])
    expected = hand_cross_entropy(token_logits, b["mlm_labels"]) + hand_cross_entropy(nsp_logits, b["nsp_labels"])
    assert mlm_nsp_loss(model, b).item() == pytest.approx(expected, abs=1e-10)


# ---- PLM (XLNet) ---------------------------------------------------------------------------------


def test_factorisation_orders_are_uniform_permutations_with_bos_first():
    rank = sample_factorization_ranks(6000, 5, gen(7), n_fixed=1)
    assert (rank.sort(dim=1).values == torch.arange(5)).all()  # a permutation per row
    assert (rank[:, 0] == 0).all()
    first = (rank == 1).float().argmax(dim=1)  # which position is predicted first
    freq = torch.bincount(first, minlength=5)[1:].float() / 6000
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.02)


def test_plm_keeps_the_sequence_in_order(seqs):
    b = plm_batch(seqs, 8, gen(8))
    rows = [next(i for i, r in enumerate(seqs) if torch.equal(r, x)) for x in b["idx"]]
    assert len(rows) == 8  # every input row is an unshuffled row of the data: only the ranks are random


def test_two_stream_mask_hides_each_query_from_its_own_content():
    rank = torch.tensor([[0, 3, 1, 2]])
    m = two_stream_mask(rank)[0, 0]  # (8, 8)
    T = 4
    cc, cq, qc, qq = m[:T, :T], m[:T, T:], m[T:, :T], m[T:, T:]
    assert not qc.diagonal().any()  # the query slot of i never sees token i
    assert cc.diagonal().all()  # the content slot of i does (it is context, not a prediction)
    assert not cq.any() and torch.equal(qq, torch.eye(T, dtype=torch.bool))
    # position 1 (rank 3, predicted last) sees the content of every other position
    assert qc[1].tolist() == [True, False, True, True]
    # position 2 (rank 1) sees only the BOS at position 0
    assert qc[2].tolist() == [True, False, False, False]
    # identity order: the query stream is the causal mask without the diagonal
    ident = two_stream_mask(torch.arange(T)[None])[0, 0]
    assert torch.equal(ident[T:, :T], torch.ones(T, T, dtype=torch.bool).tril(-1))


def test_plm_prediction_gets_no_gradient_from_its_own_or_later_tokens(seqs):
    model = tiny_gpt()
    idx = seqs[:1, :10]
    rank = sample_factorization_ranks(1, 10, gen(9), n_fixed=1)
    i = int((rank[0] == 5).nonzero())  # the position predicted 5th
    g = embedding_grads(model, lambda m: two_stream_logits(m, idx, rank, SPECIAL.mask)[0, i].sum())
    content = g[0, :10].abs().sum(-1)  # first 10 embedding slots are the content stream
    assert content[i] == 0  # its own token: no influence
    later = rank[0] >= 5
    assert content[later].max() == 0  # tokens later in the order: no influence
    assert content[~later].min() > 0  # tokens earlier in the order all do


def test_plm_loss_matches_hand_computation_and_predicts_the_tail_of_the_order(seqs):
    model = tiny_gpt()
    b = plm_batch(seqs, 3, gen(10), predict_fraction=0.5)
    b["query_token"] = SPECIAL.mask
    n_pred = (b["targets"] != IGNORE).sum(1)
    assert (n_pred == 12).all()  # half of the 24 tokens after BOS
    assert (b["rank"][b["targets"] != IGNORE] >= 13).all()  # the last half of each order
    logits = two_stream_logits(model, b["idx"], b["rank"], SPECIAL.mask)
    assert plm_loss(model, b).item() == pytest.approx(hand_cross_entropy(logits, b["targets"]), abs=1e-10)


# ---- span corruption (T5) ------------------------------------------------------------------------


def test_span_noise_is_15_percent_in_spans_of_mean_3():
    g = gen(11)
    n_noise = n_spans = 0
    starts_hist = torch.zeros(100)
    for _ in range(300):
        m = random_spans_noise_mask(100, g)
        n_noise += int(m.sum())
        starts = m & ~torch.cat([torch.tensor([False]), m[:-1]])
        n_spans += int(starts.sum())
        starts_hist += starts.float()
    assert n_noise / (300 * 100) == pytest.approx(0.15, abs=1e-9)
    assert n_noise / n_spans == pytest.approx(3.0, abs=1e-9)
    assert starts_hist[1:].min() > 0  # spans start everywhere but position 0 (kept first, as in T5)


def test_span_corruption_is_invertible():
    tokens = torch.arange(10, 30)
    mask = random_spans_noise_mask(20, gen(12))
    inputs, targets = span_corrupt(tokens, mask, SPECIAL.sentinels)
    # rebuild the original: replace each sentinel in the input by the tokens after it in the targets
    sent = set(SPECIAL.sentinels)
    spans, cur = {}, None
    for t in targets.tolist():
        if t in sent:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    rebuilt = [x for t in inputs.tolist() for x in (spans[t] if t in sent else [t])]
    assert rebuilt == tokens.tolist()
    assert targets[-1].item() == SPECIAL.sentinels[len(spans) - 1]
    with pytest.raises(ValueError, match="sentinels"):
        span_corrupt(tokens, mask, SPECIAL.sentinels[:1])


def test_span_targets_get_no_gradient_from_the_answer(seqs):
    model = tiny_gpt()
    b = span_corruption_batch(seqs, 1, SPECIAL, gen(13))
    P = b["n_prefix"]
    assert torch.equal(b["attn_mask"], prefix_lm_mask(b["idx"].size(1), P))
    p = P + 2  # the logits at p predict the token at p + 1
    g = embedding_grads(model, lambda m: m(b["idx"], attn_mask=b["attn_mask"])[0][0, p].sum())
    assert g[0, p + 1 :].abs().max() == 0
    assert g[0, : p + 1].abs().sum(-1).min() > 0
    # and the loss is cross-entropy on the target list only
    logits, _ = model(b["idx"], attn_mask=b["attn_mask"])
    assert (b["targets"][0, : P - 1] == IGNORE).all() and (b["targets"][0, P - 1 :] != IGNORE).all()
    assert span_corruption_loss(model, b).item() == pytest.approx(hand_cross_entropy(logits, b["targets"]), abs=1e-10)
