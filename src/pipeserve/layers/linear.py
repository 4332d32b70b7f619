"""Linear layers that hold several checkpoint matrices fused into one."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MergedLinear(nn.Linear):
    """One matmul computing several projections of the same input (q/k/v, or gate/up).

    The checkpoint stores each projection separately; the loader copies shard `i` into rows
    `shard_offsets[i] : shard_offsets[i] + shard_sizes[i]` of the fused weight.

    Args:
        in_features: input size.
        shard_sizes: output size of each fused projection, in order.
        bias: whether the projections have biases.
    """

    def __init__(self, in_features: int, shard_sizes: Sequence[int], bias: bool = False) -> None:
        super().__init__(in_features, sum(shard_sizes), bias=bias)
        self.shard_sizes = list(shard_sizes)
        self.shard_offsets = [sum(shard_sizes[:i]) for i in range(len(shard_sizes))]
