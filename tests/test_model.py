"""The tiny Flamingo: placement of the gated blocks, freezing, exact equality with the frozen LM at init."""
import pytest
import torch

from flamingo_lite import GatedCrossAttentionBlock, PerceiverResampler
from flamingo_lite.tiny.data import make_dataset
from flamingo_lite.tiny.language_model import LMConfig, TinyLM
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig, count_parameters, freeze, unfreeze
from flamingo_lite.tiny.vision import VisionEncoder, edge_filters

TINY = dict(dim=32, dim_head=8, heads=2, lm_depth=3, lm_heads=2, num_latents=4, resampler_depth=1, vision="handmade")


@pytest.fixture(scope="module")
def batch():
    return make_dataset(4, seed=1)


def test_vision_encoder_grid_and_frozen():
    enc = VisionEncoder(dim=32, pool=4)
    out = enc(torch.rand(2, 3, 3, 16, 16))
    assert out.shape == (2, 3, 16, 32)
    assert out.shape == enc(torch.rand(2, 3, 3, 16, 16)).shape
    assert all(not p.requires_grad for p in enc.parameters())
    assert torch.equal(VisionEncoder(dim=32, seed=0).mix.weight, VisionEncoder(dim=32, seed=0).mix.weight)
    # an edge filter responds to brightness rising in its direction (filter 0: rightwards)
    ramp = torch.zeros(1, 1, 5, 5)
    ramp[..., 3:] = 1.0
    responses = torch.nn.functional.conv2d(ramp, edge_filters(), padding=0).flatten()
    assert int(responses.argmax()) == 0
    with pytest.raises(ValueError, match="colour channels"):
        enc(torch.rand(2, 1, 4, 16, 16))


def test_the_default_follows_the_paper_no_per_image_embedding_and_per_frame_embeddings_for_video(batch):
    """Sec. 2.1: separate images get no embedding (so a prompt may hold more than training's 5), video frames do."""
    model = Flamingo(FlamingoConfig(**TINY))
    assert not hasattr(model.resampler, "media_pos_emb") and not hasattr(model.resampler, "frame_embs")
    many = torch.rand(1, 8, 3, 16, 16)  # more pictures than any training sequence holds
    assert model.encode_images(many).shape == (1, 8, TINY["num_latents"], TINY["dim"])
    video = Flamingo(FlamingoConfig(**TINY, num_frames=3))
    assert video.resampler.frame_embs.shape == (3, TINY["dim"])
    clips = torch.rand(2, 2, 3, 3, 16, 16)  # (b, t, F, 3, H, W): two videos of three frames each
    media = video.encode_images(clips)  # (b, t, L, d)
    assert media.shape == (2, 2, TINY["num_latents"], TINY["dim"])
    with torch.no_grad():  # the frames are told apart: swapping two frames changes the visual tokens
        video.resampler.frame_embs.normal_()
        assert not torch.allclose(video.encode_images(clips[:, :, [1, 0, 2]]), video.encode_images(clips))


def test_language_model_is_causal():
    lm = TinyLM(LMConfig(vocab_size=12, max_len=10, dim=32, depth=2, heads=2))
    tokens = torch.randint(0, 12, (2, 8))
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 12
    assert torch.allclose(lm(tokens)[:, :5], lm(changed)[:, :5])
    with pytest.raises(ValueError, match="max_len"):
        lm(torch.zeros(1, 11, dtype=torch.long))


@pytest.mark.parametrize("every, layers", [(1, [0, 1, 2]), (2, [0, 2]), (3, [0]), (5, [0])])
def test_gated_blocks_before_every_kth_layer(every, layers):
    model = Flamingo(FlamingoConfig(**TINY, cross_attn_every=every))
    assert model.xattn_layers == layers
    assert all(isinstance(b, GatedCrossAttentionBlock) for b in model.xattn.values())
    assert isinstance(model.resampler, PerceiverResampler)


def test_init_logits_equal_frozen_lm_exactly(batch):
    torch.manual_seed(0)
    model = Flamingo(FlamingoConfig(**TINY))
    gates = model.gates()
    assert gates["attn"] == [0.0] * 3 and gates["ff"] == [0.0] * 3
    logits = model(batch.tokens, batch.images, batch.media_locations)
    assert torch.equal(logits, model.lm(batch.tokens))


def test_open_gates_change_logits_and_no_tanh_gate_is_open(batch):
    torch.manual_seed(0)
    model = Flamingo(FlamingoConfig(**TINY))
    with torch.no_grad():
        model.xattn["0"].attn_gate.fill_(0.5)
    assert not torch.equal(model(batch.tokens, batch.images), model.lm(batch.tokens))
    ungated = Flamingo(FlamingoConfig(**TINY, tanh_gate=False))
    assert ungated.gates()["attn"] == [1.0] * 3 and ungated.gates()["ff"] == [1.0] * 3
    assert all(not b.attn_gate.requires_grad for b in ungated.xattn.values())


def test_freezing_and_parameter_counts(batch):
    model = Flamingo(FlamingoConfig(**TINY))
    counts = model.parameter_counts()
    parts = counts["parts"]
    assert parts["lm"]["trainable"] == 0 and parts["vision"]["trainable"] == 0
    assert parts["resampler"]["frozen"] == 0 and parts["xattn"]["frozen"] == 0
    assert counts["trainable"] == parts["resampler"]["total"] + parts["xattn"]["total"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    # at init only the gates get gradient: every block's output is multiplied by tanh(0) = 0
    loss = model(batch.tokens, batch.images).logsumexp(-1).mean()
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad and not name.endswith("_gate"):
            assert p.grad is None or float(p.grad.abs().max()) == 0.0, name
    assert any(float(p.grad.abs().max()) > 0 for n, p in model.named_parameters() if n.endswith("_gate"))
    unfreeze(model.lm)
    assert count_parameters(model.lm)["frozen"] == 0
    freeze(model.lm)
    assert count_parameters(model.lm)["trainable"] == 0 and not model.lm.training


def test_bad_inputs_are_clear(batch):
    model = Flamingo(FlamingoConfig(**TINY))
    with pytest.raises(ValueError, match="exactly one"):
        model(batch.tokens)
    with pytest.raises(ValueError, match="batch size"):
        model(batch.tokens[:2], batch.images[:3])
    with pytest.raises(ValueError, match="num_media_embeds"):  # flamingo-pytorch's per-image embedding caps them
        Flamingo(FlamingoConfig(**TINY, media_embedding="per_media"))(batch.tokens, torch.rand(4, 6, 3, 16, 16))
    with pytest.raises(ValueError, match=r"frames, 3, height, width"):
        Flamingo(FlamingoConfig(**TINY, num_frames=2))(batch.tokens, batch.images)
    with pytest.raises(ValueError, match="cross_attn_every"):
        Flamingo(FlamingoConfig(**TINY, cross_attn_every=0))


# ------------------------------------------------------------------ the NaN contract through the whole tiny model
def open_model(only_attend_immediate_media: bool) -> Flamingo:
    """A Flamingo with its gates half open, so the pictures reach the text (at init tanh(0) = 0 would hide them)."""
    torch.manual_seed(0)
    model = Flamingo(FlamingoConfig(**TINY, only_attend_immediate_media=only_attend_immediate_media)).eval()
    with torch.no_grad():
        for block in model.xattn.values():
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(0.5)
    return model


# two rows, three pictures slots each; <image> (id 1) at 0, 5, 10 in row 0 and at 2, 7 in row 1 (its 3rd picture unused)
NAN_TOKENS = torch.tensor([[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5],
                           [2, 3, 1, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 8]])


@pytest.mark.parametrize("immediate", [True, False], ids=["immediate", "all-previous"])
@pytest.mark.parametrize("row, picture, first_row_that_sees_it", [(0, 1, 5), (0, 0, 0), (1, 1, 7), (1, 2, None)],
                         ids=["2nd-picture", "1st-picture", "other-row", "picture-without-marker"])
def test_a_nan_picture_reaches_only_the_rows_allowed_to_see_it(immediate, row, picture, first_row_that_sees_it):
    """A NaN in one picture reaches the rows that see it (through the cross-attention) and every row after them
    (through the causal self-attention), and no other row: not the text before it, not the other sequence."""
    model = open_model(immediate)
    images = torch.rand(2, 3, 3, 16, 16)
    clean = model(NAN_TOKENS, images)  # (2, 15, V)
    images[row, picture, 1, 4, 7] = float("nan")  # one pixel
    out = model(NAN_TOKENS, images)  # (2, 15, V)
    poisoned = torch.zeros(2, 15, dtype=torch.bool)
    if first_row_that_sees_it is not None:
        poisoned[row, first_row_that_sees_it:] = True
    assert torch.equal(out.isnan().all(dim=-1), poisoned)  # those rows NaN in every logit ...
    assert not out[~poisoned].isnan().any()  # ... and no NaN anywhere else
    torch.testing.assert_close(out[~poisoned], clean[~poisoned], rtol=1e-5, atol=1e-5)  # the rest as without it


@pytest.mark.parametrize("position", [0, 3, 7])
def test_a_nan_token_reaches_its_own_row_and_the_later_ones_only(position):
    """A non-finite hidden state at one position (here: a token whose embedding is NaN) poisons that row and every
    later one, and leaves every earlier row exactly as it was: on the CPU the fused causal kernel alone would
    spread a NaN value to the earlier rows too."""
    torch.manual_seed(0)
    lm = TinyLM(LMConfig(vocab_size=12, max_len=10, dim=32, depth=2, heads=2)).eval()
    tokens = torch.randint(1, 12, (2, 8))
    clean = lm(tokens)  # (2, 8, V)
    tokens[0, position] = 0
    with torch.no_grad():
        lm.tok_emb.weight[0] = float("nan")
    out = lm(tokens)  # (2, 8, V)
    assert out[0, position:].isnan().all() and not out[0, :position].isnan().any()
    assert torch.equal(out[0, :position], clean[0, :position]) and torch.equal(out[1], clean[1])


def test_cached_generation_keeps_the_nan_contract():
    """The KV-cached decoder attends through the same function: a NaN picture gives the same NaN rows with the
    cache as without it, and a clean picture the same logits."""
    from flamingo_lite.tiny.generation import CachedDecoder, UncachedDecoder

    model = open_model(True)
    images = torch.rand(2, 3, 3, 16, 16)
    images[1, 0, 0, 0, 0] = float("nan")  # row 1's first picture: every token after its marker (2) is NaN
    prompt, new = NAN_TOKENS[:, :10], torch.tensor([[2], [3]])  # two <image> in each prompt row; then a word
    steps = []
    for decoder in (UncachedDecoder(model, images), CachedDecoder(model, images)):
        steps.append((decoder.prefill(prompt), decoder.step(new)))  # (2, V) each
    for uncached, cached in zip(*steps):
        assert torch.equal(cached.isnan(), uncached.isnan())
        assert cached[1].isnan().all() and not cached[0].isnan().any()
        torch.testing.assert_close(cached[0], uncached[0], rtol=1e-5, atol=1e-5)
