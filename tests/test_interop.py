"""Parity with the real peers: OpenFlamingo 2.0.1's helpers and transformers' IDEFICS layers, tiny random configs.

Each peer layer is built from a small random config (nothing downloaded), converted with flamingo_lite.interop,
and run side by side in fp32: outputs agree to 1e-6, except for the behaviours docs/interop.md lists as different
(OpenFlamingo's all-previous mode lets text before the first image average over every image; flamingo_lite gives it
zero). The tests skip, saying why, where a peer is not installed; the course never needs them.
"""
import pytest
import torch
from torch import nn

from flamingo_lite import interop
from flamingo_lite.masks import cross_attention_mask, rows_without_media

from peers import idefics, open_flamingo_helpers

OF, OF_MISSING = open_flamingo_helpers()
IDEFICS, IDEFICS_MISSING = idefics()
needs_of = pytest.mark.skipif(OF is None, reason=f"OpenFlamingo parity skipped: {OF_MISSING}")
needs_idefics = pytest.mark.skipif(IDEFICS is None, reason=f"IDEFICS parity skipped: {IDEFICS_MISSING}")

ATOL = 1e-6


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Norms and gates random too (the matrices are random from their init), so no mapping mistake hides behind
    ones and zeros: 1-D parameters and per-channel gates become 1 + 0.3 N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 or "alpha" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    return module.eval()


def close(got, want) -> bool:
    """fp32 agreement: |got - want| <= 1e-6 + 1e-6 |want| everywhere (outputs here are of order 1 to 5)."""
    return bool(((got - want).abs() <= ATOL + ATOL * want.abs()).all())


# media_locations that start with a marker, so no text comes before the first image (the leak case is apart)
LOCATIONS = torch.tensor(
    [[1, 0, 0, 1, 0, 0, 0, 1, 0, 0], [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool
)  # (2, 10)


# ---------------------------------------------------------------- OpenFlamingo


@needs_of
@pytest.mark.parametrize("frames,num_media", [(None, None), (3, 2)])
def test_open_flamingo_resampler_same_outputs_module_and_state_dict(frames, num_media):
    torch.manual_seed(0)
    peer = randomize(OF.PerceiverResampler(dim=16, depth=2, dim_head=8, heads=2, num_latents=4,
                                           max_num_frames=frames, max_num_media=num_media))
    x = torch.randn(2, 2, 3, 5, 16)  # (b, T, F, v, d): OpenFlamingo's 5-D media input
    ours = interop.from_open_flamingo(peer)
    from_sd = interop.from_open_flamingo(peer.state_dict(), heads=2)
    with torch.no_grad():
        want = peer(x)  # (b, T, L, d)
        assert close(ours(x), want)
        assert close(from_sd(x), want)
    assert (ours.num_frames, ours.media_embedding) == (frames, "none" if num_media is None else "per_media")


@needs_of
def test_open_flamingo_resampler_four_d_input_is_one_frame():
    peer = randomize(OF.PerceiverResampler(dim=16, depth=1, dim_head=8, heads=2, num_latents=4))
    ours = interop.from_open_flamingo(peer)
    x = torch.randn(2, 3, 5, 16)  # (b, t, n, d)
    with torch.no_grad():
        assert close(ours(x), peer(x.unsqueeze(2)))


@needs_of
@pytest.mark.parametrize("immediate", [True, False])
def test_open_flamingo_gated_block_same_outputs_with_wider_media(immediate):
    torch.manual_seed(1)
    peer = randomize(OF.GatedCrossAttentionBlock(dim=16, dim_visual=24, dim_head=8, heads=2, ff_mult=2,
                                                 only_attend_immediate_media=immediate))
    ours = interop.from_open_flamingo(peer)
    assert ours.attn.dim_visual == 24 and ours.attn.only_attend_immediate_media == immediate
    x, media = torch.randn(2, 10, 16), torch.randn(2, 3, 4, 24)  # (b, n, d), (b, t, m, dim_visual)
    with torch.no_grad():
        assert close(ours(x, media, LOCATIONS), peer(x, media, LOCATIONS))
        assert close(interop.from_open_flamingo(peer.state_dict(), heads=2,
                                                   only_attend_immediate_media=immediate)(x, media, LOCATIONS),
                        peer(x, media, LOCATIONS))


@needs_of
@pytest.mark.parametrize("immediate", [True, False])
def test_open_flamingo_cached_media_is_media_locations_none_on_the_seen_media(immediate):
    """use_cached_media=True: all new text comes after the k markers of the prefix; in flamingo_lite that is
    media_locations=None over the last seen media (immediate) or the k seen media (all previous)."""
    torch.manual_seed(2)
    peer = randomize(OF.GatedCrossAttentionBlock(dim=16, dim_visual=16, dim_head=8, heads=2,
                                                 only_attend_immediate_media=immediate))
    ours = interop.from_open_flamingo(peer)
    prefix = torch.tensor([[1, 0, 1, 0, 0, 1]], dtype=torch.bool)  # (1, 6): k = 3 markers
    x_new, media = torch.randn(1, 4, 16), torch.randn(1, 3, 4, 16)  # 4 new tokens, 3 cached media
    seen = media[:, 2:3] if immediate else media  # (1, 1 or 3, m, d)
    with torch.no_grad():
        want = peer(x_new, media, prefix, use_cached_media=True)
        assert close(ours(x_new, seen, None), want)


@needs_of
def test_open_flamingo_all_previous_leak_stays_a_difference():
    """Text before the first image: OpenFlamingo averages over every image (the future ones too), flamingo_lite
    gives exactly zero; everything after the first image agrees."""
    peer = randomize(OF.GatedCrossAttentionBlock(dim=16, dim_visual=16, dim_head=8, heads=2,
                                                 only_attend_immediate_media=False))
    ours = interop.from_open_flamingo(peer)
    locations = torch.tensor([[0, 0, 1, 0, 0, 1, 0]], dtype=torch.bool)  # (1, 7): two words before the first image
    x, media = torch.randn(1, 7, 16), torch.randn(1, 2, 4, 16)
    with torch.no_grad():
        theirs, mine = peer.attn(x, media, locations), ours.attn(x, media, locations)
    assert torch.equal(mine[:, :2], torch.zeros_like(mine[:, :2]))
    assert theirs[:, :2].abs().max() > 1e-3  # the leak
    assert close(mine[:, 2:], theirs[:, 2:])


@needs_of
def test_to_open_flamingo_loads_strictly_and_gives_the_same_outputs():
    torch.manual_seed(3)
    ours = randomize(interop.from_open_flamingo(
        OF.GatedCrossAttentionBlock(dim=16, dim_visual=24, dim_head=8, heads=2)))
    peer = OF.GatedCrossAttentionBlock(dim=16, dim_visual=24, dim_head=8, heads=2)
    peer.load_state_dict(interop.to_open_flamingo(ours), strict=True)
    x, media = torch.randn(2, 10, 16), torch.randn(2, 3, 4, 24)
    with torch.no_grad():
        assert close(ours(x, media, LOCATIONS), peer(x, media, LOCATIONS))
    resampler = randomize(interop.from_open_flamingo(OF.PerceiverResampler(dim=16, depth=1, dim_head=8, heads=2,
                                                                          num_latents=4, max_num_media=3)))
    peer_r = OF.PerceiverResampler(dim=16, depth=1, dim_head=8, heads=2, num_latents=4, max_num_media=3)
    peer_r.load_state_dict(interop.to_open_flamingo(resampler), strict=True)
    x = torch.randn(1, 3, 1, 5, 16)
    with torch.no_grad():
        assert close(resampler(x), peer_r(x))


@needs_of
def test_a_checkpoint_that_does_not_fit_names_the_key():
    sd = OF.GatedCrossAttentionBlock(dim=16, dim_visual=16, dim_head=8, heads=2).state_dict()
    broken = {k: v for k, v in sd.items() if k != "ff.3.weight"}
    with pytest.raises(ValueError, match="ff.3.weight"):
        interop.from_open_flamingo(broken, heads=2)
    with pytest.raises(ValueError, match="attn.extra"):
        interop.from_open_flamingo({**sd, "attn.extra": torch.zeros(1)}, heads=2)
    with pytest.raises(ValueError, match="heads="):
        interop.from_open_flamingo(sd)


def test_to_open_flamingo_refuses_what_open_flamingo_does_not_have():
    from flamingo_lite import GatedCrossAttentionBlock

    with pytest.raises(ValueError, match="scalar gates"):
        interop.to_open_flamingo(GatedCrossAttentionBlock(dim=16, dim_head=8, heads=2, gate="per_channel"))
    with pytest.raises(ValueError, match="GELU"):
        interop.to_open_flamingo(GatedCrossAttentionBlock(dim=16, dim_head=8, heads=2, ff_activation="swiglu"))


# ---------------------------------------------------------------- IDEFICS


def idefics_config(**kw):
    base = dict(hidden_size=16, intermediate_size=40, num_attention_heads=2, vision_config={"embed_dim": 24},
                alpha_initializer="ones")
    base.update(kw)
    config = IDEFICS.IdeficsConfig(**base)
    config._attn_implementation = "eager"
    return config


def idefics_masks(locations: torch.Tensor, num_media: int, m: int):
    """IDEFICS's inputs for the mask flamingo_lite builds from media_locations: additive mask and the zero gate."""
    allowed = cross_attention_mask(locations, num_media, m, True)  # (b, n, t*m) bool: the latest image only
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]  # (b, 1, n, t*m)
    gate = (~rows_without_media(locations)).float()  # (b, n): 0 where no image was seen
    return additive, gate


@needs_idefics
@pytest.mark.parametrize("qk", [False, True])
def test_idefics_resampler_same_outputs(qk):
    torch.manual_seed(4)
    config = idefics_config(vision_config={"embed_dim": 16}, perceiver_config={"qk_layer_norms_perceiver": qk})
    peer = randomize(IDEFICS.IdeficsPerceiverResampler(config, embed_dim=16, depth=2, n_heads=2, head_dim=8, n_latents=4))
    ours = interop.from_idefics(peer)
    assert ours.layers[0][0].qk_layer_norms == qk and ours.layers[0][1].activation == "relu"
    context = torch.randn(3, 7, 16)  # (b, n, d): one image per row, as IDEFICS flattens them
    with torch.no_grad():
        assert close(ours(context)[:, 0], peer(context))
        assert close(interop.from_idefics(peer.state_dict(), heads=2)(context)[:, 0], peer(context))


@needs_idefics
@pytest.mark.parametrize("qk,alpha_type", [(False, "float"), (True, "vector")])
def test_idefics_gated_layer_same_outputs(qk, alpha_type):
    torch.manual_seed(5)
    peer = randomize(IDEFICS.IdeficsGatedCrossAttentionLayer(idefics_config(qk_layer_norms=qk, alpha_type=alpha_type),
                                                             layer_idx=0))
    ours = interop.from_idefics(peer)
    assert ours.attn_gate.shape == ((1,) if alpha_type == "float" else (16,))
    locations = torch.tensor([[0, 1, 0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)  # (2, 8)
    x, media = torch.randn(2, 8, 16), torch.randn(2, 2, 4, 24)  # (b, n, d), (b, t, m, dim_visual)
    additive, gate = idefics_masks(locations, 2, 4)
    with torch.no_grad():
        want = peer(x, image_hidden_states=media.flatten(1, 2), image_attention_mask=additive, cross_attention_gate=gate)
        got = ours(x, media, locations)
    assert close(got, want)
    assert ours.attn.uses_segment_path(x, media, locations) in (True, False)
    from flamingo_lite import set_attention_path

    with torch.no_grad():
        assert close(set_attention_path(ours, "segments")(x, media, locations), want)


@needs_idefics
def test_idefics_checkpoint_that_does_not_fit_names_the_key():
    sd = IDEFICS.IdeficsGatedCrossAttentionLayer(idefics_config(), layer_idx=0).state_dict()
    with pytest.raises(ValueError, match="mlp.up_proj.weight"):
        interop.from_idefics({k: v for k, v in sd.items() if k != "mlp.up_proj.weight"}, heads=2)


def test_from_peers_refuse_what_is_not_a_peer_layer():
    with pytest.raises(ValueError, match="latents"):
        interop.from_open_flamingo({"w": torch.zeros(1)})
    with pytest.raises(TypeError, match="state_dict"):
        interop.from_idefics(3)


# ---------------------------------------------------------------- checkpoints that do not fit, without the peers
def open_flamingo_state_dicts() -> dict:
    """OpenFlamingo-shaped state_dicts made by to_open_flamingo (the keys OpenFlamingo loads with strict=True)."""
    from flamingo_lite import GatedCrossAttentionBlock, PerceiverResampler

    torch.manual_seed(0)
    resampler = PerceiverResampler(dim=16, depth=1, dim_head=8, heads=2, num_latents=4, media_embedding="none")
    block = GatedCrossAttentionBlock(dim=16, dim_head=8, heads=2)
    return {"resampler": interop.to_open_flamingo(resampler), "block": interop.to_open_flamingo(block)}


def without(sd: dict, key: str) -> dict:
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize(
    "layer, change, message",
    [
        ("resampler", lambda sd: without(sd, "layers.0.0.to_q.weight"), "no key 'layers.0.0.to_q.weight'"),
        ("resampler", lambda sd: without(sd, "layers.0.1.1.weight"), "no key 'layers.0.1.1.weight'"),
        ("resampler", lambda sd: {**sd, "latents": sd["latents"][None]}, r"'latents' must have rank 2, got shape \(1, 4, 16\)"),
        ("resampler", lambda sd: {**sd, "latents": sd["latents"][0]}, r"'latents' must have rank 2, got shape \(16,\)"),
        ("resampler", lambda sd: {**sd, "media_time_embs": torch.zeros(3, 16)}, "'media_time_embs' must have rank 3"),
        ("resampler", lambda sd: {**sd, "layers.0.0.to_q.weight": torch.zeros(16)}, "'layers.0.0.to_q.weight' must have rank 2"),
        ("resampler", lambda sd: {**sd, "layers.0.0.to_out.weight": torch.zeros(16, 8)}, r"'layers.0.0.to_out.weight' has shape \(16, 8\)"),
        ("block", lambda sd: without(sd, "attn.to_q.weight"), "no key 'attn.to_q.weight'"),
        ("block", lambda sd: without(sd, "attn.to_kv.weight"), "no key 'attn.to_kv.weight'"),
        ("block", lambda sd: without(sd, "ff.1.weight"), "no key 'ff.1.weight'"),
        ("block", lambda sd: {**sd, "attn.to_q.weight": sd["attn.to_q.weight"].flatten()}, "'attn.to_q.weight' must have rank 2"),
        ("block", lambda sd: {**sd, "attn_gate": torch.zeros(2)}, r"'attn_gate' has shape \(2,\)"),
    ],
)
def test_an_open_flamingo_checkpoint_that_does_not_fit_is_a_value_error_naming_the_key(layer, change, message):
    """Never a KeyError or an unpacking error from inside the conversion: the key, and what is wrong with it."""
    with pytest.raises(ValueError, match=message):
        interop.from_open_flamingo(change(open_flamingo_state_dicts()[layer]), heads=2)


@pytest.mark.parametrize("keywords, message", [({"heads": 0}, "heads must be a positive int"),
                                               ({"heads": 2, "dim_head": -8}, "dim_head must be a positive int"),
                                               ({"heads": 2.0}, "heads must be an int")])
def test_heads_and_dim_head_given_for_a_state_dict_are_checked(keywords, message):
    with pytest.raises((ValueError, TypeError), match=message):
        interop.from_open_flamingo(open_flamingo_state_dicts()["block"], **keywords)


@needs_idefics
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: without(sd, "blocks.0.0.q_proj.weight"), "no key 'blocks.0.0.q_proj.weight'"),
        (lambda sd: without(sd, "blocks.0.1.fc.weight"), "no key 'blocks.0.1.fc.weight'"),
        (lambda sd: {**sd, "latents": sd["latents"][None]}, "'latents' must have rank 2"),
    ],
)
def test_an_idefics_resampler_checkpoint_that_does_not_fit_names_the_key(change, message):
    peer = IDEFICS.IdeficsPerceiverResampler(idefics_config(vision_config={"embed_dim": 16}), embed_dim=16, depth=1,
                                             n_heads=2, head_dim=8, n_latents=4)
    with pytest.raises(ValueError, match=message):
        interop.from_idefics(change(peer.state_dict()), heads=2)


@needs_idefics
def test_an_idefics_gated_checkpoint_of_the_wrong_rank_names_the_key():
    sd = IDEFICS.IdeficsGatedCrossAttentionLayer(idefics_config(), layer_idx=0).state_dict()
    with pytest.raises(ValueError, match="'cross_attn.q_proj.weight' must have rank 2"):
        interop.from_idefics({**sd, "cross_attn.q_proj.weight": sd["cross_attn.q_proj.weight"].flatten()}, heads=2)
