"""The segment path of MaskedCrossAttention gives the same numbers as the masked path, forward and backward.

The masked path scores every text token against every media and masks; the segment path (flamingo_lite.segments)
attends each run of text only to its own media. They must agree for every row, in fp32 to 1e-5 (fp16 and bf16
to the looser tolerances below), on every kind of media_locations, and rows that see no media must be exactly 0.
"""
from __future__ import annotations

import pytest
import torch
from einops import rearrange
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import flamingo_lite as fl
from flamingo_lite.cross_attention import set_attention_path
from flamingo_lite.masks import rows_without_media, text_time
from flamingo_lite.segments import choose_chunk, segment_attend, segment_layout
from flamingo_pytorch import flamingo_pytorch as seed

from conftest import requires_cuda
from helpers import make_locations

# kinds of media_locations: the shared ones plus text before the first media (the first marker not at 0)
KINDS = ["none", "no_markers", "random", "marker_at_0", "consecutive", "every_token", "text_first"]

# half types round every step; these bound |segments - masked| relative to the output's scale
HALF_TOLERANCE = {torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
FP32 = dict(atol=1e-5, rtol=1e-5)


def locations_of(kind, batch, text_len, num_media, gen):
    if kind != "text_first":
        return make_locations(kind, batch, text_len, num_media, gen)
    locations = torch.zeros(batch, text_len, dtype=torch.bool)  # (b, n)
    for row in range(batch):
        k = int(torch.randint(1, min(num_media, text_len - 1) + 1, (1,), generator=gen)) if text_len > 1 else 0
        positions = 1 + torch.randperm(text_len - 1, generator=gen)[:k]  # never position 0
        locations[row, positions] = True
    return locations


@st.composite
def segment_cases(draw):
    return dict(
        batch=draw(st.integers(1, 3)),
        text_len=draw(st.integers(1, 24)),
        num_media=draw(st.integers(1, 5)),
        num_latents=draw(st.integers(1, 5)),
        heads=draw(st.integers(1, 3)),
        dim_head=draw(st.sampled_from([4, 8])),
        dim=draw(st.sampled_from([8, 16])),
        kind=draw(st.sampled_from(KINDS)),
        max_chunk=draw(st.sampled_from([1, 2, 3, 128])),
        seed=draw(st.integers(0, 2**16)),
    )


def twins(case, dtype=torch.float32, device="cpu"):
    """The same MaskedCrossAttention weights, once forced onto each path."""
    torch.manual_seed(case["seed"])
    kwargs = dict(dim=case["dim"], dim_head=case["dim_head"], heads=case["heads"])
    masked = fl.MaskedCrossAttention(**kwargs, attention_path="masked")
    segments = fl.MaskedCrossAttention(**kwargs, attention_path="segments")
    segments.load_state_dict(masked.state_dict(), strict=True)
    return masked.to(device, dtype), segments.to(device, dtype)


def inputs(case, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(case["seed"])
    b, n, t, m, d = (case[k] for k in ("batch", "text_len", "num_media", "num_latents", "dim"))
    x = torch.randn(b, n, d, generator=gen)  # (b, n, d)
    media = torch.randn(b, t, m, d, generator=gen)  # (b, t, m, d)
    locations = locations_of(case["kind"], b, n, t, gen)  # (b, n) or None
    weights = torch.randn(b, n, d, generator=gen)  # (b, n, d): a loss that weighs every output differently
    move = lambda z: None if z is None else z.to(device)
    return x.to(device, dtype), media.to(device, dtype), move(locations), weights.to(device, dtype)


def forward_backward(module, x, media, locations, weights):
    """Output and the gradients of x, media and every weight, for the loss sum(out * weights)."""
    x = x.clone().requires_grad_(True)
    media = media.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x, media, locations)  # (b, n, d)
    (out * weights).sum().backward()
    grads = {"x": x.grad, "media": media.grad}
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return out.detach(), grads


def assert_paths_agree(case, dtype=torch.float32, device="cpu", tol=FP32):
    masked, segments = twins(case, dtype, device)
    x, media, locations, weights = inputs(case, dtype, device)
    out_m, grads_m = forward_backward(masked, x, media, locations, weights)
    out_s, grads_s = forward_backward(segments, x, media, locations, weights)
    torch.testing.assert_close(out_s, out_m, **tol)
    for name in grads_m:
        torch.testing.assert_close(grads_s[name], grads_m[name], **tol, msg=lambda m: f"gradient of {name}: {m}")
    assert torch.isfinite(out_s).all()
    if locations is not None:
        blind = rows_without_media(locations)  # (b, n)
        assert (out_s[blind] == 0).all(), "text before the first media must get exactly zero"
        assert (grads_s["x"][blind] == 0).all(), "text that sees nothing must get no gradient through attention"
    return out_s


@given(segment_cases())
def test_segment_path_equals_masked_path_fp32(case):
    assert_paths_agree(case)


@given(segment_cases())
def test_segment_attend_with_small_chunks_equals_masked(case):
    """Cutting segments into chunks of 1, 2, 3 tokens changes nothing (long segments are split this way)."""
    if case["kind"] == "none":
        case["kind"] = "random"
    masked, _ = twins(case)
    x, media, locations, _ = inputs(case)
    b, t = media.shape[:2]
    h = case["heads"]
    with torch.no_grad():
        q = masked.to_q(masked.norm(x))  # (b, n, h*e)
        k, v = masked.to_kv(media).chunk(2, dim=-1)  # 2 x (b, t, m, h*e)
        layout = segment_layout(locations, t, max_chunk=case["max_chunk"])
        if layout.num_chunks == 0:
            assert rows_without_media(locations).all()
            return
        assert layout.chunk <= case["max_chunk"]
        out = masked.to_out(segment_attend(q, k, v, layout, heads=h, scale=masked.scale))  # (b, n, d)
        expected = masked(x, media, locations)  # (b, n, d)
    torch.testing.assert_close(out, expected, **FP32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@given(case=segment_cases())
def test_segment_path_equals_masked_path_half(dtype, case):
    assert_paths_agree(case, dtype=dtype, tol=HALF_TOLERANCE[dtype])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("immediate", [True, False], ids=["immediate", "all_previous"])
@pytest.mark.parametrize("path", ["auto", "masked", "segments"])
def test_both_paths_match_flamingo_pytorch(kind, immediate, path):
    """Parity with flamingo-pytorch 0.1.2 on the same weights, wherever the seed is right."""
    if path == "segments" and not immediate:
        pytest.skip("the segment path exists only for only_attend_immediate_media=True")
    case = dict(batch=2, text_len=40, num_media=4, num_latents=8, heads=2, dim_head=8, dim=16, kind=kind, seed=3)
    original = seed.MaskedCrossAttention(dim=16, dim_head=8, heads=2, only_attend_immediate_media=immediate)
    ours = fl.MaskedCrossAttention(dim=16, dim_head=8, heads=2, only_attend_immediate_media=immediate,
                                   attention_path=path)
    ours.load_state_dict(original.state_dict(), strict=True)
    original.load_state_dict(ours.state_dict(), strict=True)
    x, media, locations, _ = inputs(case)
    with torch.no_grad():
        expected, got = original(x, media, locations), ours(x, media, locations)  # (b, n, d) each
    if locations is not None:
        sees = ~rows_without_media(locations)  # (b, n): the seed averages over all media for the others
        expected, got = expected[sees], got[sees]
    torch.testing.assert_close(got, expected, **FP32)


def test_segment_path_equals_explicit_softmax():
    """Against the explicit computation (softmax of masked scores from attention_weights), not only SDPA."""
    case = dict(batch=2, text_len=30, num_media=3, num_latents=4, heads=2, dim_head=8, dim=16, kind="text_first",
                max_chunk=128, seed=7)
    _, segments = twins(case)
    x, media, locations, _ = inputs(case)
    with torch.no_grad():
        weights = segments.attention_weights(x, media, locations)  # (b, h, n, t*m)
        v = segments.to_kv(rearrange(media, "b t m d -> b (t m) d")).chunk(2, dim=-1)[1]  # (b, t*m, h*e)
        v = rearrange(v, "b j (h e) -> b h j e", h=2)  # (b, h, t*m, e)
        explicit = segments.to_out(rearrange(weights @ v, "b h n e -> b n (h e)"))  # (b, n, d)
        got = segments(x, media, locations)  # (b, n, d)
    torch.testing.assert_close(got, explicit, **FP32)


def test_layout_puts_every_seeing_token_in_its_own_media_chunk():
    locations = torch.tensor([[False, True, False, False, True, False, True], [True, True, False, False, False, False, False]])
    layout = segment_layout(locations, num_media=3, max_chunk=2)
    times = text_time(locations).flatten()  # (b*n,)
    b, n = locations.shape
    for token in range(b * n):
        slot = int(layout.token_slot[token])
        if times[token] == 0:
            assert slot == layout.num_chunks * layout.chunk  # the zero row
            continue
        assert int(layout.slot_token[slot]) == token  # the slot holds this token's query
        media = int(layout.chunk_media[slot // layout.chunk])
        assert media == (token // n) * 3 + int(times[token]) - 1  # and its chunk attends to the token's media
    assert layout.chunk == 2
    # row 0: segments of 3, 2, 1 tokens -> 2 + 1 + 1 chunks; row 1: 1 and 5 tokens -> 1 + 3 chunks
    assert layout.num_chunks == 8


def test_chunk_size_follows_the_segments():
    assert choose_chunk(torch.tensor([[32] * 32])) == 32  # equal segments: one chunk each, no padding
    assert choose_chunk(torch.tensor([[256] * 4])) == 256
    assert choose_chunk(torch.tensor([[1024]])) == 256  # never above max_chunk
    uneven = torch.tensor([[700] + [10] * 31])  # one long segment among short ones
    s = choose_chunk(uneven)
    padded = int(((uneven + s - 1) // s).sum()) * s
    assert padded < 2 * int(uneven.sum()), "short segments must not all be padded to the long one's length"
    assert choose_chunk(torch.tensor([[0, 0]])) == 1 and choose_chunk(torch.tensor([[1, 0]])) == 1


def test_attention_path_is_validated_and_not_a_weight():
    with pytest.raises(ValueError, match="attention_path must be one of"):
        fl.MaskedCrossAttention(dim=8, attention_path="fast")
    with pytest.raises(ValueError, match="needs only_attend_immediate_media=True"):
        fl.MaskedCrossAttention(dim=8, only_attend_immediate_media=False, attention_path="segments")
    plain = fl.MaskedCrossAttention(dim=8)
    forced = fl.MaskedCrossAttention(dim=8, attention_path="segments")
    assert plain.attention_path == "auto"
    assert list(plain.state_dict()) == list(forced.state_dict()) == list(
        seed.MaskedCrossAttention(dim=8).state_dict()
    )
    forced.attention_path = "sideways"  # set after construction: checked again in forward
    x, media = torch.randn(1, 4, 8), torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="attention_path must be one of"):
        forced(x, media, torch.tensor([[True, False, True, False]]))


def test_bad_input_is_reported_before_the_path_is_chosen():
    module = fl.MaskedCrossAttention(dim=8, attention_path="segments")
    with pytest.raises(ValueError, match="media_locations marks 3 media"):
        module(torch.randn(1, 4, 8), torch.randn(1, 2, 3, 8), torch.tensor([[True, True, True, False]]))
    with pytest.raises(ValueError, match="media must have a time axis"):
        module(torch.randn(1, 4, 8), torch.randn(1, 3, 8), torch.tensor([[True, False, False, False]]))


def test_auto_takes_the_segment_path_exactly_where_it_applies():
    """The rule in two sentences: the immediate mode, media_locations given and at least two media take the segment
    path; everything else (no mask, all previous media, one media, nobody seeing media) takes the masked path."""
    module = fl.MaskedCrossAttention(dim=8, dim_head=4, heads=2)
    x, media = torch.randn(1, 6, 8), torch.randn(1, 2, 3, 8)
    locations = torch.tensor([[True, False, False, True, False, False]])
    assert module.uses_segment_path(x, media, locations)  # even a tiny problem: the two paths cost alike there
    assert not module.uses_segment_path(x, media, None)  # no mask: plain attention
    assert not module.uses_segment_path(x, media[:, :1], locations & (torch.arange(6) == 0))  # one media
    assert not module.uses_segment_path(x, media, torch.zeros(1, 6, dtype=torch.bool))  # nobody sees media
    module.only_attend_immediate_media = False
    assert not module.uses_segment_path(x, media, locations)  # all previous media: masked path
    module.only_attend_immediate_media = True
    module.attention_path = "masked"
    assert not module.uses_segment_path(x, media, locations)
    module.attention_path = "segments"
    assert module.uses_segment_path(x[:, :4], media, locations[:, :4])
    assert module.uses_segment_path(x, media[:, :1], locations & (torch.arange(6) == 0))  # forced, even for one


def test_set_attention_path_reaches_every_layer():
    model = nn.ModuleList([fl.GatedCrossAttentionBlock(dim=8, dim_head=4, heads=2), fl.MaskedCrossAttention(dim=8)])
    assert set_attention_path(model, "segments") is model
    assert [m.attention_path for m in model.modules() if isinstance(m, fl.MaskedCrossAttention)] == ["segments"] * 2
    model.append(fl.MaskedCrossAttention(dim=8, only_attend_immediate_media=False))
    with pytest.raises(ValueError, match="needs only_attend_immediate_media=True"):
        set_attention_path(model, "segments")
    assert model[0].attn.attention_path == "segments"  # nothing changed by the refused call
    set_attention_path(model, "masked")
    assert {m.attention_path for m in model.modules() if isinstance(m, fl.MaskedCrossAttention)} == {"masked"}


def test_gated_block_through_both_paths():
    torch.manual_seed(0)
    block = fl.GatedCrossAttentionBlock(dim=16, dim_head=8, heads=2)
    with torch.no_grad():
        block.attn_gate.fill_(0.7)
        block.ff_gate.fill_(-0.4)
    x, media = torch.randn(2, 30, 16), torch.randn(2, 3, 5, 16)
    locations = torch.zeros(2, 30, dtype=torch.bool)
    locations[0, [2, 9, 20]] = True
    locations[1, [0, 1]] = True
    outs = []
    for path in ("masked", "segments"):
        block.attn.attention_path = path
        outs.append(block(x, media, locations))
    torch.testing.assert_close(outs[1], outs[0], **FP32)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@given(case=segment_cases())
def test_segment_path_equals_masked_path_cuda(dtype, case):
    tol = FP32 if dtype == torch.float32 else HALF_TOLERANCE[dtype]
    assert_paths_agree(case, dtype=dtype, device="cuda", tol=tol)


def test_uses_segment_path_checks_its_inputs_and_says_masked_when_no_text_sees_media():
    import flamingo_lite as fl

    module = fl.MaskedCrossAttention(dim=16, dim_head=4, heads=2, attention_path="segments")
    x, media = torch.randn(1, 6, 16), torch.randn(1, 2, 3, 16)
    with pytest.raises(ValueError, match="media"):
        module.uses_segment_path(x, media[0], torch.zeros(1, 6, dtype=torch.bool))
    assert not module.uses_segment_path(x, media, torch.zeros(1, 6, dtype=torch.bool))  # nobody sees media
    assert module.uses_segment_path(x, media, torch.tensor([[1, 0, 0, 1, 0, 0]], dtype=torch.bool))
