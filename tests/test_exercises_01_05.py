"""Mutation tests of lessons 01-05's checks. For every step: the check fails on the stub with a message, passes
with a right implementation, and for each named mistake, fails on code that makes it with a message naming it.

The wrong implementations here are written as a learner would write them (one flag per bug), independently of
the lesson modules' own answers."""
from __future__ import annotations

import pytest
import torch
from einops import rearrange, repeat
from torch import nn

import flamingo_lite as fl
from flamingo_lite import masks
from flamingo_lite.teaching.exercises import ExerciseFailed, hint
from flamingo_lite.teaching.exercises import lesson01, lesson02, lesson03, lesson04, lesson05


def stub(*args, **kwargs):
    raise NotImplementedError("Your turn: write this part (see the exercise above), then run the check below")


def fails_with(check, *args, match):
    with pytest.raises(ExerciseFailed, match=match) as caught:
        check(*args)
    message = str(caught.value)
    assert message and "\n" not in message.strip() or "Missing" in message  # one sentence (state-dict lists aside)
    return message


def passes(check, *args, capsys=None):
    check(*args)


# ------------------------------------------------------------------------------------------------------------ 01


def attention(q, k, v, mask=None, bug=None):
    scores = torch.einsum("b h i e, b h j e -> b h i j", q, k)  # (b, h, i, j)
    if bug != "scale":
        scores = scores / q.shape[-1] ** 0.5
    if mask is not None:
        if mask.ndim == 2:
            mask = mask[None]
        mask = mask[:, None]  # (b, 1, i, j)
        fill = float("-inf") if bug == "inf" else -torch.finfo(scores.dtype).max
        if bug == "inverted":
            mask = ~mask
        if bug != "ignored":
            scores = scores.masked_fill(~mask, fill)
    weights = scores.softmax(dim=-2 if bug == "axis" else -1)
    if mask is not None and bug not in ("inf", "max", "ignored"):
        weights = weights * mask.any(-1, keepdim=True)
    return weights @ v  # (b, h, i, e)


@pytest.mark.parametrize("bug, named", [
    ("inf", "NaN"), ("max", "uniform average of every value"), ("scale", "not scaled"),
    ("axis", "over the queries"), ("ignored", "mask has no effect"), ("inverted", "wrong way round"),
])
def test_01_attention_mistakes(bug, named):
    fails_with(lesson01.check_attention, lambda *a: attention(*a, bug=bug), match=named)


def test_01_attention_more_mistakes_are_named():
    """A walkthrough met these as 'no usual mistake matches', a wrong verdict or a bare RuntimeError."""
    def inverted_fill(q, k, v, mask=None):  # the fill inverted, the empty rows still taken from the mask as given
        scores = torch.einsum("b h i e, b h j e -> b h i j", q, k) / q.shape[-1] ** 0.5
        if mask is None:
            return scores.softmax(-1) @ v
        mask = (mask if mask.ndim == 3 else mask[None])[:, None]
        weights = scores.masked_fill(mask, -torch.finfo(scores.dtype).max).softmax(-1)
        return weights * mask.any(-1, keepdim=True) @ v

    fails_with(lesson01.check_attention, inverted_fill, match="wrong way round")

    def keys_scale(q, k, v, mask=None):  # 1/sqrt(j), the number of keys, for 1/sqrt(e)
        return attention(q * (q.shape[-1] / k.shape[-2]) ** 0.5, k, v, mask)

    fails_with(lesson01.check_attention, keys_scale, match=r"scaled by 1/sqrt\(j\), the number of keys")

    def scaled_in_place(q, k, v, mask=None):  # right numbers, but the caller's q is scaled too
        q.mul_(q.shape[-1] ** -0.5)
        return attention(q * q.shape[-1] ** 0.5, k, v, mask)

    fails_with(lesson01.check_attention, scaled_in_place, match="changed its input q in place")

    def two_d_only(q, k, v, mask=None, product="@"):  # a mask handled as (i, j) only
        scores = torch.einsum("b h i e, b h j e -> b h i j", q, k) / q.shape[-1] ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask[None, None], -torch.finfo(scores.dtype).max)
        weights = scores.softmax(-1)
        return weights @ v if product == "@" else torch.einsum("b h i j, b h j e -> b h i e", weights, v)

    fails_with(lesson01.check_attention, two_d_only, match=r"has shape \(1, 2, 2, 3, 4\).*give the mask an axis for the "
                                                           r"heads, `mask\[:, None\]`")
    fails_with(lesson01.check_attention, lambda *a: two_d_only(*a, product="einsum"),
               match=r"raised RuntimeError.*the mask here is \(b, i, j\).*`mask\[:, None\]`")


def test_01_attention_scales_row_zero_masks_and_float16_fills_are_named():
    """The second walkthrough of lesson 01 met these as 'no usual mistake matches', or passed them."""
    fails_with(lesson01.check_attention, lambda q, k, v, mask=None: attention(q / q.shape[-1] ** 0.5, k, v, mask),
               match=r"scaled by 1/e, not 1/sqrt\(e\)")

    def scaled_after(q, k, v, mask=None):
        scores = torch.einsum("b h i e, b h j e -> b h i j", q, k)
        if mask is not None:
            mask = (mask if mask.ndim == 3 else mask[None])[:, None]
            scores = scores.masked_fill(~mask, -torch.finfo(scores.dtype).max)
        weights = scores.softmax(-1)
        if mask is not None:
            weights = weights.masked_fill(~mask.any(-1, keepdim=True), 0.0)
        return (weights / q.shape[-1] ** 0.5) @ v

    fails_with(lesson01.check_attention, scaled_after, match=r"weights are scaled after the softmax, so they no longer sum")
    fails_with(lesson01.check_attention,
               lambda q, k, v, mask=None: attention(q * (q.shape[-1] / (q.shape[1] * q.shape[-1])) ** 0.5, k, v, mask),
               match=r"scaled by 1/sqrt\(h\*e\), the width of all heads together")
    fails_with(lesson01.check_attention,
               lambda q, k, v, mask=None: attention(q, k, v, mask[0] if mask is not None and mask.ndim == 3 else mask),
               match=r"masked with row 0's mask \(`mask\[0\]`, right only for a batch of 1\)")

    def fixed_fill(q, k, v, mask=None, fill=-1e9, dtype=None):  # right in float32
        scores = torch.einsum("b h i e, b h j e -> b h i j", q, k) / q.shape[-1] ** 0.5
        if mask is not None:
            mask = (mask if mask.ndim == 3 else mask[None])[:, None]
            scores = scores.masked_fill(~mask, fill)
        weights = scores.softmax(-1)
        if mask is not None:
            weights = weights * mask.any(-1, keepdim=True).to(dtype or weights.dtype)
        return weights @ v.to(weights.dtype)

    fails_with(lesson01.check_attention, fixed_fill,
               match=r"in float16 raised RuntimeError: value cannot be converted.*overflow.*-torch\.finfo\(scores\.dtype\)\.max")
    fails_with(lesson01.check_attention, lambda *a: fixed_fill(*a, fill=-6e4, dtype=torch.float32),
               match=r"in float16 returns torch\.float32: keep the inputs' dtype")
    lesson01.check_attention(lambda *a: fixed_fill(*a, fill=-6e4))  # a fill that fits float16 is right too


def test_01_attention_stub_and_solution(capsys):
    fails_with(lesson01.check_attention, stub, match="not written yet")
    lesson01.check_attention(attention)
    assert capsys.readouterr().out.startswith("OK")


def split(x, heads, bug=None):
    return rearrange(x, "b n (e h) -> b h n e" if bug == "order" else "b n (h e) -> b h n e", h=heads)


def merge(x, bug=None):
    return rearrange(x, "b h n e -> b n (e h)" if bug == "order" else "b h n e -> b n (h e)")


def test_01_heads(capsys):
    fails_with(lesson01.check_heads, stub, merge, match="not written yet")
    fails_with(lesson01.check_heads, split, stub, match="not written yet")
    fails_with(lesson01.check_heads, lambda x, h: split(x, h, "order"), merge, match="wrong order")
    fails_with(lesson01.check_heads, split, lambda x: merge(x, "order"), match="wrong order")
    fails_with(lesson01.check_heads, lambda x, h: x.view(x.shape[0], x.shape[1], h, -1), merge, match="head axis stays")
    fails_with(lesson01.check_heads, lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1), merge,
               match=r"`reshape\(b, h, n, e\)` keeps the numbers in their memory order")
    fails_with(lesson01.check_heads, split, lambda x: x.reshape(x.shape[0], x.shape[2], -1),
               match=r"without moving the heads back mixes tokens")
    lesson01.check_heads(split, merge)


def multi_head(x, context, to_q, to_k, to_v, heads, mask=None, bug=None):
    order = "order" if bug == "order" else None
    h = 1 if bug == "one head" else heads
    to_v = to_k if bug == "to_k values" else to_v
    source = x if bug == "kv from x" else context
    q, k, v = split(to_q(x), h, order), split(to_k(source), h, order), split(to_v(source), h, order)
    out = attention(q, k, v, None if bug == "mask" else mask, bug="scale" if bug == "scale" else None)
    if bug == "not merged":
        return out
    if bug == "reshape merge":
        return out.reshape(out.shape[0], out.shape[2], -1)
    return merge(out, "order" if bug in ("order", "merge order") else None)


@pytest.mark.parametrize("bug, named", [("order", "wrong order"), ("one head", "one head of width 8"),
                                        ("mask", "mask has no effect"), ("scale", "not scaled"),
                                        ("merge order", r"split with '\(h e\)' and merged with '\(e h\)'"),
                                        ("to_k values", "the values are made with to_k"),
                                        ("not merged", r"heads are never merged: the result is still \(b, h, n, e\)"),
                                        ("reshape merge", r"merged with `reshape\(b, n, h\*e\)` without moving them"),
                                        ("kv from x", r"raised RuntimeError.*k or v from x")])
def test_01_multi_head_mistakes(bug, named):
    fails_with(lesson01.check_multi_head, lambda *a: multi_head(*a, bug=bug), match=named)


def test_01_multi_head_stub_and_solution():
    fails_with(lesson01.check_multi_head, stub, match="not written yet")
    lesson01.check_multi_head(multi_head)


def test_01_softmax_and_causal():
    fails_with(lesson01.check_stable_softmax, stub, match="not written yet")

    def in_place(s, dim=-1):
        s -= s.amax(dim, keepdim=True)  # the caller's scores change
        return s.exp() / s.exp().sum(dim, keepdim=True)

    fails_with(lesson01.check_stable_softmax, in_place, match="changed its input s in place")
    fails_with(lesson01.check_stable_softmax, lambda s, dim=-1: (s - s.amax(dim)).exp(), match="keepdim=True")
    fails_with(lesson01.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).tril(1), match="also sees key i \\+ 1")
    fails_with(lesson01.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).triu(1), match="the mask is inverted")
    fails_with(lesson01.check_stable_softmax, lambda s, dim=-1: s.exp() / s.exp().sum(dim, keepdim=True), match="overflows")
    fails_with(lesson01.check_stable_softmax, lambda s, dim=-1: (s - s.max()).exp() / (s - s.max()).exp().sum(dim, keepdim=True),
               match="not\\s+of the whole tensor")
    lesson01.check_stable_softmax(lambda s, dim=-1: (s - s.amax(dim, keepdim=True)).exp() / (s - s.amax(dim, keepdim=True)).exp().sum(dim, keepdim=True))
    fails_with(lesson01.check_stable_softmax, lambda s, dim=-1: (s - s.amax(-1, keepdim=True)).exp() / (s - s.amax(-1, keepdim=True)).exp().sum(-1, keepdim=True),
               match="ignores its dim argument")
    def infinities_to_zero(s, dim=-1):  # the -inf of masked keys replaced by 0: they get weight
        s = s.masked_fill(s == float("-inf"), 0.0)
        return (s - s.amax(dim, keepdim=True)).exp() / (s - s.amax(dim, keepdim=True)).exp().sum(dim, keepdim=True)

    fails_with(lesson01.check_stable_softmax, infinities_to_zero,
               match=r"on scores with -inf entries differs.*a -inf score must get weight exactly 0")
    fails_with(lesson01.check_causal_mask, stub, match="not written yet")
    fails_with(lesson01.check_causal_mask, lambda n: torch.ones(n, n).triu().bool(), match="transposed")
    fails_with(lesson01.check_causal_mask, lambda n: torch.ones(n, n).tril(), match="dtype")
    fails_with(lesson01.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1), match="diagonal")
    lesson01.check_causal_mask(lambda n: torch.arange(n)[:, None] >= torch.arange(n))


def test_01_code_that_would_never_train_is_named():
    def zeroed_in_place(q, k, v, mask=None):  # the empty rows zeroed in the softmax's own output
        scores = torch.einsum("b h i e, b h j e -> b h i j", q, k) * q.shape[-1] ** -0.5  # (b, h, i, j)
        mask = (mask if mask.ndim == 3 else mask[None])[:, None]  # (b, 1, i, j)
        weights = scores.masked_fill(~mask, -torch.finfo(scores.dtype).max).softmax(dim=-1)  # (b, h, i, j)
        weights.masked_fill_(~mask.any(-1, keepdim=True), 0.0)
        return weights @ v

    fails_with(lesson01.check_attention, lambda q, k, v, mask=None: attention(q, k, v, mask) if mask is None
               else zeroed_in_place(q, k, v, mask), match=r"right numbers, but its backward pass fails .*in-place op")

    def nan_hidden(q, k, v, mask=None):  # a -inf fill, its NaN rows cleaned up: a real NaN is hidden too
        return attention(q, k, v, mask, bug="inf").nan_to_num(0.0)

    fails_with(lesson01.check_attention, nan_hidden,
               match=r"with a NaN in key 2 of sample 0 has numbers where the answer is NaN")
    for cut, name in ((lambda x, c: (x.detach(), c), "x"), (lambda x, c: (x, c.detach()), "context")):
        fails_with(lesson01.check_multi_head, lambda x, c, *rest, cut=cut: multi_head(*cut(x, c), *rest),
                   match=rf"is right, but no gradient reaches {name} ")

    def data_softmax(s, dim=-1):  # .data: the same numbers, out of autograd
        s = s.data - s.data.amax(dim, keepdim=True)
        return s.exp() / s.exp().sum(dim, keepdim=True)

    def divided_in_place(s, dim=-1):
        e = (s - s.amax(dim, keepdim=True)).exp()
        e /= e.sum(dim, keepdim=True)  # exp's output, which its backward needs, changed
        return e

    fails_with(lesson01.check_stable_softmax, data_softmax, match="its output has no gradient")
    fails_with(lesson01.check_stable_softmax, lambda s, dim=-1: (s - s.amin(dim, keepdim=True)).exp()
               / (s - s.amin(dim, keepdim=True)).exp().sum(dim, keepdim=True), match="the row's min is subtracted, not its max")
    fails_with(lesson01.check_stable_softmax, divided_in_place, match="right numbers, but its backward pass fails")


# ------------------------------------------------------------------------------------------------------------ 02


def project(layer, x, latents, bug=None):
    x, lat = layer.norm_media(x), layer.norm_latents(latents)
    q = layer.to_q(lat)
    kv_in = x if bug == "no latents" else torch.cat([x, latents if bug == "raw latents" else lat], dim=-2)
    k, v = layer.to_kv(kv_in).chunk(2, dim=-1)
    return (q, v, k) if bug == "swap" else (q, k, v)


def attend_latents(layer, q, k, v, bug=None):
    pattern = "b t n (e h) -> b t h n e" if bug == "order" else "b t n (h e) -> b t h n e"
    if bug == "reshape":
        b, t, n, inner = q.shape
        q, k, v = (a.reshape(b, t, layer.heads, a.shape[2], inner // layer.heads) for a in (q, k, v))
        out = (q @ k.transpose(-1, -2) * layer.scale).softmax(-1) @ v
        return out.reshape(b, t, n, inner)
    q, k, v = (rearrange(a, pattern, h=layer.heads) for a in (q, k, v))
    scores = q @ k.transpose(-1, -2)
    if bug != "scale":
        scores = scores * layer.scale
    out = scores.softmax(-2 if bug == "axis" else -1) @ v
    return rearrange(out, "b t h L e -> b t L (e h)" if bug == "order" else "b t h L e -> b t L (h e)")


@pytest.mark.parametrize("bug, named", [("no latents", "latents are left out"), ("raw latents", "without norm_latents"),
                                        ("swap", "k and v are swapped")])
def test_02_project_mistakes(bug, named):
    fails_with(lesson02.check_project, lambda *a: project(*a, bug=bug), match=named)


def test_02_project_that_normalises_the_latents_in_place_is_named():
    def in_place(layer, x, latents):
        latents.copy_(layer.norm_latents(latents))  # the caller's latents change too
        return project(layer, x, latents, bug="raw latents")  # the normalised latents, read again

    fails_with(lesson02.check_project, in_place, match="changed its input latents in place")


def test_02_no_scale_names_the_layer_the_function_is_given():
    fails_with(lesson02.check_attend, lambda *a: attend_latents(*a, bug="scale"), match="layer.scale in attend_latents")


def test_02_attend_that_scales_q_in_place_is_named():
    def in_place(layer, q, k, v):
        q.mul_(layer.scale)  # the caller's q changes
        return attend_latents(layer, q, k, v, bug="scale")

    fails_with(lesson02.check_attend, in_place, match="changed its input q in place")


def test_02_heads_merged_by_a_reshape_alone_are_named():
    def merged_by_reshape(layer, q, k, v):
        q, k, v = (rearrange(a, "b t n (h e) -> b t h n e", h=layer.heads) for a in (q, k, v))
        out = (q @ k.transpose(-1, -2) * layer.scale).softmax(-1) @ v  # (b, t, h, L, e)
        return out.reshape(out.shape[0], out.shape[1], out.shape[3], -1)

    fails_with(lesson02.check_attend, merged_by_reshape, match="with a reshape alone")


def test_02_a_scale_that_two_mistakes_give_names_both():
    class ModelWidth(make_perceiver_attention()):
        def __init__(self, *, dim, dim_head=64, heads=8):
            super().__init__(dim=dim, dim_head=dim_head, heads=heads)
            self.scale = dim**-0.5  # at dim 16 and dim_head 4, the same number as 1 / dim_head

    fails_with(lesson02.check_forward, ModelWidth, match="1 / dim_head: the square root is missing, or the scale is applied twice or dim \\*\\* -0.5")


def test_02_media_share_for_one_sample_only_is_caught():
    layer = fl.PerceiverAttention(dim=16, dim_head=4, heads=2)
    x, latents = torch.randn(1, 1, 6, 16), torch.randn(1, 1, 3, 16)
    weights = layer.attention_weights(x, latents).detach()
    fails_with(lesson02.check_media_share, lambda w, n: w[0, 0, ..., :n].sum(-1)[None, None], weights, 6, layer, x,
               latents, match="2 samples and 2 media")


@pytest.mark.parametrize("bug, named", [("scale", "not scaled"), ("axis", "over the latents"), ("order", "wrong order"),
                                        ("reshape", "split \\(or merged\\) with a reshape alone")])
def test_02_attend_mistakes(bug, named):
    fails_with(lesson02.check_attend, lambda *a: attend_latents(*a, bug=bug), match=named)


def make_perceiver_attention(bug=None, raises=False):
    class MyPerceiverAttention(nn.Module):
        def __init__(self, *, dim, dim_head=64, heads=8):
            super().__init__()
            self.heads, self.scale = heads, dim_head**-0.5
            self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
            self.to_kv = nn.Linear(dim, 2 * dim_head * heads, bias=False)
            self.to_out = nn.Linear(dim_head * heads, dim, bias=False)

        def forward(self, x, latents):
            if raises:
                stub()
            q, k, v = project(self, x, latents, bug="no latents" if bug == "no latents" else None)
            return self.to_out(attend_latents(self, q, k, v, bug=None if bug == "no latents" else bug))

    return MyPerceiverAttention


@pytest.mark.parametrize("bug, named", [("no latents", "latents are left out"), ("scale", "not scaled"),
                                        ("axis", "over the latents"), ("order", "wrong order")])
def test_02_forward_mistakes(bug, named):
    fails_with(lesson02.check_forward, make_perceiver_attention(bug), match=named)


def test_02_a_norm_the_forward_never_uses_is_named():
    class BothFromNormMedia(make_perceiver_attention()):
        def forward(self, x, latents):
            x_n, lat_n = self.norm_media(x), self.norm_media(latents)  # norm_latents made, never used
            q = self.to_q(lat_n)
            k, v = self.to_kv(torch.cat([x_n, lat_n], dim=-2)).chunk(2, dim=-1)
            return self.to_out(attend_latents(self, q, k, v))

    fails_with(lesson02.check_forward, BothFromNormMedia,
               match="norm_latents.weight, norm_latents.bias take no part in your forward, so no gradient would reach")


def test_02_stubs_and_solutions():
    fails_with(lesson02.check_project, stub, match="not written yet")
    fails_with(lesson02.check_attend, stub, match="not written yet")
    fails_with(lesson02.check_forward, make_perceiver_attention(raises=True), match="not written yet")
    lesson02.check_project(project)
    lesson02.check_attend(attend_latents)
    lesson02.check_forward(make_perceiver_attention())


def test_02_exercises():
    img = torch.rand(8, 8, 3)
    patches = rearrange(img, "(gh p1) (gw p2) c -> (gh gw) (p1 p2 c)", p1=4, p2=4)
    unpatch = lambda p_, grid, p: rearrange(p_, "(gh gw) (p1 p2 c) -> (gh p1) (gw p2) c", gh=grid[0], gw=grid[1], p1=p, p2=p)  # noqa: E731
    fails_with(lesson02.check_unpatchify, stub, patches, img, (2, 2), 4, match="not written yet")
    lesson02.check_unpatchify(unpatch, patches, img, (2, 2), 4)
    layer = fl.PerceiverAttention(dim=16, dim_head=4, heads=2)
    x, latents = torch.randn(1, 1, 6, 16), torch.randn(1, 1, 3, 16)
    weights = layer.attention_weights(x, latents).detach()
    fails_with(lesson02.check_media_share, stub, weights, 6, layer, x, latents, match="not written yet")
    diagonal = (img + img.transpose(0, 1)) / 2  # a picture symmetric about its diagonal, as a drawn circle is
    square = rearrange(diagonal, "(gh p1) (gw p2) c -> (gh gw) (p1 p2 c)", p1=4, p2=4)

    def wrong_unpatch(pattern):
        return lambda p_, grid, p: rearrange(p_, pattern, gh=grid[0], gw=grid[1], p1=p, p2=p)

    for pattern, named in [("(gw gh) (p1 p2 c) -> (gh p1) (gw p2) c", "read column by column"),
                           ("(gh gw) (p2 p1 c) -> (gh p1) (gw p2) c", "each patch comes back transposed"),
                           ("(gh gw) (c p1 p2) -> (gh p1) (gw p2) c", "read channels first"),
                           ("(gh gw) (p1 p2 c) -> (gw p2) (gh p1) c", "the image comes back transposed")]:
        fails_with(lesson02.check_unpatchify, wrong_unpatch(pattern), square, diagonal, (2, 2), 4, match=named)
    def grid_swapped(p_, grid, p):  # gw, gh = grid: on a square grid the same image
        return rearrange(p_, "(gh gw) (p1 p2 c) -> (gh p1) (gw p2) c", gh=grid[1], gw=grid[0], p1=p, p2=p)

    fails_with(lesson02.check_unpatchify, grid_swapped, patches, img, (2, 2), 4,
               match=r"2 x 3 grid of 2 x 2 patches: the grid's two sizes are swapped: grid is \(rows, columns\)")
    fails_with(lesson02.check_unpatchify, lambda p_, grid, p: p_.reshape(grid[0] * p, grid[1] * p, 3), patches, img,
               (2, 2), 4, match="a reshape keeps the numbers in their order")
    fails_with(lesson02.check_media_share, lambda w, n: w[..., n:].sum(-1), weights, 6, layer, x, latents, match="share of the latents")
    lesson02.check_media_share(lambda w, n: w[..., :n].sum(-1), weights, 6, layer, x, latents)
    fails_with(lesson02.check_media_share, lambda w, n: w[..., :6].sum(-1), weights, 6, layer, x, latents,
               match=r"media_share\(weights, n=3\): this is the share of the first 6 keys whatever n is")


# ------------------------------------------------------------------------------------------------------------ 03


def add_time(x, table, bug=None):
    if bug == "forgotten":
        return x
    if bug == "in place":
        x += table[: x.shape[1]]
        return x
    if bug == "batch size":
        return x + table[: x.shape[0]]
    return x + (table[1 : x.shape[1] + 1] if bug == "from 1" else table[:1] if bug == "first" else table[: x.shape[1]])


def layers_fn(layers, x, z, bug=None):
    if bug == "detached":
        z = z.detach()
    for attn, ff in layers:
        if bug in ("in place", "cloned, then in place"):
            z = z.clone() if bug == "cloned, then in place" else z  # no longer a view: the backward pass fails instead
            z += attn(x, z)
            z += ff(z)
            continue
        if bug == "parallel":
            z = attn(x, z) + ff(z) + z
            continue
        if bug == "first layer every time":
            attn, ff = layers[0]
        if bug == "swapped":  # attn(latents, media): the shapes then break the residual, z of 3 latents + 5 outputs
            z = attn(z, x) + z
            z = ff(z) + z
            continue
        if bug == "detached attention input":  # the same values, but no gradient through the attention's z
            z = attn(x, z.detach()) + z
            z = ff(z) + z
            continue
        z = attn(x, z) if bug in ("attn", "both") else attn(x, z) + z
        z = ff(z) if bug in ("ff", "both") else ff(z) + z
        if bug == "x = z":
            x = z
        if bug == "x through ff":
            x = ff(x) + x
    return z


def make_resampler(bug=None, raises=False):
    class MyPerceiverResampler(nn.Module):
        def __init__(self, *, dim, depth, dim_head=64, heads=8, num_latents=64, num_media_embeds=4, ff_mult=4,
                     media_embedding="per_media"):
            super().__init__()
            if media_embedding not in ("per_media", "none") and bug != "any value":
                raise ValueError(f"media_embedding must be 'per_media' or 'none', got {media_embedding!r}")
            self.media_embedding = media_embedding
            self.latents = nn.Parameter(torch.zeros(num_latents, dim) if bug == "zero latents" else torch.randn(num_latents, dim))
            self.dropout = nn.Dropout(0.1) if bug == "dropout" else nn.Identity()
            if bug == "num_media_embeds fixed":
                num_media_embeds = 4
            if media_embedding == "per_media" or bug == "always an embedding":
                self.media_pos_emb = nn.Parameter(torch.randn(num_media_embeds, 1, dim))
            if bug == "num_latents fixed":
                self.latents = nn.Parameter(torch.randn(3, dim))
            self.layers = nn.ModuleList(
                nn.ModuleList([fl.PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads), fl.FeedForward(dim, 4 if bug == "ff_mult dropped" else ff_mult)])
                for _ in range(depth + 1 if bug == "extra layer" else depth)
            )
            if bug == "one layer shared":  # [layer] * depth: every pass runs the same weights
                self.layers = nn.ModuleList([self.layers[0]] * depth)
            self.norm = nn.LayerNorm(dim)

        def forward(self, x):
            if raises:
                stub()
            if x.ndim == 3 and bug != "3d":
                x = x[:, None]
            if self.media_embedding == "per_media" or bug == "added anyway":
                table = getattr(self, "media_pos_emb", None)
                g = torch.Generator().manual_seed(0)
                table = torch.randn(4, 1, x.shape[-1], generator=g) if table is None else table  # (T, 1, d)
                x = add_time(x, table, "forgotten" if bug == "forgotten" else None)
            z = repeat(self.latents, "L d -> b t L d", b=x.shape[0], t=x.shape[1])
            z = layers_fn(self.layers, x, z, bug if bug in ("attn", "ff", "first layer every time", "x = z", "x through ff") else None)
            z = self.dropout(z)  # (b, t, L, d): the identity unless the mistake adds a Dropout
            return z if bug == "norm" else self.norm(z)

    return MyPerceiverResampler


@pytest.mark.parametrize("bug, named", [("forgotten", "forgotten"), ("first", "embedding 0"), ("from 1", "indexed from 0"),
                                        ("in place", "changed its input x in place"),
                                        ("batch size", "as many embeddings as there are samples.*x.shape\\[0\\]")])
def test_03_time_embedding_mistakes(bug, named):
    fails_with(lesson03.check_time_embeddings, lambda x, t: add_time(x, t, bug), match=named)


@pytest.mark.parametrize("bug, named", [("attn", "attention's output replaces"), ("ff", "feed-forward's output replaces"),
                                        ("both", "neither block is residual"), ("in place", "`z \\+= \\.\\.\\.` changes z in place"),
                                        ("cloned, then in place", "backward pass .* `z \\+= \\.\\.\\.` changes z in place"),
                                        ("parallel", "both read the same z"), ("detached", "gives the latents no gradient"),
                                        ("detached attention input", "gives the latents a wrong gradient"),
                                        ("first layer every time", "every pass of the loop ran the first layer"),
                                        ("x = z", "x changed between layers \\(the next layer read the latents"),
                                        ("x through ff", "x changed between layers \\(the media went through"),
                                        ("swapped", r"arguments swapped, attn\(z, x\): it is attn\(x, z\)")])
def test_03_layers_mistakes(bug, named):
    fails_with(lesson03.check_layers, lambda *a: layers_fn(*a, bug=bug), match=named)


@pytest.mark.parametrize("bug, named", [("forgotten", "time embeddings are forgotten"), ("norm", "final norm is missing"),
                                        ("attn", "attention's output replaces"), ("ff", "feed-forward's output replaces"),
                                        ("3d", "raised"), ("zero latents", "latents start equal \\(all 0\\)"),
                                        ("dropout", "other numbers in train mode.*dropout \\(Dropout\\)"),
                                        ("first layer every time", "every pass of the loop ran the first layer"),
                                        ("x = z", "x changed between layers"), ("x through ff", "x changed between layers"),
                                        ("one layer shared", r"layers\.0\.0\.norm_media\.weight and layers\.1\.0\.norm_media"
                                                             r"\.weight are one and the same parameter.*\[layer\] \* depth")])
def test_03_forward_mistakes(bug, named):
    fails_with(lesson03.check_forward, make_resampler(bug), match=named)


def test_03_numbers_fixed_to_the_example_are_named():
    fails_with(lesson03.check_time_embeddings, lambda x, table: x + table[:3], match="right for 3 media but")
    fails_with(lesson03.check_feedforward, make_feedforward("mult fixed"), match="use the mult argument")
    fails_with(lesson03.check_forward, make_resampler("ff_mult dropped"), match="pass ff_mult on")
    fails_with(lesson03.check_forward, make_resampler("extra layer"), match=r"depth=2, \.\.\.\) has 3 layers: depth=2 asks for 2")
    fails_with(lesson03.check_forward, make_resampler("num_latents fixed"), match="latents has shape .*use num_latents")
    fails_with(lesson03.check_forward, make_resampler("num_media_embeds fixed"), match="media_pos_emb .*use num_media_embeds")


def test_03_a_parameter_made_only_in_other_sizes_is_named():
    class DeepExtra(make_resampler()):  # right at the example's depth 2, one weight more from depth 3
        def __init__(self, *, depth, **kw):
            super().__init__(depth=depth, **kw)
            if depth > 2:
                self.extra_scale = nn.Parameter(torch.ones(1))

    fails_with(lesson03.check_forward, DeepExtra,
               match=r"^DeepExtra\(dim=16, depth=3, .*\)'s parameters are not fl\.PerceiverResampler's with the same "
                     r"arguments: not in the reference extra_scale\. Build exactly the table's attributes")


def test_03_stubs_and_solutions():
    fails_with(lesson03.check_time_embeddings, stub, match="not written yet")
    fails_with(lesson03.check_time_embeddings, lambda x, table: x + table[: x.shape[1]].detach(),
               match="no gradient reaches media_pos_emb, so the embeddings would never train")
    fails_with(lesson03.check_layers, stub, match="not written yet")
    fails_with(lesson03.check_forward, make_resampler(raises=True), match="not written yet")
    lesson03.check_time_embeddings(add_time)
    lesson03.check_layers(layers_fn)
    lesson03.check_forward(make_resampler())


def test_03_exercises():
    torch.manual_seed(0)
    b = 2  # the lesson's batch size, a variable of the notebook that a learner may use by mistake
    resampler = fl.PerceiverResampler(dim=16, depth=1, dim_head=4, heads=2, num_latents=5)

    def video(r, frames, bug=None):
        batch, T = frames.shape[:2]
        if bug == "in place":
            frames += r.media_pos_emb[:T]
            x = frames
        else:
            table = r.media_pos_emb.detach() if bug == "detached table" else r.media_pos_emb
            x = frames if bug == "forgotten" else frames + table[:T]
        x = rearrange(x, "b T S d -> b 1 (T S) d")
        latents = r.latents.detach() if bug == "detached" else r.latents
        z = repeat(latents, "L d -> b 1 L d", b=b if bug == "global b" else batch)
        if bug == "latents per frame":
            z = repeat(latents, "L d -> b T L d", b=batch, T=T)
        out = layers_fn(r.layers, x, z)
        return out if bug == "no norm" else r.norm(out)

    fails_with(lesson03.check_video, stub, resampler, match="not written yet")
    fails_with(lesson03.check_video, lambda r, f: video(r, f, "forgotten"), resampler, match="no time embeddings")
    fails_with(lesson03.check_video, lambda r, f: r(f), resampler, match="each frame got its own latents")
    fails_with(lesson03.check_video, lambda r, f: r(f).mean(dim=1, keepdim=True), resampler,
               match="each frame was resampled on its own and the results averaged")
    fails_with(lesson03.check_video, lambda r, f: video(r, f, "no norm"), resampler, match="the final norm is missing")
    fails_with(lesson03.check_video, lambda r, f: r(rearrange(f, "b T S d -> b 1 (T S) d")), resampler,
               match=r"flattened first, and the forward then added one embedding, media_pos_emb\[0\]")
    fails_with(lesson03.check_video, lambda r, f: r(rearrange(f + r.media_pos_emb[: f.shape[1]], "b T S d -> b 1 (T S) d")),
               resampler, match=r"adds media_pos_emb\[0\] to its one media, on top of the frames' own embeddings")
    fails_with(lesson03.check_video, lambda r, f: video(r, f, "in place"), resampler,
               match="changed its input frames in place")
    fails_with(lesson03.check_video, lambda r, f: video(r, f, "global b"), resampler,
               match="take b from frames.shape\\[0\\], not from a variable of the notebook")
    fails_with(lesson03.check_video, lambda r, f: video(r, f, "detached"), resampler,
               match="no gradient reaches resampler.latents")
    fails_with(lesson03.check_video, lambda r, f: video(r, f, "detached table"), resampler,
               match="no gradient reaches media_pos_emb, so it would never train")
    fails_with(lesson03.check_video, lambda r, f: video(r, f, "latents per frame"), resampler,
               match="disagree on the media axis.*not one set per frame")
    before = {k: v.clone() for k, v in resampler.state_dict().items()}
    state = torch.random.get_rng_state()
    lesson03.check_video(video, resampler)
    assert torch.equal(torch.random.get_rng_state(), state)  # the lesson's own random draws stay as they were
    assert all(p.grad is None for p in resampler.parameters())  # the gradients were taken on a copy
    assert all(torch.equal(before[k], v) for k, v in resampler.state_dict().items())
    fails_with(lesson03.check_time_embeddings, lambda x, table: x + table,
               match=r"raised RuntimeError: The size of tensor a \(3\).*x is \(b, t, n, d\) = \(2, 3, 5, 8\).*`media_pos_emb\[:t\]`")
    fails_with(lesson03.check_param_count, stub, match="not written yet")
    fails_with(lesson03.check_param_count, lambda **cfg: 0, match="you counted 0")
    def without_embeddings(**cfg):
        return sum(p.numel() for n, p in fl.PerceiverResampler(**cfg).named_parameters() if n != "media_pos_emb")

    fails_with(lesson03.check_param_count, without_embeddings, match="as many numbers as media_pos_emb, not counted\\?")

    def one_norm_per_attention(**cfg):  # norm_media left out of every layer: 2 * dim per layer
        return sum(p.numel() for n, p in fl.PerceiverResampler(**cfg).named_parameters() if "norm_media" not in n)

    # in the first size alone that is also media_pos_emb's count (4 x 32 = 2 layers x 2 x 32); the other size rules it out
    message = fails_with(lesson03.check_param_count, one_norm_per_attention,
                         match=r"off by -128.*as many numbers as every layer's attention norm_latents or every layer's "
                               r"attention norm_media or every layer's feed-forward LayerNorm \[0\], not counted\?")
    assert "media_pos_emb, not" not in message

    def odd(**cfg):  # an offset that fits no part in every size: no guess
        return without_embeddings(**cfg) + cfg["dim"] + 1

    message = fails_with(lesson03.check_param_count, odd, match=r"to see each part\.$")


def test_02_project_with_norm_media_for_both_inputs_is_named():
    def one_norm(layer, x, latents):
        x, lat = layer.norm_media(x), layer.norm_media(latents)
        k, v = layer.to_kv(torch.cat([x, lat], dim=-2)).chunk(2, dim=-1)
        return layer.to_q(lat), k, v

    fails_with(lesson02.check_project, one_norm, match=r"latents through norm_media: the latents have their own norm.*norm_media is for the features x only")


def test_02_and_03_a_cast_inside_forward_is_named_in_float64():
    class Cast(make_perceiver_attention()):
        def forward(self, x, latents):
            return super().forward(x, latents).float()

    fails_with(lesson02.check_forward, Cast, match=r"Cast in float64 returns float32 where .* returns float64: a cast")

    class Fixed(make_resampler()):
        def forward(self, x):
            return super().forward(x) @ torch.eye(x.shape[-1])  # a float32 tensor made inside meets float64 weights

    fails_with(lesson03.check_forward, Fixed, match=r"Fixed runs in float32 but raises in float64 .*make new tensors from the inputs")


def test_03_layers_that_cut_the_media_off_and_a_count_that_rounds_ff_mult_first_are_named():
    fails_with(lesson03.check_layers, lambda layers, x, z: layers_fn(layers, x.detach(), z),
               match="gives the media x no gradient")

    def rounded_first(**cfg):  # dim * int(ff_mult): right whenever ff_mult is whole
        hidden = cfg["dim"] * int(cfg["ff_mult"])
        exact = int(cfg["dim"] * cfg["ff_mult"])
        return sum(p.numel() for p in fl.PerceiverResampler(**cfg).parameters()) - 2 * cfg["depth"] * cfg["dim"] * (exact - hidden)

    fails_with(lesson03.check_param_count, rounded_first, match=r"'ff_mult': 2\.5\} you counted 256 numbers too few: .*int\(dim \* ff_mult\) = 40, not dim \* int\(ff_mult\) = 32")


# ------------------------------------------------------------------------------------------------------------ 04


def text_time(loc, bug=None):
    tt = loc.long().cumsum(0 if bug == "dim 0" else -1)
    if bug == "float":
        return tt.float()
    if bug == "plus 1":
        return tt + 1
    return tt - 1 if bug == "from 0" else tt - loc.long() if bug == "exclusive" else tt


def media_mask(tt, t, immediate, bug=None):
    if bug == "markers":  # the number of images read off the text, not the num_media argument
        t = int(tt.max())
    mt = torch.arange(0, t) if bug == "from 0" else torch.arange(2) + 1 if bug == "fixed 2" else torch.arange(1, t + 1)
    if bug == "swapped":
        immediate = not immediate
    if bug == "mode as a string":
        immediate = immediate == "immediate"
    if bug == "clamp":
        tt = tt.clamp(min=1)
    if bug == "text time - 1":
        tt = tt - 1
    if bug == "always ==":
        out = tt[..., None] == mt
    else:
        out = (tt[..., None] == mt) if immediate else (tt[..., None] > mt) if bug == ">" else (tt[..., None] >= mt)
    if bug in ("<=", "<") and not immediate:  # the all-previous comparison the wrong way round
        out = tt[..., None] <= mt if bug == "<=" else tt[..., None] < mt
    if bug == "inverted":
        out = ~out
    if bug == "long":
        out = out.long()
    return out | (tt[..., None] == 0) if bug == "future" else out


def full_mask(loc, t, m, immediate=True, bug=None):
    if bug == "markers":
        t = int(loc.sum(-1).max())
    per_media = media_mask(text_time(loc), t, immediate, None if bug in ("interleaved", "m fixed", "markers") else bug)
    return repeat(per_media, "b n t -> b n (m t)" if bug == "interleaved" else "b n t -> b n (t m)",
                  m=2 if bug == "m fixed" else m)


@pytest.mark.parametrize("bug, named", [("from 0", "one too low"), ("exclusive", "marker gets the count before it"),
                                        ("float", "returned a torch.float32 tensor: return torch.int64"),
                                        ("dim 0", "runs down the batch \\(dim=0\\)"), ("plus 1", "one too high")])
def test_04_text_time_mistakes(bug, named):
    fails_with(lesson04.check_text_time, lambda loc: text_time(loc, bug), match=named)


_FIXED = "a fixed number where the size comes from the arguments \\(num_media / num_latents\\)"


@pytest.mark.parametrize("bug, named", [("from 0", "numbered from 0 here, so every text time points one image too far: a "
                                                  "word after image i sees image i \\+ 1"),
                                        ("swapped", "modes are swapped"), ("text time - 1", "text time is one too low"),
                                        ("future", "look into\\s+the future"), ("clamp", "sees image 1"),
                                        ("inverted", "mask is inverted"), ("long", "returned a torch.int64 tensor: return torch.bool"),
                                        ("always ==", "the mode is ignored"), ("mode as a string", "the mode is ignored"),
                                        ("fixed 2", "2 media columns, but num_media=3: " + _FIXED),
                                        ("markers", "for the <image> markers only \\(2\\), but num_media=3"),
                                        (">", "does not see its own image in the all-previous mode"),
                                        ("<=", "wrong way round: with text_time <= media_time each word sees its own image and every \\*later\\* image"),
                                        ("<", "wrong way round: with text_time < media_time each word sees every \\*later\\* image")])
def test_04_media_mask_mistakes(bug, named):
    fails_with(lesson04.check_media_mask, lambda *a: media_mask(*a, bug=bug), match=named)


@pytest.mark.parametrize("bug, named", [("from 0", "numbered from 0"), ("swapped", "modes are swapped"),
                                        ("text time - 1", "text time is one too low"),
                                        ("future", "look into\\s+the future"), ("interleaved", "interleaved"),
                                        ("clamp", "sees image 1"), ("inverted", "mask is inverted"),
                                        ("long", "returned a torch.int64 tensor: return torch.bool"),
                                        ("always ==", "the mode is ignored"), ("mode as a string", "the mode is ignored"),
                                        ("fixed 2", "2 media columns, but num_media=3: " + _FIXED),
                                        ("m fixed", "repeated 2 times, but num_latents=1: " + _FIXED),
                                        ("markers", "for the <image> markers only \\(2\\), but num_media=3"),
                                        (">", "does not see its own image in the all-previous mode")])
def test_04_full_mask_mistakes(bug, named):
    fails_with(lesson04.check_cross_attention_mask, lambda *a: full_mask(*a, bug=bug), match=named)


def test_04_full_mask_with_another_default_mode_is_named():
    def all_previous_by_default(loc, t, m, only_attend_immediate_media=False):
        return full_mask(loc, t, m, only_attend_immediate_media)

    fails_with(lesson04.check_cross_attention_mask, all_previous_by_default,
               match=r"called without only_attend_immediate_media is not the immediate mode: keep the signature's default")


def test_04_stubs_and_solutions():
    for check in (lesson04.check_text_time, lesson04.check_media_mask, lesson04.check_cross_attention_mask,
                  lesson04.check_predicted_masks):
        fails_with(check, stub, match="not written yet")
    lesson04.check_text_time(text_time)
    lesson04.check_media_mask(media_mask)
    lesson04.check_cross_attention_mask(full_mask)
    imm = [[0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]
    prev = [[0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]
    lesson04.check_predicted_masks(lambda: (imm, prev))
    fails_with(lesson04.check_predicted_masks, lambda: (imm, imm), match="rows 4 \\(<image>\\), 5")
    fails_with(lesson04.check_predicted_masks, lambda: (prev, imm), match="each other's place")  # the two swapped


# ------------------------------------------------------------------------------------------------------------ 05


def masked_softmax(scores, mask, bug=None):
    if bug == "ignored":
        return scores.softmax(-1)
    if bug == "multiplied":
        return scores.softmax(-1) * mask
    if bug == "renormalised":
        weights = scores.softmax(-1) * mask
        return weights / weights.sum(-1, keepdim=True)
    if bug == "text axis, NaN to 0":
        return scores.masked_fill(~mask, float("-inf")).softmax(-2).nan_to_num(0.0)
    if bug == "in place":
        scores.masked_fill_(~mask, float("-inf"))
    if bug == "inverted":
        mask = ~mask
    if bug == "filled where True":
        nothing = ~mask.any(-1, keepdim=True)
        return scores.masked_fill(mask, float("-inf")).masked_fill(nothing, 0.0).softmax(-1).masked_fill(nothing, 0.0)
    if bug == "inf":
        return scores.masked_fill(~mask, float("-inf")).softmax(-1)
    if bug == "max":
        return scores.masked_fill(~mask, -torch.finfo(scores.dtype).max).softmax(-1)
    nothing = ~mask.any(-1, keepdim=True)
    w = scores.masked_fill(~mask, float("-inf")).masked_fill(nothing, 0.0).softmax(-2 if bug == "axis" else -1)
    return w.masked_fill(nothing, 0.0)


@pytest.mark.parametrize("bug, named", [("inf", "NaN"), ("max", "uniform average over every image"),
                                        ("axis", "over the text tokens"), ("ignored", "mask has no effect"),
                                        ("inverted", "mask is used the wrong way round"),
                                        ("filled where True", "mask is used the wrong way round"),
                                        ("multiplied", "then multiplied by the mask"),
                                        ("renormalised", "NaN, 0/0 .*divided by a sum of 0"),
                                        ("text axis, NaN to 0", "runs over the text tokens"),
                                        ("in place", "changes its input scores in place")])
def test_05_masked_softmax_mistakes(bug, named):
    message = fails_with(lesson05.check_masked_softmax, lambda s, m: masked_softmax(s, m, bug), match=named)
    assert "no usual mistake matches" not in message


def make_cross_attention(bug=None, raises=False):
    class MyMaskedCrossAttention(nn.Module):
        def __init__(self, *, dim, dim_head=64, heads=8, only_attend_immediate_media=True):
            super().__init__()
            self.heads, self.scale = heads, dim_head**-0.5
            if bug == "heads fixed in the constructor":
                self.heads = 2
            if bug == "scale fixed":
                self.scale = 0.5
            if bug == "scale fixed to 8":  # (heads * dim_head) ** -0.5 at the first size, by chance
                self.scale = 8**-0.5
            if bug == "scale fixed to the second size's":
                self.scale = 6**-0.5
            self.norm = nn.LayerNorm(dim)
            self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
            self.to_kv = nn.Linear(dim, 2 * dim_head * heads, bias=False)
            self.to_out = nn.Linear(dim_head * heads, dim, bias=False)
            self.only_attend_immediate_media = only_attend_immediate_media

        def forward(self, x, media, media_locations=None):
            if raises:
                stub()
            t, m = media.shape[1:3]
            pattern = "(e h)" if bug == "order" else "(h e)"
            h = 2 if bug == "heads fixed in the rearrange" else self.heads
            text = x if bug in ("no text norm", "norm media only") else self.norm(x)
            q = rearrange(self.to_q(text), f"b n {pattern} -> b h n e", h=h)
            media = self.norm(media) if bug in ("norm media", "norm media only") else media
            if bug == "kv swapped":
                v, k = self.to_kv(rearrange(media, "b t m d -> b (t m) d")).chunk(2, -1)
            else:
                flat = "b t m d -> b (m t) d" if bug == "media (m t)" else "b t m d -> b (t m) d"
                k, v = self.to_kv(rearrange(media, flat)).chunk(2, -1)
            k, v = (rearrange(a, f"b j {'(e h)' if bug == f'{which} order' else pattern} -> b h j e", h=h)
                    for a, which in ((k, "keys"), (v, "values")))
            sim = q @ k.transpose(-1, -2)
            if bug != "scale after softmax":
                sim = sim * (1.0 if bug == "scale" else self.scale)
            if media_locations is None:
                if bug == "zeros without locations":
                    return torch.zeros_like(x)
                if bug == "x without locations":
                    return x
                if bug == "raises without locations":  # a mask built from None
                    masks.cross_attention_mask(media_locations, t, m, self.only_attend_immediate_media)
                if bug == "image 1 without locations":  # None read as one marker before the first word
                    media_locations = torch.zeros(x.shape[:2], dtype=torch.bool)
                    media_locations[:, 0] = True
            if media_locations is not None and bug != "ignored":
                mode = {"swapped": not self.only_attend_immediate_media, "fixed": True, "fixed False": False}.get(
                    bug, self.only_attend_immediate_media)
                if bug == "mask from row 0":  # the first sequence's markers for every row
                    mask = masks.cross_attention_mask(media_locations[:1], t, m, mode).expand(x.shape[0], -1, -1)
                else:
                    mask = masks.cross_attention_mask(media_locations, t, m, mode)
                mask = mask if bug == "no head axis" else mask[:, None]
                attn = masked_softmax(sim, ~mask if bug == "inverted" else mask, bug if bug in ("inf", "max") else None)
            else:
                attn = sim.softmax({"text axis without locations": -2, "heads axis without locations": 1}.get(bug, -1))
            if bug == "scale after softmax":
                attn = attn * self.scale
            merged = rearrange(attn @ v, f"b h n e -> b n {'(e h)' if bug == 'merge order' else pattern}")
            return merged if bug == "no to_out" else self.to_out(merged)

    return MyMaskedCrossAttention


@pytest.mark.parametrize("bug, named", [("inf", "NaN"), ("max", "uniform average over every image"),
                                        ("scale", "not scaled"), ("order", "wrong order"),
                                        ("ignored", "every word sees every image"), ("swapped", "other mode's"),
                                        ("fixed", "other mode's"), ("fixed False", "other mode's"),
                                        ("inverted", "mask is passed the wrong way round"),
                                        ("norm media", "media went through self.norm"),
                                        ("heads fixed in the rearrange", "splits into 2 heads, but this layer has heads=3"),
                                        ("heads fixed in the constructor", "splits into 2 heads, but this layer has heads=3"),
                                        ("scale fixed", "scaled by 0.5 in both sizes \\(a fixed number"),
                                        ("scale fixed to 8", "scaled by 0.3536 in both sizes \\(a fixed number"),
                                        ("scale fixed to the second size's", "scaled by 0.4082 in both sizes \\(a fixed"),
                                        ("kv swapped", "keys and values are swapped"),
                                        ("media (m t)", "flattened 'b t m d -> b \\(m t\\) d', latent by latent"),
                                        ("mask from row 0", "every row of the batch got the mask of row 0"),
                                        ("no text norm", "text x is not normalised"),
                                        ("norm media only", "applied to the media instead of the text"),
                                        ("no to_out", "to_out is left out"),
                                        ("scale after softmax", "multiplies the weights after the softmax"),
                                        ("no head axis", "mask has no head axis"),
                                        ("merge order", "merged in another order than they were split"),
                                        ("keys order", r"the keys are split with '\(e h\)' and the rest with '\(h e\)'"),
                                        ("values order", r"the values are split with '\(e h\)' and the rest"),
                                        ("zeros without locations", "returns zeros, as if no word saw an image"),
                                        ("x without locations", "returns x unchanged"),
                                        ("raises without locations", "raised .*media_locations=None means no mask"),
                                        ("image 1 without locations", "every word sees image 1 only"),
                                        ("text axis without locations", "softmax runs over the text tokens"),
                                        ("heads axis without locations", "softmax runs over the heads")])
def test_05_forward_mistakes(bug, named):
    message = fails_with(lesson05.check_forward, make_cross_attention(bug), match=named)
    assert "no usual mistake matches" not in message
    if bug.startswith("scale fixed"):  # named as a fixed number only, not as the formula it equals at one size
        assert "width of all heads" not in message and "the model width" not in message


def test_05_a_fill_that_float16_cannot_hold_is_named():
    fails_with(lesson05.check_masked_softmax, lambda s, m: s.masked_fill(~m, -1e9).softmax(-1) * m.any(-1, keepdim=True),
               match="float16 scores.*does not fit in float16")


def test_05_a_residual_inside_the_layer_is_named():
    class WithResidual(make_cross_attention()):
        def forward(self, x, media, media_locations=None):
            return super().forward(x, media, media_locations) + x

    fails_with(lesson05.check_forward, WithResidual, match="x is added to the output inside the layer")


def test_05_the_mode_must_be_the_attribute_the_spec_names():
    """The widgets and MyFlamingo switch the mode on a built layer; a layer that keeps it elsewhere does not follow."""
    class Renamed(make_cross_attention()):
        def __init__(self, *, only_attend_immediate_media=True, **kw):
            super().__init__(only_attend_immediate_media=only_attend_immediate_media, **kw)
            self.mode = only_attend_immediate_media
            del self.only_attend_immediate_media

        def forward(self, x, media, media_locations=None):
            self.__dict__["only_attend_immediate_media"] = self.mode  # right in both modes, under another name
            try:
                return super().forward(x, media, media_locations)
            finally:
                del self.__dict__["only_attend_immediate_media"]

    fails_with(lesson05.check_forward, Renamed,
               match=r"has no attribute only_attend_immediate_media equal to the constructor's argument")

    class DecidedOnce(make_cross_attention()):
        def __init__(self, *, only_attend_immediate_media=True, **kw):
            super().__init__(only_attend_immediate_media=only_attend_immediate_media, **kw)
            self.fixed_mode = only_attend_immediate_media

        def forward(self, x, media, media_locations=None):
            current, self.only_attend_immediate_media = self.only_attend_immediate_media, self.fixed_mode
            try:
                return super().forward(x, media, media_locations)
            finally:
                self.only_attend_immediate_media = current

    fails_with(lesson05.check_forward, DecidedOnce,
               match=r"built with only_attend_immediate_media=True, then set to False,.*other mode")


def test_05_stubs_and_solutions():
    fails_with(lesson05.check_masked_softmax, stub, match="not written yet")
    fails_with(lesson05.check_forward, make_cross_attention(raises=True), match="not written yet")
    lesson05.check_masked_softmax(masked_softmax)
    lesson05.check_forward(make_cross_attention())


def test_05_an_exp_without_the_max_subtracted_is_named():
    def unstable(scores, mask):  # right on small scores; exp overflows on large ones
        e = scores.exp() * mask
        total = e.sum(dim=-1, keepdim=True)
        return torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros_like(e))

    fails_with(lesson05.check_masked_softmax, unstable,
               match=r"on scores of a few hundred \(the largest is \d+\) gives NaN or inf: exp\(x\) overflows float32")

    def unstable_zeroed(scores, mask):  # the same, its NaN turned into zeros
        e = scores.masked_fill(~mask, float("-inf")).exp()
        return (e / e.sum(-1, keepdim=True)).nan_to_num(0.0)

    fails_with(lesson05.check_masked_softmax, unstable_zeroed,
               match=r"on scores of a few hundred differs .*exp\(x\) overflows float32 past x = 88")


def test_05_tokens_reached():
    torch.manual_seed(0)  # the inputs below, whatever ran before
    tokens = "a photo of <image> a red circle <image> a blue square".split()
    loc = masks.media_locations_from_tokens(tokens)[None]
    x, media = torch.randn(1, len(tokens), 16), torch.randn(1, 2, 3, 16)

    @torch.no_grad()
    def reached(layer, x, media, loc, k, shift=0):
        changed = media.clone()
        changed[:, k - 1 + shift] = torch.randn_like(media[:, 0])
        return (layer(x, media, loc) - layer(x, changed, loc)).abs().amax(-1) > 1e-6

    fails_with(lesson05.check_tokens_reached, stub, x, media, loc, match="not written yet")
    fails_with(lesson05.check_tokens_reached, lambda *a: reached(*a).float(), x, media, loc, match="bool")

    def signed(layer, x, media, loc, k):  # only the words whose output went up in some feature
        changed = media.clone()
        changed[:, k - 1] = torch.randn_like(changed[:, k - 1])
        return (layer(x, changed, loc) - layer(x, media, loc) > 1e-6).any(-1)

    fails_with(lesson05.check_tokens_reached, signed, x, media, loc,
               match=r"moves one feature only.*a change measured with its sign .*is missed")
    for other_mode in (lambda times, k: times >= k, lambda times, k: times == k):  # from the text time, one mode for both
        fails_with(lesson05.check_tokens_reached, lambda layer, x, media, loc, k: other_mode(masks.text_time(loc), k),
                   x, media, loc, match="image k reaches in the other mode")
    @torch.no_grad()
    def in_place(layer, x, media, loc, k):
        before = layer(x, media, loc)
        media[:, k - 1] = torch.randn_like(media[:, 0])  # the caller's media, changed
        return (before - layer(x, media, loc)).abs().amax(-1) > 1e-6

    @torch.no_grad()
    def every_image(layer, x, media, loc, k):
        return (layer(x, media, loc) - layer(x, torch.randn_like(media), loc)).abs().amax(-1) > 1e-6

    @torch.no_grad()
    def with_itself(layer, x, media, loc, k):
        changed = media.clone()
        changed[:, k - 1] = torch.randn_like(media[:, 0])
        return (layer(x, changed, loc) - layer(x, changed, loc)).abs().amax(-1) > 1e-6  # the new output against itself

    @torch.no_grad()
    def without_locations(layer, x, media, loc, k):
        changed = media.clone()
        changed[:, k - 1] = torch.randn_like(media[:, 0])
        return (layer(x, media) - layer(x, changed)).abs().amax(-1) > 1e-6  # no mask: every word sees every image

    fails_with(lesson05.check_tokens_reached, with_itself, x, media, loc,
               match=r"no token counts as changed: compare the layer's output on the media you were given \(not a second run")

    @torch.no_grad()
    def too_high_a_threshold(layer, x, media, loc, k):  # small changes missed: some of the right words, no others
        changed = media.clone()
        changed[:, k - 1] = torch.randn_like(media[:, 0])
        return (layer(x, media, loc) - layer(x, changed, loc)).abs().amax(-1) > 0.1

    fails_with(lesson05.check_tokens_reached, too_high_a_threshold, x, media, loc,
               match=r"finds only some of the words image k reaches \(2 of 4, no others\).*too high a threshold")
    fails_with(lesson05.check_tokens_reached, without_locations, x, media, loc, match="pass media_locations to the layer")

    @torch.no_grad()
    def fitted_threshold(layer, x, media, loc, k):  # right on the lesson's layer, whose changes are all large
        changed = media.clone()
        changed[:, k - 1] = torch.randn_like(media[:, 0])
        return (layer(x, media, loc) - layer(x, changed, loc)).abs().amax(-1) > 1e-2

    fails_with(lesson05.check_tokens_reached, fitted_threshold, x, media, loc,
               match=r"1000 times smaller, k=1 finds 0 of the 4 words image 1 reaches: .*> 1e-6")
    kept = media.clone()
    fails_with(lesson05.check_tokens_reached, in_place, x, media, loc, match="changed its input media in place.*media.clone")
    assert torch.equal(media, kept)  # the notebook's media are as they were, so the right answer passes after it
    lesson05.check_tokens_reached(reached, x, media, loc)
    fails_with(lesson05.check_tokens_reached, lambda layer, x, media, loc, k: reached(layer, x, media, loc, k, shift=1),
               x, media, loc, match=r"raised IndexError: index 2 is out of bounds.*; image k counted from 1 is media\[:, k - 1\]")
    message = fails_with(lesson05.check_tokens_reached, every_image, x, media, loc, match="every image changed")
    assert "other mode" not in message
    lesson05.check_tokens_reached(reached, x, media, loc)


def test_every_step_has_a_hint(capsys):
    for key in ["01.attention", "01.heads", "01.multihead", "01.softmax", "01.causal", "02.project", "02.scores",
                "02.forward", "02.unpatchify", "02.share", "03.embed", "03.layers", "03.forward", "03.video", "03.count",
                "04.text_time", "04.media_mask", "04.mask", "04.predict", "05.softmax", "05.forward", "05.reached"]:
        hint(key)
        assert capsys.readouterr().out.startswith(f"Hint ({key}):")


@pytest.mark.parametrize("lesson", ["01", "02", "03", "04", "05"])
def test_check_cells_call_a_lesson_check_and_never_a_bare_assert(lesson):
    import ast
    from pathlib import Path

    import nbformat

    path = next((Path(__file__).resolve().parent.parent / "notebooks").glob(f"{lesson}_*.ipynb"))
    checks = [c for c in nbformat.read(path, as_version=4).cells if "check" in c.metadata.get("tags", [])]
    assert len(checks) >= 2, f"{path.name}: at least two checked steps"
    for cell in checks:
        tree = ast.parse(cell.source)
        assert not any(isinstance(node, ast.Assert) for node in ast.walk(tree)), f"{path.name}: bare assert in\n{cell.source}"
        assert f"lesson{lesson}.check_" in cell.source, f"{path.name}: a check cell that does not call lesson{lesson}'s checks"


def test_common_errors_get_advice():
    def cat_on_width(layer, x, latents):
        x, lat = layer.norm_media(x), layer.norm_latents(latents)
        return (layer.to_q(lat), *layer.to_kv(torch.cat((x, lat), dim=-1)).chunk(2, -1))

    def split_too_early(layer, x, latents):
        return tuple(rearrange(a, "b t n (h e) -> b t h n e", h=layer.heads) for a in project(layer, x, latents))

    fails_with(lesson02.check_project, cat_on_width, match="along the token axis, dim=-2")
    fails_with(lesson02.check_project, split_too_early, match="heads split: return them as")
    fails_with(lesson03.check_forward, make_resampler("3d"), match="rearrange it to \\(b, 1, n, d\\)")


# ------------------------------------------------------------------------------------- the learner's constructors

def make_feedforward(bug=None, raises_in=None):
    """A learner's MyFeedForward; `bug` is one usual mistake, `raises_in` "__init__" or "forward" for a stub."""
    activations = {"ReLU": nn.ReLU(), "squared ReLU": None, "tanh GELU": nn.GELU(approximate="tanh"),
                   "no activation": nn.Identity()}

    class MyFeedForward(nn.Sequential):
        def __init__(self, dim, mult=4):
            super().__init__()
            if raises_in == "__init__":
                stub()
            inner = int(dim * (4 if bug == "mult fixed" else mult))
            if bug == "LayerNorm left out":
                self.extend([nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False)])
                return
            if bug == "LayerNorm appended last":
                self.extend([nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False), nn.LayerNorm(dim)])
                return
            self.append(nn.LayerNorm(dim))
            if bug == "linears swapped":
                self.extend([nn.Linear(inner, dim, bias=False), nn.GELU(), nn.Linear(dim, inner, bias=False)])
                return
            self.append(nn.Linear(dim, inner, bias=bug == "bias"))
            self.append(activations.get(bug) or nn.GELU())
            self.append(nn.Linear(inner, dim, bias=False))

        def forward(self, x):
            if raises_in == "forward":
                stub()
            if bug in ("LayerNorm appended last", "linears swapped", "LayerNorm left out"):
                return super().forward(x)
            if bug == "residual inside":
                return x + super().forward(x)
            if bug == "LayerNorm last":
                return self[0](self[3](self[2](self[1](x))))
            h = self[1](x if bug == "no LayerNorm" else self[0](x))  # (..., inner)
            if bug == "squared ReLU":
                return self[3](torch.relu(h).square())  # (..., dim)
            return self[3](self[2](h))  # (..., dim)

    return MyFeedForward


@pytest.mark.parametrize("bug, named", [
    ("no LayerNorm", "not normalised"), ("ReLU", "this is ReLU"), ("squared ReLU", "paper's Squared ReLU"),
    ("tanh GELU", "tanh approximation"), ("no activation", "no non-linearity"),
    ("linears swapped", "the two Linear layers are the wrong way round"), ("residual inside", "adds its input back"),
    ("LayerNorm last", "LayerNorm is applied last"), ("LayerNorm appended last", "LayerNorm is appended last"),
    ("LayerNorm left out", r"has no LayerNorm: the block starts with one, self\[0\] = nn\.LayerNorm\(dim\)"),
])
def test_03_feedforward_mistakes(bug, named):
    fails_with(lesson03.check_feedforward, make_feedforward(bug), match=named)


def test_03_feedforward_constructor_stub_names_and_solution(capsys):
    fails_with(lesson03.check_feedforward, make_feedforward(raises_in="__init__"), match="MyFeedForward\\(16, mult=2\\) is not written yet")
    fails_with(lesson03.check_feedforward, make_feedforward(raises_in="forward"), match="not written yet")
    with pytest.raises(ExerciseFailed, match="do not line up with the reference") as caught:  # a bias the reference lacks
        lesson03.check_feedforward(make_feedforward("bias"))
    assert "Unexpected (your module has them, the reference does not): 1.bias" in str(caught.value)

    class Named(nn.Module):  # a feed-forward with names of its own: the reference's weights cannot load
        def __init__(self, dim, mult=4):
            super().__init__()
            self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.Linear(dim * mult, dim)

        def forward(self, x):
            return self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))

    fails_with(lesson03.check_feedforward, Named, match="no parameter '0.weight'.*table lists the names")
    lesson03.check_feedforward(make_feedforward())
    assert capsys.readouterr().out.startswith("OK: your MyFeedForward matches the reference")


def test_02_and_05_constructor_stubs_and_misnamed_parameters():
    class Stubbed(make_perceiver_attention()):
        def __init__(self, **kwargs):
            super(nn.Module, self).__init__()
            stub()

    fails_with(lesson02.check_forward, Stubbed, match="Stubbed\\(dim=16, dim_head=4, heads=2\\) is not written yet")

    class SeparateKV(make_perceiver_attention()):  # to_k and to_v instead of the reference's one to_kv
        def __init__(self, *, dim, dim_head=64, heads=8):
            super().__init__(dim=dim, dim_head=dim_head, heads=heads)
            del self.to_kv
            self.to_k = nn.Linear(dim, dim_head * heads, bias=False)
            self.to_v = nn.Linear(dim, dim_head * heads, bias=False)

    message = fails_with(lesson02.check_forward, SeparateKV, match="do not line up with the reference")
    assert "Missing" in message and "to_kv.weight" in message and "to_k.weight" in message

    class NoNorm(make_cross_attention()):  # the text LayerNorm named otherwise
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.norm_text = self.norm
            del self.norm

    message = fails_with(lesson05.check_forward, NoNorm, match="do not line up with the reference")
    assert "Missing" in message and "norm.weight" in message and "norm_text.weight" in message


def test_the_constructor_hints(capsys):
    for key in ["02.init", "03.feedforward", "03.init", "05.init"]:
        hint(key, 2)
        assert capsys.readouterr().out.startswith(f"Hint ({key}): After super().__init__()" if key != "03.feedforward"
                                                  else f"Hint ({key}): In __init__, after super().__init__()")


def test_hints_of_two_levels_nudge_first_and_name_the_second(capsys):
    """Where the full hint is the answer, hint(key) says what to think about and names hint(key, 2); the nudge
    holds none of the full hint's code."""
    from flamingo_lite.teaching import exercises
    import importlib

    for number in range(1, 14):  # every lesson's hints
        importlib.import_module(f"flamingo_lite.teaching.exercises.lesson{number:02d}")

    import contextlib
    import io

    # every step's first hint says what to think about (a test's own "99." hints aside)
    assert {key for key in set(exercises._HINTS) - set(exercises._NUDGES) if not key.startswith("99.")} == set()
    for key, nudge in exercises._NUDGES.items():
        first, second = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(first):
            hint(key)
        with contextlib.redirect_stdout(second):
            hint(key, 2)
        assert first.getvalue() == f"Hint ({key}): {nudge} Still stuck? hint(\"{key}\", 2) says what to write.\n"
        assert second.getvalue() == f"Hint ({key}): {exercises._HINTS[key]}\n"
        full_code = {part for part in exercises._HINTS[key].split("`")[1::2] if set(part) & set("()[]=")}  # its code
        assert not any(code in nudge for code in full_code), key
    with pytest.raises(ValueError, match="level must be 1 .* or 2"):
        hint("03.init", 3)
    with pytest.raises(KeyError, match="nudges for steps without a hint: 99.nothing"):
        exercises.register_nudges({"99.nothing": "a nudge"})
    exercises.register_hints({"99.one_level": "look at the shapes"})
    hint("99.one_level", 2)  # a hint without a nudge is the same at both levels
    hint("99.one_level")
    one, again = capsys.readouterr().out.strip().split("\n")
    assert one == again and "Still stuck? hint(" not in one


def make_perceiver_attention_with(bug):
    """A whole PerceiverAttention with one of the mistakes lesson 02's forward check names."""

    class MyPerceiverAttention(nn.Module):
        def __init__(self, *, dim, dim_head=64, heads=8):
            super().__init__()
            self.heads = 2 if bug == "heads fixed in the constructor" else heads
            self.scale = 4**-0.5 if bug == "scale fixed" else dim_head**-0.5
            inner = dim_head * heads
            self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
            self.to_out = nn.Linear(inner, dim, bias=False)

        def forward(self, x, latents):
            if bug == "media of sample 0":
                x = x[:1].expand_as(x)  # (b, t, n, d)
            if bug == "norms swapped":
                x, lat = self.norm_latents(x), self.norm_media(latents)  # (b, t, n, d), (b, t, L, d)
            else:
                x, lat = self.norm_media(x), self.norm_latents(latents)  # (b, t, n, d), (b, t, L, d)
            q = self.to_q(lat)  # (b, t, L, h*e)
            k, v = self.to_kv(torch.cat((x, lat), dim=-2)).chunk(2, dim=-1)  # 2 x (b, t, n+L, h*e)
            h = 2 if bug == "heads fixed in the rearrange" else self.heads
            q, k, v = (rearrange(a, "b t n (h e) -> b t h n e", h=h) for a in (q, k, v))  # (b, t, h, n, e)
            scores = torch.einsum("b t h i e, b t h j e -> b t h i j", q, k)  # (b, t, h, L, n+L)
            scores = scores / self.scale if bug == "scale divided" else scores * self.scale  # (b, t, h, L, n+L)
            out = torch.einsum("b t h i j, b t h j e -> b t h i e", scores.softmax(-1), v)  # (b, t, h, L, e)
            merge = "b t h L e -> b t L (e h)" if bug == "merge order" else "b t h L e -> b t L (h e)"
            out = rearrange(out, merge)  # (b, t, L, h*e)
            if bug == "to_out missing":
                return out  # (b, t, L, h*e)
            out = self.to_out(out)  # (b, t, L, d)
            return out + latents if bug == "residual inside" else out  # (b, t, L, d)

    return MyPerceiverAttention


@pytest.mark.parametrize("bug, named", [
    ("norms swapped", "swaps norm_media and norm_latents"),
    ("heads fixed in the rearrange", "splits into 2 heads, but this layer has heads=3"),
    ("heads fixed in the constructor", "splits into 2 heads, but this layer has heads=3"),
    ("scale fixed", "scaled by 0.5 \\(a fixed number"),
    ("scale divided", "scaled by 2 \\(dim_head \\*\\* 0.5"),
    ("merge order", "split right but merged in the wrong order"),
    ("to_out missing", "to_out is missing"),
    ("residual inside", "added to the output inside the attention"),
    ("media of sample 0", "attends to the media of sample 0"),
])
def test_02_forward_names_whole_module_mistakes(bug, named):
    message = fails_with(lesson02.check_forward, make_perceiver_attention_with(bug), match=named)
    assert "no usual mistake matches" not in message


def test_02_forward_without_a_usual_mistake_after_an_exact_report_says_no_more():
    class SeparateKV(make_perceiver_attention_with(None)):
        def __init__(self, *, dim, dim_head=64, heads=8):
            super().__init__(dim=dim, dim_head=dim_head, heads=heads)
            del self.to_kv
            self.to_k = nn.Linear(dim, dim_head * heads, bias=False)

    message = fails_with(lesson02.check_forward, SeparateKV, match="do not line up with the reference")
    assert "no usual mistake matches" not in message


def test_02_project_names_swapped_norms():
    def swapped(layer, x, latents):
        x, lat = layer.norm_latents(x), layer.norm_media(latents)  # (b, t, n, d), (b, t, L, d)
        k, v = layer.to_kv(torch.cat((x, lat), dim=-2)).chunk(2, dim=-1)  # 2 x (b, t, n+L, h*e)
        return layer.to_q(lat), k, v

    fails_with(lesson02.check_project, swapped, match="norm_media and norm_latents are swapped")


def test_02_attend_names_the_merge_order_and_the_scale():
    def merged_wrong(layer, q, k, v):
        return attend_latents(layer, q, k, v).unflatten(-1, (layer.heads, -1)).transpose(-1, -2).flatten(-2)

    fails_with(lesson02.check_attend, merged_wrong, match="split right but merged in the wrong order")

    def divided(layer, q, k, v):
        layer_scale = layer.scale
        try:
            layer.scale = 1 / layer_scale
            return attend_latents(layer, q, k, v)
        finally:
            layer.scale = layer_scale

    fails_with(lesson02.check_attend, divided, match="divided by self.scale instead of multiplied")


@pytest.mark.parametrize("bug, named", [
    ("always an embedding", "still has media_pos_emb"),
    ("added anyway", "with media_embedding=\"none\""),
    ("any value", "was accepted: raise a ValueError naming media_embedding"),
])
def test_03_forward_names_media_embedding_mistakes(bug, named):
    fails_with(lesson03.check_forward, make_resampler(bug), match=named)


def test_03_forward_says_to_add_the_media_embedding_argument():
    class Old(make_resampler()):
        def __init__(self, *, dim, depth, dim_head=64, heads=8, num_latents=64, num_media_embeds=4, ff_mult=4):
            super().__init__(dim=dim, depth=depth, dim_head=dim_head, heads=heads, num_latents=num_latents,
                             num_media_embeds=num_media_embeds, ff_mult=ff_mult)

    fails_with(lesson03.check_forward, Old, match="add media_embedding=\"per_media\" to the constructor")


def test_01_code_that_would_never_train_or_fixes_the_head_count_is_named():
    """The third walkthrough of lesson 01: a detached softmax or output, a projection under no_grad and a head
    count written into the code all passed."""
    fails_with(lesson01.check_attention, lambda q, k, v, mask=None: attention(q, k, v, mask).detach(),
               match=r"its output has no gradient.*nothing before it would ever train")

    def detached_weights(q, k, v, mask=None):  # the weights cut off: v still gets its gradient, q and k do not
        scores = torch.einsum("b h i e, b h j e -> b h i j", q, k) / q.shape[-1] ** 0.5
        if mask is not None:
            mask = (mask if mask.ndim == 3 else mask[None])[:, None]
            scores = scores.masked_fill(~mask, -torch.finfo(scores.dtype).max)
        weights = scores.softmax(-1).detach()
        if mask is not None:
            weights = weights * mask.any(-1, keepdim=True)
        return weights @ v

    fails_with(lesson01.check_attention, detached_weights, match=r"no gradient reaches q .*would never train")

    def q_without_gradient(x, context, to_q, to_k, to_v, heads, mask=None):
        with torch.no_grad():
            q = to_q(x)
        return multi_head(x, context, lambda _: q, to_k, to_v, heads, mask)

    fails_with(lesson01.check_multi_head, q_without_gradient, match=r"no gradient reaches to_q\.weight")
    fails_with(lesson01.check_multi_head, lambda x, c, q, k, v, heads, mask=None: multi_head(x, c, q, k, v, 2, mask),
               match=r"heads=4, mask\) gives the answer for 2 heads: the number of heads is fixed in your code")
    fails_with(lesson01.check_multi_head, lambda x, c, q, k, v, heads, mask=None: multi_head(c, x, q, k, v, heads, mask),
               match=r"one of them was made from the other's tensor \(q from context")


def test_05_masked_softmax_that_would_not_train_or_is_not_exactly_zero_is_named():
    """The third walkthrough of lesson 05: a detached softmax, a float64 answer and a -30 fill all passed."""
    def fill(s, m, value=float("-inf"), detach=False, dtype=None):
        weights = s.masked_fill(~m, value).softmax(-1).nan_to_num(0.0)
        weights = weights.detach() if detach else weights
        return weights.to(dtype) if dtype else weights

    masked_check = lesson05.check_masked_softmax
    masked_check(fill)  # -inf, and the empty rows' NaN set to 0: right
    fails_with(masked_check, lambda s, m: fill(s, m, detach=True), match=r"output has no gradient.*nothing before it would ever train")
    fails_with(masked_check, lambda s, m: fill(s, m, dtype=torch.float64),
               match=r"returns torch\.float64 for torch\.float32 scores")
    fails_with(masked_check, lambda s, m: fill(s, m, -30.0) * m.any(-1, keepdim=True),
               match=r"masked entries get weights up to .*, not exactly 0: a finite fill such as -30")
    fails_with(masked_check, lambda s, m: fill(s, m) * m.any(-1),
               match=r"raised RuntimeError.*`mask\.any\(dim=-1, keepdim=True\)`")

    def partly_detached(s, m):  # the normaliser cut off: right values, wrong gradient
        filled = s.masked_fill(~m, float("-inf"))
        e = (filled - filled.amax(-1, keepdim=True)).exp()
        return (e / e.sum(-1, keepdim=True).detach()).nan_to_num(0.0)

    fails_with(masked_check, partly_detached, match=r"the gradient it gives the scores is not softmax's")
    fails_with(masked_check, lambda s, m: fill(s, m).masked_fill(~m.all(-1, keepdim=True), 0.0),
               match=r"every row with a masked entry came out 0.*not `~mask\.all\(\.\.\.\)`")


def test_03_layers_in_a_plain_list_and_attention_sizes_passed_on_swapped_are_named():
    """The third walkthrough of lesson 03: layers in a Python list got 'no usual mistake matches', and heads and
    dim_head passed on swapped passed the check (it sized its reference from the learner's attention)."""
    class ListLayers(make_resampler()):
        def __init__(self, **kw):
            super().__init__(**kw)
            layers = list(self.layers)
            del self.layers
            self.layers = layers

    fails_with(lesson03.check_forward, ListLayers,
               match=r"keeps layers in a plain Python list, `layers`.*would never train.*`self\.layers = nn\.ModuleList")

    class Swapped(make_resampler()):
        def __init__(self, *, dim, depth, dim_head=64, heads=8, ff_mult=4, **kw):
            super().__init__(dim=dim, depth=depth, dim_head=dim_head, heads=heads, ff_mult=ff_mult, **kw)
            self.layers = nn.ModuleList(
                nn.ModuleList([fl.PerceiverAttention(dim=dim, dim_head=heads, heads=dim_head), fl.FeedForward(dim, ff_mult)])
                for _ in range(depth))

    fails_with(lesson03.check_forward, Swapped,
               match=r"layer 0 attention has heads=4, where the resampler was built with heads=2, dim_head=4")

    class Viewed(make_resampler()):  # a list of layers that are registered too: only a view, and right
        def __init__(self, **kw):
            super().__init__(**kw)
            self.attentions = [pair[0] for pair in self.layers]

    lesson03.check_forward(Viewed)


def test_03_a_hidden_width_rounded_before_the_multiplication_is_named():
    class Rounded(nn.Sequential):  # dim * int(mult): right for whole numbers only
        def __init__(self, dim, mult=4):
            super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * int(mult), bias=False), nn.GELU(),
                             nn.Linear(dim * int(mult), dim, bias=False))

    fails_with(lesson03.check_feedforward, Rounded,
               match=r"mult=2\.5\)'s 1\.weight has shape \(32, 16\), where \(40, 16\) is expected.*`dim \* int\(mult\)` gives 32")


def test_02_steps_that_would_not_train_or_change_the_dtype_are_named():
    """The fourth walkthrough of lesson 02: a detached q, a project under no_grad and detached weights passed the step
    checks (the module check caught them later), and a float64 step passed too."""
    def project(layer, x, latents, cut=None):
        x, latents = layer.norm_media(x), layer.norm_latents(latents)
        q = layer.to_q(latents)
        q = q.detach() if cut == "q" else q.double() if cut == "double" else q
        k, v = layer.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        return q, k, v

    lesson02.check_project(project)
    fails_with(lesson02.check_project, lambda layer, x, latents: project(layer, x.squeeze(), latents.squeeze()),
               match=r"on one sample with one media: q has shape \(3, 8\), expected \(1, 1, 3, 8\): keep every axis")
    fails_with(lesson02.check_project, lambda *a: project(*a, cut="q"),
               match=r"the gradient it gives latents is not the projections'")
    fails_with(lesson02.check_project, lambda *a: project(*a, cut="double"), match=r"project\(layer, x, latents\) returns torch\.float64 for torch\.float32 inputs")

    def no_grad(*a):
        with torch.no_grad():
            return project(*a)

    fails_with(lesson02.check_project, no_grad, match=r"output has no gradient")

    def attend(layer, q, k, v, cut=None):
        q, k, v = (rearrange(t, "b t n (h e) -> b t h n e", h=layer.heads) for t in (q, k, v))
        weights = (torch.einsum("b t h i e, b t h j e -> b t h i j", q, k) * layer.scale).softmax(dim=-1)
        weights = weights.detach() if cut == "weights" else weights.double() if cut == "double" else weights
        out = torch.einsum("b t h i j, b t h j e -> b t h i e", weights, v.to(weights.dtype))
        return rearrange(out, "b t h n e -> b t n (h e)")

    lesson02.check_attend(attend)
    fails_with(lesson02.check_attend, lambda *a: attend(*a, cut="weights"), match=r"no gradient reaches q")
    fails_with(lesson02.check_attend, lambda *a: attend(*a, cut="double"), match=r"returns torch\.float64 for torch\.float32")


def test_01_attention_with_the_scale_written_as_a_number_is_named():
    def fixed_scale(q, k, v, mask=None):  # 4 ** -0.5: right for the first inputs' heads of width 4 only
        return attention(q * (0.5 * q.shape[-1] ** 0.5), k, v, mask)

    fails_with(lesson01.check_attention, fixed_scale,
               match=r"width e=8: the scale is the number 0.5, right for heads of width 4 only: .*q.shape\[-1\] \*\* -0.5")


def test_01_softmax_calling_torch_or_changing_the_dtype_is_named():
    def stable(s, dim=-1):
        e = (s - s.amax(dim=dim, keepdim=True)).exp()
        return e / e.sum(dim=dim, keepdim=True)

    lesson01.check_stable_softmax(stable)
    for calls_torch in (lambda s, dim=-1: torch.softmax(s, dim=dim), lambda s, dim=-1: s.softmax(dim),
                        lambda s, dim=-1: torch.nn.functional.softmax(s, dim=dim)):
        fails_with(lesson01.check_stable_softmax, calls_torch, match=r"calls torch's softmax .* which this exercise writes out")
    fails_with(lesson01.check_stable_softmax, lambda s, dim=-1: stable(s.float(), dim),
               match=r"in float16 returns torch.float32 for torch.float16 scores: keep the scores' dtype")


def test_01_heads_merged_by_a_view_after_a_transpose_are_named():
    def merge_view(x):  # fine on a tensor whose transpose happens to be contiguous, an error on a layer's output
        b, h, n, e = x.shape
        return x.transpose(1, 2).view(b, n, h * e)

    fails_with(lesson01.check_heads, split, merge_view,
               match=r"view size is not compatible.*`.view` cannot regroup them: use `.reshape\(...\)`")
    lesson01.check_heads(split, lambda x: x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1))


def test_05_masked_softmax_in_float32_for_float16_scores_is_named():
    def in_float32(scores, mask):
        s = scores.float().masked_fill(~mask, float("-inf")).masked_fill(~mask.any(-1, keepdim=True), 0.0)
        return s.softmax(-1).masked_fill(~mask, 0.0)

    fails_with(lesson05.check_masked_softmax, in_float32,
               match=r"on float16 scores returns torch.float32 for torch.float16 scores: keep the scores' dtype")


def test_05_tokens_reached_for_the_first_sample_only_or_with_sizes_written_in_is_named():
    torch.manual_seed(0)
    tokens = "a photo of <image> a red circle <image> a blue square".split()
    loc = masks.media_locations_from_tokens(tokens)[None]
    x, media = torch.randn(1, len(tokens), 16), torch.randn(1, 2, 3, 16)

    @torch.no_grad()
    def reached(layer, x, media, loc, k, first_only=False, new=None):
        changed = media.clone()
        rows = slice(0, 1) if first_only else slice(None)
        changed[rows, k - 1] = torch.randn_like(media[rows, k - 1]) if new is None else new()
        return (layer(x, media, loc) - layer(x, changed, loc)).abs().amax(-1) > 1e-6

    lesson05.check_tokens_reached(reached, x, media, loc)
    fails_with(lesson05.check_tokens_reached, lambda *a: reached(*a, first_only=True), x, media, loc,
               match=r"batch of 2 .*only the first sample's words changed: replace image k in every sample")
    fails_with(lesson05.check_tokens_reached, lambda *a: reached(*a, new=lambda: torch.randn(3, 16)), x, media, loc,
               match=r"batch of 2 .*raised RuntimeError.*a size written into your code fits the lesson's media only")


def test_02_attend_with_the_head_count_written_in_is_named():
    def two_heads(layer, q, k, v):  # right for the first layer's 2 heads only
        q, k, v = (rearrange(a, "b t n (h e) -> b t h n e", h=2) for a in (q, k, v))
        out = (q @ k.transpose(-1, -2) * layer.scale).softmax(-1) @ v
        return rearrange(out, "b t h L e -> b t L (h e)")

    fails_with(lesson02.check_attend, two_heads,
               match=r"for a layer of 4 heads: this is the answer for 2 heads: the number of heads is written into your code")
