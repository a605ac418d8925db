"""The normalisation layers the variants choose from: LayerNorm (the paper, flamingo-pytorch, OpenFlamingo) and
RMSNorm (IDEFICS's gated layers and their `qk_layer_norms`).

`make_norm(kind, dim)` builds one; RMSNorm's only parameter is `weight`, like IDEFICS's `IdeficsRMSNorm`, so weights
copy across by name. Shapes: (..., dim) -> (..., dim).
"""
from __future__ import annotations

import torch
from torch import nn

from .validation import check_positive_int, check_non_negative_number, check_positive_number

NORMS = ("layernorm", "rmsnorm")


class RMSNorm(nn.Module):
    """`x / sqrt(mean(x**2) + eps) * weight` over the last axis (Zhang & Sennrich 2019); IDEFICS's gated layers.

    The mean of squares is taken in float32, as IDEFICS does, then the result is cast back to x's dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        check_positive_int("dim", dim)
        self.eps = check_non_negative_number("eps", eps)  # 0 is the exact formula; positive guards all-zero rows
        self.weight = nn.Parameter(torch.ones(dim))  # (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)  # (..., 1)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight  # (..., dim)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def check_norm(norm) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def make_norm(norm: str, dim: int) -> nn.Module:
    """`"layernorm"` -> nn.LayerNorm(dim) (weight and bias); `"rmsnorm"` -> RMSNorm(dim) (weight only)."""
    return nn.LayerNorm(dim) if check_norm(norm) == "layernorm" else RMSNorm(dim)
