"""LoRA from scratch equals peft's LoRA: one layer (nn.Linear and GPT-2's Conv1D), a whole GPT, its
merged form and its parameter count; and it refuses what it cannot do."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from aigc_book.adaptation.freezing import count_trainable
from aigc_book.adaptation.lora import LoRALinear, apply_lora, lora_parameter_count, merge_lora
from aigc_book.models.gpt import GPT
from aigc_book.models.hf_gpt2 import from_hf_gpt2, to_hf_gpt2

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora.layer import Linear as PeftLoraLinear  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' deprecation notes
TOL = dict(rtol=1e-10, atol=1e-10)
R, ALPHA = 3, 6.0


def _peft_layer(base: nn.Module, *, fan_in_fan_out: bool = False) -> PeftLoraLinear:
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, fan_in_fan_out=fan_in_fan_out)
    return PeftLoraLinear(base, "default", config=config, r=R, lora_alpha=ALPHA,
                          is_target_conv_1d_layer=fan_in_fan_out)


def _same_lora_weights(ours: LoRALinear, theirs: PeftLoraLinear) -> None:
    """Copy peft's A into ours and give both the same non-zero B (a zero B would hide every bug)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        ours.lora_A.weight.copy_(theirs.lora_A["default"].weight)
        b = torch.randn(ours.lora_B.weight.shape, generator=g, dtype=torch.float64)
        ours.lora_B.weight.copy_(b)
        theirs.lora_B["default"].weight.copy_(b)


@pytest.mark.parametrize("conv1d", [False, True], ids=["nn.Linear", "GPT-2 Conv1D (fan_in_fan_out)"])
def test_lora_linear_equals_peft_forward_scaling_delta_merge_and_unmerge(conv1d):
    torch.manual_seed(0)
    if conv1d:
        from transformers.pytorch_utils import Conv1D

        base = Conv1D(5, 6).double()  # weight (in, out) = (6, 5)
        nn.init.normal_(base.weight)
        nn.init.normal_(base.bias)
    else:
        base = nn.Linear(6, 5, dtype=torch.float64)
    original = base.weight.detach().clone()
    ours = LoRALinear(copy.deepcopy(base), r=R, alpha=ALPHA, fan_in_fan_out=conv1d)
    theirs = _peft_layer(copy.deepcopy(base), fan_in_fan_out=conv1d)
    _same_lora_weights(ours, theirs)
    x = torch.randn(4, 2, 6, dtype=torch.float64)

    assert ours.scaling == theirs.scaling["default"] == ALPHA / R
    assert (ours.in_features, ours.out_features) == (6, 5)
    torch.testing.assert_close(ours.delta_weight(), theirs.get_delta_weight("default"), **TOL)
    assert ours.delta_weight().shape == base.weight.shape  # (in, out) for Conv1D
    y = ours(x)
    torch.testing.assert_close(y, theirs(x), **TOL)
    assert not torch.allclose(y, base(x))  # the update is really on the path

    ours.merge()
    theirs.merge()
    torch.testing.assert_close(ours.base_layer.weight, theirs.base_layer.weight, **TOL)
    torch.testing.assert_close(ours(x), y, **TOL)  # merged computes the same function
    torch.testing.assert_close(ours.base_layer(x), y, **TOL)  # with the base layer alone
    ours.unmerge()
    theirs.unmerge()
    torch.testing.assert_close(ours.base_layer.weight, original, **TOL)
    torch.testing.assert_close(ours(x), theirs(x), **TOL)


def test_lora_starts_as_a_zero_update_with_kaiming_a_like_peft():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 32), r=4, alpha=8)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    bound = 1 / 64**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in=64: U(-1/sqrt(64), 1/sqrt(64))
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.abs().max() > 0.9 * bound
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), layer.base_layer(x))


def test_lora_dropout_acts_on_the_low_rank_branch_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8, dtype=torch.float64), r=2, alpha=2, dropout=0.5).train()
    x = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.base_layer(x), **TOL)  # B = 0: dropout cannot show
    nn.init.normal_(layer.lora_B.weight)
    torch.manual_seed(1)
    train_out = layer(x)
    torch.manual_seed(1)
    mask = nn.functional.dropout(torch.ones_like(x), 0.5)  # the same draw dropout made
    expected = layer.base_layer(x) + layer.lora_B(layer.lora_A(x * mask)) * layer.scaling
    torch.testing.assert_close(train_out, expected, **TOL)


@pytest.fixture
def gpt_and_peft(make_tiny_gpt):
    """Our tiny GPT with LoRA on c_attn, and peft's LoRA on the same GPT converted to Hugging Face."""
    ours = make_tiny_gpt()
    hf = to_hf_gpt2(ours)
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True)
    theirs = get_peft_model(hf, config)
    names = apply_lora(ours, target_modules=["c_attn"], r=R, alpha=ALPHA)
    for name in names:
        _same_lora_weights(ours.get_submodule(name), theirs.base_model.model.get_submodule(name))
    return ours, theirs, names


def test_lora_gpt_gives_peft_logits_and_parameter_counts(gpt_and_peft, tiny_ids):
    ours, theirs, names = gpt_and_peft
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    torch.testing.assert_close(ours(tiny_ids).logits, theirs(input_ids=tiny_ids).logits, **TOL)
    trainable, total = theirs.get_nb_trainable_parameters()
    count = count_trainable(ours)
    assert (count.trainable, count.total) == (trainable, total)
    assert count.trainable == 2 * lora_parameter_count(32, 96, R) == 2 * R * (32 + 96)
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        f"{name}.lora_{ab}.weight" for name in names for ab in "AB"}


def test_merged_lora_is_an_ordinary_gpt_with_the_same_logits(gpt_and_peft, tiny_ids, tmp_path):
    ours, theirs, _ = gpt_and_peft
    before = ours(tiny_ids).logits
    merge_lora(ours)
    assert not any(isinstance(m, LoRALinear) for m in ours.modules())
    assert type(ours.transformer.h[0].attn.c_attn) is nn.Linear
    torch.testing.assert_close(ours(tiny_ids).logits, before, **TOL)
    # peft's merge_and_unload gives the same weights
    merged_hf = from_hf_gpt2(theirs.merge_and_unload())
    for (name, a), (_, b) in zip(ours.state_dict().items(), merged_hf.state_dict().items()):
        torch.testing.assert_close(a, b, **TOL, msg=name)
    # and it saves and loads as a plain GPT
    ours.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path)  # a float32 GPT: the float64 weights are rounded on loading
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value.float(), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(loaded.double()(tiny_ids).logits, before, rtol=1e-4, atol=1e-6)


def test_lora_trains_only_a_and_b(make_tiny_gpt, tiny_ids):
    model = make_tiny_gpt()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, r=2, alpha=4)
    torch.testing.assert_close(model(tiny_ids).logits, make_tiny_gpt()(tiny_ids).logits, **TOL)  # B = 0
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # the first step moves B only (A's gradient is zero while B is zero), the second A too
        model(tiny_ids, tiny_ids).loss.backward()
        opt.step()
        opt.zero_grad()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.grad is None and not torch.equal(p, p.detach().clone().zero_()), name
        else:
            base_name = name.replace(".base_layer", "")
            assert torch.equal(p, frozen[base_name]), f"{name} changed"


def test_also_train_keeps_a_new_head_trainable(make_tiny_gpt):
    model = make_tiny_gpt()
    apply_lora(model, r=2, also_train=["transformer.ln_f.*"])  # e.g. ["head.*"] on a SequenceClassifier
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"transformer.ln_f.weight", "transformer.ln_f.bias"} < trainable
    assert count_trainable(model).trainable == 2 * 2 * (32 + 96) + 2 * 32


def test_lora_refuses_bad_arguments(make_tiny_gpt):
    model = make_tiny_gpt()
    for r in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="rank r must be a positive int"):
            apply_lora(model, r=r)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        apply_lora(model, alpha=0)
    with pytest.raises(ValueError, match="dropout must be in"):
        apply_lora(model, dropout=1.0)
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        apply_lora(model, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="tied weights"):
        apply_lora(model, target_modules=["lm_head"])
    with pytest.raises(ValueError, match="non-empty module names"):
        apply_lora(model, target_modules=[])
    with pytest.raises(ValueError, match="no LoRA layers to merge"):
        merge_lora(model)
    with pytest.raises(ValueError, match="also_train must be parameter-name patterns"):
        apply_lora(model, also_train=[3])
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # nothing changed on refusal
    apply_lora(model, target_modules=["c_attn"])
    with pytest.raises(ValueError, match="already have LoRA"):
        apply_lora(model, target_modules=["c_attn"])
    layer = model.transformer.h[0].attn.c_attn
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    with pytest.raises(ValueError, match="fan_in_fan_out=False"):
        LoRALinear(nn.Linear(4, 4), fan_in_fan_out=True)
    with pytest.raises(TypeError, match="2-D weight"):
        LoRALinear(nn.ReLU())
