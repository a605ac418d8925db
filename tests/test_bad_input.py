"""Bad input: a TypeError/ValueError that names the argument and shows the shapes, before any computation."""
import pytest
import torch

import flamingo_lite as fl


def xattn(**kwargs):
    return fl.MaskedCrossAttention(dim=16, dim_head=4, heads=2, **kwargs)


GOOD_X, GOOD_MEDIA = torch.randn(2, 6, 16), torch.randn(2, 2, 3, 16)
GOOD_LOC = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)


def assert_nothing_computed(module, call):
    """`call` must raise before any computing layer runs: pre-hooks on every leaf (Linear, LayerNorm, GELU)."""
    calls = []
    handles = [m.register_forward_pre_hook(lambda mod, args: calls.append(type(mod).__name__))
               for m in module.modules() if not list(m.children())]
    try:
        with pytest.raises((TypeError, ValueError)) as info:
            call()
    finally:
        for h in handles:
            h.remove()
    assert calls == [], f"submodules ran before the error: {calls}"
    return str(info.value)


@pytest.mark.parametrize(
    "x, media, loc, words",
    [
        (GOOD_X, GOOD_MEDIA, GOOD_LOC[:, :4], ["media_locations", "(2, 6)", "(2, 4)"]),
        (GOOD_X, GOOD_MEDIA, GOOD_LOC[:1], ["media_locations", "(1, 6)"]),
        (GOOD_X, GOOD_MEDIA, GOOD_LOC.float(), ["media_locations", "float32"]),
        (GOOD_X, GOOD_MEDIA, GOOD_LOC.long() * 2, ["media_locations", "0 and 1"]),
        (GOOD_X, GOOD_MEDIA, GOOD_LOC.tolist(), ["media_locations", "list"]),
        (GOOD_X, GOOD_MEDIA[:, 0], GOOD_LOC, ["media", "time axis", "(2, 3, 16)", "unsqueeze(1)"]),
        (GOOD_X, GOOD_MEDIA[..., :8], GOOD_LOC, ["media", "dim=16", "(2, 2, 3, 8)"]),
        (GOOD_X, GOOD_MEDIA[:1], GOOD_LOC, ["batch", "(2, 6, 16)", "(1, 2, 3, 16)"]),
        (GOOD_X[..., :8], GOOD_MEDIA, GOOD_LOC, ["x", "dim=16", "(2, 6, 8)"]),
        (GOOD_X[0], GOOD_MEDIA, GOOD_LOC, ["x", "rank 3", "(6, 16)"]),
        (GOOD_X.double(), GOOD_MEDIA, GOOD_LOC, ["media", "float64"]),
        (GOOD_X.long(), GOOD_MEDIA, GOOD_LOC, ["x", "floating-point"]),
        (GOOD_X[:, :0], GOOD_MEDIA, GOOD_LOC[:, :0], ["x", "empty"]),
        (GOOD_X, GOOD_MEDIA[:, :1], GOOD_LOC, ["2 media", "only 1"]),
    ],
    ids=["loc-length", "loc-batch", "loc-float", "loc-int-2", "loc-list", "media-rank", "media-width", "media-batch",
         "x-width", "x-rank", "dtype-mix", "x-int", "x-empty", "too-many-markers"],
)
@pytest.mark.parametrize("gated", [False, True])
def test_cross_attention_inputs(x, media, loc, words, gated):
    module = fl.GatedCrossAttentionBlock(dim=16, dim_head=4, heads=2) if gated else xattn()
    message = assert_nothing_computed(module, lambda: module(x, media, loc))
    for word in words:
        assert word in message, (word, message)


def test_integer_zero_one_locations_are_accepted_and_equal_to_bool():
    module = xattn()
    torch.testing.assert_close(module(GOOD_X, GOOD_MEDIA, GOOD_LOC.long()), module(GOOD_X, GOOD_MEDIA, GOOD_LOC), atol=0, rtol=0)


@pytest.mark.parametrize(
    "x, words",
    [
        (torch.randn(5, 16), ["x", "rank 3 or 4", "(5, 16)"]),
        (torch.randn(1, 1, 1, 5, 16), ["x", "rank 3 or 4", "(1, 1, 1, 5, 16)"]),
        (torch.randn(2, 2, 5, 8), ["x", "dim=16"]),
        (torch.randn(2, 3, 5, 16), ["3 media", "num_media_embeds=2"]),
        ("not a tensor", ["x", "torch.Tensor"]),
    ],
    ids=["rank-2", "rank-5", "width", "too-many-media", "type"],
)
def test_resampler_inputs(x, words):
    resampler = fl.PerceiverResampler(dim=16, depth=1, dim_head=4, heads=2, num_latents=3, num_media_embeds=2)
    message = assert_nothing_computed(resampler, lambda: resampler(x))
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    "x, latents, words",
    [
        (torch.randn(2, 1, 5, 16), torch.randn(2, 2, 3, 16), ["x and latents", "(2, 1, 5, 16)", "(2, 2, 3, 16)"]),
        (torch.randn(2, 5, 16), torch.randn(2, 1, 3, 16), ["x", "rank 4"]),
        (torch.randn(2, 1, 5, 16), torch.randn(2, 1, 3, 8), ["latents", "dim=16"]),
    ],
)
def test_perceiver_attention_inputs(x, latents, words):
    attn = fl.PerceiverAttention(dim=16, dim_head=4, heads=2)
    message = assert_nothing_computed(attn, lambda: attn(x, latents))
    for word in words:
        assert word in message, (word, message)


def test_feedforward_inputs():
    ff = fl.FeedForward(16)
    assert "dim=16" in assert_nothing_computed(ff, lambda: ff(torch.randn(3, 8)))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ff([1.0] * 16)


@pytest.mark.parametrize(
    "make, error, name",
    [
        (lambda: fl.FeedForward(0), ValueError, "dim"),
        (lambda: fl.FeedForward(16, mult=0), ValueError, "mult"),
        (lambda: fl.FeedForward(16.0), TypeError, "dim"),
        (lambda: fl.PerceiverAttention(dim=16, heads=0), ValueError, "heads"),
        (lambda: fl.PerceiverAttention(dim=16, dim_head=0), ValueError, "dim_head"),
        (lambda: fl.MaskedCrossAttention(dim=-4), ValueError, "dim"),
        (lambda: fl.MaskedCrossAttention(dim=True), TypeError, "dim"),
        (lambda: fl.MaskedCrossAttention(dim=16, only_attend_immediate_media="yes"), TypeError, "only_attend_immediate_media"),
        (lambda: fl.GatedCrossAttentionBlock(dim=16, ff_mult=-1), ValueError, "mult"),
        (lambda: fl.GatedCrossAttentionBlock(dim=16, heads=2.5), TypeError, "heads"),
        (lambda: fl.PerceiverResampler(dim=16, depth=-1), ValueError, "depth"),
        (lambda: fl.PerceiverResampler(dim=16, depth=1, num_latents=0), ValueError, "num_latents"),
        (lambda: fl.PerceiverResampler(dim=16, depth=1, num_media_embeds=0), ValueError, "num_media_embeds"),
        (lambda: fl.PerceiverResampler(dim=16, depth=1, ff_mult=0), ValueError, "ff_mult"),
    ],
)
def test_constructor_arguments(make, error, name):
    with pytest.raises(error, match=name):
        make()


def test_depth_zero_is_allowed_and_gives_normalised_latents():
    resampler = fl.PerceiverResampler(dim=16, depth=0, num_latents=3)
    out = resampler(torch.randn(2, 7, 16))  # (b, n, d) -> (b, 1, L, d)
    assert out.shape == (2, 1, 3, 16)
