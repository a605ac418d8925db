"""Builders shared by the layer tests: seeded inputs, media_locations patterns, twin modules with equal weights."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

import flamingo_lite as fl
from flamingo_pytorch import flamingo_pytorch as seed

LOCATION_KINDS = ["none", "no_markers", "random", "marker_at_0", "consecutive", "every_token"]


def make_locations(kind: str, batch: int, text_len: int, num_media: int, gen: torch.Generator):
    """A (batch, text_len) bool media_locations of the given kind with at most num_media markers per row, or None."""
    if kind == "none":
        return None
    locations = torch.zeros(batch, text_len, dtype=torch.bool)  # (b, n)
    for row in range(batch):
        k = int(torch.randint(0, min(num_media, text_len) + 1, (1,), generator=gen))
        if kind == "no_markers":
            k = 0
        elif kind in ("marker_at_0", "consecutive", "every_token"):
            k = max(k, 1)
        if kind == "every_token":
            k = min(num_media, text_len)
            positions = torch.arange(k)
        elif kind == "consecutive":
            k = min(max(k, 2), num_media, text_len)
            start = int(torch.randint(0, text_len - k + 1, (1,), generator=gen))
            positions = torch.arange(start, start + k)
        else:
            positions = torch.randperm(text_len, generator=gen)[:k]
            if kind == "marker_at_0" and k:
                positions[0] = 0
        locations[row, positions] = True
    return locations


@st.composite
def cross_attention_cases(draw, max_media=4):
    """Random small cross-attention problems: sizes, mode, and a media_locations pattern."""
    return dict(
        batch=draw(st.integers(1, 3)),
        text_len=draw(st.integers(1, 12)),
        num_media=draw(st.integers(1, max_media)),
        num_latents=draw(st.integers(1, 5)),
        heads=draw(st.integers(1, 4)),
        dim_head=draw(st.sampled_from([4, 8, 16])),
        dim=draw(st.sampled_from([8, 16, 24])),
        ff_mult=draw(st.sampled_from([1, 2, 4, 0.5])),
        immediate=draw(st.booleans()),
        kind=draw(st.sampled_from(LOCATION_KINDS)),
        seed=draw(st.integers(0, 2**16)),
    )


def make_inputs(case: dict):
    gen = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["batch"], case["text_len"], case["dim"], generator=gen)  # (b, n, d)
    media = torch.randn(case["batch"], case["num_media"], case["num_latents"], case["dim"], generator=gen)  # (b, t, m, d)
    locations = make_locations(case["kind"], case["batch"], case["text_len"], case["num_media"], gen)  # (b, n) or None
    return x, media, locations


PATHS = ["masked", "segments"]


def force_path(module, path: str):
    """Make a flamingo_lite cross-attention layer (or gated block) take `path` where it applies.

    The segment path exists only in the immediate mode; in the all-previous mode both names mean the masked path.
    """
    attn = module.attn if isinstance(module, fl.GatedCrossAttentionBlock) else module
    attn.attention_path = path if attn.only_attend_immediate_media else "masked"
    return module


def twin_cross_attention(case: dict, gated: bool, path: str = "masked"):
    """A seed module and a flamingo_lite module with the same weights (gates opened so they matter)."""
    kwargs = dict(dim=case["dim"], dim_head=case["dim_head"], heads=case["heads"],
                  only_attend_immediate_media=case["immediate"])
    torch.manual_seed(case["seed"])
    if gated:
        original = seed.GatedCrossAttentionBlock(ff_mult=case["ff_mult"], **kwargs)
        with torch.no_grad():
            original.attn_gate.fill_(0.8)
            original.ff_gate.fill_(-0.6)
        ours = fl.GatedCrossAttentionBlock(ff_mult=case["ff_mult"], **kwargs)
    else:
        original = seed.MaskedCrossAttention(**kwargs)
        ours = fl.MaskedCrossAttention(**kwargs)
    ours.load_state_dict(original.state_dict(), strict=True)
    return original, force_path(ours, path)
