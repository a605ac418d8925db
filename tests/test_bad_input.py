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


# ------------------------------------------------------------ numbers that are not finite or not in range
INF, NAN = float("inf"), float("nan")


def tiny_config(**kwargs):
    from flamingo_lite.tiny.model import FlamingoConfig

    return FlamingoConfig(vision="handmade", **kwargs)


@pytest.mark.parametrize(
    "make, error, name",
    [
        (lambda: fl.FeedForward(16, mult=INF), ValueError, "mult must be a finite number, got inf"),
        (lambda: fl.FeedForward(16, mult=NAN), ValueError, "mult must be a finite number, got nan"),
        (lambda: fl.GatedCrossAttentionBlock(dim=16, ff_mult=INF), ValueError, "mult must be a finite number"),
        (lambda: fl.PerceiverResampler(dim=16, depth=1, ff_mult=NAN), ValueError, "ff_mult must be a finite number"),
        (lambda: fl.PerceiverResampler(dim=16, depth=1, ff_mult=-INF), ValueError, "ff_mult must be a finite number"),
        (lambda: fl.norms.RMSNorm(16, eps=NAN), ValueError, "eps must be a finite number"),
        (lambda: fl.norms.RMSNorm(16, eps=-1e-6), ValueError, "eps must be"),
        (lambda: fl.norms.RMSNorm(-2), ValueError, "dim must be a positive int"),
        (lambda: tiny_config(ff_mult=INF), ValueError, "FlamingoConfig.ff_mult must be a finite number"),
        (lambda: tiny_config(dim=0), ValueError, "FlamingoConfig.dim"),
        (lambda: tiny_config(media_token_id=12), ValueError, r"FlamingoConfig.media_token_id .* \[0, vocab_size=12\)"),
        (lambda: tiny_config(vision_seed=2**32), ValueError, "FlamingoConfig.vision_seed must be at most 2\\*\\*32 - 1"),
        (lambda: tiny_config(num_latents=2.5), TypeError, "FlamingoConfig.num_latents must be an int"),
        (lambda: tiny_config(resampler_depth=-1), ValueError, "FlamingoConfig.resampler_depth"),
        (lambda: tiny_config(lm_heads=3), ValueError, r"FlamingoConfig.dim \(64\) must be divisible by FlamingoConfig.lm_heads \(3\)"),
        (lambda: fl.tiny.language_model.LMConfig(dim=64, heads=3), ValueError, r"LMConfig.dim \(64\) must be divisible"),
        (lambda: fl.tiny.language_model.CausalSelfAttention(32, 0), ValueError, "heads must be a positive int"),
        (lambda: fl.tiny.language_model.Block(32, 2, mlp_mult=-1), ValueError, "mlp_mult must be a positive int"),
        (lambda: fl.tiny.vision.VisionEncoder(edge_gain=INF), ValueError, "edge_gain must be a finite number"),
        (lambda: fl.tiny.vision.VisionEncoder(seed=-1), ValueError, "seed must be a non-negative int"),
        (lambda: fl.tiny.contrastive.ConvVisionEncoder(depth=-1), ValueError, "depth must be a non-negative int"),
        (lambda: fl.tiny.contrastive.ConvVisionEncoder(seed=2**64), ValueError, "seed must be at most"),
        (lambda: fl.tiny.contrastive.NFBlock(8, alpha=NAN), ValueError, "alpha must be a finite number"),
        (lambda: fl.tiny.contrastive.CaptionEncoder(pad_id=12), ValueError, r"pad_id must be a token id in \[0, vocab_size=12\)"),
        (lambda: fl.tiny.contrastive.CaptionEncoder(embed_dim=0), ValueError, "embed_dim must be a positive int"),
        (lambda: fl.tiny.training.TrainingSetup(lr=NAN), ValueError, "TrainingSetup.lr must be a finite number"),
        (lambda: fl.tiny.training.TrainingSetup(weight_decay=-0.1), ValueError, "TrainingSetup.weight_decay must be at least 0"),
        (lambda: fl.tiny.training.TrainingSetup(seed=2**32), ValueError, "TrainingSetup.seed must be at most"),
        (lambda: fl.tiny.training.TrainingSetup(steps=0), ValueError, "TrainingSetup.steps"),
        (lambda: fl.tiny.fewshot.FewShotSetup(p_next=1.5), ValueError, "FewShotSetup.p_next must be a probability"),
        (lambda: fl.tiny.fewshot.FewShotSetup(gate_lr=INF), ValueError, "FewShotSetup.gate_lr must be a finite number"),
        (lambda: fl.tiny.fewshot.FewShotSetup(shots=(0, 64)), ValueError, "FewShotSetup.shots .* pool_size=48"),
        (lambda: fl.tiny.fewshot.FewShotSetup(max_images=1), ValueError, "FewShotSetup.max_images must be at least 2"),
    ],
)
def test_every_constructor_refuses_numbers_out_of_range_naming_the_argument(make, error, name):
    """Never an OverflowError from int(dim * inf), a ZeroDivisionError, a numpy traceback after the run started."""
    import flamingo_lite.norms  # noqa: F401  (the modules the lambdas reach through fl.)
    import flamingo_lite.tiny.contrastive  # noqa: F401
    import flamingo_lite.tiny.fewshot  # noqa: F401

    with pytest.raises(error, match=name):
        make()


def test_validation_refuses_what_is_not_a_finite_number_in_range():
    from flamingo_lite import validation as v

    assert v.check_positive_number("lr", 3e-3) == 3e-3 and v.check_probability("p", 1) == 1
    assert v.check_seed("seed", 2**32 - 1) == 2**32 - 1
    for check, value, error in [(v.check_positive_number, INF, ValueError), (v.check_positive_number, NAN, ValueError),
                                (v.check_non_negative_number, -INF, ValueError), (v.check_probability, NAN, ValueError),
                                (v.check_finite_number, True, TypeError), (v.check_seed, 2**32, ValueError)]:
        with pytest.raises(error, match="^x "):
            check("x", value)


# ------------------------------------------------------------ pictures of the wrong dtype or device, at the model's door
def test_pictures_of_another_dtype_are_refused_at_the_model_entrance_in_the_layers_words():
    from flamingo_lite.tiny.model import Flamingo

    model = Flamingo(tiny_config(dim=32, dim_head=8, heads=2, lm_heads=2, num_latents=4))
    tokens = torch.tensor([[1, 4, 5, 6]])
    message = assert_nothing_computed(model, lambda: model(tokens, torch.rand(1, 1, 3, 16, 16, dtype=torch.float64)))
    assert message.startswith("images has dtype torch.float64 but the vision encoder's weights are torch.float32")
    bf16 = Flamingo(tiny_config(dim=32, dim_head=8, heads=2, lm_heads=2, num_latents=4)).to(torch.bfloat16)
    message = assert_nothing_computed(bf16, lambda: bf16(tokens, torch.rand(1, 1, 3, 16, 16)))
    assert "images has dtype torch.float32 but the vision encoder's weights are torch.bfloat16" in message
    assert "images.to(torch.bfloat16)" in message
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's dtype is accepted, as by every layer
        assert model(tokens, torch.rand(1, 1, 3, 16, 16).bfloat16()).shape == (1, 4, 12)


def test_pictures_and_tokens_on_another_device_are_refused_before_any_computation():
    """A model on the `meta` device stands in for a GPU: the devices differ, which is all the check reads."""
    from flamingo_lite.tiny.model import Flamingo

    model = Flamingo(tiny_config(dim=32, dim_head=8, heads=2, lm_heads=2, num_latents=4)).to("meta")
    tokens, images = torch.tensor([[1, 4, 5, 6]]), torch.rand(1, 1, 3, 16, 16)
    message = assert_nothing_computed(model, lambda: model.encode_images(images))
    assert message.startswith("images is on device cpu but the vision encoder's weights are on meta")
    with pytest.raises(ValueError, match="tokens is on device cpu but the language model's weights are on meta"):
        model(tokens, images.to("meta"))
