"""Issue 13, the layer parts: dtype/device checks, autocast, the NaN contract on every path, torch.compile.

Each test names the numbered case it covers; each failed before the fix.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import flamingo_lite as fl
from flamingo_lite.tiny.data import make_dataset
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig
from tests.test_bad_input import assert_nothing_computed

DIM = 16
PATHS = ["masked", "segments"]
# row 0: text before the first media, then media 0 (tokens 1-3) and media 1 (tokens 4-7); row 1: media 0 only
LOC = torch.tensor([[0, 1, 0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)


def xattn(path="masked", immediate=True):
    torch.manual_seed(0)
    return fl.MaskedCrossAttention(dim=DIM, dim_head=4, heads=2, only_attend_immediate_media=immediate, attention_path=path)


def inputs(seed=0, t=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 8, DIM, generator=gen), torch.randn(2, t, 3, DIM, generator=gen)  # (b, n, d), (b, t, m, d)


def layers():
    torch.manual_seed(0)
    x, media = inputs()
    return {
        "FeedForward": (fl.FeedForward(DIM), (x,)),
        "PerceiverAttention": (fl.PerceiverAttention(dim=DIM, dim_head=4, heads=2), (media, media)),
        "PerceiverResampler": (fl.PerceiverResampler(dim=DIM, depth=1, dim_head=4, heads=2, num_latents=3), (media,)),
        "MaskedCrossAttention": (xattn(), (x, media, LOC)),
        "GatedCrossAttentionBlock": (fl.GatedCrossAttentionBlock(dim=DIM, dim_head=4, heads=2), (x, media, LOC)),
    }


# ---------------------------------------------------------------------------------------- 5: dtype and device
@pytest.mark.parametrize("name", list(layers()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_5_inputs_of_another_dtype_are_a_clear_error_before_computing(name, dtype):
    module, args = layers()[name]
    args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
    message = assert_nothing_computed(module, lambda: module(*args))
    assert str(dtype) in message and "torch.float32" in message, message


@pytest.mark.parametrize("name", list(layers()))
def test_5_inputs_on_another_device_are_a_clear_error_before_computing(name):
    module, args = layers()[name]
    args = tuple(a.to("meta") if a.is_floating_point() else a for a in args)
    message = assert_nothing_computed(module, lambda: module(*args))
    assert "meta" in message and "cpu" in message, message


# ---------------------------------------------------------------------------------------- 4: autocast
AUTOCAST_TOL = 0.05  # max |bf16 autocast - fp32| relative to the largest |fp32 output| (bf16 keeps 8 bits)


@pytest.mark.parametrize("name", list(layers()))
def test_4_every_layer_runs_under_cpu_autocast_and_agrees_with_fp32(name):
    module, args = layers()[name]
    with torch.no_grad():
        if name == "GatedCrossAttentionBlock":
            module.attn_gate.fill_(0.5)
            module.ff_gate.fill_(0.5)
        want = module(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = module(*args)
    assert torch.isfinite(got).all()
    assert float((got.float() - want).abs().max()) <= AUTOCAST_TOL * float(want.abs().max())


def tiny_flamingo(**overrides):
    torch.manual_seed(0)
    model = Flamingo(FlamingoConfig(**overrides))
    with torch.no_grad():
        for block in model.xattn.values():  # open the gates, so the media matter to the logits
            block.attn_gate.fill_(0.7)
            block.ff_gate.fill_(0.7)
    return model.eval()


def test_4_tiny_flamingo_runs_under_cpu_autocast_and_agrees_with_fp32():
    model = tiny_flamingo()
    data = make_dataset(4, seed=1)
    with torch.no_grad():
        want = model(data.tokens, data.images)  # (b, n, V)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(data.tokens, data.images)
    assert float((got.float() - want).abs().max()) <= AUTOCAST_TOL * float(want.abs().max())
    assert torch.equal(got.float().argmax(-1), want.argmax(-1)) or float((got.float().softmax(-1) - want.softmax(-1)).abs().max()) < 0.05


# ---------------------------------------------------------------------------------------- 6: the NaN contract
def allowed_media(immediate: bool, t: int) -> torch.Tensor:
    """(b, n, t) bool: which media each text token may see, for LOC."""
    return fl.masks.text_to_media_mask(fl.masks.text_time(LOC), t, immediate)


def assert_contract(out, clean, poisoned, loc=LOC):
    """Rows in `poisoned` (b, n) are NaN everywhere; the others equal the clean output (and rows seeing nothing are 0)."""
    assert torch.isnan(out[poisoned]).all(), "a row that may see the bad value is not NaN"
    assert torch.isfinite(out[~poisoned]).all(), "a row that may not see the bad value is not finite"
    torch.testing.assert_close(out[~poisoned], clean[~poisoned], rtol=1e-5, atol=1e-6)
    sees_nothing = fl.masks.rows_without_media(loc)
    assert torch.equal(out[sees_nothing], torch.zeros_like(out[sees_nothing]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("path", PATHS)
def test_6_a_bad_media_reaches_exactly_the_rows_that_may_see_it(path, bad):
    x, media = inputs()
    module = xattn(path)
    clean = module(x, media, LOC).detach()
    media[0, 1, 2, 5] = bad  # one latent of media 1 in batch row 0
    out = module(x, media, LOC).detach()
    poisoned = torch.zeros(2, 8, dtype=torch.bool)
    poisoned[0] = allowed_media(True, 2)[0, :, 1]  # tokens 4-7 of row 0
    assert_contract(out, clean, poisoned)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("t", [1, 2], ids=["one-media", "two-media"])
def test_6_a_bad_text_row_is_nan_never_zero_and_reaches_no_other_row(path, t, bad):
    x, media = inputs(t=t)
    loc = LOC.clone()
    loc[0, 4] = t > 1  # one marker per row with one media
    module = xattn(path)
    clean = module(x, media, loc).detach()
    x[1, 3, 7] = bad  # sees media 0
    x[0, 0, 2] = bad  # sees nothing: stays exactly 0
    out = module(x, media, loc).detach()
    poisoned = torch.zeros(2, 8, dtype=torch.bool)
    poisoned[1, 3] = True
    assert_contract(out, clean, poisoned, loc)


def test_6_all_previous_mode_and_no_mask_follow_the_same_contract():
    x, media = inputs()
    module = xattn("masked", immediate=False)
    clean = module(x, media, LOC).detach()
    media[0, 0, 1, 0] = float("nan")  # media 0 of row 0: every later token of row 0 sees it
    out = module(x, media, LOC).detach()
    poisoned = torch.zeros(2, 8, dtype=torch.bool)
    poisoned[0] = allowed_media(False, 2)[0, :, 0]
    assert_contract(out, clean, poisoned)
    # no media_locations: every token sees every media; a NaN text row is NaN (it was 0 on the CPU kernel)
    x2, media2 = inputs()
    x2[1, 2, 0] = float("nan")
    out = xattn()(x2, media2, None).detach()
    assert torch.isnan(out[1, 2]).all() and torch.isfinite(out[0]).all() and torch.isfinite(out[1, 3:]).all()


def test_6_both_paths_give_the_same_rows_and_values_with_bad_inputs():
    x, media = inputs()
    x[1, 5, 0] = float("nan")
    media[0, 0, 0, 0] = float("inf")
    masked, segments = xattn("masked")(x, media, LOC), xattn("segments")(x, media, LOC)
    assert torch.equal(torch.isnan(masked), torch.isnan(segments))
    torch.testing.assert_close(masked, segments, equal_nan=True)


# ---------------------------------------------------------------------------------------- 10: small items
def test_10_only_attend_immediate_media_set_later_to_a_non_bool_is_refused():
    for module in (xattn(), fl.GatedCrossAttentionBlock(dim=DIM, dim_head=4, heads=2)):
        layer = module if isinstance(module, fl.MaskedCrossAttention) else module.attn
        layer.only_attend_immediate_media = "no"
        x, media = inputs()
        with pytest.raises(TypeError, match="only_attend_immediate_media"):
            module(x, media, LOC)


def test_10_too_many_images_names_the_flamingo_config():
    model = Flamingo(FlamingoConfig(num_media_embeds=2, media_embedding="per_media"))  # flamingo-pytorch's cap
    data = make_dataset(2, seed=0)
    assert data.images.shape[1] > 2
    with pytest.raises(ValueError, match=r"FlamingoConfig\(num_media_embeds="):
        model(data.tokens, data.images)


# ---------------------------------------------------------------------------------------- 7: compile, trace
def layouts(n_layouts, b=2, n=8, t=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_layouts):
        loc = torch.zeros(b, n, dtype=torch.bool)
        for row in range(b):
            loc[row, torch.randperm(n, generator=gen)[: int(torch.randint(0, t + 1, (1,), generator=gen))]] = True
        out.append(loc)
    return out


@pytest.mark.parametrize("gated", [False, True], ids=["MaskedCrossAttention", "GatedCrossAttentionBlock"])
def test_7_layers_compile_whole_and_new_marker_layouts_do_not_recompile(gated):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    module = fl.GatedCrossAttentionBlock(dim=DIM, dim_head=4, heads=2) if gated else xattn("auto")
    counter = CompileCounter()
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    x, media = inputs()
    for loc in layouts(20):
        torch.testing.assert_close(compiled(x, media, loc), module(x, media, loc))
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for 20 marker layouts"
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])


def test_7_compiled_layer_still_refuses_too_many_markers():
    torch._dynamo.reset()
    compiled = torch.compile(xattn(), backend=CompileCounter(), fullgraph=True)
    x, media = inputs()
    compiled(x, media, LOC)
    too_many = LOC.clone()
    too_many[1, 2:5] = True  # 4 markers, 2 media
    with pytest.raises(RuntimeError, match="more media"):
        compiled(x, media, too_many)


def test_7_tiny_flamingo_forward_compiles_whole_without_recompiling():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = tiny_flamingo()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    data = make_dataset(12, seed=3)
    media = model.encode_images(data.images[:2]).detach()
    with torch.no_grad():
        for start in range(0, 12, 2):
            loc = data.tokens[start:start + 2] == model.config.media_token_id
            torch.testing.assert_close(
                compiled(data.tokens[start:start + 2], media=media, media_locations=loc),
                model(data.tokens[start:start + 2], media=media, media_locations=loc),
            )
    assert counter.frame_count == 1
    assert not torch._dynamo.utils.counters["graph_break"]


def test_7_the_model_checks_markers_and_builds_the_segment_layout_once_per_forward(monkeypatch):
    """Three gated blocks, one forward: the markers are read once and the segment layout made once, by the one
    MediaLocations the model gives every block."""
    model = tiny_flamingo(lm_depth=3)
    fl.set_attention_path(model, "segments")
    calls = {"layout": 0, "markers": 0}
    import flamingo_lite.cross_attention as xa
    real_layout, real_markers = xa.segment_layout, xa.check_markers_fit_media

    def counting_layout(*a, **k):
        calls["layout"] += 1
        return real_layout(*a, **k)

    def counting_markers(*a, **k):
        calls["markers"] += 1
        return real_markers(*a, **k)

    monkeypatch.setattr(xa, "segment_layout", counting_layout)
    monkeypatch.setattr(xa, "check_markers_fit_media", counting_markers)
    data = make_dataset(2, seed=0)
    with torch.no_grad():
        want = fl.set_attention_path(tiny_flamingo(lm_depth=3), "masked")(data.tokens, data.images)
        calls.update(layout=0, markers=0)
        got = model(data.tokens, data.images)
    assert len(model.xattn) == 3 and calls == {"layout": 1, "markers": 1}
    torch.testing.assert_close(got, want)


def test_7_jit_trace_is_refused_loudly():
    x, media = inputs()
    with pytest.raises(RuntimeError, match="torch.jit.trace"):
        torch.jit.trace(xattn(), (x, media, LOC))


def test_7_media_locations_checked_for_another_batch_are_refused():
    from flamingo_lite.cross_attention import MediaLocations

    x, media = inputs()
    other = MediaLocations.check(LOC[:, :6], batch=2, text=6, num_media=2)  # text of 6 tokens, not 8
    with pytest.raises(ValueError, match=r"checked for \(batch, text, media\) = \(2, 6, 2\)"):
        xattn("segments")(x, media, other)
    with pytest.raises(ValueError, match="checked for"):
        xattn("segments")(x, media[:, :1], MediaLocations.check(LOC, batch=2, text=8, num_media=2))  # other media
    checked = MediaLocations.check(LOC, batch=2, text=8, num_media=2)
    torch.testing.assert_close(xattn("segments")(x, media, checked), xattn("segments")(x, media, LOC))
    assert checked.layout is not None  # made on first use and kept for the next layer
