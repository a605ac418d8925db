"""Scaled dot-product attention, the one kernel every layer here shares.

`softmax(q k^T * scale) v` per head, computed by `torch.nn.functional.scaled_dot_product_attention` (SDPA), which
fuses the steps and picks a fast backend, and gives the same numbers as the explicit computation (to 1e-5 in
fp32; lesson 01 checks this). One thing SDPA does not do the way Flamingo needs: a query whose mask row is all
False (text before the first image) would come out as NaN or as an average over everything. Here such rows are
given a harmless all-True mask row for the kernel, and their output is then set to exactly zero, so they are
never NaN in any dtype and no gradient flows through them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    zero_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of queries over keys and values.

    q: (B, h, i, d); k, v: (B, h, j, d); mask: (B, i, j) bool, True = may attend, or None for no mask;
    zero_rows: (B, i) bool, queries whose output must be exactly zero (they see nothing), or None.
    Returns (B, h, i, d).
    """
    attn_mask = None
    if mask is not None:
        if zero_rows is not None:
            mask = mask | rearrange(zero_rows, "B i -> B i 1")  # (B, i, j): no all-False row reaches SDPA
        attn_mask = rearrange(mask, "B i j -> B 1 i j")  # (B, 1, i, j), broadcast over heads
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)  # (B, h, i, d)
    if zero_rows is not None:
        out = out.masked_fill(rearrange(zero_rows, "B i -> B 1 i 1"), 0.0)  # (B, h, i, d)
    return out
