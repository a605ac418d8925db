"""flamingo_lite.hf.Flamingo around tiny random transformers LMs: exactness, generation, the NaN contract, errors.

Parity with OpenFlamingo's own model is in test_hf_parity.py, with IDEFICS in test_hf_idefics.py. Every model here is
built from a tiny random config (hf_tiny.py); nothing is downloaded.
"""
import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers", reason="flamingo_lite.hf needs transformers (the hf extra)")

from flamingo_lite import hf  # noqa: E402
from flamingo_lite.tiny.contrastive import load_encoders  # noqa: E402

from hf_tiny import EOC_ID, LM_KINDS, MEDIA_ID, PAD_ID, OpenClipLike, TinyVisual, interleaved_batch, language_model, one_thread, randomise  # noqa: E402

one_thread = pytest.fixture(autouse=True)(one_thread)

PATHS = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "llama": "model.layers",
         "opt": "model.decoder.layers", "mpt": "transformer.blocks"}


# smaller than OpenFlamingo's sizes (depth 6, 8 heads of 64, 64 latents), which test_hf_parity.py uses: fast tests
SMALL = dict(perceiver_kwargs=dict(depth=1, dim_head=8, heads=2, num_latents=4), xattn_kwargs=dict(dim_head=8, heads=2))


def flamingo(kind="gpt2", *, layers=2, every=1, placement="open_flamingo", immediate=True, open_gates=True, attn=None, **kw):
    """(our Flamingo around a tiny LM and TinyVisual, a copy of the LM before wrapping)."""
    lm = language_model(kind, layers=layers, attn=attn)
    plain = copy.deepcopy(lm)
    model = hf.Flamingo(OpenClipLike(TinyVisual(24)), lm, EOC_ID, MEDIA_ID, vis_dim=24, cross_attn_every_n_layers=every,
                        xattn_placement=placement, only_attend_immediate_media=immediate, **{**SMALL, **kw}).eval()
    if open_gates:
        randomise(model)
    return model, plain


# ---------------------------------------------------------------- the model is its LM, then sees pictures


@pytest.mark.parametrize("kind", LM_KINDS)
def test_untrained_flamingo_is_exactly_its_language_model(kind):
    model, plain = flamingo(kind, open_gates=False)
    vision_x, lang_x = interleaved_batch()
    with torch.no_grad():
        assert torch.equal(model(vision_x, lang_x).logits, plain(input_ids=lang_x).logits)
    assert model.decoder_layers_attr_name == PATHS[kind]


@pytest.mark.parametrize("kind", LM_KINDS)
def test_a_picture_changes_exactly_the_text_from_its_marker_on(kind):
    model, plain = flamingo(kind)
    vision_x, lang_x = interleaved_batch()
    other = vision_x.clone()
    other[0, 1] = torch.rand_like(other[0, 1])  # row 0's second picture
    with torch.no_grad():
        a, b = model(vision_x, lang_x).logits, model(other, lang_x).logits
        text_only = plain(input_ids=lang_x).logits
    marker = int((lang_x[0] == MEDIA_ID).nonzero()[1])
    assert torch.equal(a[0, :marker], b[0, :marker])  # text before the picture never sees it
    assert (a[0, marker:] - b[0, marker:]).abs().amax(dim=-1).min() > 1e-4  # every token from its marker on does
    assert torch.equal(a[1], b[1])  # nor does the other row
    assert (a[0, marker:] - text_only[0, marker:]).abs().max() > 1e-3  # the pictures matter


def test_placements_put_blocks_before_the_right_layers():
    ours, _ = flamingo("llama", layers=4, every=2, placement="open_flamingo")
    paper, _ = flamingo("llama", layers=4, every=2, placement="first")
    assert ours.xattn_layers == [1, 3] and paper.xattn_layers == [0, 2]
    has_block = [layer.gated_cross_attn_layer is not None for layer in paper.decoder_layers()]
    assert has_block == [True, False, True, False]
    with pytest.raises(ValueError, match="xattn_placement"):
        flamingo("llama", placement="last")


class NoKnownLayers(nn.Module):
    """A causal LM whose decoder layers live where no table looks: `body.stack`."""

    def __init__(self):
        super().__init__()
        inner = language_model("llama")
        self.config = inner.config
        self.body = nn.Module()
        self.body.stack = inner.model.layers
        self.inner = inner
        del inner.model.layers

    def get_input_embeddings(self):
        return self.inner.model.embed_tokens


def test_layers_that_cannot_be_found_name_the_argument():
    with pytest.raises(ValueError, match="decoder_layers_attr_name"):
        hf.Flamingo(OpenClipLike(TinyVisual(24)), NoKnownLayers(), EOC_ID, MEDIA_ID, vis_dim=24)
    model = hf.Flamingo(OpenClipLike(TinyVisual(24)), NoKnownLayers(), EOC_ID, MEDIA_ID, vis_dim=24,
                        decoder_layers_attr_name="body.stack")
    assert model.xattn_layers == [0, 1] and isinstance(model.lang_encoder.body.stack[0], hf.FlamingoDecoderLayer)
    with pytest.raises(ValueError, match="decoder_layers_attr_name='body.nothing' names nothing"):
        hf.Flamingo(OpenClipLike(TinyVisual(24)), NoKnownLayers(), EOC_ID, MEDIA_ID, vis_dim=24,
                    decoder_layers_attr_name="body.nothing")


def test_the_wrapper_passes_attributes_of_the_layer_through():
    model, plain = flamingo("llama")
    wrapped, original = model.decoder_layers()[0], plain.model.layers[0]
    assert wrapped.self_attn.layer_idx == original.self_attn.layer_idx == 0  # as Qwen2 reads `attention_type`
    with pytest.raises(AttributeError):
        wrapped.no_such_attribute


# ---------------------------------------------------------------- errors before any computation


class Counting(nn.Module):
    """An open_clip-like visual that counts its calls and the pictures it saw."""

    def __init__(self):
        super().__init__()
        self.inner = TinyVisual(24)
        self.inner.output_tokens = True
        self.calls, self.pictures = 0, 0

    def forward(self, images):
        self.calls += 1
        self.pictures += images.shape[0]
        return self.inner(images)


def counting_flamingo(kind="gpt2"):
    visual = Counting()
    model = hf.Flamingo(OpenClipLike(visual), language_model(kind), EOC_ID, MEDIA_ID, vis_dim=24, **SMALL).eval()
    return randomise(model), visual


def test_bad_input_is_refused_before_any_computation():
    model, visual = counting_flamingo()
    vision_x, lang_x = interleaved_batch()
    with pytest.raises(ValueError, match=r"vision_x must have rank 6, shape \(B, T_img, F, C, H, W\); got rank 5"):
        model(vision_x[:, :, 0], lang_x)
    with pytest.raises(ValueError, match=r"lang_x has more <image> tokens than vision_x has pictures \(vision_x.shape\[1\] = 2\)"
                                         r".*marks 3 media in batch row 0"):
        model(vision_x[:, :2], lang_x)
    with pytest.raises(ValueError, match="more <image> tokens than vision_x has pictures"):
        model.generate(vision_x[:, :2], lang_x, max_new_tokens=2)
    with pytest.raises(TypeError, match=r"lang_x must be a long tensor of token ids, shape \(B, n\)"):
        model(vision_x, lang_x.float())
    with pytest.raises(ValueError, match="same batch"):
        model(vision_x[:1], lang_x)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(vision_x, lang_x + 100)
    with pytest.raises(ValueError, match=r"attention_mask must have lang_x's shape \(2, 14\), got \(2, 13\)"):
        model(vision_x, lang_x, attention_mask=torch.ones(2, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="vision_x is torch.float64"):
        model(vision_x.double(), lang_x)
    assert visual.calls == 0  # not one picture was encoded


def test_bad_construction_says_what_to_pass():
    vision, _, _ = load_encoders()
    with pytest.raises(ValueError, match="vis_dim=24, but the vision encoder's tokens are 64 wide; pass vis_dim=64"):
        hf.Flamingo(vision, language_model("gpt2"), EOC_ID, MEDIA_ID, vis_dim=24)
    with pytest.raises(ValueError, match=r"media_token_id must be a token id in \[0, 40\)"):
        hf.Flamingo(vision, language_model("gpt2"), EOC_ID, 40, vis_dim=64)
    with pytest.raises(TypeError, match="is not one Flamingo can read tokens from"):
        hf.Flamingo(nn.Linear(2, 2), language_model("gpt2"), EOC_ID, MEDIA_ID, vis_dim=64)
    model, _ = flamingo("gpt2")
    with pytest.raises(ValueError, match="already has Flamingo layers"):
        hf.Flamingo(vision, model.lang_encoder, EOC_ID, MEDIA_ID, vis_dim=64)

    class PooledOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = nn.Conv2d(3, 24, 4, 4)

    model = hf.Flamingo(PooledOnly(), language_model("gpt2"), EOC_ID, MEDIA_ID, vis_dim=24)
    with pytest.raises(ValueError, match=r"returned a single tensor; Flamingo needs its tokens: \(pooled, tokens\)"):
        model(*interleaved_batch())


def test_the_layers_without_conditioning_say_how_to_run_them():
    model, _ = flamingo("gpt2")
    _, lang_x = interleaved_batch()
    with pytest.raises(ValueError, match="has not been conditioned on pictures"):
        model.lang_encoder(input_ids=lang_x)


# ---------------------------------------------------------------- generation


def greedy_logits(model, vision_x, lang_x, steps=6, **kw):
    out = model.generate(vision_x, lang_x, max_new_tokens=steps, do_sample=False, pad_token_id=PAD_ID,
                         output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.logits, dim=1)  # (B, n + s), (B, s, V)


@pytest.mark.parametrize("kind,immediate", [("gpt2", True), ("gpt2", False), ("gpt_neox", True), ("llama", False), ("opt", True), ("mpt", True)])
def test_cached_generation_gives_the_full_forward_logits(kind, immediate):
    model, _ = flamingo(kind, layers=3, immediate=immediate)
    vision_x, lang_x = interleaved_batch()
    sequences, logits = greedy_logits(model, vision_x, lang_x, eos_token_id=None)
    n = lang_x.shape[1]
    with torch.no_grad():
        full = model(vision_x, sequences).logits  # (B, n + s, V): everything again, no cache
    torch.testing.assert_close(logits, full[:, n - 1 : -1], atol=1e-5, rtol=1e-5)
    assert (sequences[:, n:] != MEDIA_ID).all()


def test_generation_encodes_the_pictures_once_and_never_writes_image():
    model, visual = counting_flamingo("llama")
    vision_x, lang_x = interleaved_batch()
    with torch.no_grad():
        model.lang_encoder.lm_head.weight[MEDIA_ID] *= 50  # <image> would win every step
    out = model.generate(vision_x, lang_x, max_new_tokens=5, num_beams=3, pad_token_id=PAD_ID, eos_token_id=None)
    assert visual.calls == 1 and visual.pictures == 2 * 3  # once, for the batch's pictures, not once per beam
    assert out.shape == (2, 19) and (out[:, 14:] != MEDIA_ID).all()


def test_sampling_returns_several_sequences_per_row_from_pictures_encoded_once():
    model, visual = counting_flamingo("gpt_neox")
    vision_x, lang_x = interleaved_batch()
    torch.manual_seed(0)
    out = model.generate(vision_x, lang_x, max_new_tokens=3, do_sample=True, num_return_sequences=2, pad_token_id=PAD_ID)
    assert out.shape[0] == 4 and torch.equal(out[::2, :14], lang_x) and torch.equal(out[1::2, :14], lang_x)
    assert visual.calls == 1 and visual.pictures == 2 * 3


def test_beam_search_with_the_cache_equals_beam_search_without():
    model, _ = flamingo("gpt_neox", layers=3)
    vision_x, lang_x = interleaved_batch()
    kw = dict(max_new_tokens=4, num_beams=3, pad_token_id=PAD_ID, eos_token_id=None)
    assert torch.equal(model.generate(vision_x, lang_x, **kw), model.generate(vision_x, lang_x, use_cache=False, **kw))


def test_generation_stops_at_the_end_of_chunk_token():
    model, _ = flamingo("gpt2")
    vision_x, lang_x = interleaved_batch()
    free = model.generate(vision_x, lang_x, max_new_tokens=6, do_sample=False, pad_token_id=PAD_ID, eos_token_id=None)
    model.eoc_token_id = int(free[0, 14])  # call the first token row 0 writes <|endofchunk|>: it must stop there
    stopped = model.generate(vision_x, lang_x, max_new_tokens=6, do_sample=False, pad_token_id=PAD_ID)
    assert torch.equal(stopped[0, :15], free[0, :15]) and (stopped[0, 15:] == PAD_ID).all()
    assert not torch.equal(free[0, 15:], stopped[0, 15:])  # without the stop it went on


def test_a_forward_with_the_cache_continues_the_sequence():
    model, _ = flamingo("llama")
    vision_x, lang_x = interleaved_batch()
    with torch.no_grad():
        first = model(vision_x, lang_x[:, :9], use_cache=True, clear_conditioned_layers=False)
        rest = model(None, lang_x[:, 9:], past_key_values=first.past_key_values, use_cache=True)
        full = model(vision_x, lang_x).logits
    torch.testing.assert_close(torch.cat((first.logits, rest.logits), dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no pictures are kept"):
        model(None, lang_x)
    with torch.no_grad():  # row 0 read 2 of its 3 pictures' markers in 9 tokens; 2 more markers are one too many
        first = model(vision_x, lang_x[:, :9], use_cache=True, clear_conditioned_layers=False)
        with pytest.raises(ValueError, match=r"the language model's input \(with the tokens it read before\) has more <image> tokens"):
            model(None, torch.full((2, 2), MEDIA_ID), past_key_values=first.past_key_values)


# ---------------------------------------------------------------- the NaN contract


def lm_layers(lm):
    return lm.get_submodule(PATHS[lm.config.model_type])


@pytest.mark.parametrize("kind", LM_KINDS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_measured_a_causal_lm_spreads_a_nan_row_backwards(kind, attn):
    """Why the wrapper settles NaN rows: with a NaN in one row of a layer's input, the plain LM's self-attention
    makes the *earlier* rows NaN too (their masked scores are NaN + -inf), on the CPU, in every LM here."""
    if kind == "mpt" and attn == "sdpa":
        pytest.skip("transformers' MPT has only the eager attention")
    lm = language_model(kind, attn=attn)

    def poison(module, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        x[0, 5] = float("nan")
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    lm_layers(lm)[0].register_forward_pre_hook(poison, with_kwargs=True)
    with torch.no_grad():
        logits = lm(input_ids=torch.randint(2, 30, (2, 9))).logits
    bad = ~torch.isfinite(logits).all(dim=-1)  # (2, 9)
    assert bad[0].all() and not bad[1].any()  # rows 0-4 of row 0 should not have seen it


@pytest.mark.parametrize("kind", LM_KINDS)
@pytest.mark.parametrize("immediate", [True, False])
def test_a_nan_picture_reaches_only_the_text_from_its_marker_on(kind, immediate):
    model, _ = flamingo(kind, immediate=immediate, attn=None if kind == "mpt" else "eager")
    vision_x, lang_x = interleaved_batch()
    nan, clean = vision_x.clone(), vision_x.clone()
    nan[0, 1] = float("nan")  # row 0's second picture
    clean[0, 1] = 0.5
    with torch.no_grad():
        got, want = model(nan, lang_x).logits, model(clean, lang_x).logits
    marker = int((lang_x[0] == MEDIA_ID).nonzero()[1])
    assert torch.equal(got[0, :marker], want[0, :marker])  # as if the picture were finite
    assert torch.isnan(got[0, marker:]).all()  # every element of every row that may see it, never 0
    assert torch.equal(got[1], want[1])
    # continuing with the cache: the next token of row 0 has the NaN in its past, row 1's has not
    with torch.no_grad():
        first = model(nan, lang_x, use_cache=True, clear_conditioned_layers=False)
        cache = first.past_key_values if kind != "mpt" else None
        if cache is not None:
            step = model(None, torch.tensor([[5], [6]]), past_key_values=cache).logits
            assert torch.isnan(step[0]).all() and torch.isfinite(step[1]).all()
    model.clear_conditioned_layers()


def test_a_nan_picture_nobody_marks_reaches_nothing():
    model, _ = flamingo("llama")
    vision_x, lang_x = interleaved_batch()
    vision_x[1, 2] = float("nan")  # row 1 has 2 markers for 3 pictures: the third is never seen
    with torch.no_grad():
        assert torch.isfinite(model(vision_x, lang_x).logits).all()


# ---------------------------------------------------------------- training


def test_trainable_parts_and_adamw_groups_are_open_flamingos():
    model, _ = flamingo("gpt_neox", layers=4, every=2, open_gates=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("perceiver.") or ".gated_cross_attn_layer." in n or n == "lang_encoder.gpt_neox.embed_in.weight"
               for n in trainable)
    assert any(n.startswith("perceiver.") for n in trainable) and "lang_encoder.gpt_neox.embed_in.weight" in trainable
    decay, no_decay = model.parameter_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(".gated_cross_attn_layer." in n and "gate" not in n.rsplit(".", 1)[1] and "norm" not in n for n in decayed)
    assert "lang_encoder.gpt_neox.layers.1.gated_cross_attn_layer.attn.to_q.weight" in decayed
    assert {names[id(p)] for p in no_decay["params"]} >= {
        "lang_encoder.gpt_neox.layers.1.gated_cross_attn_layer.attn_gate", "perceiver.latents", "lang_encoder.gpt_neox.embed_in.weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    frozen, _ = flamingo("gpt_neox", freeze_lm_embeddings=True, open_gates=False)
    assert not frozen.lang_encoder.get_input_embeddings().weight.requires_grad


def test_at_initialisation_only_the_gates_learn():
    """The paper's Sec. 2.2: tanh(0) = 0 closes every block, so the gates get the only non-zero gradient."""
    model, _ = flamingo("llama", open_gates=False, freeze_lm_embeddings=True)
    model.train()
    vision_x, lang_x = interleaved_batch()
    model(vision_x, lang_x, labels=lang_x).loss.backward()
    for name, p in model.named_parameters():
        if name.endswith("attn_gate"):
            assert p.grad.abs().max() > 0, name
        elif p.requires_grad and not name.endswith("ff_gate"):
            assert p.grad is None or not p.grad.any(), name
        elif not p.requires_grad:
            assert p.grad is None, name


def test_the_loss_is_the_language_models_next_token_loss():
    model, _ = flamingo("gpt2")
    vision_x, lang_x = interleaved_batch()
    labels = lang_x.clone()
    labels[:, :3] = -100  # a prompt the loss leaves out
    out = model(vision_x, lang_x, labels=labels)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, want)


def test_gradient_checkpointing_changes_nothing_but_memory():
    model, _ = flamingo("llama")
    model.train()
    vision_x, lang_x = interleaved_batch()

    def grads():
        model.zero_grad(set_to_none=True)
        loss = model(vision_x, lang_x, labels=lang_x).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    loss, plain = grads()
    model.set_gradient_checkpointing(True)
    loss_ckpt, ckpt = grads()
    assert torch.equal(loss, loss_ckpt) and all(torch.allclose(a, b, atol=1e-7) for a, b in zip(plain, ckpt))


def test_frozen_parts_stay_in_eval_mode_when_training():
    model, _ = flamingo("gpt2")
    model.train()
    assert model.training and model.perceiver.training
    assert not model.lang_encoder.training and not model.vision_encoder.training  # GPT-2's dropout stays off


# ---------------------------------------------------------------- the eyes


def test_every_vision_encoder_gives_its_tokens():
    import transformers as tf

    clip = tf.CLIPVisionModel(tf.CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=16, patch_size=4)).eval()
    siglip = tf.SiglipVisionModel(tf.SiglipVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                                        num_attention_heads=2, image_size=16, patch_size=4)).eval()
    convnet, _, _ = load_encoders()
    vision_x, lang_x = interleaved_batch()
    images = vision_x.flatten(0, 2)  # (6, 3, 16, 16)
    for encoder, width, kind, tokens in [
        (clip, 24, "clip", lambda: clip(pixel_values=images).last_hidden_state[:, 1:]),
        (siglip, 24, "siglip", lambda: siglip(pixel_values=images).last_hidden_state),
        (convnet, 64, "grid", lambda: convnet(images)[:, 0]),
    ]:
        model = hf.Flamingo(encoder, language_model("gpt2"), EOC_ID, MEDIA_ID, vis_dim=width, **SMALL)
        assert model.vision_kind == kind and not any(p.requires_grad for p in encoder.parameters())
        from flamingo_lite.hf.vision import vision_tokens

        with torch.no_grad():
            assert torch.equal(vision_tokens(encoder, kind, images), tokens())
        randomise(model)
        out = model(vision_x, lang_x, labels=lang_x)
        assert out.logits.shape == (2, 14, 40) and torch.isfinite(out.logits).all()
        out.loss.backward()  # the frozen encoder is not in the graph; the resampler is
        assert all(p.grad is None for p in encoder.parameters()) and model.perceiver.latents.grad is not None


# ---------------------------------------------------------------- the package's layering


def test_the_layers_never_import_transformers():
    code = ("import sys, flamingo_lite, flamingo_lite.gated, flamingo_lite.perceiver, flamingo_lite.interop, "
            "flamingo_lite.tiny.model; print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_markers_are_read_once_per_call_of_the_language_model_not_once_per_layer(monkeypatch):
    """The model checks media_locations once and every decoder layer's block shares that MediaLocations (and its
    segment layout), as the tiny Flamingo's blocks do: four layers cost what one does."""
    import flamingo_lite.cross_attention as xa

    counts = {"markers": 0, "layout": 0}
    real_markers, real_layout = xa.check_markers_fit_media, xa.segment_layout

    def counting_markers(*args, **kwargs):
        counts["markers"] += 1
        return real_markers(*args, **kwargs)

    def counting_layout(*args, **kwargs):
        counts["layout"] += 1
        return real_layout(*args, **kwargs)

    monkeypatch.setattr(xa, "check_markers_fit_media", counting_markers)
    monkeypatch.setattr(xa, "segment_layout", counting_layout)
    model, _ = flamingo("gpt_neox", layers=4)
    vision_x, lang_x = interleaved_batch()
    with torch.no_grad():
        model(vision_x, lang_x)
    assert counts["markers"] == 2  # forward's own check of lang_x, then the one the layers share
    assert counts["layout"] <= 1
