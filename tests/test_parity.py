"""Parity with flamingo-pytorch 0.1.2: same weights (state_dict both ways), same outputs wherever the seed is right.

The seed is right everywhere except (1) text before the first media in the all-previous mode, which it lets
average over every media (flamingo_lite gives it zero), and (2) more markers than media, which flamingo_lite
refuses. The cases here never have (2); rows of kind (1) are compared separately: zero here.
"""
import pytest
import torch
from hypothesis import given, strategies as st

import flamingo_lite as fl
from flamingo_lite.masks import text_time
from flamingo_pytorch import flamingo_pytorch as seed

from helpers import PATHS, cross_attention_cases, make_inputs, twin_cross_attention

ATOL = 1e-5


def assert_state_dicts_load_both_ways(original, ours):
    assert list(original.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(original.state_dict(), strict=True)
    original.load_state_dict(ours.state_dict(), strict=True)


def test_state_dict_keys_match_the_seed_for_every_layer():
    pairs = [
        (seed.FeedForward(16, mult=2), fl.FeedForward(16, mult=2)),
        (seed.PerceiverAttention(dim=16, dim_head=4, heads=2), fl.PerceiverAttention(dim=16, dim_head=4, heads=2)),
        (seed.PerceiverResampler(dim=16, depth=2, dim_head=4, heads=2, num_latents=3, num_media_embeds=2),
         fl.PerceiverResampler(dim=16, depth=2, dim_head=4, heads=2, num_latents=3, num_media_embeds=2)),
        (seed.MaskedCrossAttention(dim=16, dim_head=4, heads=2), fl.MaskedCrossAttention(dim=16, dim_head=4, heads=2)),
        (seed.GatedCrossAttentionBlock(dim=16, dim_head=4, heads=2, ff_mult=2),
         fl.GatedCrossAttentionBlock(dim=16, dim_head=4, heads=2, ff_mult=2)),
    ]
    for original, ours in pairs:
        assert_state_dicts_load_both_ways(original, ours)
        for key, value in original.state_dict().items():
            assert ours.state_dict()[key].shape == value.shape, key


def test_defaults_match_the_seed():
    ours, original = fl.PerceiverResampler(dim=8, depth=1), seed.PerceiverResampler(dim=8, depth=1)
    assert ours.latents.shape == original.latents.shape == (64, 8)
    assert ours.media_pos_emb.shape == original.media_pos_emb.shape == (4, 1, 8)
    assert fl.MaskedCrossAttention(dim=8).only_attend_immediate_media is True
    assert fl.MaskedCrossAttention(dim=8).heads == original.layers[0][0].heads == 8
    assert fl.FeedForward(8)[1].weight.shape == seed.FeedForward(8)[1].weight.shape == (32, 8)


@given(
    dim=st.sampled_from([8, 16]), mult=st.sampled_from([0.5, 1, 2, 4]), rank=st.integers(1, 4), seed_=st.integers(0, 999)
)
def test_feedforward_parity(dim, mult, rank, seed_):
    torch.manual_seed(seed_)
    original, ours = seed.FeedForward(dim, mult=mult), fl.FeedForward(dim, mult=mult)
    assert_state_dicts_load_both_ways(original, ours)
    x = torch.randn(*([2] * (rank - 1)), dim)
    torch.testing.assert_close(ours(x), original(x), atol=ATOL, rtol=0)


@given(
    batch=st.integers(1, 3), media=st.integers(1, 3), features=st.integers(1, 9), latents=st.integers(1, 6),
    heads=st.integers(1, 4), dim_head=st.sampled_from([4, 8]), dim=st.sampled_from([8, 16]), seed_=st.integers(0, 999),
)
def test_perceiver_attention_parity(batch, media, features, latents, heads, dim_head, dim, seed_):
    torch.manual_seed(seed_)
    original = seed.PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads)
    ours = fl.PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads)
    assert_state_dicts_load_both_ways(original, ours)
    x, lat = torch.randn(batch, media, features, dim), torch.randn(batch, media, latents, dim)
    torch.testing.assert_close(ours(x, lat), original(x, lat), atol=ATOL, rtol=0)


@given(
    batch=st.integers(1, 3), media=st.integers(1, 3), features=st.integers(1, 9), latents=st.integers(1, 6),
    depth=st.integers(0, 2), heads=st.integers(1, 3), dim=st.sampled_from([8, 16]), ff_mult=st.sampled_from([1, 2]),
    rank3=st.booleans(), seed_=st.integers(0, 999),
)
def test_perceiver_resampler_parity(batch, media, features, latents, depth, heads, dim, ff_mult, rank3, seed_):
    torch.manual_seed(seed_)
    kwargs = dict(dim=dim, depth=depth, dim_head=4, heads=heads, num_latents=latents, num_media_embeds=3, ff_mult=ff_mult)
    original, ours = seed.PerceiverResampler(**kwargs), fl.PerceiverResampler(**kwargs)
    assert_state_dicts_load_both_ways(original, ours)
    x = torch.randn(batch, features, dim) if rank3 else torch.randn(batch, media, features, dim)
    expected = original(x)
    got = ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def _compare_where_seed_is_right(case, got, expected, locations):
    if locations is not None and not case["immediate"]:
        before_first = text_time(locations) == 0  # (b, n): the rows the seed gets wrong
        assert torch.equal(got[before_first], torch.zeros_like(got[before_first]))
        got, expected = got[~before_first], expected[~before_first]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("path", PATHS)
@given(case=cross_attention_cases())
def test_masked_cross_attention_parity(case, path):
    original, ours = twin_cross_attention(case, gated=False, path=path)
    original.load_state_dict(ours.state_dict(), strict=True)
    x, media, locations = make_inputs(case)
    _compare_where_seed_is_right(case, ours(x, media, locations), original(x, media, locations), locations)


@pytest.mark.parametrize("path", PATHS)
@given(case=cross_attention_cases())
def test_gated_block_parity(case, path):
    original, ours = twin_cross_attention(case, gated=True, path=path)
    original.load_state_dict(ours.state_dict(), strict=True)
    x, media, locations = make_inputs(case)
    got, expected = ours(x, media, locations), original(x, media, locations)
    if locations is not None and not case["immediate"]:
        # rows before the first media: the block adds only its feed-forward there; the seed adds attention too
        before_first = text_time(locations) == 0  # (b, n)
        x_ff = x + ours.ff(x) * ours.ff_gate.tanh()  # (b, n, d)
        torch.testing.assert_close(got[before_first], x_ff[before_first], atol=ATOL, rtol=0)
        got, expected = got[~before_first], expected[~before_first]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("immediate", [True, False])
def test_gradients_match_the_seed(immediate, path):
    case = dict(batch=2, text_len=9, num_media=3, num_latents=4, heads=2, dim_head=8, dim=16, ff_mult=2,
                immediate=immediate, kind="random", seed=3)
    original, ours = twin_cross_attention(case, gated=True, path=path)
    x, media, locations = make_inputs(case)
    locations[:, 0] = True  # every row sees a media, so the seed is right everywhere
    locations[:, 1:] &= locations[:, 1:].cumsum(-1) < 3
    for module in (original, ours):
        xi, mi = x.clone().requires_grad_(), media.clone().requires_grad_()
        module(xi, mi, locations).square().sum().backward()
        module.grads = {"x": xi.grad, "media": mi.grad, **{k: p.grad for k, p in module.named_parameters()}}
    for key, grad in original.grads.items():
        torch.testing.assert_close(ours.grads[key], grad, atol=1e-4, rtol=1e-5, msg=key)
