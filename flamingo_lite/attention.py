"""Scaled dot-product attention, the one kernel every layer here shares, and the rules for rows that see nothing
and for inputs that are not finite.

`softmax(q k^T * scale) v` per head, computed by `torch.nn.functional.scaled_dot_product_attention` (SDPA), which
fuses the steps and picks a fast backend, and gives the same numbers as the explicit computation (to 1e-5 in
fp32; lesson 01 checks this).

Two things SDPA does not do the way Flamingo needs, so they are settled here, after the kernel, the same way on
every path (masked, segments, unmasked, resampler), whichever backend ran:

* **Rows that see nothing.** A query whose mask row is all False (text before the first image) would come out
  as NaN or as an average over everything. Such rows are given a harmless all-True mask row for the kernel, and
  their output is then set to exactly 0, in every dtype, and no gradient flows through them.
* **Non-finite inputs (the NaN contract).** A NaN or Inf reaches exactly the output rows whose *allowed inputs*
  contain it, and no other row: a query row's allowed inputs are its own query and the keys and values it may
  attend to (under the mask). Such a row is NaN in every element (never 0, never a finite number), whatever the
  kernel would have made of it (the CPU kernels give a NaN query an output of 0, and a NaN key poisons every row
  of a masked problem, masked-out rows included). Every other row is computed as if the bad values were absent:
  the keys and values that some row may not see are zeroed before the kernel when they are not finite. Rows
  that see nothing stay exactly 0 even when their own query is NaN (they compute nothing; in a gated block the
  residual stream still carries that NaN). A row counts as not finite when its float32 sum is not finite, so
  finite values too large to add up (beyond 3e38) count as well; they would overflow the attention scores anyway.

What it costs: one float32 sum over the queries, keys and values (a reduction, no copy), a `where` over the
output, and on masked problems a `where` over the keys and values; benchmarks/README.md has the timings.
The contract is about the forward pass; a NaN input gives NaN gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def nonfinite_rows(x: torch.Tensor, dims=(-1,)) -> torch.Tensor:
    """True where the slice of `x` over `dims` holds a NaN or an Inf: (..., f) -> (...) bool, by one float32 sum."""
    return ~torch.isfinite(x.sum(dim=dims, dtype=torch.float32))


def nan_rows(poisoned: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(...) bool -> (..., 1): NaN where poisoned, else 0; added to an output, it poisons those rows and keeps the
    others exactly (an addition's backward passes the gradient on as it is, no second pass)."""
    return torch.where(poisoned, float("nan"), 0.0).to(dtype).unsqueeze(-1)  # (..., 1)


def settle_rows(out: torch.Tensor, *, sees_nothing: torch.Tensor | None, poisoned: torch.Tensor) -> torch.Tensor:
    """The contract applied to an attention output: (B, i, f) -> (B, i, f), or (i, f) with (i,) flags.

    sees_nothing: rows whose output is exactly 0 (or None); poisoned: rows whose allowed inputs are not finite,
    set to NaN unless they see nothing. Every other row is kept as computed.
    """
    if sees_nothing is not None:
        poisoned = poisoned & ~sees_nothing  # rows that see nothing are 0, even when their own query is NaN
        keep = ~(poisoned | sees_nothing)  # (B, i)
    else:
        keep = ~poisoned  # (B, i)
    fill = torch.where(poisoned, float("nan"), 0.0).to(out.dtype).unsqueeze(-1)  # (B, i, 1): NaN or 0
    return torch.where(keep.unsqueeze(-1), out, fill)  # (B, i, f)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    zero_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of queries over keys and values, with the rules of the module docstring.

    q: (B, h, i, d); k, v: (B, h, j, d); mask: (B, i, j) bool, True = may attend, or None for no mask;
    zero_rows: (B, i) bool, queries whose output must be exactly zero (they see nothing), or None.
    Returns (B, h, i, d).
    """
    bad_q = nonfinite_rows(q, dims=(1, 3))  # (B, i): a query row is one token across all heads
    bad_kv = nonfinite_rows(k, dims=(1, 3)) | nonfinite_rows(v, dims=(1, 3))  # (B, j)
    attn_mask = None
    if mask is not None:
        poisoned = bad_q | (mask & rearrange(bad_kv, "B j -> B 1 j")).any(dim=-1)  # (B, i)
        # a bad key would poison the masked-out rows too (NaN + -inf is NaN): zero it for the kernel
        clean = rearrange(~bad_kv, "B j -> B 1 j 1")  # (B, 1, j, 1)
        k = torch.where(clean, k, 0.0)  # (B, h, j, d)
        v = torch.where(clean, v, 0.0)  # (B, h, j, d)
        if zero_rows is not None:
            mask = mask | rearrange(zero_rows, "B i -> B i 1")  # (B, i, j): no all-False row reaches SDPA
        attn_mask = rearrange(mask, "B i j -> B 1 i j")  # (B, 1, i, j), broadcast over heads
    else:
        poisoned = bad_q | bad_kv.any(dim=-1, keepdim=True)  # (B, i): every row sees every key
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)  # (B, h, i, d)
    out = rearrange(out, "B h i d -> B i h d")  # (B, i, h, d): a view of the kernel's output
    b, i, h, d = out.shape
    out = settle_rows(out.reshape(b, i, h * d), sees_nothing=zero_rows, poisoned=poisoned)  # (B, i, h*d)
    return rearrange(out, "B i (h d) -> B h i d", h=h)  # (B, h, i, d)
