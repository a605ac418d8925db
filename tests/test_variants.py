"""The layer variants: defaults keep flamingo-pytorch's keys; each variant computes what its docstring says."""
import pytest
import torch
import torch.nn.functional as F

import flamingo_lite as fl
from flamingo_lite.norms import RMSNorm
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig, xattn_layers
from flamingo_pytorch import flamingo_pytorch as seed


def test_defaults_keep_the_seeds_keys():
    assert list(fl.FeedForward(16).state_dict()) == list(seed.FeedForward(16).state_dict())
    assert list(fl.PerceiverResampler(dim=16, depth=1).state_dict()) == list(
        seed.PerceiverResampler(dim=16, depth=1).state_dict()
    )
    assert list(fl.GatedCrossAttentionBlock(dim=16).state_dict()) == list(seed.GatedCrossAttentionBlock(dim=16).state_dict())


@pytest.mark.parametrize(
    "activation,f",
    [("gelu", F.gelu), ("relu", F.relu), ("squared_relu", lambda h: F.relu(h) ** 2)],
)
def test_feed_forward_activation(activation, f):
    torch.manual_seed(0)
    ff = fl.FeedForward(8, mult=2, activation=activation)
    x = torch.randn(3, 8)
    want = ff[3](f(ff[1](ff[0](x))))
    assert torch.allclose(ff(x), want, atol=1e-6)


def test_swiglu_is_silu_of_the_first_half_times_the_second_with_the_same_keys():
    torch.manual_seed(0)
    ff = fl.FeedForward(8, mult=2, activation="swiglu", norm="rmsnorm")
    assert list(ff.state_dict()) == ["0.weight", "1.weight", "3.weight"]  # RMSNorm has no bias
    assert ff[1].weight.shape == (32, 8)  # gate and up projections side by side
    x = torch.randn(3, 8)
    h = ff[1](ff[0](x))  # (3, 32)
    want = ff[3](F.silu(h[:, :16]) * h[:, 16:])
    assert torch.allclose(ff(x), want, atol=1e-6)


def test_rmsnorm_is_x_over_root_mean_square():
    norm = RMSNorm(4, eps=0.0)
    x = torch.tensor([[3.0, -4.0, 0.0, 0.0]])  # mean of squares 6.25, root 2.5
    assert torch.allclose(norm(x), x / 2.5)


def test_unknown_variant_names_the_argument():
    with pytest.raises(ValueError, match="activation"):
        fl.FeedForward(8, activation="tanh")
    with pytest.raises(ValueError, match="norm"):
        fl.GatedCrossAttentionBlock(dim=8, norm="batchnorm")
    with pytest.raises(ValueError, match="gate"):
        fl.GatedCrossAttentionBlock(dim=8, gate="matrix")
    with pytest.raises(ValueError, match="xattn_placement"):
        xattn_layers(4, 2, "last")


def test_per_channel_gate_scales_each_channel():
    torch.manual_seed(0)
    block = fl.GatedCrossAttentionBlock(dim=8, dim_head=4, heads=2, gate="per_channel")
    assert block.attn_gate.shape == block.ff_gate.shape == (8,)
    x, media = torch.randn(1, 3, 8), torch.randn(1, 1, 2, 8)
    with torch.no_grad():
        block.attn_gate[:4] = 1.0  # half the channels open, half closed; ff closed
        out = block(x, media)
    assert torch.equal(out[..., 4:], x[..., 4:]) and not torch.equal(out[..., :4], x[..., :4])


def test_dim_visual_reads_wider_media_and_says_so_when_they_do_not_fit():
    block = fl.GatedCrossAttentionBlock(dim=8, dim_head=4, heads=2, dim_visual=12)
    assert block.attn.to_kv.weight.shape == (16, 12)
    assert block(torch.randn(1, 3, 8), torch.randn(1, 2, 2, 12)).shape == (1, 3, 8)
    with pytest.raises(ValueError, match="dim_visual=12"):
        block(torch.randn(1, 3, 8), torch.randn(1, 2, 2, 8))


def test_frame_embeddings_are_added_per_frame_and_frames_flattened():
    torch.manual_seed(0)
    video = fl.PerceiverResampler(dim=8, depth=1, dim_head=4, heads=2, num_latents=3, num_frames=4, media_embedding="none")
    plain = fl.PerceiverResampler(dim=8, depth=1, dim_head=4, heads=2, num_latents=3, media_embedding="none")
    plain.load_state_dict({k: v for k, v in video.state_dict().items() if k != "frame_embs"})
    x = torch.randn(2, 1, 3, 5, 8)  # (b, t, F, v, d)
    with torch.no_grad():
        want = plain((x + video.frame_embs[:3, None]).flatten(2, 3))  # (b, t, F*v, d) with each frame embedded
        assert torch.allclose(video(x), want, atol=1e-6)
    with pytest.raises(ValueError, match="num_frames=4"):  # 5 frames, embeddings for 4
        video(torch.randn(2, 1, 5, 5, 8))


def test_qk_layer_norms_change_the_output_only_when_on():
    torch.manual_seed(0)
    a = fl.PerceiverAttention(dim=8, dim_head=4, heads=2)
    b = fl.PerceiverAttention(dim=8, dim_head=4, heads=2, qk_layer_norms=True)
    b.load_state_dict(a.state_dict(), strict=False)
    x, lat = torch.randn(1, 1, 5, 8), torch.randn(1, 1, 3, 8)
    assert not torch.allclose(a(x, lat), b(x, lat))
    w = b.attention_weights(x, lat)
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_block_placement_first_or_open_flamingo():
    assert xattn_layers(8, 4) == [0, 4] and xattn_layers(8, 4, "open_flamingo") == [3, 7]
    model = Flamingo(FlamingoConfig(lm_depth=4, cross_attn_every=2, xattn_placement="open_flamingo"))
    assert model.xattn_layers == [1, 3] and sorted(model.xattn) == ["1", "3"]
