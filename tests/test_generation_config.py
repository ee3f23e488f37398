"""``GenerationConfig``: Hugging Face's defaults, checked once when made, frozen, and overridden by
``generate``'s keyword arguments the way ``transformers`` does it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from aigc_book.generation import GenerationConfig, generate
from aigc_book.generation.config import FIELD_NAMES, resolve_generation_config
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig

HF_DIFFERENT = {"top_k": (None, 50)}  # ours, theirs: sampling has no top-k limit unless asked for


def test_defaults_are_hugging_faces_for_every_shared_field():
    transformers = pytest.importorskip("transformers")
    hf_class = transformers.GenerationConfig
    hf_config = hf_class()
    # transformers 5 keeps unset fields at None and fills them from this table; 4.x set them directly
    hf_defaults = getattr(hf_class, "_get_default_generation_params", dict)()
    ours = GenerationConfig()
    shared = sorted(name for name in FIELD_NAMES if hasattr(hf_config, name))
    assert len(shared) == len(FIELD_NAMES)  # every field of ours is one of theirs, same name
    for name in shared:
        theirs = hf_defaults.get(name, getattr(hf_config, name))
        if name in HF_DIFFERENT:
            assert (getattr(ours, name), theirs) == HF_DIFFERENT[name], name
        else:
            assert getattr(ours, name) == theirs, f"{name}: ours {getattr(ours, name)!r}, Hugging Face's {theirs!r}"


def test_a_config_is_frozen_and_hashable():
    config = GenerationConfig(max_new_tokens=5, eos_token_id=[3, 4])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.temperature = 0.5
    assert config.eos_token_id == (3, 4) and config.eos_token_ids == (3, 4)  # a list is kept as a tuple
    assert hash(config) == hash(GenerationConfig(max_new_tokens=5, eos_token_id=(3, 4)))
    assert GenerationConfig(eos_token_id=7).eos_token_ids == (7,) and GenerationConfig().eos_token_ids == ()


def test_fields_must_be_named():
    with pytest.raises(TypeError):
        GenerationConfig(20)  # which field would 20 be? Hugging Face's takes keywords only too


BAD_FIELDS = [
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be an int >= 0, got -1"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens must be an int >= 0, got 2.0"),
    (dict(do_sample="yes"), TypeError, "do_sample must be True or False, got 'yes'"),
    (dict(num_beams=0), ValueError, "num_beams must be an int >= 1, got 0"),
    (dict(use_cache=1), TypeError, "use_cache must be True or False, got 1"),
    (dict(temperature=0.0), ValueError, r"temperature must be a finite number > 0 \(for greedy decoding use "
                                        r"do_sample=False\), got 0.0"),
    (dict(temperature=math.nan), ValueError, "temperature must be a finite number > 0"),
    (dict(top_k=0), ValueError, r"top_k must be a positive int or None \(no limit\), got 0"),
    (dict(top_p=1.5), ValueError, r"top_p must be a number in \[0, 1\] or None \(no limit\), got 1.5"),
    (dict(min_p=-0.1), ValueError, r"min_p must be a number in \[0, 1\] or None \(no limit\), got -0.1"),
    (dict(repetition_penalty=0.0), ValueError, r"repetition_penalty must be a finite number > 0 \(1 = no penalty\)"),
    (dict(length_penalty=math.inf), ValueError, "length_penalty must be a finite number, got inf"),
    (dict(early_stopping="sometimes"), ValueError, "early_stopping must be True, False or 'never', got 'sometimes'"),
    (dict(num_return_sequences=0), ValueError, "num_return_sequences must be an int >= 1, got 0"),
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences=3 must be <= num_beams=2"),
    (dict(num_return_sequences=2), ValueError, "greedy decoding gives one sequence per prompt"),
    (dict(eos_token_id="</s>"), TypeError, "eos_token_id must be an int, a non-empty list of ints, or None"),
    (dict(eos_token_id=[]), TypeError, "eos_token_id must be an int, a non-empty list of ints, or None"),
]


@pytest.mark.parametrize("fields, error, message", BAD_FIELDS, ids=[str(f) for f, _, _ in BAD_FIELDS])
def test_a_bad_field_is_refused_when_the_config_is_made(fields, error, message):
    with pytest.raises(error, match=message) as err:
        GenerationConfig(**fields)
    assert "\n" not in str(err.value)


def test_good_values_pass():
    GenerationConfig(max_new_tokens=0, do_sample=True, temperature=0.5, top_k=3, top_p=None, min_p=0.0,
                     repetition_penalty=None, num_beams=4, num_return_sequences=4, early_stopping="never",
                     length_penalty=-1, eos_token_id=[0, 1])


def test_keyword_overrides_replace_fields_and_are_checked_again():
    base = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=0.7)
    assert resolve_generation_config(base) is base
    assert resolve_generation_config(None) == GenerationConfig()
    changed = resolve_generation_config(base, temperature=1.3, top_k=5)
    assert changed == GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.3, top_k=5)
    assert base.temperature == 0.7  # the given config is left as it was
    with pytest.raises(ValueError, match="greedy decoding gives one sequence per prompt"):
        resolve_generation_config(GenerationConfig(do_sample=True, num_return_sequences=2), do_sample=False)
    with pytest.raises(TypeError, match="generation_config must be a GenerationConfig or None, got dict"):
        resolve_generation_config({"temperature": 0.5})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(TransformerConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()


def test_generate_reads_the_config_and_its_keyword_overrides(model):
    prompt = torch.tensor([[1, 2, 3]])
    config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=4)

    def run(*args, **kwargs):
        return generate(model, prompt, *args, generator=torch.Generator().manual_seed(3), **kwargs).sequences

    assert torch.equal(run(config), run(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=4))
    assert torch.equal(run(config, do_sample=False), run(max_new_tokens=6))  # an override wins
    assert run(config, max_new_tokens=2).shape == (1, 5)


def test_generate_refuses_an_unknown_keyword_by_name(model):
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature': not a GenerationConfig field"):
        generate(model, torch.tensor([[1]]), max_new_tokens=2, temprature=0.5)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0, got None"):
        generate(model, torch.tensor([[1]]), GenerationConfig())
