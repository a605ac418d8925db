"""Lesson 05's checks: the masked softmax (rows that see nothing exactly 0, never NaN), the whole
MaskedCrossAttention forward in both modes, and the exercise on which words an image reaches."""
from __future__ import annotations

import torch
from einops import rearrange

import flamingo_lite as fl

from ... import masks
from . import Mistake, check_layer, compare, fail, passed, register_hints, run_learner

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


_INF = ("a row that sees nothing comes out as NaN: softmax of an all -inf row is 0/0. Give such rows harmless "
        "scores before the softmax and weight exactly 0 after it.")
_MAX = ("a row that sees nothing gets a uniform average over every image, the future ones included (the original "
        "code's look into the future, from its -finfo.max fill): set the weights of rows that see nothing to 0.")
_AXIS = "the softmax runs over the text tokens (dim=-2); it must run over the media latents, the last axis."


def check_masked_softmax(masked_softmax) -> None:
    """Step 05.softmax: `masked_softmax(scores, mask)` over the last axis; all-False rows exactly 0, never NaN."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 5, generator=g)  # (b, n, j)
    mask = torch.rand(2, 3, 5, generator=g) > 0.5  # (b, n, j)
    mask[0, 0] = False  # a row that sees nothing
    mask[1, 2] = True  # a row that sees everything
    mask[:, 1, 0] = True
    for m, what in ((mask, "your masked_softmax(scores, mask)"),
                    (rearrange(mask, "b i j -> b 1 i j"), "your masked_softmax(scores, mask) with a head axis to broadcast")):
        scores = s if m.ndim == 3 else rearrange(s, "b i j -> b 1 i j").expand(2, 2, 3, 5)  # (b, [h,] n, j)
        got = run_learner(masked_softmax, scores, m, what=what)
        compare(got, reference_masked_softmax(scores, m), what=what, mistakes=[
            Mistake("-inf fill", reference_masked_softmax(scores, m, fill="inf"), _INF),
            Mistake("-finfo.max fill", reference_masked_softmax(scores, m, fill="max"), _MAX),
            Mistake("softmax over the wrong axis", reference_masked_softmax(scores, m, axis=-2), _AXIS),
            Mistake("mask ignored", reference_masked_softmax(scores, m, use_mask=False),
                    "the mask has no effect: masked entries must get weight exactly 0."),
        ])
    passed("masked_softmax is right: masked weights exactly 0, rows that see nothing all 0, no NaN.")


def reference_cross_attention(layer, x, media, media_locations=None, *, fill="zero", scale=True, order="h e",
                              use_mask=True, immediate=None, norm_media=False):
    b, t, m = media.shape[:3]
    heads = layer.heads
    q = rearrange(layer.to_q(layer.norm(x)), f"b n ({order}) -> b h n e", h=heads)  # (b, h, n, e)
    media = layer.norm(media) if norm_media else media  # (b, t, m, d)
    k, v = layer.to_kv(rearrange(media, "b t m d -> b (t m) d")).chunk(2, dim=-1)  # 2 x (b, t*m, h*e)
    k, v = (rearrange(a, f"b j ({order}) -> b h j e", h=heads) for a in (k, v))  # (b, h, t*m, e)
    sim = torch.einsum("b h i e, b h j e -> b h i j", q, k)  # (b, h, n, t*m)
    if scale:
        sim = sim * (q.shape[-1] ** -0.5)
    if media_locations is not None and use_mask:
        mode = layer.only_attend_immediate_media if immediate is None else immediate
        mask = rearrange(masks.cross_attention_mask(media_locations, t, m, mode), "b i j -> b 1 i j")  # (b, 1, n, t*m)
        attn = reference_masked_softmax(sim, mask, fill=fill)  # (b, h, n, t*m)
    else:
        attn = sim.softmax(dim=-1)  # (b, h, n, t*m)
    out = torch.einsum("b h i j, b h j e -> b h i e", attn, v)  # (b, h, n, e)
    return layer.to_out(rearrange(out, f"b h n e -> b n ({order})"))  # (b, n, d)


def _cross_attention_mistakes(reference, x, media, media_locations=None):
    run = lambda **flags: reference_cross_attention(reference, x, media, media_locations, **flags)  # noqa: E731
    return [
        Mistake("-inf fill", run(fill="inf"), _INF),
        Mistake("-finfo.max fill", run(fill="max"), _MAX),
        Mistake("missing scale", run(scale=False), "the scores are not scaled: multiply them by self.scale before the softmax."),
        Mistake("heads in the wrong order", run(order="e h"),
                "the heads are split in the wrong order: write '(h e)', not '(e h)', for q, k and v and when merging."),
        Mistake("media_locations ignored", run(use_mask=False),
                "every word sees every image: with media_locations, build the mask and use masked_softmax."),
        Mistake("mode not followed", run(immediate=not reference.only_attend_immediate_media),
                "the mask is the other mode's: pass self.only_attend_immediate_media to the mask (do not fix it to "
                "True or False, and do not invert it)."),
        Mistake("media normalised", run(norm_media=True),
                "the media went through self.norm too: only the text x is normalised; the media come from the "
                "resampler, already normalised."),
    ]


def check_forward(layer_cls) -> None:
    """Step 05.forward: `MyMaskedCrossAttention(...)`'s forward, in both modes and with media_locations=None."""
    for mode in (True, False):
        learner = run_learner(layer_cls, dim=16, dim_head=4, heads=2, only_attend_immediate_media=mode,
                              what=f"{layer_cls.__name__}(dim=16, dim_head=4, heads=2, only_attend_immediate_media={mode})")
        what = f"your {layer_cls.__name__} (only_attend_immediate_media={mode})"
        check_layer(learner, fl.MaskedCrossAttention, what=what, mistakes=_cross_attention_mistakes)
    x, media, _ = fl.teaching.checker.example_inputs(learner)
    check_layer(learner, fl.MaskedCrossAttention, (x, media, None), what=f"your {layer_cls.__name__} without media_locations",
                mistakes=_cross_attention_mistakes)


def check_tokens_reached(tokens_reached_by, x, media, media_locations, original_cls=None) -> list:
    """Exercise: `tokens_reached_by(layer, x, media, media_locations, k)`, checked on flamingo_lite's layer in both
    modes (and, if given, on the original code's leaky all-previous mode). Returns the leak's reached row."""
    torch.manual_seed(0)
    times = masks.text_time(media_locations)  # (b, n)
    dim = x.shape[-1]
    for mode in (True, False):
        layer = fl.MaskedCrossAttention(dim=dim, dim_head=8, heads=2, only_attend_immediate_media=mode).to(x.device)
        for k in (1, 2):
            what = f"your tokens_reached_by(layer, x, media, media_locations, {k}) (only_attend_immediate_media={mode})"
            reached = run_learner(tokens_reached_by, layer, x, media, media_locations, k, what=what)
            if not isinstance(reached, torch.Tensor) or reached.dtype != torch.bool:
                fail(f"{what} must return a (b, n) bool tensor, True where a token's output changed; got "
                     f"{getattr(reached, 'dtype', type(reached).__name__)}.")
            allowed = (times == k) if mode else (times >= k)  # (b, n)
            compare(reached, allowed, what=what, mistakes=[
                Mistake("image counted from 0", (times == k + 1) if mode else (times >= k + 1),
                        "you changed image k+1: image k counted from 1 is media[:, k - 1]."),
                Mistake("everything", torch.ones_like(allowed), "every token changed: change only image k, keep the others."),
            ])
    if original_cls is None:
        return []
    leaky = original_cls(dim=dim, dim_head=8, heads=2, only_attend_immediate_media=False).to(x.device)
    reached = run_learner(tokens_reached_by, leaky, x, media, media_locations, 2, what="your tokens_reached_by on the original code")[0]
    if not bool(reached[times[0] == 0].all()):
        fail("in the original code image 2 should reach the words before the first image: check that you compare "
             "the outputs before and after changing image 2.")
    passed("tokens_reached_by is right, in both modes.")
    return reached.tolist()
