"""Tiny GGUF files for tests, written the way llama.cpp's `convert_hf_to_gguf.py` writes them.

`write_tiny_llama_gguf` takes an HF-named state dict and config, renames the tensors to GGUF names,
applies llama.cpp's Q/K row permutation (llama only), quantises the 2-D weights and stores the
tokenizer as GGUF metadata. The vocabularies are trained here, offline and in milliseconds: a
byte-level BPE one with `tokenizers` (like GPT-2, Llama 3, Qwen) and a SentencePiece BPE one with
byte fallback (like Llama 2, Mistral) with `sentencepiece`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, TokenType

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "Hello world! Hello there, world. How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n\tprint(i, add(i, 2))",
    "Numbers: 0 1 2 3 4 5 6 7 8 9, 12, 345, 6789, 3.14159 and 2024-01-31.",
    "Café, naïve, résumé, Straße, Ærøskøbing; 東京は日本の首都です。你好，世界！",
    "Emoji are fun 🙂🚀 and so are   repeated   spaces\n\n\nand newlines.",
    "Tokenizers split text into pieces; models read the pieces as numbers.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
] * 4

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


@dataclass(frozen=True)
class GGUFVocab:
    """A tokenizer as GGUF stores it (the `tokenizer.ggml.*` and `tokenizer.chat_template` keys)."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    # bos/eos/unknown/padding -> token id
    ids: dict[str, int] = field(default_factory=dict)
    # add_bos_token/add_eos_token/add_space_prefix -> value
    flags: dict[str, bool] = field(default_factory=dict)
    chat_template: str | None = CHAT_TEMPLATE

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        for name, token_id in self.ids.items():
            writer.add_uint32(f"tokenizer.ggml.{name}_token_id", token_id)
        for name, value in self.flags.items():
            writer.add_bool(f"tokenizer.ggml.{name}", value)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)


def tiny_bpe_vocab(pre: str = "default", vocab_size: int = 400) -> GGUFVocab:
    """A byte-level BPE vocabulary (GPT-2 style) with three control tokens, trained on `CORPUS`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    tokens = [by_id[i] for i in range(len(by_id))]
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    types = [TokenType.CONTROL if t in SPECIAL_TOKENS else TokenType.NORMAL for t in tokens]
    return GGUFVocab(
        model="gpt2",
        tokens=tokens,
        token_types=[int(t) for t in types],
        merges=merges,
        pre=pre,
        ids={"bos": 1, "eos": 2, "unknown": 0, "padding": 0},
        flags={"add_bos_token": False},
    )


def tiny_spm_vocab(vocab_size: int = 420) -> tuple[GGUFVocab, bytes]:
    """A SentencePiece BPE vocabulary with byte fallback (Llama 2 style), and the .model bytes.

    Token types are assigned as llama.cpp's converter does (unknown, control, byte, normal), with
    `<|im_start|>`/`<|im_end|>` as user-defined symbols.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    user_defined = ["<|im_start|>", "<|im_end|>"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",  # as Llama's tokenizer: no NFKC
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        user_defined_symbols=user_defined,
        pad_id=3,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, types, scores = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(TokenType.BYTE)
        elif tokens[-1] in user_defined:
            types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    vocab = GGUFVocab(
        model="llama",
        tokens=tokens,
        token_types=[int(t) for t in types],
        scores=scores,
        ids={
            "bos": sp.bos_id(),
            "eos": sp.eos_id(),
            "unknown": sp.unk_id(),
            "padding": sp.pad_id(),
        },
        flags={"add_bos_token": True, "add_eos_token": False, "add_space_prefix": True},
    )
    return vocab, model.getvalue()


def tiny_llama_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """An HF LlamaConfig-style dict for a 2-layer model with grouped-query attention."""
    config = {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "vocab_size": vocab_size,
        "tie_word_embeddings": False,
    }
    return config | overrides


def random_state_dict(
    config: dict[str, Any], *, qkv_bias: bool = False, qk_norm: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random HF-named Llama/Qwen parameters for `config`."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q_rows, kv_rows = (
        config["num_attention_heads"] * head_dim,
        config["num_key_value_heads"] * head_dim,
    )
    shapes = {
        "model.embed_tokens.weight": (config["vocab_size"], hidden),
        "model.norm.weight": (hidden,),
    }
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (q_rows, hidden),
            p + "self_attn.k_proj.weight": (kv_rows, hidden),
            p + "self_attn.v_proj.weight": (kv_rows, hidden),
            p + "self_attn.o_proj.weight": (hidden, q_rows),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        }
        if qkv_bias:
            shapes |= {
                p + f"self_attn.{x}_proj.bias": (r,)
                for x, r in zip("qkv", (q_rows, kv_rows, kv_rows), strict=True)
            }
        if qk_norm:
            shapes |= {
                p + "self_attn.q_norm.weight": (head_dim,),
                p + "self_attn.k_norm.weight": (head_dim,),
            }
    return {name: torch.randn(shape, generator=gen) * 0.1 for name, shape in shapes.items()}


# HF name fragments -> GGUF ones, as llama.cpp's tensor mapping renames them.
_RENAMES = [
    ("model.embed_tokens.", "token_embd."),
    ("model.norm.", "output_norm."),
    ("lm_head.", "output."),
    ("model.layers.", "blk."),
    (".input_layernorm.", ".attn_norm."),
    (".post_attention_layernorm.", ".ffn_norm."),
    (".self_attn.q_proj.", ".attn_q."),
    (".self_attn.k_proj.", ".attn_k."),
    (".self_attn.v_proj.", ".attn_v."),
    (".self_attn.o_proj.", ".attn_output."),
    (".self_attn.q_norm.", ".attn_q_norm."),
    (".self_attn.k_norm.", ".attn_k_norm."),
    (".mlp.gate_proj.", ".ffn_gate."),
    (".mlp.up_proj.", ".ffn_up."),
    (".mlp.down_proj.", ".ffn_down."),
]


def gguf_name(hf_name: str) -> str:
    for old, new in _RENAMES:
        hf_name = hf_name.replace(old, new)
    return hf_name


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: interleave the two rotary halves of every head's rows."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_llama_gguf(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
    tokenizer: GGUFVocab | None = None,
    *,
    architecture: str = "llama",
    metadata: dict[str, Any] | None = None,
    with_tokenizer: bool = True,
) -> Path:
    """Write `state_dict` as a GGUF file the way llama.cpp's converter would.

    Args:
        path: where to write.
        state_dict: HF-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...).
        config: HF config keys (see `tiny_llama_config`).
        qtype: the type of the 2-D weights (F32, F16, or a quantisation `gguf.quants` can write,
            e.g. Q8_0); 1-D tensors (norms, biases) stay F32, as llama.cpp keeps them.
        tokenizer: the vocabulary to store; a byte-level BPE one by default.
        architecture: `general.architecture`; Q/K rows are permuted only for "llama".
        metadata: extra keys, written as given (ints as uint32, floats as float32).
        with_tokenizer: False writes no tokenizer metadata at all.

    Returns:
        The path written.
    """
    path = Path(path)
    arch = architecture
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny test model")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    if "head_dim" in config:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    for key, value in (metadata or {}).items():
        _add_value(writer, key, value)
    if with_tokenizer:
        (tokenizer or tiny_bpe_vocab()).write(writer)

    for name, tensor in state_dict.items():
        data = tensor.float().numpy()
        if arch == "llama" and ".self_attn.q_proj." in name:
            data = llama_cpp_permute(data, heads)
        elif arch == "llama" and ".self_attn.k_proj." in name:
            data = llama_cpp_permute(data, kv_heads)
        tensor_type = qtype if data.ndim == 2 else GGMLQuantizationType.F32
        if tensor_type == GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name(name), data)
        else:
            writer.add_tensor(
                gguf_name(name), gguf.quants.quantize(data, tensor_type), raw_dtype=tensor_type
            )

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, value)


def write_gguf_from_folder(
    folder: Path,
    path: str | Path,
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
    *,
    architecture: str = "llama",
) -> Path:
    """Convert a tiny HF model folder (config.json + model.safetensors) into a GGUF file."""
    from safetensors.torch import load_file

    config = json.loads((Path(folder) / "config.json").read_text())
    # transformers 5.x saves rope_theta inside rope_parameters.
    config.setdefault("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 1e4))
    state_dict = load_file(Path(folder) / "model.safetensors")
    if config.get("tie_word_embeddings"):
        state_dict.pop("lm_head.weight", None)
    return write_tiny_llama_gguf(path, state_dict, config, qtype, architecture=architecture)
