"""Bad checkpoints give pipeserve errors that name the file and the problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeserve.errors import (
    ConfigError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
    WeightsError,
)
from pipeserve.models.auto import load_model
from tests.factories.models import write_tiny_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("good"), "llama")


@pytest.fixture
def model_dir(good, tmp_path):
    return shutil.copytree(good, tmp_path / "model")


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does-not-exist"):
        load_model(tmp_path / "does-not-exist")


def test_missing_config(model_dir):
    (model_dir / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        load_model(model_dir)


def test_invalid_config_json(model_dir):
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_model(model_dir)


def test_config_missing_field(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    del config["hidden_size"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="hidden_size"):
        load_model(model_dir)


def test_missing_weights(model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=str(model_dir)):
        load_model(model_dir)


def test_truncated_safetensors(model_dir):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model\.safetensors"):
        load_model(model_dir)


def test_shape_mismatch_names_tensor_and_file(model_dir):
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 100)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"model\.safetensors.*down_proj.*\(64, 100\)"):
        load_model(model_dir)


def test_missing_tensor(model_dir):
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="qkv_proj"):
        load_model(model_dir)


def test_unsupported_architecture_lists_supported(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["FancyNewForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="FancyNewForCausalLM.*LlamaForCausalLM"):
        load_model(model_dir)


def test_dtype_conversion_on_load(good):
    loaded = load_model(good, dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    # Rotary frequencies stay float32 whatever the weights' dtype.
    assert loaded.model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_sharded_checkpoint_loads_like_single_file(good, tmp_path):
    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(good)
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    a = load_model(good).model.state_dict()
    b = load_model(tmp_path / "sharded").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
