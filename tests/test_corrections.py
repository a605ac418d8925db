"""The corrections of DESIGN.md "Semantics", each shown to fail on flamingo-pytorch 0.1.2 and pass here.

Every test runs against both implementations; the seed's run is marked `xfail(strict=True)`, so if the seed ever
passed one of them the suite would fail and the claim that it is a correction would be false.
"""
import pytest
import torch

import flamingo_lite as fl
from flamingo_pytorch import flamingo_pytorch as seed

SEED_IS_WRONG = pytest.mark.xfail(strict=True, reason="flamingo-pytorch 0.1.2 gets this wrong")
IMPLEMENTATIONS = [pytest.param(fl, id="flamingo_lite"), pytest.param(seed, id="seed", marks=SEED_IS_WRONG)]


def build(lib, immediate, gated=False, dim=16):
    torch.manual_seed(0)
    if gated:
        block = lib.GatedCrossAttentionBlock(dim=dim, dim_head=8, heads=2, only_attend_immediate_media=immediate)
        with torch.no_grad():
            block.attn_gate.fill_(1.0)
        return block
    return lib.MaskedCrossAttention(dim=dim, dim_head=8, heads=2, only_attend_immediate_media=immediate)


# "some words <image> a red circle <image> a blue square": two words before the first image
LOCATIONS = torch.tensor([[0, 0, 1, 0, 0, 0, 1, 0, 0, 0]], dtype=torch.bool)  # (1, 10)


@pytest.mark.parametrize("lib", IMPLEMENTATIONS)
@pytest.mark.parametrize("gated", [False, True])
def test_changing_the_second_image_never_changes_the_first_words(lib, gated):
    """All-previous mode: text before the first image must not see the future (the seed averages over it)."""
    module = build(lib, immediate=False, gated=gated)
    x, media = torch.randn(1, 10, 16), torch.randn(1, 2, 3, 16)
    other_media = media.clone()
    other_media[:, 1] = torch.randn(1, 3, 16)  # a different second image
    first_words = module(x, media, LOCATIONS)[:, :2]
    first_words_after = module(x, other_media, LOCATIONS)[:, :2]
    assert torch.equal(first_words, first_words_after)


@pytest.mark.parametrize("lib", IMPLEMENTATIONS)
def test_text_before_the_first_media_gets_zero_in_all_previous_mode(lib):
    module = build(lib, immediate=False)
    out = module(torch.randn(1, 10, 16), torch.randn(1, 2, 3, 16), LOCATIONS)
    assert torch.equal(out[:, :2], torch.zeros_like(out[:, :2]))


@pytest.mark.parametrize("immediate", [True, False])
def test_text_before_the_first_media_gets_zero_in_both_modes_here(immediate):
    module = build(fl, immediate=immediate)
    out = module(torch.randn(1, 10, 16), torch.randn(1, 2, 3, 16), LOCATIONS)
    assert torch.equal(out[:, :2], torch.zeros(1, 2, 16))
    assert out[:, 2:].abs().amin(dim=-1).gt(0).all()  # every later row is non-zero


@pytest.mark.parametrize("lib", IMPLEMENTATIONS)
@pytest.mark.parametrize("immediate", [True, False])
def test_more_markers_than_media_is_an_error_that_counts_both(lib, immediate):
    module = build(lib, immediate=immediate)
    locations = torch.tensor([[1, 0, 1, 0, 1, 0]], dtype=torch.bool)  # three markers
    with pytest.raises(ValueError, match=r"3 media.*only 2"):
        module(torch.randn(1, 6, 16), torch.randn(1, 2, 3, 16), locations)  # two media


BAD_CROSS_ATTENTION_INPUTS = {
    "locations too short": dict(loc=torch.ones(1, 5, dtype=torch.bool), match="media_locations"),
    "locations wrong batch": dict(loc=torch.ones(3, 6, dtype=torch.bool), match="media_locations"),
    "locations float": dict(loc=torch.ones(1, 6), match="media_locations"),
    "media without a time axis": dict(media=torch.randn(1, 3, 16), match="media"),
    "media wrong width": dict(media=torch.randn(1, 2, 3, 12), match="media"),
    "media wrong batch": dict(media=torch.randn(2, 2, 3, 16), match="batch"),
    "text wrong width": dict(x=torch.randn(1, 6, 12), match="x"),
    "text wrong rank": dict(x=torch.randn(6, 16), match="x"),
}


@pytest.mark.parametrize("lib", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", list(BAD_CROSS_ATTENTION_INPUTS), ids=list(BAD_CROSS_ATTENTION_INPUTS))
def test_bad_cross_attention_input_is_a_clear_error(lib, case):
    """A ValueError/TypeError that names the argument; the seed fails inside einops or runs on silently."""
    spec = BAD_CROSS_ATTENTION_INPUTS[case]
    module = build(lib, immediate=True)
    x = spec.get("x", torch.randn(1, 6, 16))
    media = spec.get("media", torch.randn(1, 2, 3, 16))
    loc = spec.get("loc", torch.tensor([[1, 0, 0, 1, 0, 0]], dtype=torch.bool))
    with pytest.raises((ValueError, TypeError), match=spec["match"]):
        module(x, media, loc)


@pytest.mark.parametrize("lib", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "x, match",
    [(torch.randn(1, 3, 5, 16), "x"), (torch.randn(1, 2, 5, 12), "dim"), (torch.randn(5, 16), "rank")],
    ids=["too many media", "wrong width", "rank 2"],
)
def test_bad_resampler_input_is_a_clear_error(lib, x, match):
    resampler = lib.PerceiverResampler(dim=16, depth=1, dim_head=4, heads=2, num_latents=3, num_media_embeds=2)
    with pytest.raises((ValueError, TypeError), match=match):
        resampler(x)


@pytest.mark.parametrize("lib", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "kwargs",
    [dict(dim=0), dict(heads=0), dict(dim_head=-1), dict(num_latents=0), dict(num_media_embeds=0), dict(depth=-1)],
    ids=["dim", "heads", "dim_head", "num_latents", "num_media_embeds", "depth"],
)
def test_non_positive_sizes_are_refused_at_construction(lib, kwargs):
    args = dict(dim=16, depth=1, dim_head=4, heads=2, num_latents=3, num_media_embeds=2) | kwargs
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        lib.PerceiverResampler(**args)
