"""Checks for lesson 08: the learner writes Flamingo's forward pass as one loop, then where the blocks go, what
trains, and why the tanh gate makes the untrained model equal to its language model.

The loop is checked on a 4-layer language model with a block every 2nd layer (blocks before layers 0 and 2) and
opened, different gates, against the usual mistakes computed from the same model: blocks after the LM layers
instead of before, blocks shifted by one layer, the resampler skipped, `media_locations` left out.
"""
from __future__ import annotations

import torch

from ...tiny import data as shapes_data
from ...tiny.model import Flamingo, FlamingoConfig
from . import Mistake, compare, fail, passed, register_hints, run_learner

register_hints({
    "08.loop": "media = model.resampler(model.vision(images)); media_locations = tokens == "
               "model.config.media_token_id; x = model.lm.embed(tokens); then `for i, lm_block in "
               "enumerate(model.lm.blocks):` run `model.xattn[str(i)](x, media, media_locations)` first when i is in "
               "model.xattn_layers, and `lm_block(x)` after it; finally `model.lm.head(x)`.",
    "08.placement": "A block goes before layer i when i % every == 0: layer 0 always, then every `every`-th.",
    "08.trainable": "`name.split('.')[0]` for each `name, p in model.named_parameters()` with `p.requires_grad`; "
                    "a set removes the repeats, `sorted` orders them.",
    "08.no_gate": "Build `Flamingo(config)`, run it and its language model `model.lm(tokens)` on the same tokens, and "
                  "return `not torch.equal(...)`.",
})


def example_model(seed: int = 1) -> tuple:
    """A Flamingo with 3 LM layers and a block every 2nd one, gates opened to different values, and a batch."""
    torch.manual_seed(seed)
    model = Flamingo(FlamingoConfig(lm_depth=3, cross_attn_every=2)).eval()
    with torch.no_grad():
        for j, i in enumerate(model.xattn_layers):
            model.xattn[str(i)].attn_gate.fill_(0.6 + 0.2 * j)
            model.xattn[str(i)].ff_gate.fill_(-0.5 + 0.3 * j)
    batch = shapes_data.make_dataset(3, seed=7)
    return model, batch.tokens, batch.images


def _loop(model, tokens, images, *, before=True, layers=None, resampler=True, locations=True, head=True):
    """The forward loop with the usual mistakes as switches: (b, n, V)."""
    features = model.vision(images)  # (b, t, g, d)
    media = model.resampler(features) if resampler else features  # (b, t, L, d)
    media_locations = tokens == model.config.media_token_id if locations else None  # (b, n)
    blocks = [model.xattn[str(i)] for i in model.xattn_layers]
    placed = dict(zip(model.xattn_layers if layers is None else layers, blocks))
    x = model.lm.embed(tokens)  # (b, n, d)
    for i, lm_block in enumerate(model.lm.blocks):
        if before and i in placed:
            x = placed[i](x, media, media_locations)  # (b, n, d)
        x = lm_block(x)  # (b, n, d)
        if not before and i in placed:
            x = placed[i](x, media, media_locations)  # (b, n, d)
    return model.lm.head(x) if head else x  # (b, n, V), or the hidden states (b, n, d)


def check_forward(flamingo_forward) -> None:
    """Step "08.loop": the learner's `flamingo_forward(model, tokens, images)` against the model's own forward."""
    model, tokens, images = example_model()
    layers = model.xattn_layers  # [0, 2]
    try:
        with torch.no_grad():
            got = flamingo_forward(model, tokens, images)
    except KeyError as error:
        key = str(error).strip("'\"")
        if key.isdigit() and int(key) in layers and not isinstance(error.args[0], str):
            fail(f"model.xattn is keyed by strings: write `model.xattn[str(i)]`, not `model.xattn[i]`.")
        fail(f"your loop asked for a gated block before LM layer {key}, but there are blocks only before layers "
             f"{layers}: run one only when i is in `model.xattn_layers` (every K-th from the first, i % K == 0; "
             "`(i + 1) % K` is off by one).")
    except NotImplementedError:
        run_learner(flamingo_forward, model, tokens, images, what="your flamingo_forward(model, tokens, images)")
    except Exception:  # the learner's own error, reported in their words
        with torch.no_grad():
            run_learner(flamingo_forward, model, tokens, images, what="your flamingo_forward(model, tokens, images)")
    with torch.no_grad():
        want = model(tokens, images)  # (b, n, V)
        shifted = [i + 1 for i in layers]  # [1, 3]: one layer late; there is no layer 3, so the last block never runs
        mistakes = [
            Mistake("after", _loop(model, tokens, images, before=False),
                    "the gated blocks run after the LM layers: each block must come before its layer "
                    "(`x = xattn(x, ...)` first, then `x = lm_block(x)`)."),
            Mistake("shifted", _loop(model, tokens, images, layers=shifted),
                    f"the blocks sit before layers {shifted} instead of {layers} (the last one then never runs): the "
                    "every-K-th placement is off by one; the first block goes before layer 0 (i % K == 0)."),
            Mistake("no resampler", _loop(model, tokens, images, resampler=False),
                    "the blocks see the vision encoder's features directly: pass them through `model.resampler` "
                    "first."),
            Mistake("no head", _loop(model, tokens, images, head=False),
                    "your loop returns the hidden states (b, n, d): finish with `model.lm.head(x)` for the logits."),
            Mistake("no locations", _loop(model, tokens, images, locations=False),
                    "the blocks were given no media_locations, so every word sees every picture: pass "
                    "`tokens == model.config.media_token_id`."),
        ]
    compare(got, want, what="your flamingo_forward (gates opened, blocks before layers 0 and 2 of 3)", mistakes=mistakes)
    passed("your flamingo_forward matches Flamingo.forward: blocks before the LM layers, every K-th from the first.")


def check_placement(xattn_layer_indices) -> int:
    """Step "08.placement": the indices for several (depth, every); returns the block count of Flamingo-80B."""
    for depth, every in [(4, 1), (4, 2), (5, 4), (2, 1), (3, 2), (6, 4), (80, 7)]:
        want = [i for i in range(depth) if i % every == 0]
        got = run_learner(xattn_layer_indices, depth, every, what=f"your xattn_layer_indices({depth}, {every})")
        if not isinstance(got, (list, tuple)) or list(got) != want:
            got = list(got) if isinstance(got, (list, tuple, range)) else got
            if got == [i for i in range(depth) if (i + 1) % every == 0]:
                fail(f"xattn_layer_indices({depth}, {every}) = {got}: off by one; the paper's blocks start at the first "
                     f"layer (i % every == 0), so the answer is {want}.")
            if got == [i for i in range(1, depth) if i % every == 0]:
                fail(f"xattn_layer_indices({depth}, {every}) = {got}: layer 0 is missing; the first block goes before "
                     f"the first layer, so the answer is {want}.")
            fail(f"xattn_layer_indices({depth}, {every}) should be {want}, yours is {got}.")
        built = Flamingo(FlamingoConfig(lm_depth=depth, cross_attn_every=every)).xattn_layers if depth <= 6 else want
        if list(got) != built:
            fail(f"xattn_layer_indices({depth}, {every}) differs from Flamingo's own placement {built}.")
    count = len(xattn_layer_indices(80, 7))
    passed(f"xattn_layer_indices is right; Flamingo-80B has {count} gated blocks.")
    return count


def check_trainable(trainable_names, config, lm_class, vision_class) -> list:
    """Step "08.trainable": the trainable top-level parts of a Flamingo, its LM alone, and the vision encoder."""
    cases = [(Flamingo(config), ["resampler", "xattn"]),
             (lm_class(config.lm_config()), ["blocks", "lm_head", "ln_f", "pos_emb", "tok_emb"]),
             (vision_class(), [])]
    for module, want in cases:
        got = run_learner(trainable_names, module, what=f"your trainable_names({type(module).__name__})")
        got = sorted(got) if isinstance(got, (set, frozenset)) else got
        if not isinstance(got, (list, tuple)):
            fail(f"trainable_names returned a {type(got).__name__}: return a sorted list of names.")
        got = list(got)
        if any("." in name for name in got):
            fail(f"trainable_names({type(module).__name__}) lists full parameter names such as {got[0]!r}: keep only the "
                 "part before the first dot.")
        if type(module) is Flamingo and "lm" in got:
            fail("the frozen parts are listed as trainable: keep only parameters with `p.requires_grad`.")
        if got != want:
            fail(f"trainable_names({type(module).__name__}) should be {want}, yours is {got}.")
    passed("trainable_names is right: only the resampler and the gated blocks learn.")
    return cases[0][1]


def check_no_gate(differs_from_lm_at_init, tokens, images) -> None:
    """Step "08.no_gate": False for the default config, True with `tanh_gate=False` (a bool or a one-value tensor)."""
    answers = {}
    for gated in (True, False):
        torch.manual_seed(0)
        got = run_learner(differs_from_lm_at_init, FlamingoConfig(tanh_gate=gated), tokens, images,
                          what=f"your differs_from_lm_at_init(FlamingoConfig(tanh_gate={gated}), ...)")
        if isinstance(got, torch.Tensor):
            if got.numel() != 1:
                fail(f"differs_from_lm_at_init returned a tensor of {got.numel()} values: compare the whole logits at "
                     "once (`torch.equal`) to get one answer.")
            got = bool(got)
        if not isinstance(got, bool):
            fail(f"differs_from_lm_at_init returned a {type(got).__name__}: return True or False.")
        answers[gated] = got
    if answers == {True: True, False: False}:
        fail("differs_from_lm_at_init answers the opposite question: return True when the logits differ from the "
             "LM's, that is `not torch.equal(...)`.")
    for gated, want in ((True, False), (False, True)):
        if answers[gated] != want:
            why = ("with tanh gates at 0 the logits are exactly the LM's: compare with `torch.equal`, and build the model "
                   "from the given config" if gated else
                   "with the gates fixed open the blocks change the logits from the start: use the given config")
            fail(f"for tanh_gate={gated} the answer is {want}, yours is {answers[gated]}: {why}.")
    passed("differs_from_lm_at_init is right: with gates fixed open, the model is knocked off the language model "
           "from step 0.")
