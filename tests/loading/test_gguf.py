"""GGUFCheckpoint: config and tensors from tiny files written here, and from a real SmolLM2 GGUF.

Parity references: the tensors written (round trip), and transformers' own GGUF loader.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from pipeserve.errors import (
    ConfigError,
    UnsupportedArchitectureError,
    UnsupportedQuantizationError,
    WeightsError,
)
from pipeserve.loading.gguf import GGUFCheckpoint
from tests.factories.gguf import (
    random_state_dict,
    tiny_bpe_vocab,
    tiny_llama_config,
    write_tiny_llama_gguf,
)

CONFIG_FIELDS = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "model_type",
]


@pytest.fixture(scope="module")
def vocab():
    return tiny_bpe_vocab()


def write(tmp_path: Path, vocab, qtype=Q.F32, arch="llama", name="tiny.gguf", **kwargs):
    """A tiny model of `arch` written to tmp_path; returns (path, state_dict, config)."""
    extra = {"qwen2": {"qkv_bias": True}, "qwen3": {"qk_norm": True}}.get(arch, {})
    overrides = {"head_dim": 24} if arch == "qwen3" else {}  # head_dim != hidden / heads
    config = tiny_llama_config(len(vocab.tokens), **overrides, **kwargs.pop("config", {}))
    state_dict = random_state_dict(config, **extra)
    path = write_tiny_llama_gguf(
        tmp_path / name, state_dict, config, qtype, vocab, architecture=arch, **kwargs
    )
    return path, state_dict, config


def reference_tensors(path: Path) -> dict[str, torch.Tensor]:
    """What transformers' GGUF loader makes of the file's tensors."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]


# --- round trips through the test writer ------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_f32_round_trip_is_exact(tmp_path, vocab, arch):
    path, state_dict, _ = write(tmp_path, vocab, arch=arch)
    checkpoint = GGUFCheckpoint(path)
    loaded = dict(checkpoint.load_tensors())
    assert set(loaded) == set(state_dict) == set(checkpoint.tensor_names())
    for name, tensor in state_dict.items():
        assert torch.equal(loaded[name], tensor), name


def test_f16_round_trip_rounds_once(tmp_path, vocab):
    path, state_dict, _ = write(tmp_path, vocab, Q.F16)
    loaded = dict(GGUFCheckpoint(path).load_tensors())
    for name, tensor in state_dict.items():
        expected = tensor.half().float() if tensor.ndim == 2 else tensor  # 1-D tensors stay F32
        assert torch.equal(loaded[name], expected), name


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q5_1])
def test_quantised_round_trip_is_close(tmp_path, vocab, qtype):
    path, state_dict, _ = write(tmp_path, vocab, qtype)
    tolerance = {Q.Q8_0: 0.003, Q.Q4_0: 0.06, Q.Q5_1: 0.02}[qtype]
    for name, tensor in GGUFCheckpoint(path).load_tensors():
        torch.testing.assert_close(tensor, state_dict[name], atol=tolerance, rtol=0)


def test_load_tensors_converts_dtype(tmp_path, vocab):
    path, state_dict, _ = write(tmp_path, vocab)
    for name, tensor in GGUFCheckpoint(path).load_tensors(torch.bfloat16):
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, state_dict[name].bfloat16())


def test_tied_embeddings_when_no_output_tensor(tmp_path, vocab):
    path, state_dict, _ = write(tmp_path, vocab, config={"tie_word_embeddings": True})
    checkpoint = GGUFCheckpoint(path)
    assert "lm_head.weight" not in state_dict and "lm_head.weight" not in checkpoint.tensor_names()
    assert checkpoint.hf_config()["tie_word_embeddings"] is True


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "hf_class"),
    [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM"), ("qwen3", "Qwen3ForCausalLM")],
)
def test_hf_config_from_metadata(tmp_path, vocab, arch, hf_class):
    path, _, config = write(tmp_path, vocab, arch=arch)
    checkpoint = GGUFCheckpoint(path)
    hf = checkpoint.hf_config()
    assert hf["architectures"] == [hf_class] and hf["model_type"] == arch
    for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]:
        assert hf[key] == config[key]
    assert hf["num_key_value_heads"] == config["num_key_value_heads"]
    assert hf["head_dim"] == config.get(
        "head_dim", config["hidden_size"] // config["num_attention_heads"]
    )
    assert hf["rms_norm_eps"] == pytest.approx(config["rms_norm_eps"])
    assert hf["rope_theta"] == config["rope_theta"]
    assert hf["vocab_size"] == len(vocab.tokens)
    assert hf["attention_bias"] is (arch == "qwen2")
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (1, 2, 0)
    assert hf["torch_dtype"] == "float32" and "rope_scaling" not in hf
    assert checkpoint.metadata("general.architecture") == arch
    assert checkpoint.metadata("no.such.key", 7) == 7


@pytest.mark.parametrize(("qtype", "name"), [(Q.F16, "float16"), (Q.Q8_0, "float32")])
def test_torch_dtype_names_stored_precision(tmp_path, vocab, qtype, name):
    path, _, _ = write(tmp_path, vocab, qtype)
    assert GGUFCheckpoint(path).hf_config()["torch_dtype"] == name


def test_linear_rope_scaling_from_metadata(tmp_path, vocab):
    metadata = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    path, _, _ = write(tmp_path, vocab, metadata=metadata)
    assert GGUFCheckpoint(path).hf_config()["rope_scaling"] == {
        "rope_type": "linear",
        "factor": 4.0,
    }


@pytest.mark.parametrize("params", [(32.0, 1.0, 4.0), (8.0, 1.0, 4.0), (16.0, 2.0, 8.0)])
def test_llama3_rope_scaling_recovered_from_rope_freqs(tmp_path, vocab, params):
    # llama.cpp stores Llama 3.1/3.2 rope scaling as per-frequency divisors (`rope_freqs.weight`),
    # computed as its converter does. The recovered config must give transformers' llama3 rope
    # the same inverse frequencies.
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    factor, low, high = params
    base, dim, ctx = 500000.0, 64, 8192
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    divisors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        smooth = (ctx / wavelen - low) / (high - low)
        blended = 1 / ((1 - smooth) / factor + smooth)
        divisors.append(1.0 if wavelen < ctx / high else factor if wavelen > ctx / low else blended)
    config = tiny_llama_config(len(vocab.tokens), hidden_size=256, rope_theta=base)
    state_dict = random_state_dict(config) | {"rope_freqs.weight": torch.tensor(divisors)}
    path = write_tiny_llama_gguf(tmp_path / "l3.gguf", state_dict, config, tokenizer=vocab)

    checkpoint = GGUFCheckpoint(path)
    scaling = checkpoint.hf_config()["rope_scaling"]
    assert scaling["rope_type"] == "llama3" and scaling["factor"] == factor
    assert "rope_freqs.weight" not in checkpoint.tensor_names()
    hf_config = LlamaConfig(**(checkpoint.hf_config() | {"rope_scaling": scaling}))
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    torch.testing.assert_close(inv_freq.float(), freqs / torch.tensor(divisors), rtol=1e-5, atol=0)


# --- parity with transformers' GGUF loader (tiny files) ---------------------------------------


@pytest.mark.parametrize(
    ("arch", "qtype"), [("llama", Q.Q8_0), ("qwen2", Q.F16), ("qwen3", Q.Q4_0)]
)
def test_tensors_match_transformers_loader(tmp_path, vocab, arch, qtype):
    # Also pins down which architectures have their Q/K rows un-permuted (llama only).
    path, _, _ = write(tmp_path, vocab, qtype, arch=arch)
    ours = dict(GGUFCheckpoint(path).load_tensors())
    reference = reference_tensors(path)
    assert set(ours) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor.float()), name


def test_config_matches_transformers(tmp_path, vocab):
    from transformers import AutoConfig

    path, _, _ = write(tmp_path, vocab)
    assert_config_matches(
        GGUFCheckpoint(path).hf_config(),
        AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name),
    )


def assert_config_matches(ours: dict, reference) -> None:
    for key in CONFIG_FIELDS:
        assert ours[key] == getattr(reference, key), key
    assert ours["architectures"] == [type(reference).__name__.replace("Config", "ForCausalLM")]
    assert ours["rope_theta"] == reference.rope_parameters["rope_theta"]


# --- bad input ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    with pytest.raises(WeightsError, match="nope.gguf"):
        GGUFCheckpoint(path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip file, not a GGUF" * 10)
    with pytest.raises(WeightsError, match=str(path)):
        GGUFCheckpoint(path)


@pytest.mark.parametrize("keep", [0.3, 0.995])  # cut in the header; cut in the last tensor
def test_truncated_file(tmp_path, vocab, keep):
    path, _, _ = write(tmp_path, vocab)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match=str(path)):
        GGUFCheckpoint(path)


def test_unsupported_quantisation(tmp_path, vocab):
    path, _, _ = write(tmp_path, vocab)
    path = _with_extra_tensor(path, tmp_path / "q2k.gguf", "blk.0.ffn_up.weight", Q.Q2_K)
    checkpoint = GGUFCheckpoint(path)
    with pytest.raises(UnsupportedQuantizationError) as err:
        next(checkpoint.load_tensors())  # checked before the first tensor is yielded
    assert str(path) in str(err.value) and "Q2_K" in str(err.value) and "ffn_up" in str(err.value)


def test_unsupported_architecture(tmp_path, vocab):
    path, _, _ = write(tmp_path, vocab, arch="gemma2")
    checkpoint = GGUFCheckpoint(path)  # opening still works: metadata and tokenizer are readable
    assert checkpoint.architecture == "gemma2"
    for call in (
        checkpoint.hf_config,
        checkpoint.tensor_names,
        lambda: next(checkpoint.load_tensors()),
    ):
        with pytest.raises(UnsupportedArchitectureError) as err:
            call()
        message = str(err.value)
        assert str(path) in message and "gemma2" in message and "qwen3" in message


def test_mixture_of_experts_llama_is_unsupported(tmp_path, vocab):
    path, _, _ = write(tmp_path, vocab, metadata={"llama.expert_count": 8})
    with pytest.raises(UnsupportedArchitectureError, match="experts"):
        GGUFCheckpoint(path).hf_config()


def test_missing_required_metadata(tmp_path, vocab):
    path, _, _ = write(tmp_path, vocab)
    stripped = _rewrite(path, tmp_path / "stripped.gguf", drop_keys={"llama.block_count"})
    with pytest.raises(ConfigError, match="llama.block_count"):
        GGUFCheckpoint(stripped).hf_config()


def test_unknown_tensor_name(tmp_path, vocab):
    path, _, _ = write(tmp_path, vocab)
    path = _with_extra_tensor(path, tmp_path / "odd.gguf", "blk.0.ffn_gate_exps.weight", Q.F32)
    with pytest.raises(WeightsError, match="ffn_gate_exps"):
        GGUFCheckpoint(path).tensor_names()


def _rewrite(src: Path, dst: Path, drop_keys=(), extra=None) -> Path:
    """Copy a GGUF file, dropping metadata keys and adding (or replacing) `extra` = (name, raw, qtype)."""
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in drop_keys or key == "general.architecture":
            continue
        value_type = field.types[0]
        if value_type == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), value_type, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), value_type)
    for tensor in reader.tensors:
        if extra is not None and tensor.name == extra[0]:
            continue
        raw_dtype = tensor.tensor_type if tensor.data.dtype == np.uint8 else None
        writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=raw_dtype)
    if extra is not None:
        name, raw, qtype = extra
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _with_extra_tensor(src: Path, dst: Path, name: str, qtype: Q) -> Path:
    from gguf import GGML_QUANT_SIZES

    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    raw = np.zeros((4, 256 // block_size * block_bytes), dtype=np.uint8)
    if qtype == Q.F32:
        raw = np.zeros((4, 256), dtype=np.float32)
    return _rewrite(src, dst, extra=(name, raw, qtype))


# --- the real SmolLM2-135M-Instruct Q4_1 file ----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from tests.assets import smollm2_gguf

    return smollm2_gguf()


@pytest.mark.slow
def test_real_file_tensors_equal_transformers(smollm2):
    start = time.perf_counter()
    checkpoint = GGUFCheckpoint(smollm2)
    ours = dict(checkpoint.load_tensors())
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nSmolLM2 Q4_1: {len(ours)} tensors in {seconds:.2f}s, peak RSS so far {peak_mib:.0f} MiB"
    )

    reference = reference_tensors(smollm2)
    assert len(ours) == len(reference) == 272
    assert set(ours) == set(reference)
    for name, tensor in reference.items():
        assert ours[name].shape == tensor.shape, name
        assert torch.equal(ours[name], tensor), name
    assert ours["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert ours["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)


@pytest.mark.slow
def test_real_file_config_matches_transformers(smollm2):
    from transformers import AutoConfig

    ours = GGUFCheckpoint(smollm2).hf_config()
    reference = AutoConfig.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    assert_config_matches(ours, reference)
    assert ours["architectures"] == ["LlamaForCausalLM"] and ours["torch_dtype"] == "float32"
    assert (ours["num_hidden_layers"], ours["num_key_value_heads"], ours["head_dim"]) == (30, 3, 64)
