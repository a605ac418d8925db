"""A whole IDEFICS model, tiny and random (transformers' IdeficsForVisionText2Text), converted by from_idefics.

IDEFICS takes its image mask from its processor; here it is built from the `<image>` tokens with the immediate rule
(each token sees the latest picture before it, none before the first), which is what the processor gives for text
without an end-of-sequence token inside it.
"""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason="flamingo_lite.hf needs transformers (the hf extra)")

from flamingo_lite import hf  # noqa: E402

from hf_tiny import one_thread  # noqa: E402

one_thread = pytest.fixture(autouse=True)(one_thread)

VOCAB, EXTRA = 40, 2
IMAGE, END = VOCAB, VOCAB + 1  # IDEFICS's added tokens live after the vocabulary, in their own matrices


def idefics(alpha_type="float", qk=False, interval=2):
    from transformers import IdeficsConfig, IdeficsForVisionText2Text

    torch.manual_seed(0)
    config = IdeficsConfig(
        vocab_size=VOCAB, additional_vocab_size=EXTRA, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, cross_layer_interval=interval, use_resampler=True, alpha_type=alpha_type, qk_layer_norms=qk,
        max_position_embeddings=64,
        vision_config=dict(embed_dim=32, image_size=16, patch_size=4, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=8, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=16, qk_layer_norms_perceiver=qk),
    )
    model = IdeficsForVisionText2Text(config).eval()
    with torch.no_grad():  # gates open, norms random, the new layers' matrices 10x IDEFICS's initial 0.02: every
        for name, p in model.named_parameters():  # part of the conversion shows in the logits
            if "alpha" in name:
                p.copy_(torch.rand_like(p) * 2 - 1)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
            elif p.ndim == 2 and ("gated_cross_attn_layers" in name or "perceiver" in name):
                p.mul_(10)
    return model


def inputs():
    ids = torch.tensor([[5, 6, IMAGE, 7, 8, 9, IMAGE, 10, 11, END], [IMAGE, 5, 6, 7, IMAGE, 8, 9, 10, 11, 12]])
    pixels = torch.rand(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # (b, images, 3, H, W)
    time = (ids == IMAGE).long().cumsum(dim=1)  # (b, n): 0 before the first picture
    image_attention_mask = F.one_hot(time, 3)[..., 1:]  # (b, n, images): the latest picture only
    return ids, pixels, image_attention_mask


@pytest.mark.parametrize("alpha_type,qk,interval", [("float", False, 2), ("vector", True, 2), ("vector", False, 1)])
def test_from_idefics_gives_idefics_logits(alpha_type, qk, interval):
    model = idefics(alpha_type, qk, interval)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, pixels, mask = inputs()
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=pixels, image_attention_mask=mask).logits  # (b, n, V + extra)
    ours = hf.from_idefics(model, media_token_id=IMAGE, eoc_token_id=END)
    with torch.no_grad():
        got = ours(pixels[:, :, None], ids).logits  # vision_x (b, T_img, F=1, 3, H, W)
        other = pixels.clone()
        other[:, 0] = torch.rand_like(other[:, 0])
        moved = ours(other[:, :, None], ids).logits
    difference = (got - want).abs().max().item()
    print(f"parity IDEFICS alpha_type={alpha_type} qk_layer_norms={qk} cross_layer_interval={interval}: {difference:.1e}")
    assert got.shape == want.shape == (2, 10, VOCAB + EXTRA) and difference <= 1e-4
    assert (moved - got).abs().max() > 1e-3  # the pictures matter, so the comparison can fail
    assert ours.xattn_layers == list(range(0, 4, interval)) and ours.vision_kind == "hidden_states"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # IDEFICS itself is untouched


def test_from_idefics_says_what_it_cannot_take():
    model = idefics()
    model.config.use_resampler = False
    with pytest.raises(ValueError, match="use_resampler=False"):
        hf.from_idefics(model, media_token_id=IMAGE, eoc_token_id=END)
    with pytest.raises(TypeError, match="IdeficsForVisionText2Text"):
        hf.from_idefics(torch.nn.Linear(2, 2), media_token_id=IMAGE, eoc_token_id=END)
