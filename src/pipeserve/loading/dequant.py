"""Turning GGML tensor bytes (as stored in a GGUF file) into float32 torch tensors.

NOTE: every GGML quantisation type cuts a tensor's values, in row-major order, into fixed-size
blocks and stores each block as a fixed number of bytes: one or two fp16 scales followed by packed
integer codes. A block never spans two rows, so the bytes of a whole tensor are a plain
`(n_blocks, block_bytes)` matrix and each type is one vectorised function from that matrix to
`(n_blocks, block_size)` values. The functions below perform the same float32 operations, in the
same order, as the reference in `gguf.quants`, so their results are bitwise equal to it.

Legacy types (32 values a block):
    Q8_0  d:f16 | 32 x int8                     value = q * d
    Q4_0  d:f16 | 16 bytes of nibbles            value = d * (q - 8)
    Q4_1  d:f16 m:f16 | 16 bytes of nibbles      value = d * q + m
    Q5_0  d:f16 | qh:u32 | 16 bytes of nibbles   value = d * (q - 16), q = nibble | bit << 4
    Q5_1  d:f16 m:f16 | qh:u32 | 16 bytes        value = d * q + m
The nibbles of a 16-byte run hold values 0..15 in the low halves and values 16..31 in the high
halves; bit j of qh is the fifth bit of value j.

K-quants (256 values a "super-block", cut into sub-blocks) are described above their functions.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import UnsupportedQuantizationError, WeightsError

Q = GGMLQuantizationType

# Blocks dequantised per step: bounds the temporaries to a few tens of MB whatever the tensor size.
_CHUNK_BLOCKS = 1 << 16

_FLOAT_TYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 scale stored at byte `offset` of every block, as float32. (n, 1)"""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Unpack (..., k) bytes into (..., 2, k) 4-bit values: all low halves, then all high halves."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-2)


def _bits(packed: torch.Tensor, count: int, width: int) -> torch.Tensor:
    """Split (..., k) bytes into (..., count, k) fields of `width` bits, lowest field first."""
    shifts = torch.arange(0, count * width, width, dtype=torch.uint8).reshape(count, 1)
    return (packed.unsqueeze(-2) >> shifts) & ((1 << width) - 1)


def _legacy_codes(blocks: torch.Tensor, qs_offset: int, qh_offset: int | None) -> torch.Tensor:
    """The 32 unsigned codes of a legacy block, with the fifth bit when `qh_offset` is given. (n, 32)"""
    n = blocks.shape[0]
    q = _nibbles(blocks[:, qs_offset : qs_offset + 16]).reshape(n, 32)
    if qh_offset is not None:
        # qh is a little-endian u32: byte j // 8, bit j % 8 belongs to value j.
        high = _bits(blocks[:, qh_offset : qh_offset + 4], 8, 1).transpose(1, 2).reshape(n, 32)
        q = q | (high << 4)
    return q.float()


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:].contiguous().view(torch.int8).float() * _f16(blocks, 0)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * (_legacy_codes(blocks, 2, None) - 8)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * _legacy_codes(blocks, 4, None) + _f16(blocks, 2)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * (_legacy_codes(blocks, 6, 2) - 16)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * _legacy_codes(blocks, 8, 4) + _f16(blocks, 2)


def _k_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K super-block. Each (n, 8) uint8.

    NOTE: the 12 bytes hold, for sub-blocks 0..3, the scale in the low 6 bits of bytes 0..3 and
    the min in the low 6 bits of bytes 4..7. Sub-blocks 4..7 keep their low 4 bits in bytes 8..11
    (scale in the low nibble, min in the high one) and their top 2 bits in the spare top bits of
    bytes 0..3 (scale) and 4..7 (min).
    """
    lo, mid, hi = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([lo & 0x3F, (hi & 0x0F) | ((lo >> 2) & 0x30)], dim=-1)
    mins = torch.cat([mid & 0x3F, (hi >> 4) | ((mid >> 2) & 0x30)], dim=-1)
    return scales, mins


def _q4_k(blocks: torch.Tensor, high_bits: torch.Tensor | None = None) -> torch.Tensor:
    """Q4_K, 144 bytes: d:f16 dmin:f16 | 12 bytes of scales/mins | 128 bytes of nibbles.

    NOTE: eight sub-blocks of 32 values; value = (d * scale) * q - (dmin * min). Each 32-byte run of
    nibbles holds two sub-blocks: low halves for the first, high halves for the second.
    """
    n = blocks.shape[0]
    scales, mins = _k_scales_mins(blocks[:, 4:16])
    d = (_f16(blocks, 0) * scales.float()).reshape(n, 8, 1)
    m = (_f16(blocks, 2) * mins.float()).reshape(n, 8, 1)
    q = _nibbles(blocks[:, -128:].reshape(n, 4, 32)).reshape(n, 8, 32)
    if high_bits is not None:
        q = q | (high_bits << 4)
    return (d * q.float() - m).reshape(n, 256)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_K, 176 bytes: Q4_K's layout with 32 bytes of fifth bits (qh) before the nibbles.

    NOTE: bit i of qh[j] is the fifth bit of value j of sub-block i.
    """
    return _q4_k(blocks, high_bits=_bits(blocks[:, 16:48], 8, 1))


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q6_K, 210 bytes: 128 bytes low nibbles | 64 bytes high 2-bits | 16 x int8 scales | d:f16.

    NOTE: sixteen sub-blocks of 16 values; value = (d * scale) * (q - 32). The 256 values form two
    halves of 128. In each half, a 64-byte run of nibbles gives values 0..63 (low) and 64..127
    (high), and a 32-byte run of 2-bit fields gives value j + 32 * k its top bits in field k of
    byte j.
    """
    n = blocks.shape[0]
    d = (_f16(blocks, 208) * blocks[:, 192:208].contiguous().view(torch.int8).float()).reshape(
        n, 16, 1
    )
    low = _nibbles(blocks[:, 0:128].reshape(n, 2, 64)).reshape(n, 8, 32)
    high = _bits(blocks[:, 128:192].reshape(n, 2, 32), 4, 2).reshape(n, 8, 32)
    q = ((low | (high << 4)).float() - 32).reshape(n, 16, 16)
    return (d * q).reshape(n, 256)


_BLOCK_DEQUANTIZERS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}

SUPPORTED_TYPES: frozenset[GGMLQuantizationType] = frozenset(_FLOAT_TYPES) | frozenset(
    _BLOCK_DEQUANTIZERS
)


def dequantize(
    raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...], *, name: str = "?"
) -> torch.Tensor:
    """Dequantise one GGML tensor to float32.

    Args:
        raw: the tensor's bytes as a numpy array: uint8, or the typed array `gguf.GGUFReader` gives
            for F32/F16 tensors. A read-only memory map is fine; it is read one chunk at a time.
        qtype: the tensor's GGML type.
        shape: the tensor's shape in row-major (numpy/HF) order, i.e. the GGUF `ne` reversed.
        name: the tensor's name, for error messages.

    Returns:
        A new float32 CPU tensor of `shape`.

    Raises:
        UnsupportedQuantizationError: `qtype` is not in `SUPPORTED_TYPES`.
        WeightsError: the byte count does not match `shape` and `qtype`.
    """
    if qtype not in SUPPORTED_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise UnsupportedQuantizationError(
            f"tensor {name!r} is stored as GGML type {getattr(qtype, 'name', qtype)}, which pipeserve "
            f"cannot dequantise (supported: {supported}). Use a GGUF file quantised with one of "
            "the supported types, e.g. Q4_K_M, Q8_0 or F16."
        )
    data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    n_elements = prod(shape)
    if n_elements % block_size or data.size != n_elements // block_size * block_bytes:
        raise WeightsError(
            f"tensor {name!r} ({qtype.name}) holds {data.size} bytes, which does not match its "
            f"shape {tuple(shape)}; the file is corrupt. Download it again."
        )
    if qtype in _FLOAT_TYPES:
        # Copied: the source is usually a read-only memory map of the file.
        values = torch.from_numpy(data.copy()).view(_FLOAT_TYPES[qtype])
        return values.float().reshape(shape)

    blocks = data.reshape(-1, block_bytes)
    out = torch.empty(blocks.shape[0], block_size, dtype=torch.float32)  # (n_blocks, block_size)
    fn = _BLOCK_DEQUANTIZERS[qtype]
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        chunk = torch.from_numpy(blocks[start : start + _CHUNK_BLOCKS].copy())
        out[start : start + chunk.shape[0]] = fn(chunk)
    return out.reshape(shape)
