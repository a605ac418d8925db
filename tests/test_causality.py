"""Causality, as properties over random media_locations and shapes (hypothesis).

Changing media j (counted from 1) never changes the output for text before media j. With
`only_attend_immediate_media=True` it changes exactly the text whose latest media is j, and nothing else.
For the cross-attention layer and the gated block (gates opened), in both modes.
"""
import torch
from hypothesis import assume, given, strategies as st

import flamingo_lite as fl
from flamingo_lite.masks import text_time

import pytest

from helpers import LOCATION_KINDS, PATHS, cross_attention_cases, force_path, make_inputs


def build(case, gated, path="masked"):
    torch.manual_seed(case["seed"])
    kwargs = dict(dim=case["dim"], dim_head=case["dim_head"], heads=case["heads"],
                  only_attend_immediate_media=case["immediate"])
    if not gated:
        return force_path(fl.MaskedCrossAttention(**kwargs), path)
    block = fl.GatedCrossAttentionBlock(ff_mult=case["ff_mult"], **kwargs)
    with torch.no_grad():
        block.attn_gate.fill_(0.9)
        block.ff_gate.fill_(0.4)
    return force_path(block, path)


def check_causality(case, j, gated, path):
    module = build(case, gated, path)
    x, media, locations = make_inputs(case)
    assume(locations is not None)
    j = min(j, case["num_media"])
    changed_media = media.clone()
    changed_media[:, j - 1] += 1.0 + torch.randn_like(media[:, j - 1])  # a different media j

    before = module(x, media, locations)  # (b, n, d)
    after = module(x, changed_media, locations)  # (b, n, d)
    moved = (before - after).abs().amax(dim=-1) > 1e-6  # (b, n): rows whose output changed
    times = text_time(locations)  # (b, n)

    # text before media j never changes, in either mode
    assert torch.equal(before[times < j], after[times < j])
    if case["immediate"]:
        # only the text whose latest media is j may change, and all of it does
        assert torch.equal(before[times != j], after[times != j])
        assert moved[times == j].all()
    else:
        assert moved[times >= j].all()


KINDS_WITH_MARKERS = st.sampled_from([k for k in LOCATION_KINDS if k != "none"])


@pytest.mark.parametrize("path", PATHS)
@given(case=cross_attention_cases(), j=st.integers(1, 4), kind=KINDS_WITH_MARKERS)
def test_cross_attention_is_causal(case, j, kind, path):
    check_causality(case | {"kind": kind}, j, gated=False, path=path)


@pytest.mark.parametrize("path", PATHS)
@given(case=cross_attention_cases(), j=st.integers(1, 4), kind=KINDS_WITH_MARKERS)
def test_gated_block_is_causal(case, j, kind, path):
    check_causality(case | {"kind": kind}, j, gated=True, path=path)


def test_without_media_locations_every_token_sees_every_media():
    case = dict(batch=1, text_len=5, num_media=2, num_latents=3, heads=2, dim_head=4, dim=8, ff_mult=1,
                immediate=True, kind="none", seed=0)
    module = build(case, gated=False)
    x, media, _ = make_inputs(case)
    changed = media.clone()
    changed[:, 1] += 1.0
    assert ((module(x, media) - module(x, changed)).abs().amax(-1) > 1e-6).all()
