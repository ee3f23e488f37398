"""Freezing, bottleneck adapters, prompt tuning and prefix tuning on the tiny GPT: what trains, how many
parameters (by formula and against peft), and that a neutral start leaves the model's logits as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aigc_book.adaptation.adapters import (
    AdapterAfter,
    BottleneckAdapter,
    adapter_parameter_count,
    apply_adapters,
)
from aigc_book.adaptation.freezing import count_trainable, freeze_all_but, train_last_layers
from aigc_book.adaptation.prompts import PrefixTuning, PromptTuning
from aigc_book.models.hf_gpt2 import to_hf_gpt2

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' deprecation notes
TOL = dict(rtol=1e-10, atol=1e-10)
C, L, V = 32, 2, 50  # the tiny GPT: width, layers, vocabulary


def _grads(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


# ---------------------------------------------------------------------------------------------- freezing


def test_count_trainable_counts_a_tied_matrix_once(tiny_gpt):
    count = count_trainable(tiny_gpt)
    assert count.trainable == count.total == tiny_gpt.num_parameters() and count.percent == 100.0
    freeze_all_but(tiny_gpt, ["transformer.h.1.*"])
    block = sum(p.numel() for p in tiny_gpt.transformer.h[1].parameters())
    assert count_trainable(tiny_gpt) == (block, count.total, pytest.approx(100 * block / count.total))


def test_freeze_all_but_takes_patterns_or_a_predicate_and_refuses_a_typo(tiny_gpt):
    names = freeze_all_but(tiny_gpt, lambda name, p: p.dim() == 1)  # biases and LayerNorms ("BitFit"-like)
    assert names and all(p.requires_grad == (p.dim() == 1) for p in tiny_gpt.parameters())
    with pytest.raises(ValueError, match="no parameter was chosen"):
        freeze_all_but(tiny_gpt, ["transformer.h.9.*"])
    with pytest.raises(TypeError, match="pattern"):
        freeze_all_but(tiny_gpt, 3)


def test_train_last_layers_trains_the_top_blocks_and_final_norm(tiny_gpt, tiny_ids):
    names = train_last_layers(tiny_gpt, 1)
    assert names and all(n.startswith(("transformer.h.1.", "transformer.ln_f.")) for n in names)
    tiny_gpt(tiny_ids, tiny_ids).loss.backward()
    assert _grads(tiny_gpt) == set(names)
    assert "transformer.wte.weight" in train_last_layers(tiny_gpt, 2, head=True)  # the tied head is the embedding
    for k in (0, 3, 1.0):
        with pytest.raises(ValueError, match="k must be an int in 1..2"):
            train_last_layers(tiny_gpt, k)
    with pytest.raises(TypeError, match="expects a GPT"):
        train_last_layers(nn.Linear(2, 2), 1)


# ---------------------------------------------------------------------------------------------- adapters


def test_a_fresh_adapter_leaves_the_logits_unchanged(make_tiny_gpt, tiny_ids):
    model = make_tiny_gpt()
    before = model(tiny_ids).logits
    names = apply_adapters(model, bottleneck=4)
    assert names == [f"transformer.h.{i}.{s}" for i in range(L) for s in ("attn.c_proj", "mlp.c_proj")]
    assert isinstance(model.transformer.h[0].attn.c_proj, AdapterAfter)
    torch.testing.assert_close(model(tiny_ids).logits, before, **TOL)  # up-projection zero: exactly the identity
    # the paper's near-identity start (weights N(0, 1e-2) truncated at 2 std) moves logits by < 1e-3
    houlsby = make_tiny_gpt()
    apply_adapters(houlsby, bottleneck=4, init="houlsby")
    change = (houlsby(tiny_ids).logits - before).abs().max()
    assert 0 < change < 1e-3


def test_adapter_parameters_follow_the_formula_and_alone_get_gradients(make_tiny_gpt, tiny_ids):
    model = make_tiny_gpt()
    apply_adapters(model, bottleneck=4)
    assert adapter_parameter_count(C, 4) == 2 * 4 * C + 4 + C
    assert count_trainable(model).trainable == 2 * L * adapter_parameter_count(C, 4)
    with torch.no_grad():  # a non-zero up-projection so every adapter weight gets a gradient
        for m in model.modules():
            if isinstance(m, BottleneckAdapter):
                m.up.weight.normal_(std=0.1)
    model(tiny_ids, tiny_ids).loss.backward()
    assert _grads(model) == {n for n, _ in model.named_parameters() if ".adapter." in n}
    with_norms = make_tiny_gpt()
    apply_adapters(with_norms, bottleneck=4, train_layer_norms=True)  # Houlsby et al. also train LayerNorms
    assert count_trainable(with_norms).trainable == 2 * L * adapter_parameter_count(C, 4) + (2 * L + 1) * 2 * C
    with_head = make_tiny_gpt()
    apply_adapters(with_head, bottleneck=4, also_train=["transformer.ln_f.*"])  # e.g. ["head.*"] for a classifier
    assert count_trainable(with_head).trainable == 2 * L * adapter_parameter_count(C, 4) + 2 * C


def test_adapters_work_with_the_kv_cache(make_tiny_gpt):
    model = make_tiny_gpt()
    apply_adapters(model, bottleneck=4, init="houlsby")
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.generate(prompt, 5, temperature=0), model.generate(prompt, 5, temperature=0,
                                                                                  use_cache=False))


def test_adapters_refuse_bad_arguments(make_tiny_gpt):
    model = make_tiny_gpt()
    for kwargs, match in (({"bottleneck": 0}, "positive int"), ({"activation": "swish"}, "activation must be"),
                          ({"init": "ones"}, "init must be"), ({"sublayers": []}, "name suffixes"),
                          ({"also_train": [None]}, "also_train must be")):
        with pytest.raises(ValueError, match=match):
            apply_adapters(model, **kwargs)
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        apply_adapters(model, sublayers=["mlp.w_out"])
    assert not any(isinstance(m, AdapterAfter) for m in model.modules())  # nothing changed on refusal
    apply_adapters(model)
    with pytest.raises(ValueError, match="already has adapters"):
        apply_adapters(model)


# ---------------------------------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def peft_lib():
    return pytest.importorskip("peft")


def test_prompt_tuning_matches_peft_counts_and_logits(make_tiny_gpt, tiny_ids, peft_lib):
    P = 3
    ours = PromptTuning(make_tiny_gpt(), P)
    theirs = peft_lib.get_peft_model(to_hf_gpt2(make_tiny_gpt()),
                                     peft_lib.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
    count = count_trainable(ours)
    assert (count.trainable, count.total) == theirs.get_nb_trainable_parameters()
    assert count.trainable == P * C
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.prompt)
    out = ours(tiny_ids)
    assert out.logits.shape == (2, 7, V)  # the virtual tokens' logits are dropped
    torch.testing.assert_close(out.logits, theirs(input_ids=tiny_ids).logits[:, P:], **TOL)


def test_a_prompt_of_token_embeddings_acts_like_those_tokens(make_tiny_gpt, tiny_ids):
    model = make_tiny_gpt()
    words = torch.tensor([4, 8, 15])
    tuned = PromptTuning(model, 3, init=words)
    torch.testing.assert_close(tuned.prompt, model.transformer.wte.weight[words], **TOL)
    full = torch.cat([words.expand(2, -1), tiny_ids], dim=1)
    torch.testing.assert_close(tuned(tiny_ids).logits, model(full).logits[:, 3:], **TOL)


def test_prefix_tuning_matches_peft_counts_and_logits(make_tiny_gpt, tiny_ids, peft_lib):
    P = 3
    ours = PrefixTuning(make_tiny_gpt(), P, init="random")
    config = peft_lib.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)
    theirs = peft_lib.get_peft_model(to_hf_gpt2(make_tiny_gpt()), config)
    count = count_trainable(ours)
    assert (count.trainable, count.total) == theirs.get_nb_trainable_parameters()
    assert count.trainable == P * L * 2 * C
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.prefix)
    torch.testing.assert_close(ours(tiny_ids).logits, theirs(input_ids=tiny_ids).logits, **TOL)
    # with Li & Liang's reparameterisation: an embedding and a two-layer MLP
    H = 16
    projected = PrefixTuning(make_tiny_gpt(), P, projection_hidden=H, init="random")
    config = peft_lib.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=True,
                                         encoder_hidden_size=H)
    theirs = peft_lib.get_peft_model(to_hf_gpt2(make_tiny_gpt()), config)
    count = count_trainable(projected)
    assert (count.trainable, count.total) == theirs.get_nb_trainable_parameters()
    assert count.trainable == P * C + (C * H + H) + (H * L * 2 * C + L * 2 * C)


def test_a_prefix_of_real_activations_acts_like_those_tokens(make_tiny_gpt, tiny_ids):
    model = make_tiny_gpt()
    words = torch.tensor([4, 8, 15])
    tuned = PrefixTuning(model, 3, init=words)  # the keys and values the model computes for these tokens
    full = torch.cat([words.expand(2, -1), tiny_ids], dim=1)
    torch.testing.assert_close(tuned(tiny_ids).logits, model(full).logits[:, 3:], **TOL)
    kv = tuned.prefix_kv()
    assert len(kv) == L and kv[0][0].shape == (1, 4, 3, 8)  # (1, n_head, P, head_dim), broadcast over the batch


@pytest.mark.parametrize("kind", ["prompt", "prefix", "prefix+mlp"])
def test_only_the_virtual_token_parameters_get_gradients(make_tiny_gpt, tiny_ids, kind):
    model = make_tiny_gpt()
    tuned = {"prompt": lambda: PromptTuning(model, 2), "prefix": lambda: PrefixTuning(model, 2),
             "prefix+mlp": lambda: PrefixTuning(model, 2, projection_hidden=8, init="random")}[kind]()
    targets = tiny_ids.clone()
    targets[:, :-1] = -100  # a classification-style loss on the last position only
    out = tuned(tiny_ids, targets)
    manual = nn.functional.cross_entropy(out.logits[:, -1], tiny_ids[:, -1])
    torch.testing.assert_close(out.loss, manual, **TOL)
    out.loss.backward()
    assert _grads(tuned) == {n for n, _ in tuned.named_parameters() if not n.startswith("model.")}
    assert all(p.grad is None for p in model.parameters())


def test_prefix_projection_can_be_dropped_after_training(make_tiny_gpt, tiny_ids):
    tuned = PrefixTuning(make_tiny_gpt(), 2, projection_hidden=8, init="random")
    before = tuned(tiny_ids).logits
    tuned.drop_projection()
    assert tuned.transform is None and count_trainable(tuned).trainable == 2 * L * 2 * C
    torch.testing.assert_close(tuned(tiny_ids).logits, before, **TOL)


@pytest.mark.parametrize("wrapper", [PromptTuning, PrefixTuning])
def test_a_padded_row_gives_the_logits_of_the_unpadded_one(make_tiny_gpt, wrapper):
    tuned = wrapper(make_tiny_gpt(), 3)
    short, long = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 1, 2, 3, 4, 5, 6]])
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1), long])  # left padding
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, :3] = False
    logits = tuned(batch, padding_mask=mask).logits
    torch.testing.assert_close(logits[0, 3:], tuned(short).logits[0], **TOL)
    torch.testing.assert_close(logits[1], tuned(long).logits[0], **TOL)
    right = torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # right padding
    torch.testing.assert_close(tuned(right, padding_mask=mask.flip(1)[:1]).logits[0, :4], tuned(short).logits[0],
                               **TOL)


@pytest.mark.parametrize("wrapper", [PromptTuning, PrefixTuning])
def test_virtual_token_wrappers_refuse_bad_input(make_tiny_gpt, tiny_ids, wrapper):
    model = make_tiny_gpt()
    for n in (0, 16, 2.0):
        with pytest.raises(ValueError, match="num_virtual_tokens must be an int in 1..15"):
            wrapper(model, n)
    with pytest.raises(TypeError, match="expected a GPT"):
        wrapper(nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="token ids"):
        wrapper(model, 2, init=torch.tensor([1, 2, 3]))
    tuned = wrapper(model, 10)
    with pytest.raises(ValueError, match="pass at most 6 tokens"):
        tuned(torch.zeros(1, 7, dtype=torch.long))
    ids = tiny_ids[:, :5]
    with pytest.raises(ValueError, match="targets must have the shape of idx"):
        tuned(ids, ids[:, :3])
    with pytest.raises(ValueError, match="padding_mask must have the shape of idx"):
        tuned(ids, padding_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="token ids"):
        tuned(torch.full((1, 2), V))


def test_prefix_projection_refuses_a_token_start(make_tiny_gpt):
    with pytest.raises(ValueError, match="init='random'"):
        PrefixTuning(make_tiny_gpt(), 2, projection_hidden=8)
    with pytest.raises(ValueError, match="projection_hidden must be a positive int"):
        PrefixTuning(make_tiny_gpt(), 2, projection_hidden=0, init="random")
    with pytest.raises(ValueError, match="no projection to drop"):
        PrefixTuning(make_tiny_gpt(), 2).drop_projection()
