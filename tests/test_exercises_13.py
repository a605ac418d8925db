"""Mutation tests of lesson 13's checks: each fails on the stub, passes with the solution, and names each mistake it
claims to recognise when fed a wrapper (or a captioning function) that makes it."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="lesson 13 needs transformers")

from flamingo_lite.teaching.exercises import ExerciseFailed, hint, lesson13  # noqa: E402
from flamingo_lite.tiny.data import Tokenizer  # noqa: E402

from hf_tiny import one_thread  # noqa: E402

one_thread = pytest.fixture(autouse=True)(one_thread)


def fails(check, *args, match: str):
    with pytest.raises(ExerciseFailed, match=match):
        check(*args)


def layer(forward, condition=None):
    """A learner's wrapper class: the lesson's constructor, with `forward(self, x, args, kwargs)` and `condition`."""

    class Layer(lesson13.Remembering):
        def condition(self, media, media_locations, nonfinite_rows=None):
            if condition is not None:
                return condition(self)
            super().condition(media, media_locations, nonfinite_rows)

        def forward(self, hidden_states, *args, **kwargs):
            return forward(self, hidden_states, args, kwargs)

    return Layer


def right(self, x, args, kwargs):
    if self.gated_cross_attn_layer is not None:
        x = self.gated_cross_attn_layer(x, self.media, self.media_locations)
    return self.decoder_layer(x, *args, **kwargs)


def cached(self, x, args, kwargs):
    if self.gated_cross_attn_layer is not None:
        b, n, d = x.shape
        k = self.media_locations.shape[1] - n
        x = self.gated_cross_attn_layer(torch.cat((x.new_zeros(b, k, d), x), dim=1), self.media, self.media_locations)[:, k:]
    return self.decoder_layer(x, *args, **kwargs)


def stub(*args, **kwargs):
    raise NotImplementedError("Your turn")


LAYER_MISTAKES = {
    "runs after the GPT-2 block": lambda s, x, a, k: (lambda h: s.gated_cross_attn_layer(h, s.media, s.media_locations)
                                                      if s.gated_cross_attn_layer is not None else h)(s.decoder_layer(x, *a, **k)),
    "given no media_locations": lambda s, x, a, k: s.decoder_layer(
        s.gated_cross_attn_layer(x, s.media, None) if s.gated_cross_attn_layer is not None else x, *a, **k),
    "never runs": lambda s, x, a, k: s.decoder_layer(x, *a, **k),
    r"pass them on, `self.decoder_layer\(x, \*args, \*\*kwargs\)`": lambda s, x, a, k: s.decoder_layer(
        s.gated_cross_attn_layer(x, s.media, s.media_locations) if s.gated_cross_attn_layer is not None else x),
    "gets no gradient.*would never train": lambda s, x, a, k: s.decoder_layer(
        s.gated_cross_attn_layer(x, s.media, s.media_locations).detach() if s.gated_cross_attn_layer is not None else x, *a, **k),
    "run the GPT-2 block alone there": lambda s, x, a, k: s.decoder_layer(s.gated_cross_attn_layer(x, s.media, s.media_locations), *a, **k),
    "x is added twice: the gated block already returns x plus its gated update": lambda s, x, a, k: s.decoder_layer(
        x + s.gated_cross_attn_layer(x, s.media, s.media_locations) if s.gated_cross_attn_layer is not None else x, *a, **k),
}


def test_13_layer_stub_solution_and_mistakes(capsys):
    fails(lesson13.check_layer, layer(right, condition=stub), match="not written yet")
    fails(lesson13.check_layer, layer(stub), match="not written yet")
    lesson13.check_layer(layer(right))
    assert capsys.readouterr().out.startswith("OK")
    for message, wrong in LAYER_MISTAKES.items():
        fails(lesson13.check_layer, layer(wrong), match=message)


def no_grad(self, x, args, kwargs):
    with torch.no_grad():
        if self.gated_cross_attn_layer is not None:
            x = self.gated_cross_attn_layer(x, self.media, self.media_locations)
    return self.decoder_layer(x, *args, **kwargs)


def test_13_layer_refuses_a_layer_that_would_never_train():
    fails(lesson13.check_layer, layer(no_grad), match="gets no gradient.*would never train")


def test_13_layer_names_keywords_dropped_or_changed_though_gpt2_gives_the_same_logits():
    """GPT-2 works without the keywords transformers hands its blocks, so these wrappers give the reference's logits;
    a Llama-style model would not, and the check reads the blocks' arguments to say so."""
    def block(s, x):
        return s.gated_cross_attn_layer(x, s.media, s.media_locations) if s.gated_cross_attn_layer is not None else x

    fails(lesson13.check_layer, layer(lambda s, x, a, k: s.decoder_layer(block(s, x), *a)),
          match=r"does not pass on the keyword arguments transformers gives it \(encoder_attention_mask, use_cache, "
                r"position_ids\).*Llama, SmolLM")
    fails(lesson13.check_layer, layer(lambda s, x, a, k: s.decoder_layer(block(s, x), *a, **{**k, "use_cache": True})),
          match=r"changes the keyword argument use_cache on its way to the GPT-2 block \(False became True\)")
    # GPT-2's blocks take (hidden_states, past_key_values, attention_mask, ...): the last positional one, None here
    fails(lesson13.check_layer, layer(lambda s, x, a, k: s.decoder_layer(block(s, x), *a[:-1], **k)),
          match=r"gives the GPT-2 block 3 positional arguments, transformers gave 4")


def test_13_a_condition_that_stores_nothing_is_told_what_is_none():
    fails(lesson13.check_layer, layer(right, condition=lambda self: None),
          match=r"something is None.*self\.media and self\.media_locations are None until condition\(\) stores them")


def test_13_cache_refuses_a_cached_layer_that_would_never_train():
    """A walkthrough's cached layer run under torch.no_grad() passed the cache check and failed only in the training
    cell, with torch's own error."""
    def no_grad_cached(self, x, args, kwargs):
        with torch.no_grad():
            return cached(self, x, args, kwargs)

    fails(lesson13.check_cache, layer(no_grad_cached), match=r"gets no gradient.*would never train")


def test_13_layer_says_where_the_weights_must_be():
    class Renamed(layer(right)):
        def __init__(self, gated_cross_attn_layer, decoder_layer):
            super().__init__(gated_cross_attn_layer, decoder_layer)
            self.block = self.gated_cross_attn_layer
            del self.gated_cross_attn_layer
            self.gated_cross_attn_layer = None

    fails(lesson13.check_layer, Renamed, match="keep `self.gated_cross_attn_layer` and `self.decoder_layer`")


def stand_ins(where):
    def forward(self, x, args, kwargs):
        if self.gated_cross_attn_layer is not None:
            b, n, d = x.shape
            k = self.media_locations.shape[1] - n
            pad = x.new_zeros(b, k, d)
            if where == "none":
                x = self.gated_cross_attn_layer(x, self.media, self.media_locations)
            elif where == "dropped":
                x = self.gated_cross_attn_layer(x, self.media, self.media_locations[:, k:])
            elif where == "end":
                x = self.gated_cross_attn_layer(torch.cat((x, pad), dim=1), self.media, self.media_locations)[:, :n]
            elif where == "batch 1":
                x = self.gated_cross_attn_layer(torch.cat((x.new_zeros(1, k, d), x), dim=1), self.media,
                                                self.media_locations)[:, k:]
            elif where == "first rows":
                x = self.gated_cross_attn_layer(torch.cat((pad, x), dim=1), self.media, self.media_locations)[:, :n]
            elif where == "kept":
                x = self.gated_cross_attn_layer(torch.cat((pad, x), dim=1), self.media, self.media_locations)
        return self.decoder_layer(x, *args, **kwargs)

    return forward


def test_13_cache_stub_solution_and_mistakes(capsys):
    fails(lesson13.check_cache, layer(stub), match="not written yet")
    lesson13.check_cache(layer(cached))
    assert capsys.readouterr().out.startswith("OK")
    fails(lesson13.check_cache, layer(right), match="media_locations has k more columns than the text")
    fails(lesson13.check_cache, layer(stand_ins("none")), match="put k stand-in rows of zeros in front")
    fails(lesson13.check_cache, layer(stand_ins("dropped")), match="markers of the tokens already read were dropped")
    fails(lesson13.check_cache, layer(stand_ins("end")), match=r"first columns \(`media_locations\[:, :n\]`, or stand-in rows put after")
    fails(lesson13.check_cache, layer(stand_ins("batch 1")), match="differ in batch or width")
    fails(lesson13.check_cache, layer(stand_ins("first rows")), match=r"kept the first n rows.*the last n rows, `\[:, k:\]`")
    fails(lesson13.check_cache, layer(stand_ins("kept")), match=r"drop the k stand-in rows|dropping the k stand-ins")
    fails(lesson13.check_cache, layer(LAYER_MISTAKES[r"pass them on, `self.decoder_layer\(x, \*args, \*\*kwargs\)`"]),
          match=r"pass them on, `self.decoder_layer\(x, \*args, \*\*kwargs\)`")


@pytest.fixture(scope="module")
def captioning():
    """A random Flamingo whose <eoc> comes early, and 4 pictures (it never trained: its captions are arbitrary)."""
    model, _ = lesson13.example()
    with torch.no_grad():
        model.lang_encoder.lm_head.weight[lesson13.EOC] *= 8  # <eoc> likelier, so some captions end before 5 words
    pictures = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, pictures, Tokenizer()


def test_13_beams_stub_solution_and_mistakes(captioning, capsys):
    model, pictures, tok = captioning
    want = lesson13.captions_by_beam_search(model, pictures, tok)
    assert any(len(c.split()) < 5 for c in want)  # some caption ended at <eoc>, so keeping it would show
    fails(lesson13.check_captions, stub, model, pictures, tok, match="not written yet")
    assert lesson13.check_captions(lambda m, p: lesson13.captions_by_beam_search(m, p, tok), model, pictures, tok) == want
    assert capsys.readouterr().out.startswith("OK")
    assert "generate" not in vars(model)  # the recording wrapper is gone again

    def decoded(num_beams=3, keep_prompt=False, keep_eoc=False, shape=lambda p: p[:, None, None], new_tokens=5,
                sample=False):
        def captions(m, p):
            prompt = torch.full((p.shape[0], 1), tok.media_id)
            out = m.generate(shape(p), prompt, num_beams=num_beams, max_new_tokens=new_tokens, pad_token_id=tok.pad_id,
                             do_sample=sample)
            rows = out.tolist() if keep_prompt else out[:, 1:].tolist()
            texts = []
            for row in rows:
                words = tok.words(row)
                texts.append(" ".join(words if keep_eoc or "<eoc>" not in words else words[: words.index("<eoc>")]))
            return texts
        return captions

    fails(lesson13.check_captions, decoded(num_beams=1), model, pictures, tok, match="num_beams=1: the paper decodes")
    fails(lesson13.check_captions, decoded(sample=True), model, pictures, tok, match="your captions sample")
    fails(lesson13.check_captions, decoded(new_tokens=3), model, pictures, tok, match="at most 3 new tokens: the exercise asks for 5")

    def one_prompt(m, p):  # all k pictures in one prompt, as one sequence
        out = m.generate(p[None, :, None], torch.full((1, len(p)), tok.media_id), num_beams=3, max_new_tokens=5,
                         pad_token_id=tok.pad_id)
        return [" ".join(tok.words(out[0, len(p):].tolist()))] * len(p)

    fails(lesson13.check_captions, one_prompt, model, pictures, tok, match="each picture is captioned on its own|one caption per picture")

    def one_picture_at_a_time(m, p):  # right, only slower: one generate call per picture
        return [lesson13.captions_by_beam_search(m, picture[None], tok)[0] for picture in p]

    assert lesson13.check_captions(one_picture_at_a_time, model, pictures, tok) == want
    fails(lesson13.check_captions, decoded(keep_prompt=True), model, pictures, tok, match="starts with the prompt")
    fails(lesson13.check_captions, decoded(keep_eoc=True), model, pictures, tok, match="keeps the end-of-chunk token")
    fails(lesson13.check_captions, decoded(shape=lambda p: p[:, None]), model, pictures, tok, match=r"pictures\[:, None, None\]")
    fails(lesson13.check_captions, lambda m, p: ["a red circle"] * len(p), model, pictures, tok, match="never called model.generate")
    fails(lesson13.check_captions, lambda m, p: "".join(decoded()(m, p)), model, pictures, tok, match="return a list of strings")


def test_13_hints_exist(capsys):
    for key in ("13.layer", "13.cache", "13.beams"):
        hint(key)
    assert capsys.readouterr().out.count("Hint (13.") == 3


def test_13_a_layer_that_changes_x_in_place_is_named_not_a_raw_autograd_error():
    def in_place(self, x, args, kwargs):
        if self.gated_cross_attn_layer is not None:
            x += self.gated_cross_attn_layer(x, self.media, self.media_locations) - x  # the right numbers
        return self.decoder_layer(x, *args, **kwargs)

    fails(lesson13.check_layer, layer(in_place), match=r"backward pass through your layer raised RuntimeError.*changes a "
                                                          r"tensor in place \(`x \+= ...`")


def test_13_cache_given_the_first_n_markers_is_named():
    def first_columns(self, x, args, kwargs):
        if self.gated_cross_attn_layer is not None:
            x = self.gated_cross_attn_layer(x, self.media, self.media_locations[:, : x.shape[1]])
        return self.decoder_layer(x, *args, **kwargs)

    fails(lesson13.check_cache, layer(first_columns), match=r"markers of the tokens already read: .*`media_locations\[:, :n\]`")


class Scripted:
    """A model whose generate gives fixed rows, as a trained captioner would: captions of 3, 5 and 1 words and one
    ended by <eoc> with padding after it (what transformers' generate gives a row that finished first)."""

    def __init__(self, tok):
        rows = [["a", "red", "circle", "<eoc>"], ["green", "square", "in", "blue", "triangle"], ["yellow", "<eoc>"],
                ["blue", "circle", "<eoc>"]]
        ids = {w: i for i, w in enumerate(tok.vocab)}
        self.rows = torch.tensor([[tok.media_id] + [ids[w] for w in r] + [tok.pad_id] * (5 - len(r)) for r in rows])

    def generate(self, vision_x, lang_x, *, max_new_tokens, **kwargs):
        return self.rows[: len(lang_x), : 1 + max_new_tokens]


def test_13_captions_decoded_wrong_are_named():
    tok = Tokenizer()
    model, pictures = Scripted(tok), torch.rand(4, 3, 16, 16)
    want = lesson13.captions_by_beam_search(model, pictures, tok)
    assert want == ["a red circle", "green square in blue triangle", "yellow", "blue circle"]
    assert lesson13.check_captions(lambda m, p: lesson13.captions_by_beam_search(m, p, tok), model, pictures, tok) == want

    def decoded(start=1, cut=lambda w: w[: w.index("<eoc>")] if "<eoc>" in w else w, join=" ".join):
        def captions(m, p):
            out = m.generate(p[:, None, None], torch.full((len(p), 1), tok.media_id), num_beams=3, max_new_tokens=5,
                             pad_token_id=tok.pad_id)
            return [join(cut(tok.words(row))) for row in out[:, start:].tolist()]
        return captions

    fails(lesson13.check_captions, decoded(start=2), model, pictures, tok, match=r"lost its first word.*`out\[:, 1:\]`")
    fails(lesson13.check_captions, decoded(cut=lambda w: w[:-1]), model, pictures, tok,
          match=r"'green square in blue' lost its last word.*has no <eoc> to cut at")
    fails(lesson13.check_captions, decoded(join="".join), model, pictures, tok, match=r"join the words with spaces")
    fails(lesson13.check_captions, decoded(cut=lambda w: w), model, pictures, tok, match=r"keeps the end-of-chunk token")
    fails(lesson13.check_captions, decoded(start=0), model, pictures, tok, match=r"starts with the prompt")
    fails(lesson13.check_captions, decoded(cut=lambda w: w[:2]), model, pictures, tok,
          match=r"'a red' should be 'a red circle': the prompt is the <image> token alone .* decoded with tokenizer\.words")
