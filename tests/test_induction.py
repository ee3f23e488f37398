"""Induction heads and few-shot prompting (chapter 4, "In-context learning and induction heads")."""

from __future__ import annotations

import pytest
import torch

from aigc_book.incontext.attention_only import AttentionOnlyConfig, AttentionOnlyTransformer
from aigc_book.incontext.few_shot import few_shot_accuracy, few_shot_prompt, greedy_complete, split_template
from aigc_book.incontext.induction import (
    InductionLog,
    RepeatBatch,
    first_vs_repeat_loss,
    in_context_learning_score,
    mean_attention_to,
    per_token_loss,
    phase_change_step,
    prefix_matching_score,
    previous_token_score,
    repeated_tokens,
    train_induction,
)
from aigc_book.text.char_tokenizer import CharTokenizer


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny_attn_only(seed: int = 0, **overrides) -> AttentionOnlyTransformer:
    torch.manual_seed(seed)
    config = dict(vocab_size=16, block_size=24, n_layer=2, n_head=2, n_embd=16)
    return AttentionOnlyTransformer(AttentionOnlyConfig(**{**config, **overrides}))


# ------------------------------------------------------------------------------------------- data


def test_repeated_tokens_really_repeat_the_segment_later():
    batch = repeated_tokens(64, seq_len=20, segment_len=5, vocab_size=7, generator=_gen())
    assert batch.tokens.shape == (64, 20) and batch.tokens.dtype == torch.long
    assert int(batch.tokens.min()) >= 0 and int(batch.tokens.max()) < 7
    s, r, L = batch.source_start, batch.repeat_start, batch.segment_len
    assert bool((r >= s + L).all()) and bool((r + L <= 20).all()) and bool((s >= 0).all())
    for b in range(64):
        assert torch.equal(batch.tokens[b, r[b] : r[b] + L], batch.tokens[b, s[b] : s[b] + L])
    assert len(set((r - s).tolist())) > 5  # the distance varies, so no fixed offset finds the copy


def test_repeated_tokens_are_reproducible_with_a_seed():
    a = repeated_tokens(4, seq_len=12, segment_len=3, vocab_size=50, generator=_gen(1))
    b = repeated_tokens(4, seq_len=12, segment_len=3, vocab_size=50, generator=_gen(1))
    c = repeated_tokens(4, seq_len=12, segment_len=3, vocab_size=50, generator=_gen(2))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.repeat_start, b.repeat_start)
    assert not torch.equal(a.tokens, c.tokens)


def test_a_half_repeated_is_the_special_case_seq_len_equal_two_segments():
    batch = repeated_tokens(3, seq_len=10, segment_len=5, vocab_size=9, generator=_gen())
    assert batch.source_start.tolist() == [0, 0, 0] and batch.repeat_start.tolist() == [5, 5, 5]
    assert torch.equal(batch.tokens[:, :5], batch.tokens[:, 5:])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seq_len=10, segment_len=1, vocab_size=5), "segment_len must be an int >= 2"),
        (dict(seq_len=7, segment_len=4, vocab_size=5), "seq_len >= 8"),
        (dict(seq_len=10, segment_len=3, vocab_size=1), "vocab_size must be at least 2"),
        (dict(seq_len=0, segment_len=3, vocab_size=5), "seq_len must be an int >= 1"),
    ],
)
def test_repeated_tokens_refuse_impossible_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        repeated_tokens(2, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        repeated_tokens(0, seq_len=10, segment_len=3, vocab_size=5)


# ------------------------------------------------------------------------------------------- scores


def _hand_batch() -> RepeatBatch:
    """T = 6, the segment at 0..1 repeated at 3..4: queries 3, 4 should attend to keys 1, 2."""
    tokens = torch.tensor([[5, 6, 7, 5, 6, 8]])
    return RepeatBatch(tokens, torch.tensor([0]), torch.tensor([3]), 2)


def _uniform_causal(T: int) -> torch.Tensor:
    return torch.tril(torch.ones(T, T, dtype=torch.float64)) / torch.arange(1, T + 1, dtype=torch.float64)[:, None]


def test_prefix_matching_score_of_a_hand_built_pattern_equals_the_hand_computation():
    T = 6
    head0 = _uniform_causal(T).clone()
    head0[3] = torch.tensor([0.1, 0.8, 0.0, 0.1, 0.0, 0.0], dtype=torch.float64)  # query 3 -> key 1: 0.8
    head0[4] = torch.tensor([0.2, 0.1, 0.4, 0.1, 0.2, 0.0], dtype=torch.float64)  # query 4 -> key 2: 0.4
    head1 = _uniform_causal(T)  # query 3 sees 4 keys, query 4 sees 5
    attn = torch.stack([head0, head1])[None, None]  # (n_layer=1, B=1, n_head=2, T, T)
    score = prefix_matching_score(attn, _hand_batch())
    expected = torch.tensor([[(0.8 + 0.4) / 2, (1 / 4 + 1 / 5) / 2]], dtype=torch.float64)
    torch.testing.assert_close(score, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(prefix_matching_score(attn[0], _hand_batch()), expected[0], rtol=0, atol=1e-12)


def test_previous_token_score_is_one_for_a_shift_and_the_harmonic_mean_for_uniform_attention():
    T = 5
    shift = torch.zeros(T, T, dtype=torch.float64)
    shift[0, 0] = 1.0
    shift[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    attn = torch.stack([shift, _uniform_causal(T)])[None].expand(3, -1, -1, -1)  # (B=3, n_head=2, T, T)
    expected = torch.tensor([1.0, sum(1 / (i + 1) for i in range(1, T)) / (T - 1)], dtype=torch.float64)
    torch.testing.assert_close(previous_token_score(attn), expected, rtol=0, atol=1e-12)


def test_mean_attention_to_refuses_bad_positions_and_shapes():
    attn = _uniform_causal(4)[None, None]  # (B=1, n_head=1, 4, 4)
    with pytest.raises(ValueError, match=r"positions in 0 \.\. 3"):
        mean_attention_to(attn, torch.tensor([[4]]), torch.tensor([[0]]))
    with pytest.raises(TypeError, match="integer positions"):
        mean_attention_to(attn, torch.tensor([[1.0]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match=r"\(B, N\) with B=1"):
        mean_attention_to(attn, torch.tensor([[1, 2]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="attention maps must be"):
        previous_token_score(torch.ones(4, 4))
    with pytest.raises(ValueError, match="do not match the batch"):
        prefix_matching_score(_uniform_causal(5)[None, None], _hand_batch())


def test_first_vs_repeat_loss_averages_the_predictable_tokens_of_each_occurrence():
    batch = _hand_batch()  # first occurrence: token 1; copy: token 4 (token 0 and 3 are unpredictable)
    losses = torch.tensor([[2.0, 9.0, 9.0, 0.5, 9.0]])  # column t - 1 is token t
    assert first_vs_repeat_loss(losses, batch) == (2.0, 0.5)
    with pytest.raises(ValueError, match="do not belong"):
        first_vs_repeat_loss(losses[:, :4], batch)


def test_in_context_learning_score_is_late_minus_early_loss():
    losses = torch.tensor([[3.0, 2.0, 1.0], [5.0, 4.0, 1.0]])  # tokens 1, 2, 3
    assert in_context_learning_score(losses, early=1, late=3) == pytest.approx(((1 - 3) + (1 - 5)) / 2)
    with pytest.raises(ValueError, match="token position in 1 .. 3"):
        in_context_learning_score(losses, early=0, late=3)
    with pytest.raises(ValueError, match="early must come before late"):
        in_context_learning_score(losses, early=3, late=2)


def test_per_token_loss_matches_the_models_own_mean_loss(make_tiny_gpt):
    gpt = make_tiny_gpt()
    idx = torch.randint(0, 50, (2, 9), generator=_gen(3))
    losses = per_token_loss(gpt, idx)
    assert losses.shape == (2, 8)
    _, loss = gpt(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(losses.double().mean(), loss, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="T >= 2"):
        per_token_loss(gpt, idx[:, :1])


def test_phase_change_step_finds_the_first_step_below_the_fraction():
    log = InductionLog(steps=[0, 10, 20], first_loss=[3.0, 3.0, 3.0], repeat_loss=[3.0, 2.0, 1.0])
    assert phase_change_step(log) == 20 and phase_change_step(log, fraction=0.7) == 10
    assert phase_change_step(log, fraction=0.1) is None


# ------------------------------------------------------------------------------------------- model


def test_attention_only_model_shapes_and_causal_attention_maps():
    model = _tiny_attn_only().double()
    idx = torch.randint(0, 16, (3, 10), generator=_gen())
    out = model(idx, output_attentions=True)
    assert out.logits.shape == (3, 10, 16) and len(out.attentions) == 2
    maps = model.attention_maps(idx)
    assert maps.shape == (2, 3, 2, 10, 10)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 3, 2, 10, dtype=torch.float64))
    assert float(maps.triu(diagonal=1).abs().max()) == 0.0  # no query sees a later key
    # the fused path (training) and the written-out path (with weights) give the same logits
    torch.testing.assert_close(model(idx).logits, out.logits, rtol=1e-10, atol=1e-12)
    assert not any("mlp" in name for name, _ in model.named_modules())  # attention only


def test_attention_only_model_refuses_bad_input():
    model = _tiny_attn_only()
    with pytest.raises(ValueError, match=r"must lie in \[0, 16\)"):
        model(torch.tensor([[1, 16]]))
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have the shape"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_layer must be a positive int"):
        AttentionOnlyConfig(vocab_size=8, block_size=8, n_layer=0)
    with pytest.raises(ValueError, match="not divisible"):
        AttentionOnlyConfig(vocab_size=8, block_size=8, n_head=3, n_embd=16)
    with pytest.raises(ValueError, match="pos_encoding"):
        AttentionOnlyConfig(vocab_size=8, block_size=8, pos_encoding="alibi")
    with pytest.raises(TypeError, match="AttentionOnlyConfig"):
        AttentionOnlyTransformer(dict(vocab_size=8, block_size=8))


@pytest.fixture
def one_thread():
    """A model this small runs as fast on one thread, and many times faster when other processes
    share the cores (two threads then wait on each other at every operation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_a_short_training_run_makes_the_copy_cheaper_than_the_first_occurrence(one_thread):
    model = _tiny_attn_only(vocab_size=32, block_size=32, n_head=4, n_embd=64)  # the chapter's model
    log = train_induction(model, steps=150, seq_len=32, segment_len=12, eval_every=75, seed=0)
    assert log.steps == [0, 75, 150] and len(log.train_loss) == 150 and log.prefix_matching.shape == (3, 2, 4)
    assert abs(log.first_loss[0] - log.repeat_loss[0]) < 0.1  # untrained: no difference
    assert log.repeat_loss[-1] < log.first_loss[-1] - 0.2  # trained: the copy is predicted from context
    assert log.icl_score[-1] == pytest.approx(log.repeat_loss[-1] - log.first_loss[-1])


def test_train_induction_refuses_bad_settings():
    model = _tiny_attn_only()
    with pytest.raises(ValueError, match="longer than the model's context"):
        train_induction(model, steps=1, seq_len=32, segment_len=8)
    with pytest.raises(ValueError, match="lr must be positive"):
        train_induction(model, steps=1, lr=0.0, seq_len=24, segment_len=8)
    with pytest.raises(TypeError, match="attention_maps"):
        train_induction(torch.nn.Linear(2, 2), steps=1)


# ------------------------------------------------------------------------------------------- few-shot


def test_few_shot_prompt_fills_the_template():
    prompt = few_shot_prompt([("a", "b"), ("c", "d")], "e", "Q: {input}\nA: {output}\n\n")
    assert prompt == "Q: a\nA: b\n\nQ: c\nA: d\n\nQ: e\nA: "
    assert few_shot_prompt([], "7", "{input}->{output};") == "7->"
    assert split_template("x{input}y{output}z") == ("x", "y", "z")


@pytest.mark.parametrize(
    "template, error",
    [("{input} only", ValueError), ("{output} then {input}", ValueError), ("{input}{output}{output}", ValueError),
     (3, TypeError)],
)
def test_few_shot_prompt_refuses_bad_templates(template, error):
    with pytest.raises(error):
        few_shot_prompt([("a", "b")], "c", template)
    with pytest.raises(TypeError, match="pair of strings"):
        few_shot_prompt([("a", 1)], "c")


CHARS = "0123456789=;"


class SuccessorOracle(torch.nn.Module):
    """A hand-written "model" for the task d -> (d + 1) mod 10 with the template '{input}={output};'.

    After '=' it predicts the successor of the digit before it, and ';' after that, but only when
    the prompt already holds at least ``need`` demonstrations (``need`` semicolons); otherwise it
    predicts '0'. Its accuracy against the number of shots is known exactly.
    """

    def __init__(self, need: int):
        super().__init__()
        self.need, self.tok = need, CharTokenizer(CHARS)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx):
        eq, semi = self.tok.stoi["="], self.tok.stoi[";"]
        B, T = idx.shape
        logits = torch.zeros(B, T, len(CHARS))
        for b in range(B):
            shots = int((idx[b] == semi).sum())
            for t in range(T):
                if idx[b, t] == eq and t > 0:
                    nxt = (int(idx[b, t - 1]) + 1) % 10 if shots >= self.need else 0
                elif t > 0 and idx[b, t - 1] == eq:
                    nxt = semi
                else:
                    nxt = 0
                logits[b, t, nxt] = 1.0
        return logits


def test_few_shot_accuracy_counts_the_demonstrations_in_the_prompt():
    oracle = SuccessorOracle(need=2)
    train = [(str(d), str((d + 1) % 10)) for d in range(10)]
    test = [(str(d), str((d + 1) % 10)) for d in (1, 2, 3, 4, 5, 6, 7, 8)]  # the answer is never '0'
    result = few_shot_accuracy(oracle, oracle.tok, train, test, shots=[0, 1, 2, 3], template="{input}={output};")
    assert result.accuracy == [0.0, 0.0, 1.0, 1.0]
    assert result.completions[2] == [a for _, a in test]  # cut at ';'
    for prompt, (query, _) in zip(result.prompts[3], test):  # three demonstrations, never the query itself
        demos = prompt.split(";")[:-1]
        assert len(demos) == 3 and f"{query}=" not in demos and prompt.endswith(f"{query}=")
    assert oracle.training  # the mode is restored


def test_few_shot_accuracy_runs_with_the_books_gpt(make_tiny_gpt):
    gpt = make_tiny_gpt(vocab_size=len(CHARS))
    tok = CharTokenizer(CHARS)
    train = [(str(d), str((d + 1) % 10)) for d in range(10)]
    # 3 shots: 3 * len("1=2;") + len("4=") = 14 prompt tokens, and 3 new ones of which the model reads 2: 16
    result = few_shot_accuracy(gpt, tok, train, train[:3], shots=[0, 3], template="{input}={output};")
    assert result.shots == [0, 3] and all(0.0 <= a <= 1.0 for a in result.accuracy)
    assert [len(p) for p in result.prompts[3]] == [14, 14, 14]
    with pytest.raises(ValueError, match="exceeds the model's context of 16"):
        few_shot_accuracy(gpt, tok, train, train[:3], shots=[4], template="{input}={output};")


def test_few_shot_accuracy_refuses_bad_input():
    oracle = SuccessorOracle(need=0)
    train = [("1", "2"), ("2", "3")]
    with pytest.raises(ValueError, match="shots must be an int in 0 .. len"):
        few_shot_accuracy(oracle, oracle.tok, train, train, shots=[2])
    with pytest.raises(ValueError, match="non-empty"):
        few_shot_accuracy(oracle, oracle.tok, [], train)
    with pytest.raises(TypeError, match="pair of strings"):
        few_shot_accuracy(oracle, oracle.tok, train, [("1", 2)])
    with pytest.raises(TypeError, match="encode"):
        few_shot_accuracy(oracle, object(), train, train)
    with pytest.raises(TypeError, match="not one string"):
        greedy_complete(oracle, oracle.tok, "1=", max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_complete(oracle, oracle.tok, ["1="], max_new_tokens=0)
    assert greedy_complete(oracle, oracle.tok, ["1=", "22=", "3="], max_new_tokens=3, stop=";") == ["2", "3", "4"]

    class Chatty(torch.nn.Module):  # returns text, not logits
        def forward(self, idx):
            return "hello"

    with pytest.raises(TypeError, match="must return logits"):
        greedy_complete(Chatty(), oracle.tok, ["1="], max_new_tokens=1)
