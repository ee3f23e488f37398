"""Tasks with known answers: labels a program can verify, a classification head, extractive QA."""

import pytest
import torch
import torch.nn.functional as F

from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import Transformer, TransformerConfig
from aigc_book.tasks.classification import (
    SequenceClassifier,
    classification_accuracy,
    classification_loss,
    make_classification_data,
)
from aigc_book.tasks.qa import SpanHeads, best_span, evaluate_qa, make_qa_data, qa_loss, span_text
from aigc_book.text.languages import CLOSERS, OPENERS, BracketLanguage
from aigc_book.training.objectives import EncoderForPretraining, SpecialTokens

LANG = BracketLanguage()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def encoder(vocab=29, block=24, dtype=torch.float64, causal=False):
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab, block, n_layer=2, n_head=2, n_embd=16, causal=causal)).to(dtype)


# ---- classification data ---------------------------------------------------------------------


@pytest.mark.parametrize("prop", ["max_depth", "dominant_type", "corrupted"])
def test_classes_are_balanced_in_both_splits_and_the_splits_share_no_sequence(prop):
    data = make_classification_data(prop, n_per_class=40, length=16, seed=0)
    K = len(data.classes)
    assert torch.bincount(data.train_y, minlength=K).tolist() == [30] * K
    assert torch.bincount(data.val_y, minlength=K).tolist() == [10] * K
    train = {tuple(r) for r in data.train_x.tolist()}
    assert len(train) == len(data.train_x) and not train & {tuple(r) for r in data.val_x.tolist()}
    again = make_classification_data(prop, n_per_class=40, length=16, seed=0)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.val_y, data.val_y)


def test_labels_agree_with_a_count_done_on_the_text():
    dom = make_classification_data("dominant_type", n_per_class=20, length=16, seed=1)
    for row, label in zip(dom.train_x, dom.train_y):
        counts = [LANG.decode(row).count(o) for o in OPENERS]
        assert counts[label] > max(c for k, c in enumerate(counts) if k != label)
    deep = make_classification_data("max_depth", n_per_class=20, length=16, seed=1)
    for row, label in zip(deep.train_x, deep.train_y):
        depth = best = 0
        for ch in LANG.decode(row):
            depth += (ch in OPENERS) - (ch in CLOSERS)
            best = max(best, depth)
        assert label == {0: 0, 1: 0, 2: 1}.get(best, 2)


def test_open_type_is_the_innermost_bracket_open_at_the_end():
    data = make_classification_data("open_type", n_per_class=20, length=16, seed=3)
    assert data.classes == tuple(OPENERS)
    for row, label in zip(data.train_x, data.train_y):
        stack = []
        for ch in LANG.decode(row):
            if ch in OPENERS:
                stack.append(ch)
            elif ch in CLOSERS:
                stack.pop()
        assert stack and stack[-1] == OPENERS[label]  # rows ending at depth 0 are never drawn


def test_corrupted_rows_are_exactly_the_ill_formed_ones():
    data = make_classification_data("corrupted", n_per_class=30, length=12, seed=2)
    for row, label in zip(torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y])):
        assert LANG.is_well_formed(row) == (label == 0)
        assert row[0] == LANG.bos_id


def test_bad_classification_requests_are_refused():
    with pytest.raises(ValueError, match="unknown property"):
        make_classification_data("length", n_per_class=4, length=8, seed=0)
    with pytest.raises(ValueError, match="too rare at length 2"):
        make_classification_data("max_depth", n_per_class=4, length=2, seed=0)  # depth 3 needs 3 tokens
    with pytest.raises(ValueError, match="n_per_class"):
        make_classification_data("corrupted", n_per_class=1, length=8, seed=0)
    data = make_classification_data("corrupted", n_per_class=4, length=8, seed=0)
    with pytest.raises(ValueError, match="split must be"):
        data.batch("test", 2, gen())


# ---- the classification head -----------------------------------------------------------------


def test_last_token_pooling_reads_the_gpts_last_hidden_state(make_tiny_gpt):
    gpt = make_tiny_gpt(vocab_size=29)
    clf = SequenceClassifier(gpt, 3)
    idx = torch.randint(0, 29, (2, 7), generator=gen())
    h = gpt(idx).last_hidden_state[:, -1]
    torch.testing.assert_close(clf(idx), clf.head(h), rtol=0, atol=1e-12)
    assert all(k.startswith(('backbone.', 'head.')) for k in clf.state_dict())  # the stack saved once


def test_right_padding_does_not_change_the_prediction(make_tiny_gpt):
    idx = torch.randint(1, 29, (1, 6), generator=gen())
    padded = torch.cat([idx, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 3])
    for model, pool in ((make_tiny_gpt(vocab_size=29), "last"), (encoder(), "mean"), (encoder(), "last")):
        clf = SequenceClassifier(model, 4, pool=pool)
        torch.testing.assert_close(clf(padded, padding_mask=mask), clf(idx), rtol=0, atol=1e-12)


def test_first_position_pooling_is_refused_on_a_causal_model(make_tiny_gpt):
    with pytest.raises(ValueError, match="seen only itself"):
        SequenceClassifier(make_tiny_gpt(), 2, pool="first")
    with pytest.raises(ValueError, match="pool must be"):
        SequenceClassifier(encoder(), 2, pool="max")
    with pytest.raises(ValueError, match="n_classes"):
        SequenceClassifier(encoder(), 1)
    SequenceClassifier(encoder(), 2, pool="first")  # an encoder's position 0 sees everything
    pretrained = EncoderForPretraining(encoder(vocab=40))  # chapter 3's BERT-style model
    idx = torch.randint(0, 29, (2, 5), generator=gen())
    clf = SequenceClassifier(pretrained, 2, pool="first")
    torch.testing.assert_close(clf(idx), clf.head(pretrained.encoder(idx).last_hidden_state[:, 0]))


def test_classification_loss_is_cross_entropy_and_checks_label_shape():
    clf = SequenceClassifier(encoder(), 3, pool="first")
    idx = torch.randint(0, 29, (4, 8), generator=gen())
    labels = torch.tensor([0, 2, 1, 2])
    expected = F.cross_entropy(clf(idx), labels)
    torch.testing.assert_close(classification_loss(clf, {"idx": idx, "labels": labels}), expected)
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\)"):
        classification_loss(clf, {"idx": idx, "labels": labels[:, None]})


@pytest.mark.slow
def test_a_gpt_with_a_head_can_fit_a_small_labelled_set():
    data = make_classification_data("dominant_type", n_per_class=4, length=10, seed=0)
    torch.manual_seed(0)
    clf = SequenceClassifier(GPT(TransformerConfig(29, 11, n_layer=1, n_head=2, n_embd=16)), 4)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-2)
    batch = {"idx": data.train_x, "labels": data.train_y}
    for _ in range(40):
        opt.zero_grad()
        classification_loss(clf, batch).backward()
        opt.step()
    assert classification_accuracy(clf, data.train_x, data.train_y) == 1.0


# ---- extractive QA ---------------------------------------------------------------------------


def test_start_and_end_labels_point_at_the_answer_text():
    """The labels are positions in the input whose span is the asked bracket up to its matching
    closer, found here on the text with a stack (the article's script used token ids instead)."""
    data = make_qa_data(50, length=16, seed=0)
    names = LANG.itos + data.special.names()
    for n, (row, s, e) in enumerate(zip(data.idx, data.start_positions.tolist(), data.end_positions.tolist())):
        text = [names[t] for t in row]
        assert row[0] == data.special.cls and row[-1] == data.special.sep
        assert (row == data.marker).sum() == 1 and row[s - 1] == data.marker  # the question marks the opener
        assert text[s] in OPENERS
        depth, j = 0, s
        while True:  # walk to the closer that brings the depth back
            depth += (text[j] in OPENERS) - (text[j] in CLOSERS)
            if depth == 0:
                break
            j += 1
        assert e == j and text[e] == CLOSERS[OPENERS.index(text[s])]
        assert span_text(LANG, row, s, e, sep="") == "".join(text[s : e + 1])
        assert data.span_mask[n, s] and data.span_mask[n, e]


def test_question_marker_and_context_fit_chapter_3s_encoder_vocabulary():
    data = make_qa_data(8, length=10, seed=0)
    assert data.special == SpecialTokens(LANG.vocab_size) and data.marker == data.special.sentinels[0]
    assert int(data.idx.max()) < data.special.vocab_size
    assert not data.span_mask[:, [0, 1, -1]].any()  # [CLS], BOS and [SEP] are never answers
    assert not data.span_mask[data.idx == data.marker].any()


def test_best_span_never_ends_before_it_starts_and_respects_the_length():
    start = torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.0]])
    end = torch.tensor([[0.0, 4.0, 0.0, 0.0, 1.0]])
    assert (start.argmax(), end.argmax()) == (3, 1)  # separate arg-maxes: end before start
    s, e = best_span(start, end, max_length=5)
    assert (s.item(), e.item()) == (3, 4)
    s, e = best_span(start, end, max_length=1)
    assert (s.item(), e.item()) == (3, 3)


def test_best_span_equals_a_brute_force_search():
    g = gen(3)
    start = torch.randn(6, 9, generator=g, dtype=torch.float64)
    end = torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 9, generator=g) < 0.7
    mask[:, 4] = True
    s, e = best_span(start, end, max_length=3, span_mask=mask)
    for b in range(6):
        cands = [(start[b, i] + end[b, j], i, j) for i in range(9) for j in range(i, min(i + 3, 9))
                 if mask[b, i] and mask[b, j]]
        _, i, j = max(cands)
        assert (s[b].item(), e[b].item()) == (i, j)


def test_qa_loss_is_the_mean_of_start_and_end_cross_entropies():
    data = make_qa_data(6, length=12, seed=0)
    model = SpanHeads(encoder(vocab=data.special.vocab_size, block=16))
    batch = data.batch(4, gen())
    s_log, e_log = model(batch["idx"], span_mask=batch["span_mask"])
    expected = (F.cross_entropy(s_log, batch["start_positions"]) + F.cross_entropy(e_log, batch["end_positions"])) / 2
    torch.testing.assert_close(qa_loss(model, batch), expected, rtol=0, atol=1e-12)
    assert torch.isinf(s_log[~batch["span_mask"]]).all()  # no probability outside the context


def test_qa_loss_refuses_token_ids_in_place_of_positions():
    """The source article passes the question's padded token ids as start positions: refused, with why."""
    data = make_qa_data(4, length=12, seed=0)
    model = SpanHeads(encoder(vocab=data.special.vocab_size, block=16))
    batch = data.batch(2, gen())
    bad = dict(batch, start_positions=batch["idx"])  # (B, T) token ids
    with pytest.raises(ValueError, match="not token ids"):
        qa_loss(model, bad)
    with pytest.raises(ValueError, match=r"positions in \[0, 16\)"):
        qa_loss(model, dict(batch, end_positions=torch.tensor([3, 35])))
    with pytest.raises(ValueError, match="bidirectional encoder"):
        SpanHeads(encoder(causal=True))


def test_an_oracle_scores_one_hundred_and_a_shifted_one_less():
    data = make_qa_data(20, length=14, seed=0)

    class Oracle(torch.nn.Module):
        def __init__(self, shift=0):
            super().__init__()
            self.w, self.shift = torch.nn.Parameter(torch.zeros(1)), shift

        def forward(self, idx, span_mask=None):
            rows = [next(i for i in range(len(data)) if torch.equal(data.idx[i], r)) for r in idx]
            s = F.one_hot(data.start_positions[rows], idx.size(1)).double() * 10
            e = F.one_hot(data.end_positions[rows] - self.shift, idx.size(1)).double() * 10
            return s, e

    perfect = evaluate_qa(Oracle(), data, max_length=14)
    assert perfect == {"exact_match": 100.0, "f1": perfect["f1"], "span_exact_match": 100.0, "span_f1": 100.0}
    short = evaluate_qa(Oracle(shift=1), data, max_length=14)
    assert short["span_exact_match"] == 0.0 and 0.0 < short["span_f1"] < 100.0
