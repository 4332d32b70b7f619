"""Tiny random decoder models written to disk by the reference implementation.

Each factory builds a `transformers` model from a tiny config with a fixed seed and saves it with
`save_pretrained` (config.json + model.safetensors), exactly as a real checkpoint is laid out, next
to a small byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json).
The same folder is then loaded by pipeserve and by `transformers` for parity tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.factories.tokenizers import write_bpe_tokenizer

VOCAB = 512

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    # Larger weights than the default init make logits decisive, so greedy ties are unlikely.
    initializer_range=0.1,
)

# family name -> (transformers config class, model class, config overrides)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": False}),
    "llama-tied-headdim": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"tie_word_embeddings": True, "head_dim": 32, "attention_bias": True, "mlp_bias": True},
    ),
    "llama-rope-linear": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    ),
    "llama-rope-dynamic": (
        "LlamaConfig",
        "LlamaForCausalLM",
        # A short trained length so the test sequences run past it and the scaling kicks in.
        {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 8},
    ),
    "llama-rope-llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            "rope_theta": 500000.0,
        },
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 6}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        {
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 128,
            "vocab_size": VOCAB,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "initializer_range": 0.1,
        },
    ),
}


def write_tiny_model(folder: Path, family: str, seed: int = 0) -> Path:
    """Save a tiny random model of `family` (a key of FAMILIES) into `folder` and return it."""
    import transformers

    config_name, model_name, overrides = FAMILIES[family]
    config_cls = getattr(transformers, config_name)
    kwargs = overrides if family == "gpt2" else {**_COMMON, **overrides}
    if "rope_scaling" in kwargs:
        # transformers 5.x spells rope settings as one `rope_parameters` dict.
        kwargs = dict(kwargs)
        params = dict(kwargs.pop("rope_scaling"))
        params["rope_theta"] = kwargs.pop("rope_theta", 10000.0)
        kwargs["rope_parameters"] = params
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    write_bpe_tokenizer(folder, vocab_size=VOCAB)
    return folder
