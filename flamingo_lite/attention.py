"""Scaled dot-product attention: the one attention computation of the package.

    attend(q, k, v, scale=, mask=, sees_nothing=)           softmax(q k^T * scale, masked) v   the output
    attention_weights(q, k, scale=, mask=, sees_nothing=)   softmax(q k^T * scale, masked)     the weights

Every layer (the resampler's `PerceiverAttention`, the cross-attention on both of its paths, the tiny language
model's self-attention) computes its output with `attend`, and every plot or lesson that looks inside one of them
gets its weights from `attention_weights`, given the same queries, keys and mask by the layer itself. `attend` runs
PyTorch's fused kernel, `scaled_dot_product_attention` (SDPA); `attention_weights` computes the same softmax
explicitly (lesson 01 checks the two agree to 1e-5 in fp32).

Two rules the kernel does not follow are settled here, after it, for every caller alike:

* **Rows that see nothing.** A query whose mask row is all False (text before the first image) would come out as
  NaN, or as an average over everything. Such rows get a harmless all-True mask row for the kernel, and their
  output is then set to exactly 0, in every dtype; no gradient flows through them.
* **Non-finite inputs (the NaN contract).** A NaN or Inf reaches exactly the output rows whose *allowed inputs*
  contain it, and no other row: a query row's allowed inputs are its own query and the keys and values it may
  attend to (under the mask). Such a row is NaN in every element (never 0, never a finite number), whatever the
  kernel would have made of it (the CPU kernels give a NaN query an output of 0, and a NaN key poisons every row
  of a masked problem, masked-out rows included). Every other row is computed as if the bad values were absent:
  keys and values that some row may not see are zeroed before the kernel when they are not finite. Rows that see
  nothing stay exactly 0 even when their own query is NaN. A row counts as not finite when its float32 sum is
  not finite, so finite values too large to add up (beyond 3e38) count too; they would overflow the scores anyway.

The contract costs one float32 sum over the queries, keys and values (a reduction, no copy), a `where` over the
output and, on masked problems, a `where` over the keys and values (timings: benchmarks/README.md). It is about
the forward pass; a NaN input gives NaN gradients.

Shapes: B problems (batch, or batch x media), h heads, i queries, j keys, e the width of one head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def attend(q, k, v, *, scale: float, mask=None, sees_nothing=None) -> torch.Tensor:
    """softmax(q k^T * scale) v per head, under the rules of the module docstring.

    q: (B, h, i, e); k, v: (B, h, j, e); mask: (B, i, j) bool, True = may attend, or None (every query sees every key);
    sees_nothing: (B, i) bool, the queries whose output is exactly 0, or None. Returns (B, h, i, e).
    """
    poisoned, k, v = nan_contract(q, k, v, mask)  # (B, i); bad keys that some row may not see are zeroed
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=kernel_mask(mask, sees_nothing), scale=scale)  # (B, h, i, e)
    return settle_rows(out, poisoned=poisoned, sees_nothing=sees_nothing)  # (B, h, i, e)


def attention_weights(q, k, *, scale: float, mask=None, sees_nothing=None) -> torch.Tensor:
    """The weights `attend` uses, for plots: q (B, h, i, e), k (B, h, j, e) -> (B, h, i, j).

    Each row sums to 1 over the keys it may see and is exactly 0 elsewhere; rows that see nothing are all 0, rows
    reached by a non-finite query or key are NaN (the same rules as `attend`).
    """
    poisoned, k, _ = nan_contract(q, k, k, mask)  # (B, i)
    scores = torch.einsum("B h i e, B h j e -> B h i j", q, k) * scale  # (B, h, i, j)
    allowed = kernel_mask(mask, sees_nothing)  # (B, 1, i, j) or None
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))  # (B, h, i, j)
    return settle_rows(scores.softmax(dim=-1), poisoned=poisoned, sees_nothing=sees_nothing)  # (B, h, i, j)


def nonfinite_rows(x: torch.Tensor, dims=(-1,)) -> torch.Tensor:
    """True where the slice of `x` over `dims` holds a NaN or an Inf: (..., f) -> (...) bool, by one float32 sum."""
    return ~torch.isfinite(x.sum(dim=dims, dtype=torch.float32))


def nan_contract(q, k, v, mask=None):
    """The rows a non-finite input reaches, and the keys and values cleaned for the kernel.

    A query row is one token across all heads. Without a mask every row sees every key; with one, a bad key or value
    reaches only the rows that may attend to it, and is zeroed so that the kernel does not spread it to the others.
    Returns poisoned (B, i) bool, k and v (B, h, j, e).
    """
    bad_q = nonfinite_rows(q, dims=(1, 3))  # (B, i)
    bad_kv = nonfinite_rows(k, dims=(1, 3)) | nonfinite_rows(v, dims=(1, 3))  # (B, j)
    if mask is None:
        return bad_q | bad_kv.any(dim=-1, keepdim=True), k, v  # (B, i)
    poisoned = bad_q | (mask & rearrange(bad_kv, "B j -> B 1 j")).any(dim=-1)  # (B, i)
    clean = rearrange(~bad_kv, "B j -> B 1 j 1")  # (B, 1, j, 1)
    return poisoned, torch.where(clean, k, 0.0), torch.where(clean, v, 0.0)  # (B, i), 2 x (B, h, j, e)


def kernel_mask(mask, sees_nothing):
    """The mask the softmax is given, broadcast over heads: (B, i, j) -> (B, 1, i, j), rows that see nothing all True
    (a harmless row; its output is set to 0 afterwards). None stays None."""
    if mask is None:
        return None
    if sees_nothing is not None:
        mask = mask | rearrange(sees_nothing, "B i -> B i 1")  # (B, i, j): no all-False row reaches the softmax
    return rearrange(mask, "B i j -> B 1 i j")  # (B, 1, i, j)


def settle_rows(out: torch.Tensor, *, poisoned: torch.Tensor, sees_nothing=None) -> torch.Tensor:
    """Rows that see nothing exactly 0, poisoned rows NaN, every other row as computed: (B, h, i, f) -> (B, h, i, f)."""
    if sees_nothing is not None:
        poisoned = poisoned & ~sees_nothing  # a row that sees nothing is 0, even when its own query is NaN
        keep = ~(poisoned | sees_nothing)  # (B, i)
    else:
        keep = ~poisoned  # (B, i)
    fill = torch.where(poisoned, float("nan"), 0.0).to(out.dtype)  # (B, i): NaN or 0
    return torch.where(rearrange(keep, "B i -> B 1 i 1"), out, rearrange(fill, "B i -> B 1 i 1"))  # (B, h, i, f)
