"""Lesson 05's checks: the masked softmax (rows that see nothing exactly 0, never NaN), the whole
MaskedCrossAttention forward in both modes, and the exercise on which words an image reaches."""
from __future__ import annotations

import torch
from einops import rearrange

import flamingo_lite as fl

from ... import masks
from . import (ExerciseFailed, Mistake, check_dtype_kept, check_gradients_reach, check_layer, check_layer_in_sizes, compare, fail, heads_mistakes, passed,
               register_hints, register_nudges, run_learner, run_untouched, scale_mistakes, keep_rng, refuse_the_answer)

register_hints({
    "05.softmax": "Find the rows that see nothing, empty = ~mask.any(dim=-1, keepdim=True). Fill the masked scores "
    "with -inf and the empty rows with 0 (so no row is all -inf), softmax over the last axis, then set the empty "
    "rows to 0 again.",
    "05.init": "After super().__init__(): self.heads = heads, self.scale = dim_head ** -0.5, inner = dim_head * heads; "
    "self.norm = nn.LayerNorm(dim) (for the text only); self.to_q = nn.Linear(dim, inner, bias=False), "
    "self.to_kv = nn.Linear(dim, 2 * inner, bias=False), self.to_out = nn.Linear(inner, dim, bias=False); and keep "
    "self.only_attend_immediate_media = only_attend_immediate_media for the mask.",
    "05.forward": "q from to_q(norm(x)) split into heads; k, v from to_kv(media flattened 'b t m d -> b (t m) d'), "
    "each split into heads; sim = einsum(q, k) * self.scale; with media_locations, the mask is "
    "your my_cross_attention_mask(media_locations, t, m, self.only_attend_immediate_media) from lesson 04 (or masks.cross_attention_mask, the same) with a head axis, "
    "attn = masked_softmax(sim, mask); without, a plain softmax. Then einsum with v, merge the heads, to_out.",
    "05.reached": "changed = media.clone(); changed[:, k - 1] = torch.randn_like(media[:, k - 1]); run the layer on "
    "both and compare (before - after).abs().amax(dim=-1) > 1e-6.",
})
register_nudges({  # a first hint where the full one is the answer: hint(key), then hint(key, 2)
    "05.init": "Like lesson 02's PerceiverAttention, with one input to normalise, the text (the media come from the "
    "resampler, already normalised). Keep the heads, the scale and the mode for forward, and make three "
    "bias-free Linear maps: queries, keys and values together, and the output.",
    "05.forward": "Lesson 01's multi-head attention with the queries from the text and the keys and values from the "
    "media, and two differences: the media are first flattened to one axis of t*m latents, and with "
    "media_locations the softmax is your masked_softmax with lesson 04's mask (given a head axis).",
    "05.reached": "Change one image only and see whose output moves: the tokens that attend to image k are exactly "
    "those whose output differs. Work on a copy of media, never on media itself.",
    "05.softmax": "Masked scores must get weight exactly 0, and a row with nothing to see must come out 0, not NaN: "
    "which fill gives exact zeros, and what must happen to a row that is all filled?",
})

_ANSWERS_SOFTMAX = (fl.attention.attend, fl.attention.attention_weights)  # the package's masked softmax


def reference_masked_softmax(scores, mask, *, fill="zero", axis=-1, use_mask=True):
    """softmax over the last axis where mask is True, all-False rows exactly 0; and the usual mistakes:
    fill="inf" (NaN rows), "max" (-finfo.max: a uniform average), axis=-2, use_mask=False."""
    if not use_mask:
        return scores.softmax(dim=axis)
    empty = ~mask.any(dim=-1, keepdim=True)  # (..., 1): rows that see nothing
    if fill == "inf":
        return scores.masked_fill(~mask, float("-inf")).softmax(dim=axis)
    if fill == "max":
        return scores.masked_fill(~mask, -torch.finfo(scores.dtype).max).softmax(dim=axis)
    filled = scores.masked_fill(~mask, float("-inf")).masked_fill(empty, 0.0)  # no all -inf row
    return filled.softmax(dim=axis).masked_fill(empty, 0.0)


_INF = ("a row that sees nothing comes out as NaN, 0/0 (the softmax of an all -inf row, or weights divided by a sum "
        "of 0): give such rows, ~mask.any(dim=-1, keepdim=True), weights exactly 0.")
_MAX = ("a row that sees nothing gets a uniform average over every image, the future ones included (the original "
        "code's look into the future, from its -finfo.max fill): set the weights of rows that see nothing to 0.")
_INVERTED = ("the mask is used the wrong way round: the weights are on the entries where mask is False and 0 where it "
             "is True; mask == True means 'may attend', so fill ~mask with -inf, not mask.")
_MULTIPLIED = ("the softmax ran over every entry and was then multiplied by the mask, so a row's allowed weights no "
               "longer sum to 1: fill the masked scores with -inf before the softmax instead.")


def _axis_message(axis: int, ndim: int) -> str:
    """What a softmax over `axis` (negative) of (b, n, j) or (b, h, n, j) scores runs over, in one sentence."""
    dim = ndim + axis
    names = ["the batch", "the heads", "the text tokens"] if ndim == 4 else ["the batch", "the text tokens"]
    return f"the softmax runs over {names[dim]} (dim={dim}); it must run over the media latents, the last axis (dim=-1)."


def _named_by_the_sums(got, mask):
    """The mistakes that show in where the weights are 0 and what they sum to, however the code is written: a mask
    used the wrong way round, or a softmax over another axis. None when neither shows."""
    w = got.detach().float().nan_to_num(0.0)  # (b, [h,] n, j)
    allowed = mask.expand_as(w)  # (b, [h,] n, j)
    if bool((w[~allowed] != 0).any()) and bool((w[allowed] == 0).all()):
        return _INVERTED

    def zero_or_one(sums):
        return bool((((sums - 1).abs() < 1e-4) | (sums.abs() < 1e-4)).all())

    if zero_or_one(w.sum(dim=-1)):
        return None
    for axis in range(-2, -w.ndim - 1, -1):
        if zero_or_one(w.sum(dim=axis)):
            return _axis_message(axis, w.ndim)
    return None


def check_masked_softmax(masked_softmax) -> None:
    """Step 05.softmax: `masked_softmax(scores, mask)` over the last axis; all-False rows exactly 0, never NaN."""
    refuse_the_answer(masked_softmax, _ANSWERS_SOFTMAX)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 5, generator=g)  # (b, n, j)
    mask = torch.rand(2, 3, 5, generator=g) > 0.5  # (b, n, j)
    mask[0, 0] = False  # a row that sees nothing
    mask[1, 2] = True  # a row that sees everything
    mask[:, 1, 0] = True
    for m, what in ((mask, "your masked_softmax(scores, mask)"),
                    (rearrange(mask, "b i j -> b 1 i j"), "your masked_softmax(scores, mask) with a head axis to broadcast")):
        scores = s if m.ndim == 3 else rearrange(s, "b i j -> b 1 i j").expand(2, 2, 3, 5).clone()  # (b, [h,] n, j)
        given = {"scores": scores.clone(), "mask": m.clone()}  # the learner's own copies, to see them changed
        keep = {"must match the size": "a row's 'sees nothing' test must keep its axis to broadcast against the "
                "scores: `mask.any(dim=-1, keepdim=True)`."}
        got = run_learner(masked_softmax, given["scores"], given["mask"], what=what, advice=keep)
        for name, before in (("scores", scores), ("mask", m)):
            if not torch.equal(given[name], before):
                fail(f"{what} changes its input {name} in place (an op with a trailing _, such as masked_fill_, or "
                     f"{name}[...] = ...): the caller's tensor changes too; use {name}.masked_fill(...), which "
                     "returns a new tensor.")
        if isinstance(got, torch.Tensor) and got.shape == scores.shape:
            named = _named_by_the_sums(got, m)
            if named is not None:
                fail(f"{what}: {named}")
        compare(got, reference_masked_softmax(scores, m), what=what, mistakes=[
            Mistake("-inf fill", reference_masked_softmax(scores, m, fill="inf"), _INF),
            Mistake("-finfo.max fill", reference_masked_softmax(scores, m, fill="max"), _MAX),
            Mistake("softmax over the text tokens", reference_masked_softmax(scores, m, axis=-2), _axis_message(-2, m.ndim)),
            Mistake("mask ignored", reference_masked_softmax(scores, m, use_mask=False),
                    "the mask has no effect: masked entries must get weight exactly 0."),
            Mistake("softmax, then the mask", scores.softmax(dim=-1) * m, _MULTIPLIED),
            Mistake("all for any", reference_masked_softmax(scores, m) * m.all(dim=-1, keepdim=True),
                    "every row with a masked entry came out 0, not only the rows that see nothing: a row sees nothing "
                    "when no entry is True, `~mask.any(dim=-1, keepdim=True)`, not `~mask.all(...)`."),
        ])
        check_dtype_kept(got, scores, what, inputs="scores", fix="keep the scores' dtype (a tensor made in another "
                         "dtype promotes the result), or the layer that calls it mixes dtypes.")
        leak = got.masked_select(~m.expand_as(got))  # the weights of masked entries
        if bool((leak != 0).any()):
            fail(f"{what}: masked entries get weights up to {float(leak.abs().max()):.2g}, not exactly 0: a finite "
                 "fill such as -30 leaves exp(fill - max) above 0; fill with -inf, then give the rows that see "
                 "nothing 0.")
    half = run_learner(masked_softmax, s.half(), mask, what="your masked_softmax on float16 scores",
                       advice={"cannot be converted": "a fixed fill such as -1e9 does not fit in float16: fill with "
                               "torch.finfo(scores.dtype).min (or -inf, then set the all-False rows to 0), which every "
                               "dtype holds."})
    check_dtype_kept(half, s.half(), "your masked_softmax on float16 scores", inputs="scores",
                     fix="keep the scores' dtype; a `.float()` or a tensor made in float32 changes it.")
    compare(half.float(), reference_masked_softmax(s, mask), what="your masked_softmax on float16 scores", atol=2e-3,
            rtol=2e-3)
    big = s * 100  # (b, n, j): scores of a few hundred, where exp overflows float32 (past 88)
    what = "your masked_softmax on scores of a few hundred"
    got = run_learner(masked_softmax, big.clone(), mask.clone(), what=what)
    if isinstance(got, torch.Tensor) and got.shape == big.shape and not bool(torch.isfinite(got).all()):
        fail(f"{what} (the largest is {float(big.max()):.0f}) gives NaN or inf: exp(x) overflows float32 past x = 88, "
             "and inf / inf is NaN. Subtract each row's largest score before the exp, as softmax does, or call "
             "`.softmax(dim=-1)` on the filled scores, which does it for you.")
    compare(got, reference_masked_softmax(big, mask), what=what,
            unmatched="look at the exp: right on small scores and wrong on these, it has likely overflowed. exp(x) "
            "overflows float32 past x = 88 (inf / inf is NaN, and nan_to_num hides it as 0). Subtract each row's largest score "
            "before the exp, or call `.softmax(dim=-1)` on the filled scores.")
    # a .detach() inside would leave the queries and keys before it untrained
    check_gradients_reach(lambda scores: masked_softmax(scores, mask), lambda scores: reference_masked_softmax(scores, mask),
                          (s,), ("the scores",), what="your masked_softmax(scores, mask)", of="softmax's")
    passed("masked_softmax is right: masked weights exactly 0, rows that see nothing all 0, no NaN, and the gradient "
           "reaches the scores.")


def reference_cross_attention(layer, x, media, media_locations=None, *, fill="zero", scale=True, order="h e",
                              use_mask=True, immediate=None, norm_media=False, axis=-1, heads=None, scale_value=None,
                              invert=False, norm_text=True, swap_kv=False, scale_after=False, out_layer=True,
                              head_axis=True, merge_order=None, media_order="t m", mask_from_row0=False,
                              key_order=None, value_order=None):
    """The layer's forward from its own weights, and the usual mistakes; `heads` splits into that many heads,
    `scale_value` replaces the scale, `media_order` flattens the media in another order than the mask's,
    `mask_from_row0` gives every row the mask of row 0, `key_order` / `value_order` split the keys / the values
    alone in another order than `order`."""
    b, t, m = media.shape[:3]
    heads = layer.heads if heads is None else heads
    q = rearrange(layer.to_q(layer.norm(x) if norm_text else x), f"b n ({order}) -> b h n e", h=heads)  # (b, h, n, e)
    media = layer.norm(media) if norm_media else media  # (b, t, m, d)
    k, v = layer.to_kv(rearrange(media, f"b t m d -> b ({media_order}) d")).chunk(2, dim=-1)  # 2 x (b, t*m, h*e)
    k, v = (v, k) if swap_kv else (k, v)
    k, v = (rearrange(a, f"b j ({split or order}) -> b h j e", h=heads)
            for a, split in ((k, key_order), (v, value_order)))  # (b, h, t*m, e)
    sim = torch.einsum("b h i e, b h j e -> b h i j", q, k)  # (b, h, n, t*m)
    scale_by = q.shape[-1] ** -0.5 if scale_value is None else scale_value
    if scale and not scale_after:
        sim = sim * scale_by
    if media_locations is not None and use_mask:
        mode = layer.only_attend_immediate_media if immediate is None else immediate
        mask = masks.cross_attention_mask(media_locations, t, m, mode)  # (b, n, t*m)
        mask = mask[:1].expand_as(mask) if mask_from_row0 else mask  # (b, n, t*m)
        # without the head axis, (b, n, t*m) lines up with (b, h, n, t*m) as (1, b, n, t*m): batch i's mask on head i
        mask = rearrange(mask, "b i j -> b 1 i j" if head_axis else "b i j -> 1 b i j")  # (b, 1, n, t*m)
        attn = reference_masked_softmax(sim, ~mask if invert else mask, fill=fill, axis=axis)  # (b, h, n, t*m)
    else:
        attn = sim.softmax(dim=axis)  # (b, h, n, t*m)
    attn = attn * scale_by if scale_after else attn  # (b, h, n, t*m)
    merged = order if merge_order is None else merge_order
    out = rearrange(torch.einsum("b h i j, b h j e -> b h i e", attn, v), f"b h n e -> b n ({merged})")  # (b, n, h*e)
    return layer.to_out(out) if out_layer else out  # (b, n, d), or (b, n, h*e) with to_out left out


_NO_LOCATIONS = ("media_locations=None means no mask: every word attends to every image, a plain softmax of the "
                 "scores over the last axis")


def _without_locations_mistakes(reference, x, media):
    """The usual ways of getting media_locations=None wrong, computed with the reference's weights."""
    first = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)  # (b, n)
    first[:, 0] = True  # one marker before the first word: every word sees image 1 only
    return [
        Mistake("zeros without media_locations", torch.zeros_like(x),
                f"without media_locations it returns zeros, as if no word saw an image; {_NO_LOCATIONS}."),
        Mistake("x without media_locations", x,
                f"without media_locations it returns x unchanged, as if there were no media; {_NO_LOCATIONS}."),
        Mistake("image 1 only without media_locations", reference_cross_attention(reference, x, media, first),
                f"without media_locations every word sees image 1 only, as if it came before the first word; "
                f"{_NO_LOCATIONS}, not a mask made up for the missing argument."),
    ]


def _cross_attention_mistakes(reference, x, media, media_locations=None):
    run = lambda **flags: reference_cross_attention(reference, x, media, media_locations, **flags)  # noqa: E731
    return [
        *(_without_locations_mistakes(reference, x, media) if media_locations is None else []),
        Mistake("softmax over the text tokens", run(axis=-2), _axis_message(-2, 4)),
        Mistake("softmax over the heads", run(axis=-3), _axis_message(-3, 4)),
        Mistake("residual inside", run() + x,
                "x is added to the output inside the layer: return self.to_out(...) alone; the gated block around "
                "it adds the residual, x + tanh(alpha) * attn(x, media) (lesson 06)."),
        Mistake("-inf fill", run(fill="inf"), _INF),
        Mistake("-finfo.max fill", run(fill="max"), _MAX),
        Mistake("missing scale", run(scale=False), "the scores are not scaled: multiply them by self.scale before the softmax."),
        Mistake("heads in the wrong order", run(order="e h"),
                "the heads are split in the wrong order: write '(h e)', not '(e h)', for q, k and v and when merging."),
        *(Mistake(f"the {which} split in another order", run(**{f"{which[:-1]}_order": "e h"}),
                  f"the {which} are split with '(e h)' and the rest with '(h e)': split q, k and v alike, "
                  "'b j (h e) -> b h j e', so each head's slice of the keys and values is its own.")
          for which in ("keys", "values")),
        Mistake("media_locations ignored", run(use_mask=False),
                "every word sees every image: with media_locations, build the mask and use masked_softmax."),
        Mistake("mask inverted", run(invert=True),
                "the mask is passed the wrong way round: give masked_softmax the mask itself (True where a word may "
                "see a latent), not ~mask."),
        Mistake("mode not followed", run(immediate=not reference.only_attend_immediate_media),
                "the mask is the other mode's: pass self.only_attend_immediate_media to the mask (do not fix it to "
                "True or False, and do not invert it)."),
        Mistake("media normalised", run(norm_media=True),
                "the media went through self.norm too: only the text x is normalised; the media come from the "
                "resampler, already normalised."),
        Mistake("text not normalised", run(norm_text=False),
                "the text x is not normalised: the queries come from self.to_q(self.norm(x)), not self.to_q(x)."),
        Mistake("media normalised instead of the text", run(norm_text=False, norm_media=True),
                "self.norm is applied to the media instead of the text: the queries come from "
                "self.to_q(self.norm(x)), and the media go into to_kv as they are."),
        Mistake("keys and values swapped", run(swap_kv=True),
                "the keys and values are swapped: to_kv's output splits keys first, k, v = ....chunk(2, dim=-1); the "
                "scores use k, and the weights average v."),
        Mistake("to_out left out", run(out_layer=False),
                "to_out is left out: the heads' merged output, rearranged 'b h n e -> b n (h e)', must go through "
                "self.to_out, back to the model width."),
        *([Mistake("mask without a head axis", run(head_axis=False),
                   "the mask has no head axis: a (b, n, t*m) mask against (b, h, n, t*m) scores lines the batch up "
                   "with the heads (batch i's mask on head i); give it one, rearrange(mask, 'b i j -> b 1 i j').")]
          if media_locations is not None and x.shape[0] == reference.heads > 1 else []),  # else it cannot broadcast
        Mistake("heads merged in another order", run(merge_order="e h"),
                "the heads are merged in another order than they were split: merge with 'b h n e -> b n (h e)', the "
                "order of the split."),
        Mistake("media flattened as (m t)", run(media_order="m t"),
                "the media are flattened 'b t m d -> b (m t) d', latent by latent, but the mask runs image by image: "
                "flatten them 'b t m d -> b (t m) d', so each image's m latents sit side by side, as in the mask."),
        *([Mistake("every row masked by row 0", run(mask_from_row0=True),
                   "every row of the batch got the mask of row 0: build the mask from the whole media_locations "
                   "(b, n), one row per sequence, not from media_locations[0] or [:1].")]
          if media_locations is not None and x.shape[0] > 1 else []),
        Mistake("scale after the softmax", run(scale_after=True),
                "the scale multiplies the weights after the softmax: multiply the scores, sim * self.scale, before "
                "the softmax."),
        *scale_mistakes(reference, run),
        *heads_mistakes(reference, run),
    ]


_SIZES = [dict(dim=16, dim_head=4, heads=2), dict(dim=24, dim_head=6, heads=3)]


def _scale_used(layer_cls, size: dict):
    """The one number the learner's layer, built in `size`, scales its scores by, read off its output with its own
    weights (a search over the scale, which only the scores feel); None when no single scale explains the output."""
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # the lesson's own draws stay as they were
            layer = layer_cls(**size)
            x, media, locations = fl.teaching.checker.example_inputs(layer)
            got = layer(x, media, locations)  # (b, n, d)

            def error(s: float) -> float:
                want = reference_cross_attention(layer, x, media, locations, heads=size["heads"], scale_value=s,
                                                 immediate=size["only_attend_immediate_media"])  # (b, n, d)
                return float((got - want).abs().max())

            grid = torch.logspace(-3, 1, 121).tolist()  # 0.001 ... 10, about 8% apart
            i = min(range(len(grid)), key=lambda j: error(grid[j]))
            low, high = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
            for _ in range(60):  # golden-section search between the grid's neighbours of the best point
                a, b = high - 0.618 * (high - low), low + 0.618 * (high - low)
                low, high = (low, b) if error(a) < error(b) else (a, high)
            found = (low + high) / 2
            return found if error(found) < 1e-5 else None
    except Exception:  # a layer the search cannot read (other names, shapes, an error): the usual verdict stands
        return None


def _fixed_scale_message(layer_cls, sizes: list[dict]):
    """The verdict for a scale fixed to a number (the same one in both sizes, and not 1, which is no scale at all),
    or None."""
    used = [_scale_used(layer_cls, size) for size in sizes]
    if None in used or abs(used[0] - used[1]) > 1e-6 * used[0] or abs(used[0] - 1) < 1e-6:
        return None
    rights = [size["dim_head"] ** -0.5 for size in sizes]  # they differ, so one number is wrong in one size at least
    said = " and ".join(f"{r:.4g} with dim_head={size['dim_head']}" for r, size in zip(rights, sizes))
    return (f"the scores are scaled by {used[0]:.4g} in both sizes (a fixed number, the same whatever dim_head is), "
            f"where the scale is dim_head ** -0.5 ({said}): compute it from the dim_head argument, "
            "self.scale = dim_head ** -0.5.")


def check_forward(layer_cls) -> None:
    """Step 05.forward: `MyMaskedCrossAttention(...)`'s forward, in both modes, in two sizes (a head count or a scale
    fixed to the first shows in the second), and with media_locations=None."""
    refuse_the_answer(layer_cls, (fl.MaskedCrossAttention,))
    name = layer_cls.__name__
    for mode in (True, False):
        sizes = [dict(size, only_attend_immediate_media=mode) for size in _SIZES]
        what = f"your {name} (only_attend_immediate_media={mode})"
        try:
            check_layer_in_sizes(layer_cls, fl.MaskedCrossAttention, sizes, what=what, mistakes=_cross_attention_mistakes)
        except ExerciseFailed:
            # a fixed number can equal a formula's at one size (8 ** -0.5 is (heads * dim_head) ** -0.5 at the first):
            # the same number in both sizes is what names it
            fixed = _fixed_scale_message(layer_cls, sizes)
            if fixed is not None:
                fail(f"{what}: {fixed}")
            raise
    with torch.random.fork_rng(devices=[]):  # building draws random weights: the lesson's own draws stay as they were
        learner = run_learner(layer_cls, **_SIZES[0], what=f"{name}(dim=16, dim_head=4, heads=2)")
    x, media, _ = fl.teaching.checker.example_inputs(learner)
    what = f"your {name} without media_locations"
    try:
        with torch.no_grad():
            run_learner(learner, x, media, None, what=f"{what}, {name}.forward(x, media, None),")
    except ExerciseFailed as failed:
        fail(f"{str(failed).rstrip('.')}: {_NO_LOCATIONS}, no mask built from None.")
    check_layer(learner, fl.MaskedCrossAttention, (x, media, None), what=what, mistakes=_cross_attention_mistakes)
    _check_mode_switch(layer_cls, x, media)


def _check_mode_switch(layer_cls, x, media) -> None:
    """The mode is the attribute the spec names, read at every forward: lesson 06's widget and MyFlamingo switch it
    on a built layer (`layer.only_attend_immediate_media = False`), so a layer that keeps it under another name, or
    decides once in its constructor, would not follow."""
    name = layer_cls.__name__
    with torch.random.fork_rng(devices=[]):
        learner = run_learner(layer_cls, **_SIZES[0], only_attend_immediate_media=True,
                              what=f"{name}(dim=16, dim_head=4, heads=2, only_attend_immediate_media=True)")
    if getattr(learner, "only_attend_immediate_media", None) is not True:
        fail(f"your {name} has no attribute only_attend_immediate_media equal to the constructor's argument (True "
             "here): keep it under that name, `self.only_attend_immediate_media = only_attend_immediate_media`, as "
             "the spec's table says; the widgets and MyFlamingo switch the mode by setting it.")
    learner.only_attend_immediate_media = False
    locations = fl.teaching.checker.example_inputs(learner)[2]  # (b, n) bool
    reference = fl.MaskedCrossAttention(**_SIZES[0], only_attend_immediate_media=False)
    with torch.no_grad():
        check_layer(learner, reference, (x, media, locations), mistakes=_cross_attention_mistakes, quiet=True,
                    what=f"your {name} built with only_attend_immediate_media=True, then set to False,")


def _check_tokens_reached_in_a_batch(tokens_reached_by, media_locations, advice) -> None:
    """A batch of 2 with other sizes than the lesson's (width 8, 2 latents): sizes written into the code, or a change
    made to the first sample only, show here."""
    g = torch.Generator().manual_seed(5)
    row = media_locations[0].cpu()  # (n,)
    locations = torch.stack([row, row.roll(2)]).to(media_locations.device)  # (2, n): the images elsewhere in row 1
    x = torch.randn(2, row.shape[0], 8, generator=g).to(media_locations.device)  # (2, n, 8)
    media = torch.randn(2, int(row.sum()), 2, 8, generator=g).to(media_locations.device)  # (2, t, 2, 8)
    layer = fl.MaskedCrossAttention(dim=8, dim_head=4, heads=2).to(media_locations.device)
    what = "your tokens_reached_by on a batch of 2 (width 8, 2 latents per image), k=1"
    sizes = ("a size written into your code fits the lesson's media only: make the new image from the media you "
             "are given, `torch.randn_like(media[:, k - 1])`.")
    advice = {**advice, "expanded size": sizes, "must match the size": sizes}
    reached = run_untouched(tokens_reached_by, layer, x, media, locations, 1, what=what, advice=advice, trains=False,
                            names=("layer", "x", "media", "media_locations", "k"),
                            fix="change a copy, `new_media = media.clone()`, so the caller's media stay as they were.")
    allowed = masks.text_time(locations) == 1  # (2, n)
    first_only = allowed.clone()
    first_only[1] = False
    compare(reached, allowed, what=what, mistakes=[
        Mistake("first sample only", first_only,
                "only the first sample's words changed: replace image k in every sample, `new_media[:, k - 1] = ...`, "
                "and compare every row."),
    ])


def _check_small_changes(tokens_reached_by, x, media, media_locations) -> None:
    """A layer whose outputs are a thousand times smaller, so that image 1 moves its words by about 1e-4: every
    change is still a change, and a threshold fitted to the lesson's layer (1e-2, say) misses them all."""
    layer = fl.MaskedCrossAttention(dim=x.shape[-1], dim_head=8, heads=2).to(x.device)
    with torch.no_grad():
        layer.to_out.weight.mul_(1e-3)  # every output, and so every change, a thousand times smaller
    what = "your tokens_reached_by on a layer whose outputs are 1000 times smaller, k=1"
    reached = run_untouched(tokens_reached_by, layer, x, media, media_locations, 1, what=what, trains=False,
                            names=("layer", "x", "media", "media_locations", "k"))
    allowed = masks.text_time(media_locations) == 1  # (b, n)
    if isinstance(reached, torch.Tensor) and reached.shape == allowed.shape and torch.equal(reached, allowed):
        return
    fail(f"{what} finds {int(torch.as_tensor(reached).sum())} of the {int(allowed.sum())} words image 1 reaches: "
         "there each change is about 1e-4, and a change is a change however small. Measure it against a threshold "
         "far below any real change, `(new - old).abs().amax(dim=-1) > 1e-6`.")


def _check_changes_down(tokens_reached_by, x, media, media_locations) -> None:
    """A layer whose output moves in one feature only, run as it is and with that feature negated: each word's
    change goes up in one run and down in the other, so a change measured with its sign is missed in one of them."""
    allowed = masks.text_time(media_locations) == 1  # (b, n): image 1's words, immediate mode
    for sign in (1.0, -1.0):
        layer = fl.MaskedCrossAttention(dim=x.shape[-1], dim_head=8, heads=2).to(x.device)
        with torch.no_grad():
            layer.to_out.weight[1:] = 0.0  # only feature 0 of each word moves
            layer.to_out.weight.mul_(sign)
        what = "your tokens_reached_by on a layer that moves one feature only, k=1"
        reached = run_untouched(tokens_reached_by, layer, x, media, media_locations, 1, what=what, trains=False,
                                names=("layer", "x", "media", "media_locations", "k"))
        if isinstance(reached, torch.Tensor) and reached.shape == allowed.shape and not torch.equal(reached, allowed):
            fail(f"{what} finds {int(reached.sum())} of the {int(allowed.sum())} words image 1 reaches: where a word's "
                 "one feature goes down, a change measured with its sign (`new - old > 1e-6`) is missed; measure it "
                 "by its size, `(new - old).abs().amax(dim=-1) > 1e-6`.")


def check_tokens_reached(tokens_reached_by, x, media, media_locations, original_cls=None) -> list:
    """Exercise: `tokens_reached_by(layer, x, media, media_locations, k)`, checked on flamingo_lite's layer in both
    modes (and, if given, on the original code's leaky all-previous mode). Returns the leak's reached row."""
    torch.manual_seed(0)
    times = masks.text_time(media_locations)  # (b, n)
    dim = x.shape[-1]
    out_of_range = {"out of bounds": "image k counted from 1 is media[:, k - 1]; media[:, k] is image k+1, past the "
                                     "last image when k is the last one."}
    for mode in (True, False):
        layer = fl.MaskedCrossAttention(dim=dim, dim_head=8, heads=2, only_attend_immediate_media=mode).to(x.device)
        for k in (2, 1):  # image 2 first: there "every image changed" and "the other mode" reach different words
            what = f"your tokens_reached_by(layer, x, media, media_locations, {k}) (only_attend_immediate_media={mode})"
            # copies of the tensors: a function that changes them in place is named, and the notebook's own stay as they were
            reached = run_untouched(tokens_reached_by, layer, x, media, media_locations, k, what=what,
                                    names=("layer", "x", "media", "media_locations", "k"), advice=out_of_range, trains=False,
                                    fix="change a copy, `new_media = media.clone()`, so the caller's media stay as they were.")
            if not isinstance(reached, torch.Tensor) or reached.dtype != torch.bool:
                fail(f"{what} must return a (b, n) bool tensor, True where a token's output changed; got "
                     f"{getattr(reached, 'dtype', type(reached).__name__)}.")
            allowed = (times == k) if mode else (times >= k)  # (b, n)
            every_image = [Mistake("every image", times >= 1, "the words of every image changed: replace only image k, "
                                   "media[:, k - 1], and keep the others.")] if k > 1 else []  # at k = 1, the other mode's words
            mistakes = [
                Mistake("nothing", torch.zeros_like(allowed),
                        "no token counts as changed: compare the layer's output on the media you were given (not a "
                        "second run on the new ones) with its output on a copy where image k, media[:, k - 1], is "
                        "replaced, and measure each token's change by its size, `(new - old).abs().amax(dim=-1) > "
                        "1e-6` (a signed mean over the features cancels out to about 0)."),
                Mistake("image counted from 0", (times == k + 1) if mode else (times >= k + 1),
                        "you changed image k+1: image k counted from 1 is media[:, k - 1]."),
                *every_image,
                Mistake("the other mode", (times >= k) if mode else (times == k),
                        f"these are the words image k reaches in the other mode (only_attend_immediate_media="
                        f"{not mode}): run the layer you are given, in its own mode, on the old and the new media, "
                        "rather than working the answer out from the text time."),
                Mistake("everything", torch.ones_like(allowed),
                        "every token changed, the words before the first image too: pass media_locations to the layer "
                        "(without them every word sees every image), and change only image k."),
            ]
            some = (reached.shape == allowed.shape and bool(reached.any()) and not (reached & ~allowed).any()
                    and bool((allowed & ~reached).any()))  # some of the right words and no others
            if some and not any(torch.equal(reached, m.output) for m in mistakes):
                fail(f"{what} finds only some of the words image k reaches ({int(reached.sum())} of "
                     f"{int(allowed.sum())}, no others): a change is missed when it is measured with its sign or "
                     "against too high a threshold; measure each token's change by its size, "
                     "`(new - old).abs().amax(dim=-1) > 1e-6` (a signed mean over the features cancels out).")
            compare(reached, allowed, what=what, mistakes=mistakes)
    _check_tokens_reached_in_a_batch(tokens_reached_by, media_locations, out_of_range)
    _check_small_changes(tokens_reached_by, x, media, media_locations)
    _check_changes_down(tokens_reached_by, x, media, media_locations)
    if original_cls is None:
        return []
    leaky = original_cls(dim=dim, dim_head=8, heads=2, only_attend_immediate_media=False).to(x.device)
    reached = run_untouched(tokens_reached_by, leaky, x, media, media_locations, 2, what="your tokens_reached_by on the original code",
                            names=("layer", "x", "media", "media_locations", "k"))[0]
    if not bool(reached[times[0] == 0].all()):
        fail("in the original code image 2 should reach the words before the first image: check that you compare "
             "the outputs before and after changing image 2.")
    passed("tokens_reached_by is right, in both modes.")
    return reached.tolist()


keep_rng(globals())  # no check moves the lesson's random numbers
