"""Lesson 02's checks: PerceiverAttention in three steps (queries, keys and values; the attention itself; the whole
forward), and the two exercises on patches and on the image's share of the attention."""
from __future__ import annotations

import torch
from einops import rearrange

import flamingo_lite as fl

from ..checker import randomise_norms
from . import (Mistake, _same, check_dtype_kept, check_gradients_reach, check_layer_in_sizes, compare, fail, heads_mistakes, passed, register_hints, register_nudges, run_learner,
               run_untouched, scale_mistakes, keep_rng, refuse_the_answer)

register_hints({
    "02.project": "Normalise x with layer.norm_media and the latents with layer.norm_latents; q = layer.to_q(latents "
    "normalised); keys and values come from torch.cat((x normalised, latents normalised), dim=-2), the token axis, "
    "features first, then layer.to_kv(...).chunk(2, dim=-1) gives k, v.",
    "02.scores": "rearrange q, k, v with 'b t n (h e) -> b t h n e' (h=layer.heads); scores = einsum('b t h i e, "
    "b t h j e -> b t h i j') * layer.scale; softmax(dim=-1), over the keys; einsum with v; then 'b t h L e -> b t L "
    "(h e)' merges the heads.",
    "02.init": "After super().__init__(): self.heads = heads, self.scale = dim_head ** -0.5, inner = dim_head * heads; "
    "self.norm_media and self.norm_latents are nn.LayerNorm(dim); self.to_q = nn.Linear(dim, inner, bias=False), "
    "self.to_kv = nn.Linear(dim, 2 * inner, bias=False), self.to_out = nn.Linear(inner, dim, bias=False).",
    "02.forward": "forward is two of your functions and to_out: self.to_out(attend_latents(self, *project(self, x, "
    "latents))).",
    "02.unpatchify": "The pattern that cut the image was '(gh p1) (gw p2) c -> (gh gw) (p1 p2 c)'; swap its two "
    "sides and pass gh, gw, p1=p, p2=p.",
    "02.share": "weights[..., :n] are the weights on the media features; sum them over the last axis.",
})
register_nudges({  # a first hint where the full one is the answer: hint(key), then hint(key, 2)
    "02.project": "Each input gets its own LayerNorm before anything else. The queries come from the latents "
    "alone; the keys and values from the features and the latents together, one sequence of n + L tokens, "
    "features first. to_kv makes both at once: split its output in two along the features.",
    "02.scores": "The attention of lesson 01, with one more leading axis (t): split the heads out of the last "
    "axis, scores between every latent and every key, scaled, a softmax over the keys, a weighted sum of the "
    "values, then the heads merged back in the order they were split.",
    "02.unpatchify": "The patching was one rearrange from an image to patch vectors. Its inverse is the same "
    "pattern read the other way round; rearrange needs the sizes it cannot infer from the input.",
    "02.share": "The first n columns of the weights are the image's features, the last L the latents. A share "
    "is a sum of weights.",
    "02.init": "The constructor keeps two numbers, the number of heads and the scale 1/sqrt(dim_head), and makes the"
    " layers the spec names: a LayerNorm for each of the two inputs, the media and the latents, and three"
    " bias-free Linear maps, queries from the latents, keys and values together, and the output back to "
    "dim.",
})

_ANSWERS_ATTEND = (fl.attention.attend, fl.attention.attention_weights)  # the package's attention


_DTYPE_FIX = ("keep the inputs' dtype (a .double() or a tensor made in another dtype promotes the result), or the "
              "layer's next matmul mixes dtypes.")

def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, 6, 16, generator=g), torch.randn(2, 2, 3, 16, generator=g)  # (b, t, n, d), (b, t, L, d)


def _layer(seed=0):
    torch.manual_seed(seed)
    layer = fl.PerceiverAttention(dim=16, dim_head=4, heads=2).eval()
    randomise_norms(layer, seed=seed)  # two norms at weight 1, bias 0 would be interchangeable: a swap would pass
    return layer


def reference_project(layer, x, latents, *, with_latents=True, norm_latents_in_kv=True, latents_first=False, swap=False):
    """q, k, v of PerceiverAttention before the heads are split, and the usual mistakes."""
    x_n, lat_n = layer.norm_media(x), layer.norm_latents(latents)  # (b, t, n, d), (b, t, L, d)
    q = layer.to_q(lat_n)  # (b, t, L, h*e)
    extra = lat_n if norm_latents_in_kv else latents  # (b, t, L, d)
    kv_input = (torch.cat((extra, x_n), dim=-2) if latents_first else torch.cat((x_n, extra), dim=-2)) if with_latents else x_n
    k, v = layer.to_kv(kv_input).chunk(2, dim=-1)  # 2 x (b, t, n+L, h*e)
    return (q, v, k) if swap else (q, k, v)


def reference_attend(layer, q, k, v, *, scale=True, axis=-1, order="h e", heads=None, merge=None, scale_value=None):
    """The attention of PerceiverAttention, and the usual mistakes: `order` splits the heads, `merge` (default:
    `order`) merges them; `heads` splits into that many; `scale_value` replaces the scale."""
    heads = layer.heads if heads is None else heads
    merge = order if merge is None else merge
    if order == "reshape":  # the heads split by a reshape alone: the numbers keep their order
        qh, kh, vh = (a.reshape(*a.shape[:2], heads, a.shape[2], -1) for a in (q, k, v))  # (b, t, h, n, e)
    else:
        qh, kh, vh = (rearrange(a, f"b t n ({order}) -> b t h n e", h=heads) for a in (q, k, v))  # (b, t, h, n, e)
    scores = torch.einsum("b t h i e, b t h j e -> b t h i j", qh, kh)  # (b, t, h, L, n+L)
    if scale_value is not None:
        scores = scores * scale_value
    elif scale:
        scores = scores * (q.shape[-1] // heads) ** -0.5
    out = torch.einsum("b t h i j, b t h j e -> b t h i e", scores.softmax(dim=axis), vh)  # (b, t, h, L, e)
    if merge == "reshape":
        return out.reshape(*out.shape[:2], out.shape[3], -1)  # (b, t, L, h*e)
    return rearrange(out, f"b t h L e -> b t L ({merge})", h=heads)  # (b, t, L, h*e)


_LATENTS_LEFT_OUT = ("the latents are left out of the keys/values: concatenate the normalised features and the "
                     "normalised latents along the token axis (dim=-2) before to_kv, so the latents see each other too.")
_NO_SCALE = ("the scores are not scaled: multiply them by the layer's scale, dim_head**-0.5 (layer.scale in "
             "attend_latents, self.scale in the module), before the softmax.")
_AXIS = "the softmax runs over the latents (dim=-2); it must run over the keys, the last axis (n+L)."
_ORDER = "the heads are split in the wrong order: write '(h e)', not '(e h)', so head 0 takes the first e numbers."
_MERGE = ("the heads are split right but merged in the wrong order: merge with 'b t h L e -> b t L (h e)', the order "
          "they were split in, not '(e h)', so to_out reads head 0's numbers first.")
_SPLIT = ("the heads are split with '(e h)' but merged with '(h e)': split with '(h e)' too, so head 0 takes the first "
          "e numbers of q, k and v.")
_NORMS_SWAPPED = ("norm_media and norm_latents are swapped: normalise the features x with norm_media and the latents "
                  "with norm_latents.")


def check_project(project) -> None:
    """Step 02.project: `project(layer, x, latents) -> (q, k, v)`, before the heads are split."""
    layer, (x, latents) = _layer(), _inputs()
    what = "your project(layer, x, latents)"
    with torch.no_grad():
        got = run_untouched(project, layer, x, latents, what=what, names=("layer", "x", "latents"), advice={
            "Sizes of tensors must match": "torch.cat joins the features and the latents along the token axis, dim=-2 "
            "(they have the same width d, not the same count).",
        })
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(f"{what} must return three tensors, q, k, v; it returned {type(got).__name__}.")
        want = reference_project(layer, x, latents)
        swapped = (layer.to_q(layer.norm_media(latents)),  # q, k, v with the two norms swapped
                   *layer.to_kv(torch.cat((layer.norm_latents(x), layer.norm_media(latents)), dim=-2)).chunk(2, dim=-1))
        if all(isinstance(t, torch.Tensor) and _same(t.float(), w, 1e-5, 1e-4) for t, w in zip(got[:2], swapped)):
            fail(f"{what}: {_NORMS_SWAPPED}")  # q alone cannot tell swapped norms from norm_media used twice; k can
        compare(got[0], want[0], what=f"{what}: q", mistakes=[
            Mistake("q from the features", layer.to_q(layer.norm_media(x)),
                    "q comes from the features; the queries are the latents: to_q(norm_latents(latents))."),
            Mistake("latents not normalised", layer.to_q(latents), "q is made from the latents before norm_latents."),
            Mistake("latents through norm_media", layer.to_q(layer.norm_media(latents)),
                    "q is made from the latents through norm_media: the latents have their own norm, "
                    "to_q(norm_latents(latents)); norm_media is for the features x only."),
            Mistake("heads already split", rearrange(want[0], "b t n (h e) -> b t h n e", h=layer.heads),
                    "q, k, v come back with the heads split: return them as (b, t, tokens, h*e); step 2 splits them."),
        ])
        named = [
            ("latents left out", reference_project(layer, x, latents, with_latents=False), _LATENTS_LEFT_OUT),
            ("latents not normalised", reference_project(layer, x, latents, norm_latents_in_kv=False),
             "the latents go into the keys/values without norm_latents: concatenate the normalised latents."),
            ("latents first", reference_project(layer, x, latents, latents_first=True),
             "the latents come first among the keys: put the features first, torch.cat((x, latents), dim=-2), so "
             "columns :n of the attention weights are the image (lesson 02 reads them that way)."),
            ("k and v swapped", reference_project(layer, x, latents, swap=True),
             "k and v are swapped: to_kv(...).chunk(2, dim=-1) gives the keys first, then the values."),
            ("norms swapped", swapped, _NORMS_SWAPPED),
        ]
        for index, name in ((1, "k"), (2, "v")):
            compare(got[index], want[index], what=f"{what}: {name}",
                    mistakes=[Mistake(m, out[index], message) for m, out, message in named])
    check_dtype_kept(got, x, what, fix=_DTYPE_FIX)
    one = (x[:1, :1], latents[:1, :1])  # (1, 1, n, d), (1, 1, L, d): one sample, one media, as the lesson's picture
    with torch.no_grad():
        small = run_learner(project, layer, *one, what=f"{what} on one sample with one media")
        for name, mine, right in zip("qkv", small if isinstance(small, (tuple, list)) else (small,) * 3,
                                     reference_project(layer, *one)):
            compare(mine, right, what=f"{what} on one sample with one media: {name}",
                    shape_advice="keep every axis, even one of size 1 (no `.squeeze()`): q, k and v stay "
                                 "(b, t, tokens, h*e).")
    flat = lambda fn: lambda a, b: torch.cat([t.flatten() for t in fn(layer, a, b)])  # noqa: E731  (q, k, v) as one
    check_gradients_reach(flat(project), flat(reference_project), (x, latents), ("x", "latents"), what=what,
                          of="the projections'")
    passed(f"project is right: q {tuple(want[0].shape)}, k and v {tuple(want[1].shape)} (n + L = 6 + 3 keys).")


def _check_attend_with_other_heads(attend_latents) -> None:
    """A layer of 4 heads of width 4: a head count or a width written into the code as a number fails here."""
    torch.manual_seed(1)
    layer = fl.PerceiverAttention(dim=16, dim_head=4, heads=4).eval()
    x, latents = _inputs(seed=1)
    what = "your attend_latents(layer, q, k, v) for a layer of 4 heads"
    with torch.no_grad():
        q, k, v = reference_project(layer, x, latents)
        got = run_untouched(attend_latents, layer, q, k, v, what=what, names=("layer", "q", "k", "v"))
        compare(got, reference_attend(layer, q, k, v), what=what, mistakes=[
            *(Mistake("two heads", reference_attend(layer, q, k, v, heads=2, scale_value=scale),
                      "this is the answer for 2 heads: the number of heads is written into your code; split with "
                      "h=layer.heads.") for scale in (layer.scale, 8**-0.5)),  # scaled as the layer says, or by e=8
        ])


def check_attend(attend_latents) -> None:
    """Step 02.scores: `attend_latents(layer, q, k, v) -> (b, t, L, h*e)`, heads split, attended and merged."""
    refuse_the_answer(attend_latents, _ANSWERS_ATTEND)
    layer, (x, latents) = _layer(), _inputs()
    with torch.no_grad():
        q, k, v = reference_project(layer, x, latents)
        what = "your attend_latents(layer, q, k, v)"
        got = run_untouched(attend_latents, layer, q, k, v, what=what, names=("layer", "q", "k", "v"))
        compare(got, reference_attend(layer, q, k, v), what=what, mistakes=[
            Mistake("missing scale", reference_attend(layer, q, k, v, scale=False), _NO_SCALE),
            Mistake("softmax over the wrong axis", reference_attend(layer, q, k, v, axis=-2), _AXIS),
            Mistake("heads in the wrong order", reference_attend(layer, q, k, v, order="e h"), _ORDER),
            Mistake("merged in the wrong order", reference_attend(layer, q, k, v, merge="e h"), _MERGE),
            Mistake("split in the wrong order", reference_attend(layer, q, k, v, order="e h", merge="h e"), _SPLIT),
            *(Mistake("reshaped", reference_attend(layer, q, k, v, order=split, merge=merge),
                      "the heads are split (or merged) with a reshape alone: a reshape keeps the numbers in their "
                      "order, so a 'head' mixes tokens; move the axes with rearrange, 'b t n (h e) -> b t h n e', and "
                      "back with 'b t h L e -> b t L (h e)'.")
              for split, merge in (("reshape", "reshape"), ("h e", "reshape"), ("reshape", "h e"))),
            Mistake("one head", reference_attend(layer, q, k, v, heads=1),
                    "this is one head of width h*e: split q, k, v with h=layer.heads before the scores."),
            *scale_mistakes(layer, lambda **kw: reference_attend(layer, q, k, v, **kw)),
        ])
    check_dtype_kept(got, q, what, fix=_DTYPE_FIX)
    check_gradients_reach(lambda a, b, c: attend_latents(layer, a, b, c), lambda a, b, c: reference_attend(layer, a, b, c),
                          (q, k, v), ("q", "k", "v"), what=what)
    _check_attend_with_other_heads(attend_latents)
    passed("attend_latents is right: every latent's weights sum to 1 over the n+L keys, in each head.")


def _perceiver_mistakes(reference, x, latents):
    def attended(x=x, **flags):
        project_flags = {k: flags.pop(k) for k in ("with_latents",) if k in flags}
        return reference_attend(reference, *reference_project(reference, x, latents, **project_flags), **flags)

    def run(**flags):
        return reference.to_out(attended(**flags))

    first_sample = x[:1].expand_as(x)  # (b, t, n, d): sample 0's media for every sample
    first_media = x[:, :1].expand_as(x)  # (b, t, n, d): media 0 for every media
    return [
        Mistake("latents left out", run(with_latents=False), _LATENTS_LEFT_OUT),
        Mistake("missing scale", run(scale=False), _NO_SCALE),
        Mistake("softmax over the wrong axis", run(axis=-2), _AXIS),
        Mistake("heads in the wrong order", run(order="e h"), _ORDER),
        Mistake("merged in the wrong order", run(merge="e h"), _MERGE),
        Mistake("split in the wrong order", run(order="e h", merge="h e"), _SPLIT),
        Mistake("to_out missing", attended(),
                "to_out is missing: the attention's (b, t, L, h*e) output goes through self.to_out back to width d."),
        Mistake("residual inside", run() + latents,
                "the latents are added to the output inside the attention: return self.to_out(...) alone; the "
                "resampler adds the residual, z = attn(x, z) + z (lesson 03)."),
        Mistake("media of sample 0", run(x=first_sample),
                "every sample attends to the media of sample 0: the media were broadcast to one item (an index such as "
                "x[0] or x[:1]); keep the batch axis b, so sample i reads its own media."),
        Mistake("media 0", run(x=first_media),
                "every media's latents attend to media 0: the media axis was broadcast to one item (x[:, 0] or "
                "x[:, :1]); keep the axis t, so media i is read by its own latents."),
        *scale_mistakes(reference, run),
        *heads_mistakes(reference, run),
    ]


_SIZES = [dict(dim=16, dim_head=4, heads=2), dict(dim=24, dim_head=6, heads=3)]


def check_forward(layer_cls) -> None:
    """Step 02.forward: `MyPerceiverAttention(dim=..., dim_head=..., heads=...)`'s forward, against the reference,
    in two sizes, so that a number fixed to the first size (a head count, a scale) shows in the second."""
    refuse_the_answer(layer_cls, (fl.PerceiverAttention,))
    check_layer_in_sizes(layer_cls, fl.PerceiverAttention, _SIZES, what=f"your {layer_cls.__name__}",
                         mistakes=_perceiver_mistakes)


def _unpatchify_mistakes(patches, grid, p) -> list[Mistake]:
    """The usual wrong inverses of the patching, on a square grid (so the grid's axes can be swapped)."""
    gh, gw = grid
    undo = lambda pattern: rearrange(patches, pattern, gh=gh, gw=gw, p1=p, p2=p)  # noqa: E731  (H, W, 3)
    return [
        Mistake("grid axes swapped", undo("(gw gh) (p1 p2 c) -> (gh p1) (gw p2) c"),
                "the patches are read column by column: they are listed row by row, '(gh gw)'."),
        Mistake("patch axes swapped", undo("(gh gw) (p2 p1 c) -> (gh p1) (gw p2) c"),
                "each patch comes back transposed: its numbers are listed row by row, '(p1 p2 c)', p1 the row."),
        Mistake("channels first", undo("(gh gw) (c p1 p2) -> (gh p1) (gw p2) c"),
                "each patch is read channels first: its numbers are listed pixel by pixel, the 3 colours of a pixel "
                "together, '(p1 p2 c)'."),
        Mistake("image transposed", undo("(gh gw) (p1 p2 c) -> (gw p2) (gh p1) c"),
                "the image comes back transposed, its height and width swapped: its axes are the height, then the "
                "width, '(gh p1) (gw p2) c'."),
        Mistake("reshape", patches.reshape(gh * p, gw * p, -1),
                "a reshape keeps the numbers in their order, so the patches' pixels do not go back to their places: "
                "move the axes with rearrange, '(gh gw) (p1 p2 c) -> (gh p1) (gw p2) c'."),
    ]


def check_unpatchify(unpatchify, patches, img, grid, p) -> None:
    """Exercise 1: `unpatchify(patches, grid, p)` inverts the patching. The usual mistakes are named on random
    patches first: on a picture symmetric about its diagonal, two of them give the same image. A wide grid last, where
    the grid's two sizes taken the other way round are named (a square grid cannot show it)."""
    square = torch.rand(3 * 3, 2 * 2 * 3, generator=torch.Generator().manual_seed(1))  # a 3 x 3 grid of 2 x 2 patches
    what = "your unpatchify on a 3 x 3 grid of 2 x 2 random patches"
    want = rearrange(square, "(gh gw) (p1 p2 c) -> (gh p1) (gw p2) c", gh=3, gw=3, p1=2, p2=2)  # (6, 6, 3)
    compare(run_learner(unpatchify, square, (3, 3), 2, what=what), want, what=what,
            mistakes=_unpatchify_mistakes(square, (3, 3), 2))
    what = "your unpatchify(patches, grid, p)"
    compare(run_learner(unpatchify, patches, grid, p, what=what), img, what=what)
    wide = torch.rand(2 * 3, 2 * 2 * 3, generator=torch.Generator().manual_seed(0))  # a 2 x 3 grid of 2 x 2 patches
    what = "your unpatchify on a 2 x 3 grid of 2 x 2 patches"
    want = rearrange(wide, "(gh gw) (p1 p2 c) -> (gh p1) (gw p2) c", gh=2, gw=3, p1=2, p2=2)  # (4, 6, 3)
    compare(run_learner(unpatchify, wide, (2, 3), 2, what=what), want, what=what, mistakes=[
        Mistake("grid read as (columns, rows)", rearrange(wide, "(gh gw) (p1 p2 c) -> (gh p1) (gw p2) c", gh=3, gw=2,
                                                          p1=2, p2=2),
                "the grid's two sizes are swapped: grid is (rows, columns), so `gh, gw = grid`."),
    ])
    passed("unpatchify inverts the patching, for square and wide grids.")


def check_media_share(media_share, weights, n, attention_layer, x, latents) -> None:
    """Exercise 2: `media_share(weights, n)`, and patch weights / share = media-only attention."""
    what = "your media_share(weights, n)"
    got = run_learner(media_share, weights, n, what=what)
    compare(got, weights[..., :n].sum(dim=-1), what=what, mistakes=[
        Mistake("the latents' share", weights[..., n:].sum(dim=-1),
                "that is the share of the latents: the media features are the first n columns, weights[..., :n]."),
        Mistake("mean, not sum", weights[..., :n].mean(dim=-1), "a share is the sum of the weights on the media, not their mean."),
    ])
    layer = attention_layer
    with torch.no_grad():
        q = rearrange(layer.to_q(layer.norm_latents(latents)), "b t L (h e) -> b t h L e", h=layer.heads)
        k = rearrange(layer.to_kv(layer.norm_media(x)).chunk(2, dim=-1)[0], "b t n (h e) -> b t h n e", h=layer.heads)
        media_only = (torch.einsum("b t h i e, b t h j e -> b t h i j", q, k) * layer.scale).softmax(-1)
    compare(weights[..., :n] / got[..., None], media_only, what="patch weights / your share")
    batch = torch.rand(2, 2, 3, 4, n + 5, generator=torch.Generator().manual_seed(0)).softmax(-1)  # (b, t, h, L, n+L)
    what = "your media_share on weights of 2 samples and 2 media"
    compare(run_learner(media_share, batch, n, what=what), batch[..., :n].sum(dim=-1), what=what,
            shape_advice="keep every leading axis, (b, t, h, L): sum over the last one only, the keys.")
    fewer = n // 2  # another number of features, so a count typed in shows
    what = f"your media_share(weights, n={fewer})"
    compare(run_learner(media_share, batch, fewer, what=what), batch[..., :fewer].sum(dim=-1), what=what, mistakes=[
        Mistake("n fixed", batch[..., :n].sum(dim=-1),
                f"this is the share of the first {n} keys whatever n is: take the first n, `weights[..., :n]`, with the "
                "n the function is given, not a number typed in."),
    ])
    passed("media_share is right: patch weights / share = media-only attention.")


keep_rng(globals())  # no check moves the lesson's random numbers

register_nudges({  # first hints for the steps whose full hint is the answer
    "02.forward": "The forward pass is your two functions of this lesson, one after the other, and then the output "
    "projection back to width dim.",
})
