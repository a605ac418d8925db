"""The feed-forward block used after every attention layer (paper, Sec. 2.1 and 2.2, Fig. 4).

LayerNorm, a widening linear layer, GELU, and a narrowing linear layer, without biases, as in flamingo-pytorch.
It is an `nn.Sequential` so that its `state_dict` keys (`0.weight`, `0.bias`, `1.weight`, `3.weight`) match the
original and weights load both ways.

Variants (constructor arguments; the defaults are flamingo-pytorch's, keys unchanged):
- `activation="gelu"`: flamingo-pytorch and OpenFlamingo. `"squared_relu"`, `relu(x)**2`: the paper's (Table 4).
  `"relu"`: IDEFICS's resampler (`IdeficsMLP` in `perceiver.py`). `"swiglu"`, `silu(a) * b` with `a, b` the two
  halves of the widening layer (Shazeer 2020): IDEFICS's gated layers (`gate_proj`, `up_proj` side by side in
  `1.weight`, gate first), so the widening layer is twice as wide and the keys stay the same.
- `norm="layernorm"` (everyone's resampler) or `"rmsnorm"` (IDEFICS's gated layers; no `0.bias` then).
"""
from __future__ import annotations

import torch
from torch import nn

from .norms import make_norm
from .validation import check_matches_weights, check_positive_int, check_positive_number, shape_str

ACTIVATIONS = ("gelu", "squared_relu", "relu", "swiglu")


class SquaredReLU(nn.Module):
    """`relu(x) ** 2`, the paper's feed-forward activation (Table 4; So et al. 2021)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()  # (..., inner_dim)


class SwiGLU(nn.Module):
    """`silu(a) * b` for `a, b = x.chunk(2, -1)`: (..., 2 * inner_dim) -> (..., inner_dim). IDEFICS's `IdeficsMLP`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)  # 2 x (..., inner_dim)
        return nn.functional.silu(gate) * up  # (..., inner_dim)


def make_activation(activation: str) -> nn.Module:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return {"gelu": nn.GELU, "squared_relu": SquaredReLU, "relu": nn.ReLU, "swiglu": SwiGLU}[activation]()


class FeedForward(nn.Sequential):
    """`x -> W2 gelu(W1 layernorm(x))`, applied to each position independently: (..., dim) -> (..., dim).

    dim: the model width. mult: the hidden width is `int(dim * mult)`. activation, norm: see the module docstring.
    """

    def __init__(self, dim: int, mult: float = 4, *, activation: str = "gelu", norm: str = "layernorm"):
        dim = check_positive_int("dim", dim)
        mult = check_positive_number("mult", mult)
        inner_dim = int(dim * mult)
        if inner_dim < 1:
            raise ValueError(f"FeedForward's hidden width int(dim * mult) = int({dim} * {mult}) must be at least 1")
        act = make_activation(activation)
        widen = 2 if activation == "swiglu" else 1  # SwiGLU's gate and up projections, side by side
        super().__init__(
            make_norm(norm, dim),  # (..., dim)
            nn.Linear(dim, inner_dim * widen, bias=False),  # (..., inner_dim * widen)
            act,  # (..., inner_dim)
            nn.Linear(inner_dim, dim, bias=False),  # (..., dim)
        )
        self.dim = dim
        self.activation = activation

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FeedForward input x must be a torch.Tensor of shape (..., {self.dim}), got {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"FeedForward input x must have width dim={self.dim} in its last axis, got shape {shape_str(x)}")
        check_matches_weights("FeedForward", self[1].weight, [("x", x)])
        return super().forward(x)  # (..., dim)
