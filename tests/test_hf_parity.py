"""flamingo_lite.hf.Flamingo against OpenFlamingo 2.0.1's own model, tiny random configs, nothing downloaded.

OpenFlamingo's `Flamingo` and `FlamingoLMMixin` are loaded from their files (peers.py) and put around tiny random
transformers LMs exactly as its factory does (hf_tiny.open_flamingo_around), with an open_clip-like vision encoder;
gates and norms are randomised, its whole state_dict goes into ours through `load_open_flamingo`, and both run on
batches with several pictures per row and text before the first one. With transformers 5.24 OpenFlamingo's model
runs around GPT-NeoX, Llama, OPT and MPT. Around GPT-2 it fails: GPT-2 calls its blocks with positional arguments,
which OpenFlamingo's `FlamingoLayer.forward(lang_x, attention_mask=None, **kwargs)` cannot take; there the oracle is
OpenFlamingo's own layers put before GPT-2's blocks by hooks. OpenFlamingo's `generate` fails too
(`FlamingoLMMixin.forward()` needs `attention_mask`, which transformers 5 no longer passes), so the oracle for
generation is a greedy loop over its forward.
"""
import copy

import pytest
import torch

pytest.importorskip("transformers", reason="flamingo_lite.hf needs transformers (the hf extra)")

from flamingo_lite import hf  # noqa: E402

from hf_tiny import EOC_ID, MEDIA_ID, PAD_ID, OpenClipLike, TinyVisual, interleaved_batch, language_model, open_flamingo_around, randomise  # noqa: E402
from hf_tiny import one_thread  # noqa: E402
from peers import open_flamingo_model  # noqa: E402

one_thread = pytest.fixture(autouse=True)(one_thread)

OF, OF_MISSING = open_flamingo_model()
pytestmark = pytest.mark.skipif(OF is None, reason=f"OpenFlamingo parity skipped: {OF_MISSING}")

PATHS = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "llama": "model.layers",
         "opt": "model.decoder.layers", "mpt": "transformer.blocks"}
RUNS_IN_OPEN_FLAMINGO = ("gpt_neox", "llama", "opt", "mpt")
VIS_DIM = 24
TOLERANCE = 1e-5  # fp32, logits of order 1


def pair(kind, *, placement="open_flamingo", every=2, layers=4):
    """(OpenFlamingo's model with random gates and norms, ours with its weights, the load report)."""
    lm, visual = language_model(kind, layers=layers), TinyVisual(VIS_DIM)
    theirs = randomise(open_flamingo_around(OF, lm, visual, layers_path=PATHS[kind], vis_dim=VIS_DIM, every=every, placement=placement))
    ours = hf.Flamingo(OpenClipLike(copy.deepcopy(visual)), copy.deepcopy(lm), EOC_ID, MEDIA_ID, vis_dim=VIS_DIM,
                       cross_attn_every_n_layers=every, xattn_placement=placement).eval()
    report = ours.load_open_flamingo(theirs.state_dict())
    return theirs, ours, report


def their_logits(model, vision_x, lang_x):
    with torch.no_grad():
        return model(vision_x, lang_x, attention_mask=torch.ones_like(lang_x)).logits


@pytest.mark.parametrize("kind", RUNS_IN_OPEN_FLAMINGO)
@pytest.mark.parametrize("placement", ["open_flamingo", "first"])
def test_logits_equal_open_flamingos_after_load_open_flamingo(kind, placement):
    theirs, ours, report = pair(kind, placement=placement)
    assert report.unused == [] and report.missing == []  # every key used, both ways
    vision_x, lang_x = interleaved_batch()
    want = their_logits(theirs, vision_x, lang_x)
    with torch.no_grad():
        got = ours(vision_x, lang_x).logits
    difference = (got - want).abs().max().item()
    print(f"parity {kind:9s} {placement:13s} max |ours - OpenFlamingo| = {difference:.1e}")
    assert difference <= TOLERANCE
    other = vision_x.clone()
    other[:, 0] = torch.rand_like(other[:, 0])
    assert (their_logits(theirs, other, lang_x) - want).abs().max() > 1e-3  # the pictures matter: the test can fail
    assert ours.xattn_layers == ([1, 3] if placement == "open_flamingo" else [0, 2])


def test_gpt2_fails_in_open_flamingo_and_matches_its_layers_put_around_gpt2():
    lm, visual = language_model("gpt2", layers=4), TinyVisual(VIS_DIM)
    vision_x, lang_x = interleaved_batch()
    broken = open_flamingo_around(OF, lm, visual, layers_path="transformer.h", vis_dim=VIS_DIM, every=2)
    with pytest.raises(TypeError, match="positional arguments"):
        their_logits(broken, vision_x, lang_x)

    # the oracle: transformers' own GPT-2, with OpenFlamingo's resampler and blocks put before blocks 1 and 3 by hooks
    plain = copy.deepcopy(lm)
    resampler = OF.helpers.PerceiverResampler(dim=VIS_DIM)
    blocks = {i: OF.helpers.GatedCrossAttentionBlock(dim=32, dim_visual=VIS_DIM) for i in (1, 3)}
    for block in blocks.values():
        randomise(block)
    randomise(resampler)
    visual.output_tokens = True
    tokens = visual(vision_x.flatten(0, 2))[1].reshape(2, 3, 1, 16, VIS_DIM)  # (B, T, F, v, d)
    media = resampler(tokens)  # (B, T, 64, d)
    locations = lang_x == MEDIA_ID
    for i, block in blocks.items():
        plain.transformer.h[i].register_forward_pre_hook(
            lambda module, args, block=block: (block(args[0], media, media_locations=locations), *args[1:]))
    with torch.no_grad():
        want = plain(input_ids=lang_x).logits

    ours = hf.Flamingo(OpenClipLike(copy.deepcopy(visual)), copy.deepcopy(lm), EOC_ID, MEDIA_ID, vis_dim=VIS_DIM,
                       cross_attn_every_n_layers=2).eval()
    ours.perceiver.load_state_dict(resampler.state_dict())  # OpenFlamingo's helpers have flamingo_lite's keys
    for i, block in blocks.items():
        ours.decoder_layers()[i].gated_cross_attn_layer.load_state_dict(block.state_dict())
    with torch.no_grad():
        got = ours(vision_x, lang_x).logits
    difference = (got - want).abs().max().item()
    print(f"parity gpt2      open_flamingo max |ours - OpenFlamingo's layers| = {difference:.1e}")
    assert difference <= TOLERANCE


@pytest.mark.parametrize("kind", ["gpt_neox", "llama"])
def test_greedy_generation_equals_a_greedy_loop_over_open_flamingos_forward(kind):
    theirs, ours, _ = pair(kind, every=1, layers=2)
    vision_x, lang_x = interleaved_batch()
    steps = 8
    sequence, done = lang_x, torch.zeros(2, dtype=torch.bool)
    for _ in range(steps):  # transformers' greedy search, by hand, on OpenFlamingo's forward (no cache)
        logits = their_logits(theirs, vision_x, sequence)[:, -1]  # (B, V)
        logits[:, MEDIA_ID] = float("-inf")  # flamingo_lite never writes <image>; OpenFlamingo would see picture 1 then
        token = torch.where(done, PAD_ID, logits.argmax(dim=-1))  # (B,)
        sequence = torch.cat((sequence, token[:, None]), dim=1)
        done |= token == EOC_ID
        if done.all():
            break
    with pytest.raises(TypeError, match="attention_mask"):
        theirs.generate(vision_x, lang_x, max_new_tokens=2)  # OpenFlamingo's own generate, with transformers 5
    got = ours.generate(vision_x, lang_x, max_new_tokens=steps, do_sample=False, pad_token_id=PAD_ID)
    assert torch.equal(got, sequence)


@pytest.mark.parametrize("kind", RUNS_IN_OPEN_FLAMINGO)
def test_to_open_flamingo_loads_strictly_and_gives_the_same_logits(kind):
    _, ours, _ = pair(kind)
    randomise(ours, seed=5)  # new weights, so the round trip carries ours, not a copy of theirs
    fresh = open_flamingo_around(OF, language_model(kind, layers=4, seed=9), TinyVisual(VIS_DIM),
                                 layers_path=PATHS[kind], vis_dim=VIS_DIM, every=2)
    fresh.load_state_dict(ours.to_open_flamingo(), strict=True)
    vision_x, lang_x = interleaved_batch(seed=3)
    with torch.no_grad():
        got = ours(vision_x, lang_x).logits
    assert (their_logits(fresh, vision_x, lang_x) - got).abs().max() <= TOLERANCE
    back = hf.Flamingo(OpenClipLike(TinyVisual(VIS_DIM)), language_model(kind, layers=4, seed=7), EOC_ID, MEDIA_ID,
                       vis_dim=VIS_DIM, cross_attn_every_n_layers=2).eval()
    report = back.load_open_flamingo(fresh.state_dict())
    assert report.unused == [] and report.missing == []
    with torch.no_grad():
        assert torch.equal(back(vision_x, lang_x).logits, got)


def test_a_released_checkpoint_loads_its_trained_part():
    """checkpoint.pt holds what OpenFlamingo's `filter_state_dict_to_trainable` keeps: the resampler, the blocks under
    the LM's layer path, and the embeddings (every key with "embed" in its name: with the transformers 4 of
    OpenFlamingo's releases, GPT-NeoX's input embedding and its head, `embed_out`, which transformers 5 calls lm_head)."""
    theirs, _, _ = pair("gpt_neox")
    trained = {k: v for k, v in theirs.state_dict().items()
               if k.startswith("perceiver.") or ".gated_cross_attn_layer." in k and not k.startswith("lang_encoder.gated_cross_attn_layers")
               or "embed" in k}
    trained["lang_encoder.embed_out.weight"] = theirs.state_dict()["lang_encoder.lm_head.weight"]  # its released name
    assert "lang_encoder.gpt_neox.embed_in.weight" in trained
    lm, visual = language_model("gpt_neox", layers=4), TinyVisual(VIS_DIM)  # the same frozen parts (seed 0)
    ours = hf.Flamingo(OpenClipLike(visual), lm, EOC_ID, MEDIA_ID, vis_dim=VIS_DIM, cross_attn_every_n_layers=2).eval()
    ours.vision_encoder.load_state_dict(theirs.vision_encoder.state_dict())  # the frozen CLIP the user loads separately
    report = ours.load_open_flamingo({"model_state_dict": {f"module.{k}": v for k, v in trained.items()}})
    assert report.unused == [] and len(report.loaded) == len(trained) and "lang_encoder.lm_head.weight" in report.loaded
    assert report.missing and all(".decoder_layer." in k or k.startswith("vision_encoder.") or "final_layer_norm" in k
                                  for k in report.missing)  # only the frozen parts
    vision_x, lang_x = interleaved_batch()
    with torch.no_grad():
        assert (ours(vision_x, lang_x).logits - their_logits(theirs, vision_x, lang_x)).abs().max() <= TOLERANCE


def test_a_checkpoint_that_does_not_fit_names_the_key_and_both_shapes():
    theirs, _, _ = pair("llama")
    ours = hf.Flamingo(OpenClipLike(TinyVisual(VIS_DIM)), language_model("llama", layers=4, vocab=42), EOC_ID, MEDIA_ID,
                       vis_dim=VIS_DIM, cross_attn_every_n_layers=2)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError, match=r"checkpoint key 'lang_encoder.model.embed_tokens.weight' has shape \(40, 32\), "
                                         r"but this model's 'lang_encoder.model.embed_tokens.weight' is \(42, 32\)"):
        ours.load_open_flamingo(theirs.state_dict())
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())  # nothing was loaded


def test_to_open_flamingo_refuses_what_open_flamingo_cannot_build():
    _, ours, _ = pair("llama")
    ours_first = hf.Flamingo(OpenClipLike(TinyVisual(VIS_DIM)), language_model("llama", layers=4), EOC_ID, MEDIA_ID,
                             vis_dim=VIS_DIM, cross_attn_every_n_layers=2, xattn_placement="first")
    with pytest.raises(ValueError, match=r"OpenFlamingo puts its blocks before layers \[1, 3\]"):
        ours_first.to_open_flamingo()
    previous = hf.Flamingo(OpenClipLike(TinyVisual(VIS_DIM)), language_model("llama"), EOC_ID, MEDIA_ID,
                           vis_dim=VIS_DIM, only_attend_immediate_media=False)
    with pytest.raises(ValueError, match="only_attend_immediate_media=True"):
        previous.to_open_flamingo()
    small = hf.Flamingo(OpenClipLike(TinyVisual(VIS_DIM)), language_model("llama"), EOC_ID, MEDIA_ID, vis_dim=VIS_DIM,
                        perceiver_kwargs=dict(depth=1))
    with pytest.raises(ValueError, match="perceiver_kwargs"):
        small.to_open_flamingo()
    assert set(ours.to_open_flamingo()) >= set(ours.state_dict())


def test_all_previous_media_agree_except_where_open_flamingo_looks_ahead():
    """OpenFlamingo's all-previous mode lets text before the first picture average over every picture (docs/interop.md),
    which changes that text and, through the LM's self-attention, all that follows it; a row that starts with a
    picture agrees."""
    theirs, _, _ = pair("gpt_neox", every=1, layers=2)
    for block in theirs.lang_encoder.gated_cross_attn_layers:
        block.attn.only_attend_immediate_media = False
    ours = hf.Flamingo(OpenClipLike(TinyVisual(VIS_DIM)), language_model("gpt_neox", layers=2), EOC_ID, MEDIA_ID,
                       vis_dim=VIS_DIM, only_attend_immediate_media=False).eval()
    ours.load_open_flamingo(theirs.state_dict())
    vision_x, lang_x = interleaved_batch()  # row 0 starts with 2 words before its first picture
    with torch.no_grad():
        got, want = ours(vision_x, lang_x).logits, their_logits(theirs, vision_x, lang_x)
    assert (got[1] - want[1]).abs().max() <= TOLERANCE
    assert (got[0, :2] - want[0, :2]).abs().max() > 1e-3  # OpenFlamingo's look into the future
