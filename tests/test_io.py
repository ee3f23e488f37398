"""Saving and loading a model directory: config.json + model.safetensors, round trip and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from aigc_book.models.gpt import GPT
from aigc_book.models.io import CheckpointError, read_config


def test_save_pretrained_round_trips_the_exact_model(make_tiny_gpt, tiny_ids, tmp_path):
    model = make_tiny_gpt(dtype=torch.float32, pos_encoding="rope")
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "GPT" and config["pos_encoding"] == "rope"
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied after loading
    torch.testing.assert_close(loaded(tiny_ids).logits, model(tiny_ids).logits, rtol=0, atol=0)


def test_an_edited_config_that_no_weight_shape_reveals_is_refused(make_tiny_gpt, tmp_path):
    make_tiny_gpt(dtype=torch.float32).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_head"] = 2  # same weight shapes, a different (garbage-producing) model
    (tmp_path / "config.json").write_text(json.dumps(config))
    edited = r"config.json: differs from the config the weights were saved with in n_head"
    with pytest.raises(CheckpointError, match=edited):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "expected a JSON object of config fields, got list"),
    ("{not json", "not valid JSON"),
])
def test_a_broken_config_file_is_one_clear_error(make_tiny_gpt, tmp_path, content, message):
    make_tiny_gpt(dtype=torch.float32).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        read_config(tmp_path)


def test_missing_files_and_unknown_fields_are_named(make_tiny_gpt, tmp_path):
    with pytest.raises(CheckpointError, match="config.json: no such file"):
        GPT.from_pretrained(tmp_path)
    model = make_tiny_gpt(dtype=torch.float32)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: no such checkpoint file"):
        GPT.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_expert": 8}))
    with pytest.raises(CheckpointError, match="differs from the config the weights were saved with in n_expert"):
        GPT.from_pretrained(tmp_path)
