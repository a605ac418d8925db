"""The resampler's media embedding: flamingo-pytorch's per-media reading by default, or none (the paper's for images)."""
import pytest
import torch

from flamingo_lite import PerceiverResampler


def test_default_keeps_flamingo_pytorch_parameter_and_cap():
    resampler = PerceiverResampler(dim=16, depth=1, dim_head=8, heads=2, num_latents=4, num_media_embeds=2)
    assert "media_pos_emb" in resampler.state_dict()
    with pytest.raises(ValueError, match="num_media_embeds=2"):
        resampler(torch.randn(1, 3, 5, 16))


def test_none_has_no_embedding_and_no_cap():
    torch.manual_seed(0)
    resampler = PerceiverResampler(dim=16, depth=1, dim_head=8, heads=2, num_latents=4, media_embedding="none")
    assert not any("media_pos_emb" in key for key in resampler.state_dict())
    x = torch.randn(2, 33, 5, 16)  # (b, t, n, d): more media than num_media_embeds
    out = resampler(x)  # (2, 33, 4, 16)
    assert out.shape == (2, 33, 4, 16)
    # without an embedding each media is resampled on its own: the same picture gives the same tokens anywhere
    alone = resampler(x[:, 7])  # (2, 1, 4, 16)
    torch.testing.assert_close(out[:, 7:8], alone, atol=1e-6, rtol=1e-5)


def test_per_media_embedding_tells_positions_apart():
    torch.manual_seed(0)
    resampler = PerceiverResampler(dim=16, depth=1, dim_head=8, heads=2, num_latents=4, num_media_embeds=2)
    picture = torch.randn(1, 1, 5, 16)  # (b, 1, n, d)
    out = resampler(picture.expand(1, 2, 5, 16))  # (1, 2, 4, 16): the same picture at times 0 and 1
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_unknown_media_embedding_is_refused():
    with pytest.raises(ValueError, match="media_embedding must be one of"):
        PerceiverResampler(dim=16, depth=1, media_embedding="per_frame_typo")
