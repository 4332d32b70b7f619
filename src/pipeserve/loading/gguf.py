"""Reading a GGUF checkpoint: its metadata as an HF-style config, and its tensors under HF names.

NOTE: a GGUF file is a header (key/value metadata plus a table of tensor names, types, shapes and
offsets) followed by the tensor data. `gguf.GGUFReader` memory-maps the file and gives each
tensor's bytes as a view into that map, so nothing is read until a tensor is dequantised, and
`load_tensors` dequantises them one at a time.

llama.cpp's converter renames tensors (`blk.N.attn_q.weight` for `model.layers.N.self_attn.q_proj
.weight`) and, for the architectures it runs with GPT-J-style ("normal") rotary embeddings, which
includes `llama`, permutes the rows of the Q and K projections so that each head's two rotary halves
are interleaved. Loading undoes the renaming, and the permutation where the converter applied one:
not for `qwen2`/`qwen3`, which llama.cpp runs with NeoX-style rotary embeddings as HF does.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader

from ..errors import (
    ConfigError,
    UnsupportedArchitectureError,
    UnsupportedQuantizationError,
    WeightsError,
)
from .dequant import SUPPORTED_TYPES, dequantize


@dataclass(frozen=True)
class _Architecture:
    """How one GGUF `general.architecture` maps onto an HF model class."""

    hf_class: str  # the `architectures` entry of config.json
    model_type: str
    unpermute_qk: bool  # whether llama.cpp's converter permuted the Q/K rows (see module NOTE)


ARCHITECTURES: dict[str, _Architecture] = {
    # Mistral-style models are also written as `llama`; their weights are Llama's.
    "llama": _Architecture("LlamaForCausalLM", "llama", unpermute_qk=True),
    "qwen2": _Architecture("Qwen2ForCausalLM", "qwen2", unpermute_qk=False),
    "qwen3": _Architecture("Qwen3ForCausalLM", "qwen3", unpermute_qk=False),
}

# GGUF tensor names (without `.weight`/`.bias`) -> HF module paths.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Tensors that describe the model rather than hold parameters (llama 3 rotary frequency factors).
_NOT_PARAMETERS = {"rope_freqs.weight"}

_FLOAT_DTYPE_NAMES = {
    GGMLQuantizationType.BF16: "bfloat16",
    GGMLQuantizationType.F16: "float16",
}


class _PlainViewReader(GGUFReader):
    """`GGUFReader` parsing through a plain ndarray view of its memory map.

    The reader slices its `np.memmap` hundreds of thousands of times while parsing the header, and
    each memmap slice runs Python-level bookkeeping; slices of a plain view of the same mapping
    (which keeps the map alive through `.base`) cost a third as much, so a file opens 2-3x faster.
    """

    def _get(self, *args: Any, **kwargs: Any) -> Any:
        if type(self.data) is np.memmap:
            self.data = self.data.view(np.ndarray)
        return super()._get(*args, **kwargs)


class GGUFCheckpoint:
    """A GGUF file, opened memory-mapped: metadata, an HF-style config, and HF-named tensors.

    Only the header is parsed on opening. The architecture is checked when the config or the
    tensors are asked for, so the metadata (and tokenizer) of any GGUF file can still be read.

    Args:
        path: the `.gguf` file.

    Raises:
        WeightsError: the file is missing, not a GGUF file, or truncated.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"GGUF file {self.path} does not exist; check the path.")
        try:
            self._reader = _PlainViewReader(self.path)
        except (ValueError, IndexError, OverflowError, KeyError, UnicodeDecodeError) as err:
            raise WeightsError(
                f"{self.path} is not a readable GGUF file ({err}); it may be truncated or "
                "another format. Download it again, or pass a safetensors model folder instead."
            ) from err
        self._check_tensor_extents()
        # NOTE: the reader keeps every metadata value as numpy views, two per vocabulary string:
        # a quarter of a GB of Python objects for a 49k-token vocabulary. Plain values take a few
        # MB, so convert once and drop the reader's copies.
        self._metadata = {key: field.contents() for key, field in self._reader.fields.items()}
        self._reader.fields.clear()
        architecture = self.metadata("general.architecture")
        if not isinstance(architecture, str):
            raise WeightsError(
                f"{self.path} has no `general.architecture` metadata; it is not a model GGUF file."
            )
        self.architecture: str = architecture

    def __repr__(self) -> str:
        return f"GGUFCheckpoint({str(self.path)!r}, architecture={self.architecture!r})"

    def metadata(self, key: str, default: Any = None) -> Any:
        """One metadata value as a plain Python value (str, int, float, bool or list).

        Args:
            key: the GGUF key, e.g. `"llama.context_length"`.
            default: returned when the file has no such key.
        """
        return self._metadata.get(key, default)

    def hf_config(self) -> dict[str, Any]:
        """An HF `config.json`-like dict built from the metadata.

        `torch_dtype` names the stored precision: "bfloat16"/"float16" when the weights are stored
        in that half type, and "float32" for F32 files and for quantised files, whose dequantised
        values are computed in float32 (they are what `load_tensors` returns by default).

        Raises:
            UnsupportedArchitectureError: the architecture is not in `ARCHITECTURES`.
            ConfigError: a required metadata key is missing or invalid.
        """
        arch = self._architecture()
        key = self._arch_key
        heads, kv_heads = self._head_counts()
        names = {t.name for t in self._reader.tensors}
        config = {
            "architectures": [arch.hf_class],
            "model_type": arch.model_type,
            "hidden_size": key("embedding_length", required=True),
            "intermediate_size": key("feed_forward_length", required=True),
            "num_hidden_layers": key("block_count", required=True),
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": self._head_dim(),
            "hidden_act": "silu",
            "rms_norm_eps": key("attention.layer_norm_rms_epsilon", required=True),
            "rope_theta": key("rope.freq_base", 10000.0),  # llama.cpp's default
            "max_position_embeddings": key("context_length", required=True),
            "vocab_size": self._vocab_size(),
            "attention_bias": "blk.0.attn_q.bias" in names,
            # llama.cpp writes `output.weight` only when the LM head is not the embedding matrix.
            "tie_word_embeddings": "output.weight" not in names,
            "bos_token_id": self.metadata("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self.metadata("tokenizer.ggml.padding_token_id"),
            "torch_dtype": self._stored_dtype_name(),
        }
        rope_scaling = self._rope_scaling()
        if rope_scaling is not None:
            config["rope_scaling"] = rope_scaling
        return config

    def tensor_names(self) -> list[str]:
        """The HF parameter names of the file's tensors, in file order.

        Raises:
            UnsupportedArchitectureError: the architecture is not supported.
            WeightsError: a tensor name has no HF equivalent.
        """
        self._architecture()
        return [n for n in (self._hf_name(t.name) for t in self._reader.tensors) if n is not None]

    def load_tensors(
        self, dtype: torch.dtype = torch.float32
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield `(hf_name, tensor)` for every parameter, dequantised one tensor at a time.

        Args:
            dtype: the dtype of the yielded tensors (dequantisation itself is in float32).

        Yields:
            HF parameter names with tensors in HF shapes (a linear weight is `(out, in)`).

        Raises:
            UnsupportedArchitectureError, UnsupportedQuantizationError, WeightsError: checked for
                every tensor before the first is yielded.
        """
        arch = self._architecture()
        names = [self._hf_name(t.name) for t in self._reader.tensors]
        self._check_types()
        heads = dict(zip((".attn_q.", ".attn_k."), self._head_counts(), strict=True))
        for tensor, hf_name in zip(self._reader.tensors, names, strict=True):
            if hf_name is None:
                continue
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            try:
                values = dequantize(tensor.data, tensor.tensor_type, shape, name=tensor.name)
            except WeightsError as err:
                raise type(err)(f"{self.path}: {err}") from err
            if arch.unpermute_qk:
                for marker, n_head in heads.items():
                    if marker in tensor.name:
                        values = self._unpermute(values, n_head, tensor.name)
            yield hf_name, values.to(dtype)

    # --- helpers -------------------------------------------------------------------------------

    def _architecture(self) -> _Architecture:
        arch = ARCHITECTURES.get(self.architecture)
        if arch is None:
            raise UnsupportedArchitectureError(
                f"{self.path} holds a {self.architecture!r} model; pipeserve reads GGUF files of "
                f"the architectures {sorted(ARCHITECTURES)}. Use the model's safetensors folder "
                "instead, if pipeserve supports it."
            )
        if self._arch_key("expert_count", 0):
            raise UnsupportedArchitectureError(
                f"{self.path} holds a mixture-of-experts {self.architecture!r} model "
                f"({self._arch_key('expert_count')} experts), which pipeserve does not run from GGUF."
            )
        return arch

    def _arch_key(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        """The metadata value `<architecture>.<name>`."""
        key = f"{self.architecture}.{name}"
        value = self.metadata(key)
        if value is None and required:
            raise ConfigError(
                f"{self.path} lacks the metadata key {key!r}, which the model config needs; "
                "the file was written by an incomplete converter. Re-convert the model."
            )
        return default if value is None else value

    def _hf_name(self, gguf_name: str) -> str | None:
        """The HF parameter name of a GGUF tensor; None for tensors that are not parameters."""
        if gguf_name in _NOT_PARAMETERS:
            return None
        stem, _, suffix = gguf_name.rpartition(".")
        parts = stem.split(".")
        if suffix in ("weight", "bias"):
            if len(parts) == 1 and parts[0] in _GLOBAL_NAMES:
                return f"{_GLOBAL_NAMES[parts[0]]}.{suffix}"
            if (
                len(parts) == 3
                and parts[0] == "blk"
                and parts[1].isdigit()
                and parts[2] in _LAYER_NAMES
            ):
                return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
        raise WeightsError(
            f"{self.path} holds a tensor {gguf_name!r} that pipeserve cannot place in a "
            f"{self.architecture!r} model; the file may be a variant pipeserve does not support."
        )

    def _check_types(self) -> None:
        for tensor in self._reader.tensors:
            if tensor.tensor_type not in SUPPORTED_TYPES:
                supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
                raise UnsupportedQuantizationError(
                    f"{self.path}: tensor {tensor.name!r} is stored as {tensor.tensor_type.name}, "
                    f"which pipeserve cannot dequantise (supported: {supported}). Use a GGUF file "
                    "quantised with a supported type, e.g. Q4_K_M, Q8_0 or F16."
                )

    def _check_tensor_extents(self) -> None:
        """Fail now, not halfway through loading, if the file is shorter than its tensor table says."""
        size = self.path.stat().st_size
        for tensor in self._reader.tensors:
            if tensor.data_offset + tensor.n_bytes > size or tensor.data.nbytes != tensor.n_bytes:
                raise WeightsError(
                    f"{self.path} is truncated: tensor {tensor.name!r} ends at byte "
                    f"{tensor.data_offset + tensor.n_bytes} but the file has {size} bytes. "
                    "Download it again."
                )

    def _unpermute(self, values: torch.Tensor, n_head: int, name: str) -> torch.Tensor:
        """Undo llama.cpp's Q/K row permutation, which interleaves each head's two rotary halves.

        llama.cpp: rows (head, half, pair) were made from HF's (head, pair, half); swap back.
        """
        rows = values.shape[0]
        if rows % (2 * n_head):
            raise WeightsError(
                f"{self.path}: tensor {name!r} has {rows} rows, not a multiple of 2 x {n_head} heads; "
                "the file's head counts do not match its weights."
            )
        grouped = values.reshape(n_head, rows // n_head // 2, 2, *values.shape[1:])
        return grouped.transpose(1, 2).reshape(values.shape)

    def _head_counts(self) -> tuple[int, int]:
        """(query heads, key/value heads); some files store the latter once per layer."""
        heads = self._arch_key("attention.head_count", required=True)
        kv_heads = self._arch_key("attention.head_count_kv", heads)
        if isinstance(kv_heads, list):
            if len(set(kv_heads)) != 1:
                raise ConfigError(
                    f"{self.path} gives a different key/value head count per layer ({kv_heads}), "
                    "which pipeserve does not support."
                )
            kv_heads = kv_heads[0]
        return heads, kv_heads

    def _head_dim(self) -> int:
        key = self._arch_key
        hidden, heads = key("embedding_length", required=True), self._head_counts()[0]
        return key("attention.key_length") or key("rope.dimension_count") or hidden // heads

    def _vocab_size(self) -> int:
        size = self._arch_key("vocab_size")
        if size is None and "tokenizer.ggml.tokens" in self._metadata:
            size = len(self._metadata["tokenizer.ggml.tokens"])
        if size is None:
            embed = next((t for t in self._reader.tensors if t.name == "token_embd.weight"), None)
            if embed is None:
                raise ConfigError(
                    f"{self.path} states no vocabulary size and has no token embeddings."
                )
            size = int(embed.shape[-1])  # ne order: (hidden, vocab)
        return size

    def _stored_dtype_name(self) -> str:
        types = {t.tensor_type for t in self._reader.tensors}
        for qtype, name in _FLOAT_DTYPE_NAMES.items():
            if qtype in types and types <= {qtype, GGMLQuantizationType.F32}:
                return name
        return "float32"

    def _rope_scaling(self) -> dict[str, Any] | None:
        """HF `rope_scaling` from the `rope.scaling.*` keys, the older `rope.scale_linear`, or a
        `rope_freqs` tensor (llama 3.1-style scaling); None when the file has none of them."""
        kind = self._arch_key("rope.scaling.type")
        factor = self._arch_key("rope.scaling.factor")
        if kind is None and self._arch_key("rope.scale_linear") is not None:
            kind, factor = "linear", self._arch_key("rope.scale_linear")
        if kind not in (None, "none"):
            scaling: dict[str, Any] = {"rope_type": kind, "factor": factor}
            original = self._arch_key("rope.scaling.original_context_length")
            if original is not None:
                scaling["original_max_position_embeddings"] = original
            return scaling
        freqs = next((t for t in self._reader.tensors if t.name == "rope_freqs.weight"), None)
        if freqs is None:
            return None
        divisors = dequantize(freqs.data, freqs.tensor_type, (freqs.n_elements,), name=freqs.name)
        base = self._arch_key("rope.freq_base", 10000.0)
        scaling = _llama3_rope_scaling(divisors.double().numpy(), base, self._head_dim())
        if scaling is None:
            raise ConfigError(
                f"{self.path} stores rotary frequency factors (`rope_freqs.weight`) that do not "
                "follow llama 3's rope scaling, so pipeserve cannot describe them in a config. "
                "Use the model's safetensors folder instead."
            )
        return scaling


# Llama 3.x's pre-training context. Only its ratios to the two llama3 factors matter (see below).
_LLAMA3_CONTEXT = 8192


def _llama3_rope_scaling(divisors: np.ndarray, base: float, dim: int) -> dict[str, Any] | None:
    """HF's llama3 `rope_scaling` recovered from llama.cpp's per-frequency divisors, or None.

    NOTE: llama.cpp's converter stores rope_type "llama3" as a `rope_freqs` tensor. For the
    frequency with wavelength w the divisor is 1 when w < ctx / high, `factor` when w > ctx / low,
    and 1 / ((1 - s) / factor + s) in between, where s = (ctx / w - low) / (high - low). So `factor`
    is the largest divisor, and s (recovered from every in-between divisor) is linear in 1 / w with
    slope ctx / (high - low) and intercept -low / (high - low). Scaling ctx, low and high together
    changes nothing, so ctx is fixed to Llama 3's 8192 and low, high are solved for. The result is
    checked by recomputing the divisors.
    """
    wavelen = 2 * math.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if divisors.shape != wavelen.shape:
        return None
    factor = float(divisors.max())
    if factor <= 1 + 1e-6:
        return {"rope_type": "default"}
    ctx, low, high = _LLAMA3_CONTEXT, 1.0, 4.0  # Llama 3's; kept if no divisor is in between
    between = (divisors > 1 + 1e-4) & (divisors < factor * (1 - 1e-4))
    if between.sum() >= 2:
        smooth = (1 / divisors[between] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(1 / wavelen[between], smooth, 1)
        span = ctx / slope  # high - low
        low, high = round(-intercept * span, 4), round((1 - intercept) * span, 4)
    if not 0 < low < high:
        return None
    smooth = (ctx / wavelen - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    expected = np.where(wavelen < ctx / high, 1.0, np.where(wavelen > ctx / low, factor, blended))
    if not np.allclose(expected, divisors, rtol=1e-3):
        return None
    return {
        "rope_type": "llama3",
        "factor": round(factor, 4),
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": ctx,
    }


# Checkpoints still referenced somewhere, by file identity. Weak, so a parsed header (a few hundred
# MB of Python objects for a large vocabulary) is not pinned once the model and tokenizer are built.
_OPEN: weakref.WeakValueDictionary[tuple[Path, int, int], GGUFCheckpoint] = (
    weakref.WeakValueDictionary()
)


def open_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Open a GGUF file, reusing a checkpoint of the same unchanged file that is still in use.

    Parsing the header (tens of thousands of vocabulary entries, in Python) is the slow part of
    opening a GGUF file. The model and its tokenizer both need it: hold the returned checkpoint
    while building both and the header is parsed once.

    Args:
        path: the `.gguf` file.

    Returns:
        The (possibly shared) checkpoint; treat it as read-only.
    """
    path = Path(path).resolve()
    if not path.is_file():
        return GGUFCheckpoint(path)  # raises the usual WeightsError
    stat = path.stat()
    key = (path, stat.st_mtime_ns, stat.st_size)
    checkpoint = _OPEN.get(key)
    if checkpoint is None:
        checkpoint = _OPEN[key] = GGUFCheckpoint(path)
    return checkpoint
