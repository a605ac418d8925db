"""The feed-forward block used after every attention layer (paper, Sec. 2.1 and 2.2, Fig. 4).

LayerNorm, a widening linear layer, GELU, and a narrowing linear layer, without biases, as in flamingo-pytorch.
It is an `nn.Sequential` so that its `state_dict` keys (`0.weight`, `0.bias`, `1.weight`, `3.weight`) match the
original and weights load both ways.
"""
from __future__ import annotations

import torch
from torch import nn

from .validation import check_matches_weights, check_positive_int, check_positive_number, shape_str


class FeedForward(nn.Sequential):
    """`x -> W2 gelu(W1 layernorm(x))`, applied to each position independently: (..., dim) -> (..., dim).

    dim: the model width. mult: the hidden width is `int(dim * mult)`.
    """

    def __init__(self, dim: int, mult: float = 4):
        dim = check_positive_int("dim", dim)
        mult = check_positive_number("mult", mult)
        inner_dim = int(dim * mult)
        if inner_dim < 1:
            raise ValueError(f"FeedForward's hidden width int(dim * mult) = int({dim} * {mult}) must be at least 1")
        super().__init__(
            nn.LayerNorm(dim),  # (..., dim)
            nn.Linear(dim, inner_dim, bias=False),  # (..., inner_dim)
            nn.GELU(),  # (..., inner_dim)
            nn.Linear(inner_dim, dim, bias=False),  # (..., dim)
        )
        self.dim = dim

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FeedForward input x must be a torch.Tensor of shape (..., {self.dim}), got {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"FeedForward input x must have width dim={self.dim} in its last axis, got shape {shape_str(x)}")
        check_matches_weights("FeedForward", self[1].weight, [("x", x)])
        return super().forward(x)  # (..., dim)
