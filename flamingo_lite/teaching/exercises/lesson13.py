"""Checks for lesson 13: the learner's decoder-layer wrapper around a transformers GPT-2, and captions by beam search.

The wrapper is checked inside `flamingo_lite.hf.Flamingo` (`decoder_layer_class=` the learner's class) against the
same model built with `flamingo_lite.hf.FlamingoDecoderLayer`, around copies of one random 3-layer GPT-2 and a random
`ConvVisionEncoder`, blocks before layers 0 and 2 (so layer 1 has none), gates opened to different values, the
same weights. Each usual mistake is built as a wrapper class of its own (`_wrong_layer`), run with the same weights on
the same batch, so the verdict can name it:

- `check_layer` (step "13.layer"): one forward pass over a batch with text before the first picture and a padded row
  (the padding mask reaches GPT-2's blocks positionally): the block after the GPT-2 block, `media_locations` left
  out, the block never run, GPT-2's arguments not passed on; what the GPT-2 blocks are called with, keyword by
  keyword (GPT-2 gives the same logits without most keywords, a Llama would not); then one backward pass: every
  trainable parameter must get a gradient (a block run under `torch.no_grad()` or on a detached input would never
  train).
- `check_cache` (step "13.cache"): a sequence read in two calls with the KV cache, the second with markers, and
  greedy generation, in both modes, against the forward pass over the whole sequence: the stand-in rows left out,
  put at the end, kept in the output, the earlier markers dropped.
- `check_captions` (step "13.beams"): captions of pictures by beam search, num_beams=3 (the paper's App. A.2), the
  prompt and `<eoc>` left out.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import Mistake, compare, fail, passed, record_verdicts, register_hints, register_nudges, run_learner

IMAGE, EOC, PAD, VOCAB = 1, 2, 0, 12  # the course's tokenizer: <pad> 0, <image> 1, <eoc> 2, 12 words

register_hints({
    "13.layer": "In forward: `x = hidden_states`; if `self.gated_cross_attn_layer is not None`, "
                "`x = self.gated_cross_attn_layer(x, self.media, self.media_locations)`; then "
                "`return self.decoder_layer(x, *args, **kwargs)`. condition() only stores media and media_locations.",
    "13.cache": "`k = self.media_locations.shape[1] - hidden_states.shape[1]`; put `x.new_zeros(b, k, d)` in front "
                "of x (`torch.cat(..., dim=1)`), run the block on the k + n rows, keep `[:, k:]`, then the GPT-2 block.",
    "13.beams": "`model.generate(pictures[:, None, None], prompt, num_beams=3, max_new_tokens=5, pad_token_id=tok.pad_id)` "
                "with `prompt` = one `<image>` id per picture, shape (k, 1); the new tokens are `out[:, 1:]`; stop "
                "each caption before its `<eoc>`.",
})


def _gpt2(seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0.0,
                           embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOC, eos_token_id=EOC, pad_token_id=PAD)
    return tf.GPT2LMHeadModel(config).eval()


def _flamingo(layer_class, lm, eyes, *, immediate: bool):
    from ...hf import Flamingo

    return Flamingo(copy.deepcopy(eyes), copy.deepcopy(lm), EOC, IMAGE, vis_dim=32, cross_attn_every_n_layers=2,
                    xattn_placement="first", only_attend_immediate_media=immediate, freeze_lm_embeddings=True,
                    perceiver_kwargs=dict(depth=1, dim_head=8, heads=2, num_latents=4),
                    xattn_kwargs=dict(dim_head=8, heads=2, ff_mult=2), decoder_layer_class=layer_class).eval()


def example(layer_class=None, *, immediate: bool = True):
    """The reference Flamingo (gates opened, seeded) and, when `layer_class` is given, a copy with that wrapper."""
    from ...hf import FlamingoDecoderLayer
    from ...tiny.contrastive import ConvVisionEncoder

    lm, eyes = _gpt2(), ConvVisionEncoder(dim=32, pool=8, seed=3)
    torch.manual_seed(1)
    reference = _flamingo(FlamingoDecoderLayer, lm, eyes, immediate=immediate)
    with torch.no_grad():
        for j, block in enumerate(reference.xattn_blocks()):
            block.attn_gate.fill_(0.7 - 0.3 * j)
            block.ff_gate.fill_(-0.4 + 0.2 * j)
    if layer_class is None:
        return reference, None
    learner = _flamingo(layer_class, lm, eyes, immediate=immediate)
    try:
        learner.load_state_dict(reference.state_dict())
    except RuntimeError:
        fail("your layer's weights are not where flamingo_lite's are: keep `self.gated_cross_attn_layer` and "
             "`self.decoder_layer` as the constructor given in the lesson stores them.")
    return reference, learner


def batch(padded: bool = True):
    """vision_x (2, 3, 1, 3, 16, 16), lang_x (2, 12) and an attention mask: row 0 has two words before its first
    picture and 3 pictures, row 1 has 2 pictures and, when `padded`, 2 padding tokens on the left (generate numbers
    the positions of a padded row from its mask, a plain forward does not, so the cache check goes without)."""
    gen = torch.Generator().manual_seed(5)
    vision_x = torch.rand(2, 3, 1, 3, 16, 16, generator=gen)
    w = lambda n: torch.randint(3, VOCAB, (n,), generator=gen).tolist()  # noqa: E731
    row0 = w(2) + [IMAGE] + w(2) + [EOC, IMAGE] + w(2) + [EOC, IMAGE, w(1)[0]]
    row1 = ([PAD, PAD] if padded else w(2)) + [IMAGE] + w(3) + [EOC, IMAGE] + w(4)
    lang_x = torch.tensor([row0, row1])  # (2, 12)
    mask = (lang_x != PAD).long()  # (2, 12)
    return vision_x, lang_x, mask


class Remembering(nn.Module):
    """The part of the lesson's wrapper that is given, and a right `condition`: it keeps the block and the layer under
    OpenFlamingo's names and remembers what it is conditioned on. Wrappers made here to show mistakes build on it."""

    def __init__(self, gated_cross_attn_layer, decoder_layer):
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self.clear()

    def clear(self):
        self.media = self.media_locations = None

    def condition(self, media, media_locations, nonfinite_rows=None):
        self.media, self.media_locations = media, media_locations


def _wrong_layer(*, before=True, locations=True, runs=True, passes_args=True, stand_ins="front", residual=False):
    """A wrapper class with one usual mistake switched on (the defaults make the right one)."""

    class Wrong(Remembering):
        def attend(self, x):
            b, n, d = x.shape
            k = self.media_locations.shape[1] - n
            if not locations:  # the block without media_locations: every word sees every picture
                return self.gated_cross_attn_layer(x, self.media, None)
            if stand_ins == "dropped":
                return self.gated_cross_attn_layer(x, self.media, self.media_locations[:, k:])
            pad = x.new_zeros(b, k, d)  # (b, k, d)
            if stand_ins == "end":
                return self.gated_cross_attn_layer(torch.cat((x, pad), dim=1), self.media, self.media_locations)[:, :n]
            out = self.gated_cross_attn_layer(torch.cat((pad, x), dim=1), self.media, self.media_locations)  # (b, k + n, d)
            return out[:, :n] if stand_ins == "first rows kept" else out[:, k:]  # (b, n, d)

        def forward(self, hidden_states, *args, **kwargs):
            x = hidden_states
            call = (lambda h: self.decoder_layer(h, *args, **kwargs)) if passes_args else self.decoder_layer
            if self.gated_cross_attn_layer is None or not runs:
                return call(x)
            if not before:
                return self.attend(call(x))
            if residual:  # a second residual around a block that has its own
                return call(x + self.attend(x))
            return call(self.attend(x))

    return Wrong


def _logits(model, vision_x, lang_x, mask=None) -> torch.Tensor:
    with torch.no_grad():
        return model(vision_x, lang_x, attention_mask=mask).logits  # (b, n, V)


def _described(value):
    """A value handed to a GPT-2 block, as the check compares it: plain values themselves, a tensor by its shape, any
    other object (a KV cache) by its type."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _block_calls(model, vision_x, lang_x, mask) -> list:
    """What every GPT-2 block inside the wrappers is called with, in one forward pass: (number of positional
    arguments, {keyword: its description}) per call."""
    calls, handles = [], []
    for module in model.modules():
        inner = getattr(module, "decoder_layer", None)
        if isinstance(inner, nn.Module):
            record = lambda _, args, kwargs: calls.append((len(args), {k: _described(v) for k, v in kwargs.items()}))  # noqa: E731
            handles.append(inner.register_forward_pre_hook(record, with_kwargs=True))
    try:
        _logits(model, vision_x, lang_x, mask)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _check_block_arguments(learner, reference, vision_x, lang_x, mask) -> None:
    """The GPT-2 blocks get from the learner's wrapper what they get from flamingo_lite's: every keyword, with its
    value. GPT-2 does its work without most of them, so a wrapper that drops `**kwargs` gives the same logits here, and
    fails on a model that passes everything by keyword (Llama, SmolLM)."""
    got = run_learner(_block_calls, learner, vision_x, lang_x, mask, what="Flamingo with your layer (a forward pass)")
    want = _block_calls(reference, vision_x, lang_x, mask)
    for (got_args, got_kwargs), (want_args, want_kwargs) in zip(got, want):
        missing = [k for k in want_kwargs if k not in got_kwargs]
        if missing:
            fail(f"your layer does not pass on the keyword arguments transformers gives it ({', '.join(missing)}): "
                 "GPT-2 here does without them, but a model that passes everything by keyword (Llama, SmolLM in the "
                 "last cell) would lose its mask, positions or cache. Call `self.decoder_layer(x, *args, **kwargs)`.")
        changed = [k for k in want_kwargs if got_kwargs[k] != want_kwargs[k]]
        if changed:
            k = changed[0]
            fail(f"your layer changes the keyword argument {k} on its way to the GPT-2 block ({want_kwargs[k]!r} became "
                 f"{got_kwargs[k]!r}): pass on what transformers gives, `self.decoder_layer(x, *args, **kwargs)`.")
        if got_args != want_args:
            fail(f"your layer gives the GPT-2 block {got_args} positional arguments, transformers gave {want_args}: "
                 "pass them all on, `self.decoder_layer(x, *args, **kwargs)`.")
    if len(got) != len(want):
        fail(f"the GPT-2 blocks ran {len(got)} times in a forward pass with your layer, {len(want)} with flamingo_lite's: "
             "call `self.decoder_layer` once per forward.")


def _with_weights(layer_class, reference, *, immediate=True):
    _, model = example(layer_class, immediate=immediate)
    model.load_state_dict(reference.state_dict())
    return model


LAYER_MISTAKES = {
    "after": (dict(before=False), "the gated block runs after the GPT-2 block: it goes before it (`x = block(x, media, "
              "media_locations)` first, then `self.decoder_layer(x, ...)`)."),
    "no locations": (dict(locations=False), "the block was given no media_locations, so every word sees every picture: "
                     "pass `self.media_locations`."),
    "not run": (dict(runs=False), "the gated block never runs, so your Flamingo is its language model: call "
                "`self.gated_cross_attn_layer(x, self.media, self.media_locations)` when the layer has one."),
    "arguments dropped": (dict(passes_args=False), "GPT-2's arguments do not reach its block (the padding mask, the "
                          "KV cache): pass them on, `self.decoder_layer(x, *args, **kwargs)`."),
    "two residuals": (dict(residual=True), "x is added twice: the gated block already returns x plus its gated "
                      "update (lesson 06), so the wrapper adds nothing, `x = self.gated_cross_attn_layer(x, ...)`."),
}


def check_layer(layer_class) -> None:
    """Step "13.layer": the learner's wrapper in a forward pass, and whether everything that trains gets a gradient."""
    reference, learner = example(layer_class)
    vision_x, lang_x, mask = batch()
    want = _logits(reference, vision_x, lang_x, mask)
    got = run_learner(_logits, learner, vision_x, lang_x, mask, what="Flamingo with your layer (a forward pass)",
                      advice={"NoneType": "something is None: a layer without a block has gated_cross_attn_layer "
                                          "None (run the GPT-2 block alone there), and self.media and "
                                          "self.media_locations are None until condition() stores them."})
    mistakes = [Mistake(name, _logits(_with_weights(_wrong_layer(**switch), reference), vision_x, lang_x, mask), message)
                for name, (switch, message) in LAYER_MISTAKES.items()]
    compare(got, want, what="Flamingo's logits with your layer (blocks before layers 0 and 2 of 3, gates open)",
            mistakes=mistakes)
    _check_block_arguments(learner, reference, vision_x, lang_x, mask)
    _check_trains(learner, vision_x, lang_x, mask)
    passed("your layer gives flamingo_lite.hf's logits, and every trainable parameter gets a gradient.")


def _check_trains(learner, vision_x, lang_x, mask=None) -> None:
    """One training step's backward pass: every trainable parameter gets a gradient (a block run under
    `torch.no_grad()` or on a detached input would never train)."""
    learner.train()
    learner.zero_grad(set_to_none=True)
    loss = run_learner(lambda: learner(vision_x, lang_x, attention_mask=mask, labels=lang_x).loss,
                       what="Flamingo with your layer (a training step)")
    never = ("so it would never train: run the gated block with gradients (no torch.no_grad() and no .detach() in "
             "forward).")
    if not loss.requires_grad:
        fail(f"the loss gets no gradient from any parameter, {never}")
    run_learner(loss.backward, what="the backward pass through your layer",
                advice={"modified by an inplace operation": "your forward changes a tensor in place (`x += ...`, "
                        "`x[...] = ...`) that autograd still needs: write `x = x + ...`, which makes a new tensor."})
    for name, p in learner.named_parameters():
        if p.requires_grad and (p.grad is None or not bool(p.grad.any())):
            fail(f"the parameter {name} gets no gradient, {never}")
    learner.eval()


CACHE_MISTAKES = {
    "dropped": (dict(stand_ins="dropped"), "the markers of the tokens already read were dropped "
                "(`media_locations[:, k:]`), so the new text counts its pictures from 0 again: keep every column and "
                "give the k earlier markers k stand-in rows in front of x."),
    "end": (dict(stand_ins="end"), "the text was given the markers of the tokens already read: media_locations' "
            "first columns (`media_locations[:, :n]`, or stand-in rows put after the text) are those of the k tokens "
            "in the cache; the text's own are the last n, so the zeros go in front (`torch.cat((zeros, x), dim=1)`)."),
    "first rows kept": (dict(stand_ins="first rows kept"), "after the block you kept the first n rows, the k stand-ins "
                        "and the start of the text: the text is the last n rows, `[:, k:]`."),
}


def _continued(model, vision_x, lang_x, split: int) -> torch.Tensor:
    """The logits of lang_x read in two calls, the second continuing the first's KV cache: (b, n, V)."""
    with torch.no_grad():
        first = model(vision_x, lang_x[:, :split], use_cache=True, clear_conditioned_layers=False)
        rest = model(None, lang_x[:, split:], past_key_values=first.past_key_values, use_cache=True)
    return torch.cat((first.logits, rest.logits), dim=1)


def _generated(model, vision_x, lang_x) -> torch.Tensor:
    """The logits greedy generation computed with the cache, 4 new tokens: (b, 4, V)."""
    out = model.generate(vision_x, lang_x, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=PAD,
                         output_logits=True, return_dict_in_generate=True)
    return torch.stack(out.logits, dim=1)


KEPT = "return only the text's rows: drop the k stand-in rows after the block (`[:, k:]`)."


def check_cache(layer_class) -> None:
    """Step "13.cache": the learner's wrapper continuing a sequence from the KV cache, in both modes."""
    vision_x, lang_x, _ = batch(padded=False)
    for immediate in (True, False):
        mode = "the immediate mode" if immediate else "the all-previous mode"
        reference, learner = example(layer_class, immediate=immediate)
        want = _logits(reference, vision_x, lang_x)
        got = run_learner(_continued, learner, vision_x, lang_x, 5, what=f"your layer, reading a sequence in two calls ({mode})",
                          advice={"media_locations must have shape": "media_locations has k more columns than the text "
                                  "(the markers of the tokens in the cache): put k stand-in rows of zeros in front of x "
                                  "before the block, and keep only the text's rows after it.",
                                  "Sizes of tensors must match except in dimension 1": "the stand-in rows and x "
                                  "differ in batch or width: make them `x.new_zeros(b, k, d)`, with b and d from x.",
                                  "must match the size of tensor": KEPT, "Sizes of tensors must match": KEPT})
        if got.shape != want.shape:
            fail(f"your layer, continuing from the cache, gave logits of shape {tuple(got.shape)} instead of "
                 f"{tuple(want.shape)}: return only the text's rows, dropping the k stand-ins (`[:, k:]`).")
        mistakes = [Mistake(name, _continued(_with_weights(_wrong_layer(**switch), reference, immediate=immediate), vision_x, lang_x, 5), message)
                    for name, (switch, message) in CACHE_MISTAKES.items()]
        mistakes.append(Mistake("arguments dropped", _continued(_with_weights(_wrong_layer(passes_args=False), reference,
                                                                              immediate=immediate), vision_x, lang_x, 5),
                                LAYER_MISTAKES["arguments dropped"][1]))
        compare(got, want, what=f"the logits of a sequence read in two calls with your layer ({mode})", mistakes=mistakes)
        full = _logits(reference, *_prompt_and_generated(reference, vision_x, lang_x))
        generated = run_learner(_generated, learner, vision_x, lang_x, what=f"your layer in generate ({mode})")
        compare(generated, full[:, lang_x.shape[1] - 1 : -1], what=f"the logits of generation with your layer ({mode})")
        _check_trains(learner, vision_x, lang_x)  # the training cell below trains this layer
    passed("your layer continues from the KV cache exactly as a forward pass over the whole sequence, in both modes, "
           "and every trainable parameter gets a gradient.")


def _prompt_and_generated(model, vision_x, lang_x):
    sequences = model.generate(vision_x, lang_x, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=PAD)
    return vision_x, sequences


def captions_by_beam_search(model, pictures: torch.Tensor, tokenizer) -> list[str]:
    """The answer to step "13.beams": pictures (k, 3, H, W) -> k captions, by beam search with 3 beams."""
    prompt = torch.full((pictures.shape[0], 1), tokenizer.media_id)  # (k, 1): one <image> each
    out = model.generate(pictures[:, None, None], prompt, num_beams=3, max_new_tokens=5, pad_token_id=tokenizer.pad_id)
    captions = []
    for row in out[:, 1:].tolist():  # the new tokens
        words = tokenizer.words(row)
        captions.append(" ".join(words[: words.index("<eoc>")] if "<eoc>" in words else words))
    return captions


def check_captions(caption_fn, model, pictures: torch.Tensor, tokenizer) -> list[str]:
    """Step "13.beams": the learner's `caption_fn(model, pictures)` against the same beam search; returns the captions."""
    calls, prompts = [], []
    generate = model.generate

    def recording(*args, **kwargs):
        calls.append(kwargs)
        prompts.append(args[1] if len(args) > 1 else kwargs.get("lang_x"))
        return generate(*args, **kwargs)

    model.generate = recording
    try:
        got = run_learner(caption_fn, model, pictures, what="your captions(model, pictures)",
                          advice={"rank 6": "vision_x is (pictures, 1 picture each, 1 frame, 3, H, W): "
                                            "`pictures[:, None, None]`.",
                                  "index out of range": "each picture is captioned on its own: one row per picture, "
                                  "vision_x `pictures[:, None, None]`, (k, 1, 1, 3, H, W), and a prompt of one <image> "
                                  "per row, (k, 1); a prompt of k pictures numbers them past the media it embeds."})
    finally:
        del model.generate  # the instance attribute goes; the method is the class's again
    if not calls:
        fail("your captions(model, pictures) never called model.generate: let transformers' generate write them.")
    for call in calls:  # one call for all pictures, or one per picture: each is the same search
        beams = call.get("num_beams", 1)
        if beams != 3:
            fail(f"your captions searched with num_beams={beams}: the paper decodes with beam search of 3 beams "
                 "(App. A.2), `num_beams=3`.")
        if call.get("do_sample"):
            fail("your captions sample (do_sample=True): beam search keeps the 3 likeliest sequences and is the same "
                 "every time; leave do_sample at its default, False.")
        new_tokens = call.get("max_new_tokens")
        if new_tokens is not None and new_tokens != 5:
            fail(f"your captions generate at most {new_tokens} new tokens: the exercise asks for 5, `max_new_tokens=5`, "
                 "room for a caption and its <eoc>; beam search with another length can end on other captions.")
    rows = sum(p.shape[0] for p in prompts if isinstance(p, torch.Tensor))  # prompt rows over all calls
    if all(isinstance(p, torch.Tensor) for p in prompts) and rows != pictures.shape[0]:
        fail(f"your captions generated from {rows} prompt row(s) for {pictures.shape[0]} pictures: each picture is "
             "captioned on its own, one row per picture: vision_x `pictures[:, None, None]`, (k, 1, 1, 3, H, W), and "
             "a prompt of one <image> per row, (k, 1).")
    if not isinstance(got, (list, tuple)) or not all(isinstance(c, str) for c in got):
        fail(f"your captions(model, pictures) returned a {type(got).__name__}: return a list of strings, one per picture.")
    want = captions_by_beam_search(model, pictures, tokenizer)
    if len(got) != len(want):
        fail(f"your captions gave {len(got)} captions for {len(want)} pictures: one caption per picture.")
    for mine, right in zip(got, want):
        if mine == right:
            continue
        _name_caption_mistake(mine, right)
    passed(f"your captions are the beam search's ({len(got)} pictures, 3 beams).")
    return list(got)

def _name_caption_mistake(mine: str, right: str) -> None:
    """Fail naming how the learner's caption departs from beam search's, from the two strings alone."""
    words, want = mine.split(), right.split()
    if "<image>" in words:
        fail(f"your caption {mine!r} starts with the prompt: keep only the new tokens (`out[:, 1:]`).")
    if "<eoc>" in words:
        fail(f"your caption {mine!r} keeps the end-of-chunk token: stop each caption before its `<eoc>`.")
    if mine.replace(" ", "") == right.replace(" ", "") and words != want:
        fail(f"your caption {mine!r} should be {right!r}: join the words with spaces, `' '.join(words)`.")
    if words == want[1:]:
        fail(f"your caption {mine!r} lost its first word ({right!r}): the prompt is one token, the <image>, so the "
             "new tokens start at column 1 (`out[:, 1:]`).")
    if words == want[:-1] and len(want) == 5:
        fail(f"your caption {mine!r} lost its last word ({right!r}): a caption that reached 5 new tokens has no "
             "<eoc> to cut at, so keep all its words (cut at `words.index('<eoc>')` only when '<eoc>' is there).")
    if words[: len(want)] == want:
        fail(f"your caption {mine!r} goes on past its end ({right!r}): cut each caption at its first <eoc>, "
             "`words[: words.index('<eoc>')]`.")
    fail(f"your caption {mine!r} should be {right!r}: the prompt is the <image> token alone (a longer prompt, such as "
         "`<image> a`, starts the model elsewhere), and a caption is the new tokens of its row decoded with "
         "tokenizer.words.")


register_nudges({  # first hints for the steps whose full hint is the answer
    "13.beams": "transformers' generate does the search: one image marker per picture as the prompt, the pictures "
    "shaped as the model's forward wants them, three beams and a few new tokens. Then cut each caption at "
    "its end-of-chunk token.",
    "13.cache": "With the cache, GPT-2 gives the layer only the new tokens, while the conditioning holds the image "
    "markers of the whole text. Stand in for the text already read by rows of zeros, run the block on all "
    "rows, and keep the new ones.",
    "13.layer": "The wrapper runs the gated block on the hidden states, when this layer has one, with the media and "
    "locations stored by condition(), then hands the result and everything else it was given to the "
    "original layer.",
})


record_verdicts(globals())  # failed_checks(lesson13) sees every check's last verdict
