"""Lesson 01's checks: attention with a mask, heads split and merged, multi-head attention, a stable softmax and a
causal mask. Each check runs the learner's function on small seeded inputs, compares with the answer and, when it
differs, with the usual mistakes, and says which one it looks like."""
from __future__ import annotations

import torch
from einops import rearrange

from ...attention import attend, attention_weights
from . import (
    Mistake, _names_used, check_dtype_kept, check_gradients_reach, compare, fail, passed, register_hints,
    register_nudges, run_learner, run_untouched, keep_rng, refuse_the_answer,
)

register_hints({
    "01.attention": "Three lines as above: scores = einsum(q, k) * e**-0.5; fill the masked scores with "
    "-torch.finfo(scores.dtype).max; softmax over the last axis (the keys). Then give the rows whose mask is all "
    "False weight 0: weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0). A 2-D mask (i, j) needs a batch "
    "axis first, and every mask a head axis: rearrange(mask, 'b i j -> b 1 i j').",
    "01.heads": "split: rearrange(x, 'b n (h e) -> b h n e', h=heads). merge: the same pattern with its two sides "
    "swapped. '(h e)' means h is the outer (slow) axis: head 0 gets the first e numbers.",
    "01.multihead": "q, k, v = split_heads(to_q(x), heads), split_heads(to_k(context), heads), "
    "split_heads(to_v(context), heads); then merge_heads(attention(q, k, v, mask)). Your attention takes its scale "
    "from q.shape[-1], which is e after the split.",
    "01.softmax": "Subtract the largest score of each row, s.amax(dim=dim, keepdim=True), before exp; then divide "
    "by the sum along the same dim (keepdim=True).",
    "01.causal": "Query i may look at keys j <= i: torch.tril(torch.ones(n, n, dtype=torch.bool)), or compare "
    "torch.arange(n) as a column with torch.arange(n) as a row.",
})
register_nudges({  # a first hint where the full one is the answer: hint(key), then hint(key, 2)
    "01.attention": "Scaled dot-product attention with a mask: the scores, the masked ones pushed to the lowest number a "
    "float holds (not -inf, so nothing turns into NaN), a softmax over the keys; then a row that may see "
    "nothing gets weight 0.",
    "01.softmax": "exp of a large score overflows. Subtracting the same number from every score of a row leaves the "
    "softmax unchanged: which number keeps every exp at most 1?",
})

_ANSWERS_ATTEND = (attend, attention_weights)  # the package's attention: what these exercises write


def reference_attention(q, k, v, mask=None, *, scale=True, axis=-1, fill="max_then_zero", use_mask=True):
    """Attention as the lesson defines it, and the usual mistakes: fill="inf" (NaN rows), "max" (no zeroing:
    a uniform average), axis=-2 (softmax over the queries), scale=False, "keys" (1/sqrt(j)), "heads" (1/sqrt(h*e))
    or "1/e" (no square root), "after" (the weights scaled after the softmax), use_mask=False or "inverted" (every use of
    the mask inverted), "inverted_fill" (the fill inverted, the empty rows still found from the mask as given)."""
    scores = torch.einsum("b h i e, b h j e -> b h i j", q, k)  # (b, h, i, j)
    if scale and scale != "after":
        width = {"keys": k.shape[-2], "heads": q.shape[1] * q.shape[-1]}.get(scale, q.shape[-1])  # (mistakes: j, h*e)
        scores = scores * (width ** -1.0 if scale == "1/e" else width ** -0.5)
    empty = None
    if mask is not None and use_mask:
        mask = mask if mask.ndim == 3 else rearrange(mask, "i j -> 1 i j")  # (b or 1, i, j)
        mask = rearrange(mask, "b i j -> b 1 i j")  # (b or 1, 1, i, j)
        empty = ~mask.any(dim=-1, keepdim=True)  # (b or 1, 1, i, 1)
        if use_mask in ("inverted", "inverted_fill"):
            mask = ~mask
        if use_mask == "inverted":
            empty = ~mask.any(dim=-1, keepdim=True)  # (b or 1, 1, i, 1)
        scores = scores.masked_fill(~mask, float("-inf") if fill == "inf" else -torch.finfo(scores.dtype).max)
    weights = scores.softmax(dim=axis)  # (b, h, i, j)
    if empty is not None and fill == "max_then_zero":
        weights = weights.masked_fill(empty, 0.0)
    if scale == "after":
        weights = weights * q.shape[-1] ** -0.5  # (b, h, i, j)
    return torch.einsum("b h i j, b h j e -> b h i e", weights, v)  # (b, h, i, e)


def _qkv(seed=0, b=2, h=2, i=3, j=5, e=4):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, e, generator=g) for n in (i, j, j))  # (b, h, i|j, e)
    mask = torch.rand(b, i, j, generator=g) > 0.4  # (b, i, j)
    mask[0, 1] = False  # a query that may look at nothing
    mask[1, 0] = True  # one that may look at everything
    mask[:, 2, 0] = True  # and rows that see something
    return q, k, v, mask


def _check_attention_in_float16(attention, q, k, v, mask) -> None:
    """The same attention in float16, where -1e9 (or float32's lowest) does not fit: the fill must come from the
    scores' own dtype, and the answer keeps the inputs' dtype."""
    what = "your attention(q, k, v, mask) in float16"
    half = [t.half() for t in (q, k, v)]
    overflow = ("a fixed fill such as -1e9 (or float32's -3.4e38) does not fit in float16, whose largest number is "
                "65504: fill with `-torch.finfo(scores.dtype).max`, which fits whatever dtype the scores have.")
    got = run_learner(attention, *half, mask, what=what, advice={"overflow": overflow})
    if isinstance(got, torch.Tensor) and got.dtype != torch.float16:
        fail(f"{what} returns {got.dtype}: keep the inputs' dtype (a fill or a tensor made in float32 promotes the "
             "result); make new tensors with the scores' dtype.")
    compare(got, reference_attention(q, k, v, mask), what=what, atol=2e-2, rtol=2e-2)


def _check_attention_at_another_width(attention, mask) -> None:
    """Heads of width 8 instead of 4: a scale written into the code as a number is right for one width only."""
    q, k, v, _ = _qkv(seed=3, e=8)  # (b, h, i|j, 8)
    what = "your attention(q, k, v, mask) with heads of width e=8"
    got = run_untouched(attention, q, k, v, mask, what=what, names=("q", "k", "v", "mask"))
    width4 = reference_attention(q * (4**-0.5 / 8**-0.5), k, v, mask)  # the scores scaled by 4**-0.5 = 0.5
    compare(got, reference_attention(q, k, v, mask), what=what, mistakes=[
        Mistake("scale fixed at e=4", width4,
                "the scale is the number 0.5, right for heads of width 4 only: compute it from the queries, "
                "`q.shape[-1] ** -0.5`."),
    ])


def _attention_mistakes(q, k, v, mask):
    return [
        Mistake("-inf fill", reference_attention(q, k, v, mask, fill="inf"),
                "the query that may see nothing comes out as NaN: a -inf fill makes its softmax 0/0. Fill with "
                "-torch.finfo(scores.dtype).max and then set the weights of rows whose mask is all False to 0."),
        Mistake("-finfo.max fill", reference_attention(q, k, v, mask, fill="max"),
                "the query that may see nothing gets a uniform average of every value, though its mask says it may "
                "see none: after the softmax, set the weights of rows whose mask is all False to 0."),
        Mistake("missing scale", reference_attention(q, k, v, mask, scale=False),
                "the scores are not scaled: multiply q·k by e**-0.5, e = q.shape[-1], before the softmax."),
        Mistake("softmax over the wrong axis", reference_attention(q, k, v, mask, axis=-2),
                "the softmax runs over the queries (dim=-2); it must run over the keys, the last axis j."),
        Mistake("scaled by the number of keys", reference_attention(q, k, v, mask, scale="keys"),
                "the scores are scaled by 1/sqrt(j), the number of keys: the scale is 1/sqrt(e), e = q.shape[-1], the "
                "width of one head's queries and keys."),
        Mistake("scale after the softmax", reference_attention(q, k, v, mask, scale="after"),
                "the weights are scaled after the softmax, so they no longer sum to 1: the scale multiplies the "
                "scores, q·k * e**-0.5, before the softmax."),
        Mistake("scaled by 1/e", reference_attention(q, k, v, mask, scale="1/e"),
                "the scores are scaled by 1/e, not 1/sqrt(e): multiply q·k by e**-0.5, e = q.shape[-1]."),
        Mistake("scaled by the whole width", reference_attention(q, k, v, mask, scale="heads"),
                "the scores are scaled by 1/sqrt(h*e), the width of all heads together: each head's scores are "
                "scaled by its own width, e**-0.5 with e = q.shape[-1]."),
        Mistake("mask ignored", reference_attention(q, k, v, mask, use_mask=False),
                "the mask has no effect: fill the scores where the mask is False, before the softmax."),
        *(Mistake("mask inverted", reference_attention(q, k, v, mask, use_mask=inverted, fill=filled),
                  "the mask is used the wrong way round: True means 'may attend', so fill where the mask is False "
                  "(`scores.masked_fill(~mask, ...)`).")
          for inverted in ("inverted", "inverted_fill") for filled in ("max_then_zero", "max", "inf")),
        *([Mistake("row 0's mask for every row", reference_attention(q, k, v, mask[0]),
                   "every batch row is masked with row 0's mask (`mask[0]`, right only for a batch of 1): keep the "
                   "batch axis, `mask[:, None]` (b, 1, i, j), so each row gets its own.")]
          if mask is not None and mask.ndim == 3 else []),
    ]


def check_attention(attention) -> None:
    """Step 01.attention: `attention(q, k, v, mask=None)` with a (b, i, j) or (i, j) bool mask."""
    refuse_the_answer(attention, _ANSWERS_ATTEND)
    q, k, v, mask = _qkv()
    names = ("q", "k", "v", "mask")
    what = "your attention(q, k, v)"
    got = run_untouched(attention, q, k, v, what=what, names=names)  # an in-place q.mul_(scale) is named as such
    unmasked = [m for m in _attention_mistakes(q, k, v, None) if "scale" in m.name or "axis" in m.name]  # no mask: no fill
    compare(got, reference_attention(q, k, v), what=what, mistakes=unmasked)
    what = "your attention(q, k, v, mask)"
    head_axis = (f"the mask here is (b, i, j) = {tuple(mask.shape)}, the scores (b, h, i, j) = "
                 f"{(q.shape[0], q.shape[1], q.shape[2], k.shape[2])}: give the mask an axis for the heads, "
                 "`mask[:, None]` (b, 1, i, j); a 2-D (i, j) mask needs two, `mask[None, None]`.")
    got = run_untouched(attention, q, k, v, mask, what=what, names=names, advice={"": head_axis})  # "": any error
    compare(got, reference_attention(q, k, v, mask), what=what, mistakes=_attention_mistakes(q, k, v, mask),
            shape_advice=head_axis)
    what = "your attention(q, k, v, mask) with a 2-D (i, j) mask"
    got = run_untouched(attention, q, k, v, mask[0], what=what, names=names)
    compare(got, reference_attention(q, k, v, mask[0]), what=what, mistakes=_attention_mistakes(q, k, v, mask[0]))
    nan_k = k.clone()  # (b, h, j, e)
    nan_k[0, :, 2] = float("nan")  # key 2 of sample 0: the rows that may see it must come out NaN, the others not
    what = "your attention(q, k, v, mask) with a NaN in key 2 of sample 0"
    got = run_untouched(attention, q, nan_k, v, mask, what=what, names=names)
    compare(got, reference_attention(q, nan_k, v, mask), what=what,
            unmatched="a NaN in a key must reach exactly the queries that may see that key: fill the masked scores "
                      "with a number, not -inf, and do not clean up with nan_to_num (it would hide a real NaN too).")
    _check_attention_in_float16(attention, q, k, v, mask)
    _check_attention_at_another_width(attention, mask)
    check_gradients_reach(lambda a, b, c: attention(a, b, c, mask), lambda a, b, c: reference_attention(a, b, c, mask),
                     (q, k, v), ("q", "k", "v"), what="your attention(q, k, v, mask)")
    passed("attention is right, with and without a mask; the query that may see nothing gets exactly 0, and the "
           "gradients reach q, k and v.")


def check_heads(split_heads, merge_heads) -> None:
    """Step 01.heads: `split_heads(x, heads)` (b, n, h*e) -> (b, h, n, e) and `merge_heads(x)`, its inverse."""
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(1))  # (b, n, h*e)
    what = "your split_heads(x, 3)"
    got = run_learner(split_heads, x, 3, what=what)
    compare(got, rearrange(x, "b n (h e) -> b h n e", h=3), what=what, mistakes=[
        Mistake("heads in the wrong order", rearrange(x, "b n (e h) -> b h n e", h=3),
                "the heads are split in the wrong order: '(e h)' deals the width out like cards; write '(h e)' so "
                "head 0 takes the first e numbers."),
        Mistake("heads not moved", rearrange(x, "b n (h e) -> b n h e", h=3),
                "the head axis stays after the tokens: the result must be (b, h, n, e), heads before tokens."),
        Mistake("e taken as h", rearrange(x, "b n (h e) -> b h n e", e=3),
                "there are 4 heads of width 3 instead of 3 heads of width 4: pass h=heads to rearrange, not e=heads."),
        Mistake("reshaped, not moved", x.reshape(2, 3, 5, 4),
                "`reshape(b, h, n, e)` keeps the numbers in their memory order, so a 'head' is a run of whole tokens, "
                "not a slice of each token's width: view it as (b, n, h, e) first, then move the heads, "
                "`.transpose(1, 2)`, or write `rearrange(x, 'b n (h e) -> b h n e', h=heads)`."),
    ])
    split = rearrange(x, "b n (h e) -> b h n e", h=3)
    what = "your merge_heads(split)"
    view_advice = {"view size is not compatible": "after a transpose the numbers are no longer in memory order, and "
                   "`.view` cannot regroup them: use `.reshape(...)` or `rearrange(x, 'b h n e -> b n (h e)')`."}
    got = run_learner(merge_heads, split.contiguous(), what=what, advice=view_advice)  # as a layer's output comes
    compare(got, x, what=what, mistakes=[
        Mistake("heads in the wrong order", rearrange(split, "b h n e -> b n (e h)"),
                "the heads are merged in the wrong order: write '(h e)', the same as in split_heads."),
        Mistake("reshaped, not moved", split.reshape(2, 5, 12),
                "`reshape(b, n, h*e)` without moving the heads back mixes tokens: move the heads after the tokens "
                "first, `.transpose(1, 2)`, or write `rearrange(x, 'b h n e -> b n (h e)')`."),
    ])
    passed("split_heads and merge_heads are right: head 2 of token 4 is numbers 8..11 of its width.")


def reference_multi_head(x, context, to_q, to_k, to_v, heads, mask=None, *, order="h e", merge_order=None,
                         use_mask=True, scale=True):
    """The lesson's multi-head attention; `order` splits the heads, `merge_order` (default: the same) merges them,
    or, as mistakes, "none" (the heads never merged) or "reshape" (merged by a reshape that does not move them)."""
    split = lambda t, h: rearrange(t, f"b n ({order}) -> b h n e", h=h)  # noqa: E731
    q, k, v = split(to_q(x), heads), split(to_k(context), heads), split(to_v(context), heads)  # (b, h, n|j, e)
    out = reference_attention(q, k, v, mask, use_mask=use_mask, scale=scale)  # (b, h, n, e)
    if merge_order == "none":
        return out  # (b, h, n, e)
    if merge_order == "reshape":
        return out.reshape(out.shape[0], out.shape[2], -1)  # (b, n, h*e), tokens mixed
    return rearrange(out, f"b h n e -> b n ({merge_order or order})")  # (b, n, h*e)


def check_multi_head(multi_head_attention) -> None:
    """Step 01.multihead: `multi_head_attention(x, context, to_q, to_k, to_v, heads, mask=None)` -> (b, n, h*e)."""
    refuse_the_answer(multi_head_attention, _ANSWERS_ATTEND)
    torch.manual_seed(2)
    x, context = torch.randn(2, 3, 8), torch.randn(2, 5, 8)  # (b, n, d), (b, j, d)
    to_q, to_k, to_v = (torch.nn.Linear(8, 8, bias=False) for _ in range(3))
    mask = _qkv()[3]  # (b, 3, 5), with a row that sees nothing
    args = (x, context, to_q, to_k, to_v, 2, mask)
    what = "your multi_head_attention(x, context, to_q, to_k, to_v, heads=2, mask)"
    advice = {"must match the size": f"the keys and values come from `context` (b, j, d) = {tuple(context.shape)} "
                                     f"and the queries from x (b, n, d) = {tuple(x.shape)}: a size mismatch between "
                                     "n and j means one of them was made from the other's tensor (q from context, or "
                                     "k or v from x)."}
    with torch.no_grad():
        got = run_learner(multi_head_attention, *args, what=what, advice=advice)
        _compare_multi_head(got, args, what)
    for heads in (4, 1):  # other head counts: a 2 written into the code fails here
        other = (x, context, to_q, to_k, to_v, heads, mask)
        what_other = f"your multi_head_attention(..., heads={heads}, mask)"
        with torch.no_grad():
            got = run_learner(multi_head_attention, *other, what=what_other, advice=advice)
        two = reference_multi_head(*args)  # (b, n, h*e) with 2 heads
        if isinstance(got, torch.Tensor) and got.shape == two.shape and torch.allclose(got.float(), two, atol=1e-5):
            fail(f"{what_other} gives the answer for 2 heads: the number of heads is fixed in your code; pass `heads` "
                 "on to split_heads.")
        with torch.no_grad():
            _compare_multi_head(got, other, what_other)
    weights = [layer.weight for layer in (to_q, to_k, to_v)]

    def run(fn, wq, wk, wv):  # the projections as functions of their weights, so each gets a gradient to compare
        projections = [lambda t, w=w: t @ w.T for w in (wq, wk, wv)]
        return fn(x, context, *projections, 2, mask)

    check_gradients_reach(lambda *w: run(multi_head_attention, *w), lambda *w: run(reference_multi_head, *w), weights,
                     ("to_q.weight", "to_k.weight", "to_v.weight"), what=what)
    fixed = [lambda t, w=layer.weight.detach(): t @ w.T for layer in (to_q, to_k, to_v)]  # the weights held still
    check_gradients_reach(lambda a, c: multi_head_attention(a, c, *fixed, 2, mask),
                          lambda a, c: reference_multi_head(a, c, *fixed, 2, mask), (x, context), ("x", "context"),
                          what=what)
    passed("multi_head_attention is right: heads=1, 2 and 4, each head its own slice, merged back side by side, and "
           "the gradients reach to_q, to_k and to_v, x and the context.")


def _compare_multi_head(got, args, what) -> None:
    x, context, to_q, to_k, to_v, heads, mask = args
    compare(got, reference_multi_head(*args), what=what, mistakes=[
        Mistake("heads in the wrong order", reference_multi_head(*args, order="e h"),
                "the heads are split (or merged) in the wrong order: use '(h e)' on both sides, as split_heads does."),
        *([Mistake("one head", reference_multi_head(x, context, to_q, to_k, to_v, 1, mask),
                   f"this is one head of width 8, not {heads} heads of width {8 // heads}: split q, k and v with "
                   "split_heads(..., heads) before attention.")] if heads > 1 else []),
        Mistake("mask ignored", reference_multi_head(*args, use_mask=False),
                "the mask has no effect: pass it on to attention(q, k, v, mask)."),
        Mistake("missing scale", reference_multi_head(*args, scale=False),
                "the scores are not scaled: attention must multiply q·k by e**-0.5."),
        *(Mistake("split and merged differently", reference_multi_head(*args, order=a, merge_order=b),
                  f"the heads are split with '({a})' and merged with '({b})': use '(h e)' on both sides, as "
                  "split_heads and merge_heads do.") for a, b in (("h e", "e h"), ("e h", "h e"))),
        Mistake("heads not merged", reference_multi_head(*args, merge_order="none"),
                "the heads are never merged: the result is still (b, h, n, e); put them back side by side with "
                "your merge_heads, (b, n, h*e)."),
        Mistake("merged by reshape", reference_multi_head(*args, merge_order="reshape"),
                "the heads are merged with `reshape(b, n, h*e)` without moving them back after the tokens, so "
                "tokens are mixed: use your merge_heads (`rearrange(out, 'b h n e -> b n (h e)')`)."),
        Mistake("to_k for the values", reference_multi_head(x, context, to_q, to_k, to_k, heads, mask),
                "the values are made with to_k: v = to_v(context), each projection its own."),
        Mistake("to_q for the keys", reference_multi_head(x, context, to_q, to_q, to_v, heads, mask),
                "the keys are made with to_q: k = to_k(context), each projection its own."),
    ])


def check_stable_softmax(stable_softmax) -> None:
    """Step 01.softmax: `stable_softmax(s, dim=-1)` that never overflows."""
    code = getattr(stable_softmax, "__code__", None)
    if code is not None and "softmax" in _names_used(code):
        fail("your stable_softmax calls torch's softmax (`torch.softmax`, `F.softmax` or `s.softmax`), which this "
             "exercise writes out: exp of the scores minus their max, divided by the sum of those exps.")
    s = torch.tensor([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]])  # (2, 3)
    what = "your stable_softmax(s)"
    got = run_untouched(stable_softmax, s, what=what, names=("s",), fix="write `s = s - s.amax(...)`, a new tensor.",
                        advice={"must match the size": "keep the axis you reduce over, `keepdim=True`, so the max and "
                                "the sum broadcast against s."})
    compare(got, s.softmax(dim=-1), what=what, mistakes=[
        Mistake("no max subtracted", s.exp() / s.exp().sum(dim=-1, keepdim=True),
                "exp(1000) overflows to inf and inf/inf is NaN: subtract each row's max before exp."),
        Mistake("max of the whole tensor", (s - s.max()).exp() / (s - s.max()).exp().sum(dim=-1, keepdim=True),
                "the second row underflows to 0/0: subtract the max of each row (amax(dim=dim, keepdim=True)), not "
                "of the whole tensor."),
        Mistake("wrong axis", s.softmax(dim=0),
                "the weights sum to 1 down the columns: take the max and the sum along `dim`, with keepdim=True."),
    ])
    masked = torch.tensor([[0.0, float("-inf"), 1.0], [float("-inf"), 2.0, 2.0]])  # (2, 3): masked keys
    what = "your stable_softmax(s) on scores with -inf entries"
    low = masked - masked.amin(dim=-1, keepdim=True)  # (2, 3): -inf - (-inf) is NaN
    compare(run_learner(stable_softmax, masked.clone(), what=what), masked.softmax(dim=-1), what=what, mistakes=[
        Mistake("min subtracted", low.exp() / low.exp().sum(dim=-1, keepdim=True),
                "the row's min is subtracted, not its max: with a -inf score the min is -inf and -inf - (-inf) is "
                "NaN (and on wide rows exp of score - min overflows); subtract the max, so every exp is at most 1."),
    ], unmatched="a -inf score must get weight exactly 0 and leave the rest of its row a softmax: exp(-inf - max) "
                      "is 0, so no special case is needed (do not replace -inf by a number).")
    what = "your stable_softmax(s, dim=0)"
    compare(run_learner(stable_softmax, s.T, 0, what=what), s.T.softmax(dim=0), what=what, mistakes=[
        Mistake("dim ignored", s.T.softmax(dim=-1),
                "it ignores its dim argument: the softmax ran over the last axis. Take the max and the sum along "
                "`dim` (`s.amax(dim=dim, keepdim=True)`, `.sum(dim=dim, keepdim=True)`)."),
    ])
    what = "your stable_softmax(s) in float16"
    half = s.half()  # (2, 3): 1000 fits in float16, and s - max is at most 0, so nothing overflows
    check_dtype_kept(run_learner(stable_softmax, half, what=what), half, what, inputs="scores",
                     fix="keep the scores' dtype; a `.float()` or a tensor made in float32 changes it.")
    check_gradients_reach(stable_softmax, lambda t: t.softmax(dim=-1), (s,), ("s",), what=what.replace(" in float16", ""),
                          of="softmax's")
    passed("stable_softmax is right, finite for scores around 1000, and its gradient is softmax's.")


def check_causal_mask(causal_mask) -> None:
    """Step 01.causal: `causal_mask(n)`, (n, n) bool, True where key j <= query i."""
    what = "your causal_mask(4)"
    got = run_learner(causal_mask, 4, what=what)
    want = torch.tril(torch.ones(4, 4, dtype=torch.bool))  # (n, n)
    if isinstance(got, torch.Tensor) and got.dtype != torch.bool:
        fail(f"{what} has dtype {got.dtype}: a mask is bool (True = may attend); add dtype=torch.bool or compare with <=.")
    compare(got, want, what=what, mistakes=[
        Mistake("transposed", want.T, "query 0 sees every key: that is the mask transposed; query i may see keys j <= i."),
        Mistake("no diagonal", torch.tril(want, diagonal=-1),
                "a query cannot see its own position: j <= i includes j == i, the diagonal."),
        Mistake("one too many", torch.tril(torch.ones(4, 4, dtype=torch.bool), diagonal=1),
                "query i also sees key i + 1, the next token: tril's diagonal is 0 (keys j <= i), not 1."),
        Mistake("inverted", ~want, "the mask is inverted (True where a key is blocked): here True means may attend, "
                "so query i's True keys are j <= i."),
    ])
    compare(run_learner(causal_mask, 1, what="your causal_mask(1)"), torch.ones(1, 1, dtype=torch.bool), what="your causal_mask(1)")
    passed("causal_mask is right: query i sees keys 0..i.")


keep_rng(globals())  # no check moves the lesson's random numbers

register_nudges({  # first hints for the steps whose full hint is the answer
    "01.causal": "Query i may look at the keys at positions up to and including i. That is the lower triangle of an n "
    "by n table of booleans; torch has a function for triangles, or build it by comparing positions.",
    "01.heads": "Splitting heads moves a group of the last axis's numbers to an axis of its own, one group per head, "
    "the head axis before the tokens. Merging is the same move backwards. Which of the two factors of the "
    "last axis is the outer one decides which numbers head 0 gets.",
    "01.multihead": "Three projections, queries from x and keys and values from the context, each split into heads; your "
    "attention of step 1 on them; the heads merged back. Your earlier functions do all of it.",
})
