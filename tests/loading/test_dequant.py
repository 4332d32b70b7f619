"""GGML dequantisation against the reference numpy implementation in `gguf.quants`."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from pipeserve.errors import UnsupportedQuantizationError, WeightsError
from pipeserve.loading.dequant import SUPPORTED_TYPES, dequantize

# Byte offsets of each block's fp16 scale/min fields. Random bytes there could spell inf/nan, so
# they are overwritten with finite values; every other byte (codes, packed scales) stays random.
FP16_FIELDS = {
    Q.Q8_0: [0],
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}


def random_blocks(qtype: Q, rows: int, blocks_per_row: int, seed: int = 0) -> np.ndarray:
    """Valid random bytes of a (rows, blocks_per_row * block_size) tensor of `qtype`."""
    rng = np.random.default_rng(seed)
    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    n = rows * blocks_per_row
    if qtype == Q.F32:
        return rng.standard_normal((rows, blocks_per_row)).astype(np.float32)
    if qtype == Q.F16:
        return rng.standard_normal((rows, blocks_per_row)).astype(np.float16)
    raw = rng.integers(0, 256, (n, block_bytes), dtype=np.uint8)
    for offset in FP16_FIELDS.get(qtype, []):
        scales = (rng.standard_normal(n) * 0.05).astype(np.float16)
        raw[:, offset : offset + 2] = scales.view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, blocks_per_row * block_bytes)


def test_supported_types_are_the_documented_ones():
    names = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}
    assert {t.name for t in SUPPORTED_TYPES} == names


@pytest.mark.parametrize(
    "qtype", sorted(SUPPORTED_TYPES, key=lambda t: t.name), ids=lambda t: t.name
)
def test_matches_gguf_reference_bitwise(qtype):
    # Our functions do the same float32 operations in the same order as gguf.quants, so the
    # results must be identical bit for bit (compared as integers, so NaNs from random BF16 bytes
    # compare too).
    block_size = GGML_QUANT_SIZES[qtype][0]
    raw = random_blocks(qtype, rows=5, blocks_per_row=3, seed=int(qtype))
    shape = (5, 3 * block_size)
    expected = gguf.quants.dequantize(raw, qtype)
    ours = dequantize(raw, qtype, shape, name="t")
    assert ours.dtype == torch.float32 and tuple(ours.shape) == shape
    np.testing.assert_array_equal(ours.numpy().view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q8_0], ids=lambda t: t.name)
def test_many_blocks_across_chunks(qtype, monkeypatch):
    # Tensors larger than one chunk are dequantised piecewise; the seams must not show.
    monkeypatch.setattr("pipeserve.loading.dequant._CHUNK_BLOCKS", 7)
    block_size = GGML_QUANT_SIZES[qtype][0]
    raw = random_blocks(qtype, rows=4, blocks_per_row=5, seed=1)
    ours = dequantize(raw, qtype, (4, 5 * block_size))
    np.testing.assert_array_equal(ours.numpy(), gguf.quants.dequantize(raw, qtype))


def test_reads_a_read_only_memory_map(tmp_path):
    raw = random_blocks(Q.Q6_K, rows=2, blocks_per_row=2)
    path = tmp_path / "blocks.bin"
    raw.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r").reshape(raw.shape)
    ours = dequantize(mapped, Q.Q6_K, (2, 512))
    np.testing.assert_array_equal(ours.numpy(), gguf.quants.dequantize(raw, Q.Q6_K))


def test_quantised_round_trip_is_close():
    # A sanity check independent of the reference dequantiser: quantise, dequantise, compare.
    values = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    ours = dequantize(gguf.quants.quantize(values, Q.Q8_0), Q.Q8_0, (8, 64))
    np.testing.assert_allclose(ours.numpy(), values, atol=0.02)


def test_unknown_type_names_tensor_type_and_supported_list():
    raw = np.zeros((1, GGML_QUANT_SIZES[Q.Q2_K][1]), dtype=np.uint8)
    with pytest.raises(UnsupportedQuantizationError) as err:
        dequantize(raw, Q.Q2_K, (1, 256), name="blk.0.attn_q.weight")
    message = str(err.value)
    assert "blk.0.attn_q.weight" in message and "Q2_K" in message and "Q4_K" in message


def test_byte_count_mismatch_is_a_weights_error():
    raw = np.zeros((1, 34), dtype=np.uint8)  # one Q8_0 block
    with pytest.raises(WeightsError, match="does not match its shape"):
        dequantize(raw, Q.Q8_0, (2, 32), name="x")
