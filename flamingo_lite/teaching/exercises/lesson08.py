"""Checks for lesson 08: the learner writes where the blocks go, then the whole tiny Flamingo as a class
(constructor and forward), then what trains, and why the tanh gate makes the untrained model equal to its language
model.

The class is built from a 3-layer language model with a block every 2nd layer (blocks before layers 0 and 2) and
checked against flamingo_lite.tiny.Flamingo built from the same parts: its attribute names and shapes (the
reference's weights must load strictly), its logits with opened, different gates on sequences with several
pictures and text before the first, and the parameters a backward pass reaches. It is then built again from a
second config whose blocks have other heads and another head width than the language model's, whose `<image>` is
another id and whose text sees all previous pictures. The usual mistakes are named: blocks at every layer or one
layer late, blocks after the LM layers instead of before, one block object shared by every layer, a residual added
twice, LM layers or blocks skipped, a block's output thrown away, the LM's own logits returned, the resampler
skipped, `media_locations` left out or found with a fixed id, the LM's heads used for the cross-attention or its
head width computed from dim, `only_attend_immediate_media` not passed on, the vision encoder or the language model
left unfrozen, or frozen but left in training mode.

The no-gate exercise is also tried on a model whose gates are closed but whose logits differ from its language
model's at one value, so an answer that asks whether every logit differs, or that reads the gates, is named.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn

from ...tiny import data as shapes_data
from ...tiny.language_model import TinyLM
from ...tiny.model import Flamingo, FlamingoConfig, make_vision_encoder, xattn_layers
from . import (Mistake, _check_modules_registered, compare, fail, passed, register_hints, register_nudges, run_learner,
               keep_rng, refuse_the_answer)

register_hints({
    "08.class": "Two halves, in the table's order. __init__ keeps the three things it is given (freezing the two "
                "pretrained ones) and builds the two that train. forward follows Fig. 3 from bottom to top: the eye, "
                "the resampler, where the `<image>` tokens are, the LM's embeddings, one loop over the LM's layers "
                "with a block *before* each layer in `self.xattn_layers`, the LM's head. Still stuck: "
                "`hint(\"08.class.init\")` or `hint(\"08.class.forward\")`.",
    "08.class.init": "`self.config = config`; `self.vision` and `self.lm` are the given modules after "
                     "`.requires_grad_(False).eval()` (both return the module). The resampler takes `dim`, "
                     "`depth=config.resampler_depth`, `dim_head`, `heads`, `num_latents`, `num_media_embeds`, `ff_mult` "
                     "and `media_embedding`; each gated block takes `dim`, `dim_head`, `heads`, `ff_mult` and "
                     "`only_attend_immediate_media`. `nn.ModuleDict` wants string keys: `str(i)` for each i in "
                     "`self.xattn_layers`.",
    "08.class.forward": "media = resampler(vision(images)), (b, t, L, d); media_locations is a comparison of the "
                        "tokens with the config's `<image>` id, (b, n); x = the LM's embeddings of the tokens; then for "
                        "each `i, lm_block` of `enumerate(self.lm.blocks)`: if i has a block, "
                        "`x = self.xattn[str(i)](x, media, media_locations)`; then `x = lm_block(x)`. The block adds "
                        "its own residual, so no `x +` around it. Return the LM's head of x. Then `train(self, "
                        "mode=True)`: `super().train(mode)`, `self.vision.eval()`, `self.lm.eval()`, `return self`.",
    "08.placement": "A block goes before layer i when i % every == 0: layer 0 always, then every `every`-th.",
    "08.trainable": "`name.split('.')[0]` for each `name, p in model.named_parameters()` with `p.requires_grad`; "
                    "a set removes the repeats, `sorted` orders them.",
    "08.no_gate": "Build `Flamingo(config)`, run it and its language model `model.lm(tokens)` on the same tokens, and "
                  "return `not torch.equal(...)`.",
})


def _loop(model, tokens, images, *, before=True, layers=None, resampler=True, locations=True, head=True,
          media_id=None, double_block=False, double_lm=False, lm_layers=None, skip_blocks=(), first_picture=False,
          locations_of_row0=False):
    """The forward loop with the usual mistakes as switches: (b, n, V). layers: the layers that get a block (the
    model's blocks in order); skip_blocks: layers whose block is left out; lm_layers: the LM layers that run (None:
    all); media_id: a fixed `<image>` id instead of the config's; first_picture: each sequence's picture 0 in every
    media slot; locations_of_row0: every row gets the first sequence's markers."""
    features = model.vision(images)  # (b, t, g, d)
    media = model.resampler(features) if resampler else features  # (b, t, L, d)
    media = media[:, :1].expand_as(media) if first_picture else media  # (b, t, L, d): picture 0 in every slot
    media_id = model.config.media_token_id if media_id is None else media_id
    media_locations = tokens == media_id if locations else None  # (b, n)
    if locations_of_row0:
        media_locations = media_locations[:1].expand_as(media_locations)  # (b, n): row 0's markers everywhere
    blocks = [model.xattn[str(i)] for i in model.xattn_layers]
    placed = dict(zip(model.xattn_layers if layers is None else layers, blocks))
    placed = {i: block for i, block in placed.items() if i not in skip_blocks}
    x = model.lm.embed(tokens)  # (b, n, d)
    for i, lm_block in enumerate(model.lm.blocks):
        if lm_layers is not None and i not in lm_layers:
            continue
        if before and i in placed:
            x = x + placed[i](x, media, media_locations) if double_block else placed[i](x, media, media_locations)
        x = x + lm_block(x) if double_lm else lm_block(x)  # (b, n, d)
        if not before and i in placed:
            x = placed[i](x, media, media_locations)  # (b, n, d)
    return model.lm.head(x) if head else x  # (b, n, V), or the hidden states (b, n, d)


_FROZEN = ("vision", "lm")
_TRAINED = ("resampler", "xattn")
_PARTS = {"vision": "the vision encoder", "lm": "the language model"}


def example_config(config: FlamingoConfig) -> FlamingoConfig:
    """The config the class check builds with: the learner's sizes, 3 LM layers and a block every 2nd one (before
    layers 0 and 2, so "every layer" and "off by one" differ from the right placement), still pictures, tanh gates,
    both pretrained parts frozen."""
    if not isinstance(config, FlamingoConfig):
        raise TypeError(f"config must be a FlamingoConfig, got {type(config).__name__}")
    return replace(config, lm_depth=3, cross_attn_every=2, xattn_placement="first", num_frames=None,
                   tanh_gate=True, vision_frozen=True)


_IMAGE_ID = shapes_data.Tokenizer().index["<image>"]  # the id example_batch's pictures are marked with
_OTHER_ID = shapes_data.Tokenizer().eoc_id  # the second config's <image> id: swapped with <eoc> in its tokens


def other_config(config: FlamingoConfig) -> FlamingoConfig:
    """The second config the class check builds with: example_config's, except that the gated blocks and the
    resampler have other heads than the language model, `<image>` is another id, and text sees every picture before
    it (only_attend_immediate_media=False, not the blocks' default). Its dim_head is chosen so that the
    cross-attention's inner width (heads * dim_head) differs from that of the LM's heads (lm_heads * dim_head) and
    from those of a head width computed from dim (heads * (dim // heads) = dim, heads * (dim // lm_heads)): the
    shapes then say which mistake was made. Its resampler has other sizes too (two more latents, a per-picture
    embedding table one row longer than the pictures need), so a size typed in rather than read from the config
    shows as a shape."""
    config = example_config(config)
    heads = 2 if config.lm_heads != 2 else 1

    def widths(d):  # the right inner width, then the three mistakes'
        return {d * heads, d * config.lm_heads, config.dim, heads * (config.dim // config.lm_heads)}

    dim_head = next((d for d in (8, 4, 2, 3, 5, 6, 7) if len(widths(d)) == 4), config.dim_head)
    return replace(config, heads=heads, dim_head=dim_head, media_token_id=_OTHER_ID, only_attend_immediate_media=False,
                   num_latents=config.num_latents + 2, media_embedding="per_media",
                   num_media_embeds=config.num_media_embeds + 1)


def example_batch() -> tuple:
    """3 sequences of 4-5 pictures, the 2nd and 3rd with text before their first picture: tokens (3, 30), images
    (3, 5, 3, 16, 16)."""
    batch = shapes_data.make_dataset(3, seed=7)
    prefix = torch.tensor(shapes_data.Tokenizer().encode("a red circle"))  # (3,)
    tokens = batch.tokens.clone()  # (b, n)
    tokens[1:] = torch.cat([prefix.expand(2, -1), batch.tokens[1:, :-len(prefix)]], 1)  # (2, n): text, then <image>
    return tokens, batch.images


def _swapped(tokens: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """The tokens with the ids a and b swapped: (b, n)."""
    return torch.where(tokens == a, b, torch.where(tokens == b, a, tokens))


def _placement_mistake(keys: list, depth: int, every: int, want: list) -> str | None:
    if keys == [str(i) for i in range(depth)]:
        return (f"your model has a gated block before every LM layer (xattn keys {keys}); Flamingo puts one before "
                f"every `config.cross_attn_every`-th layer only, from the first: here layers {want}. Build them for "
                "the layers `xattn_layer_indices(len(lm.blocks), config.cross_attn_every)` gives.")
    if keys == [str(i) for i in xattn_layers(depth, every, "open_flamingo")]:
        return (f"your blocks sit before layers {[int(k) for k in keys]} instead of {want}: the every-K-th placement is off by one; the "
                "first block goes before layer 0 (i % K == 0).")
    return None


def _compare_parameters(mine: nn.Module, reference: nn.Module) -> None:
    """Fail, in words, when the learner's state_dict has other names or shapes than the reference's."""
    ours, theirs = mine.state_dict(), reference.state_dict()
    missing = [k for k in theirs if k not in ours]
    unexpected = [k for k in ours if k not in theirs]
    misshaped = [f"{k} is {tuple(ours[k].shape)} in yours, {tuple(theirs[k].shape)} in flamingo_lite's"
                 for k in theirs if k in ours and ours[k].shape != theirs[k].shape]
    if not (missing or unexpected or misshaped):
        return

    def some(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    said = []
    if missing:
        said.append(f"missing from yours: {some(missing)}")
    if unexpected:
        said.append(f"in yours but not in flamingo_lite's: {some(unexpected)}")
    if misshaped:
        said.append(f"shapes differ: {some(misshaped)}")
    fail("your model cannot load flamingo_lite.tiny.Flamingo's weights (load_state_dict(strict=True)): "
         + "; ".join(said) + ". Build each part with the attribute names of the table above and the config's sizes.")


def _open_gates(reference: Flamingo) -> Flamingo:
    """Open the reference's gates, each to another value, so that a block in the wrong place changes the logits."""
    with torch.no_grad():
        for j, i in enumerate(reference.xattn_layers):
            reference.xattn[str(i)].attn_gate.fill_(0.6 + 0.2 * j)
            reference.xattn[str(i)].ff_gate.fill_(-0.5 + 0.3 * j)
    return reference


def _sizes_mistake(mine: nn.Module, reference: Flamingo, lm: nn.Module, vision: nn.Module) -> str | None:
    """The sentence to say when the learner's weights have the shapes of cross-attention built with the LM's heads,
    or with a head width computed from dim (`dim // heads`, `dim // lm_heads`) instead of `config.dim_head`."""
    config = reference.config
    ours = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    misshaped = [k for k in theirs if k in ours and ours[k] != theirs[k]]
    if not misshaped:
        return None
    candidates = [
        (dict(heads=config.lm_heads), "use the language model's number of heads, `config.lm_heads` "
         f"({config.lm_heads}): the cross-attention has its own, `config.heads` ({config.heads}), so build them with "
         "`heads=config.heads`"),
        (dict(dim_head=config.dim // config.heads), f"have dim_head = config.dim // config.heads "
         f"({config.dim // config.heads}): the width of one head is a size of its own, `config.dim_head` "
         f"({config.dim_head}), so build them with `dim_head=config.dim_head`"),
        (dict(dim_head=config.dim // config.lm_heads), f"have the language model's head width, config.dim // "
         f"config.lm_heads ({config.dim // config.lm_heads}), as dim_head: the cross-attention's is "
         f"`config.dim_head` ({config.dim_head}), so build them with `dim_head=config.dim_head`"),
    ]
    parts = sorted({k.split(".")[0] for k in misshaped})
    said = " and ".join({"resampler": "the resampler", "xattn": "the gated blocks"}.get(p, p) for p in parts)
    for sizes, why in candidates:
        if all(getattr(config, k) == v for k, v in sizes.items()):
            continue  # this config cannot tell the mistake from the right sizes
        with torch.random.fork_rng(devices=[]):  # an extra build must not move the notebook's random numbers
            wrong = Flamingo(replace(config, **sizes), lm=copy.deepcopy(lm), vision=copy.deepcopy(vision))
        wrong = {k: tuple(v.shape) for k, v in wrong.state_dict().items()}
        if all(ours[k] == wrong.get(k) for k in misshaped):
            return (f"{said} of your model {why} ({misshaped[0]} is {ours[misshaped[0]]} in yours, "
                    f"{theirs[misshaped[0]]} in flamingo_lite's).")
    return None


class _WhatRan:
    """While active (a `with` block), notes whether the learner's language model ran as a whole (`lm`, its own
    forward called: `self.lm(tokens)`) and whether any of its gated blocks ran (`blocks`)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.lm, self.blocks = False, False

        def lm_ran(module, args):
            self.lm = True

        def block_ran(module, args):
            self.blocks = True

        self.handles = [self.model.lm.register_forward_pre_hook(lm_ran)]
        self.handles += [block.register_forward_pre_hook(block_ran) for block in self.model.xattn.values()]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def _lm_alone(ran: _WhatRan) -> str:
    """What to say when the learner's logits are the language model's alone, from what ran."""
    if ran.lm:
        return ("your forward returns the language model's own logits (`self.lm(tokens)`): the pictures never reach "
                "them. Run the LM's parts yourself: `x = self.lm.embed(tokens)`, the loop over `self.lm.blocks` with a "
                "gated block first where i is in `self.xattn_layers`, then `self.lm.head(x)`.")
    if ran.blocks:
        return ("your gated blocks run, but their output is thrown away (`self.xattn[str(i)](x, media, "
                "media_locations)` on a line of its own changes nothing): assign it, `x = self.xattn[str(i)](x, media, "
                "media_locations)`, so that the LM layer reads it.")
    return ("no gated block runs, so the logits are the language model's alone: run `self.xattn[str(i)]` before "
            "every layer i in `self.xattn_layers` (`if i in self.xattn_layers`; the ModuleDict's keys are strings, so "
            "`i in self.xattn` is never true).")


def _mistakes(reference: Flamingo, tokens: torch.Tensor, images: torch.Tensor, lm_alone: str) -> list:
    """The logits of the usual wrong forwards, with the reference's weights: a list of Mistake. lm_alone: what to say
    when the logits are the language model's alone."""
    config, layers = reference.config, reference.xattn_layers
    run = lambda **switches: _loop(reference, tokens, images, **switches)  # noqa: E731
    mistakes = [
        Mistake("LM alone", reference.lm(tokens), lm_alone),
        Mistake("after", run(before=False),
                "the gated blocks run after the LM layers: each block must come before its layer "
                "(`x = self.xattn[str(i)](x, ...)` first, then `x = lm_block(x)`)."),
        Mistake("no resampler", run(resampler=False),
                "the blocks see the vision encoder's features directly: pass them through `self.resampler` first."),
        Mistake("no head", run(head=False),
                "your forward returns the hidden states (b, n, d): finish with `self.lm.head(x)` for the logits."),
        Mistake("no locations", run(locations=False),
                "the blocks were given no media_locations, so every word sees every picture (the mask is "
                "ignored): pass `tokens == self.config.media_token_id` to each block."),
        Mistake("picture 0 only", run(first_picture=True),
                "every word reads the sequence's first picture (media[:, 0] or images[:, 0] in every slot): give the "
                "blocks the resampled media of every picture, (b, t, L, d), so the words after picture 2 see picture 2."),
        Mistake("markers of row 0", run(locations_of_row0=True),
                "every sequence got the markers of the first one: build media_locations from the whole batch, "
                "`tokens == self.config.media_token_id`, (b, n), not from tokens[0] or tokens[:1]."),
        Mistake("block residual twice", run(double_block=True),
                "the gated block's output is added to x once more (`x = x + block(x, ...)`), but the block already "
                "adds its own residual (`x + tanh(gate) * ...`): write `x = self.xattn[str(i)](x, media, "
                "media_locations)`."),
        Mistake("LM residual twice", run(double_lm=True),
                "the LM layer's output is added to x once more (`x = x + lm_block(x)`), but the layer already adds "
                "its own residual: write `x = lm_block(x)`."),
        Mistake("LM layers skipped", run(lm_layers=layers),
                f"your forward runs only the LM layers that have a block before them ({layers}) and skips the others: "
                "loop over every layer, `for i, lm_block in enumerate(self.lm.blocks)`, and run a block first only "
                "when i is in `self.xattn_layers`."),
    ]
    mistakes += [Mistake(f"block {i} skipped", run(skip_blocks=(i,)),
                         f"the gated block before LM layer {i} never runs: run `self.xattn[str(i)]` before every layer "
                         "i in `self.xattn_layers`.") for i in layers]
    if config.media_token_id != _IMAGE_ID:
        mistakes.append(Mistake("fixed media id", run(media_id=_IMAGE_ID),
                                f"your media_locations mark the id {_IMAGE_ID}, fixed in your code, but this config's "
                                f"`<image>` is id {config.media_token_id}: write `tokens == self.config.media_token_id`."))
    if not config.only_attend_immediate_media:
        immediate = copy.deepcopy(reference)
        for block in immediate.xattn.values():
            block.attn.only_attend_immediate_media = True  # the blocks' default
        mistakes.append(Mistake("only_attend_immediate_media not passed", immediate(tokens, images),
                                "your blocks let each word see only the picture just before it, but this config has "
                                "only_attend_immediate_media=False: pass `only_attend_immediate_media=config."
                                "only_attend_immediate_media` to each GatedBlock."))
    return mistakes


def _build_and_compare(flamingo_class, config: FlamingoConfig, lm: nn.Module, vision: nn.Module,
                       reference: Flamingo, tokens: torch.Tensor, images: torch.Tensor, *, what: str) -> nn.Module:
    """Build the learner's class from lm and vision, check its parts against the reference's, load the reference's
    weights into it and compare the logits; returns the learner's model."""
    name = flamingo_class.__name__
    want_layers = reference.xattn_layers
    mine = run_learner(flamingo_class, config, lm=lm, vision=vision, what=f"building your {name}(config, lm=lm, vision=vision)",
                       advice={"module name should be a string": "nn.ModuleDict keys are strings: key the blocks by "
                                                                 "`str(i)`."})
    if not isinstance(mine, nn.Module):
        fail(f"{name}(...) built a {type(mine).__name__}: your class must subclass nn.Module.")
    _check_modules_registered(mine, f"your {name}")  # a plain dict or list of blocks: named, with why it matters
    for attr, kind in (("vision", nn.Module), ("lm", nn.Module), ("resampler", nn.Module), ("xattn", nn.ModuleDict)):
        if not isinstance(getattr(mine, attr, None), kind):
            fail(f"your model has no `self.{attr}` that is a torch.nn.{kind.__name__}: the table above names every "
                 "part.")
    if getattr(mine, "config", None) != config:
        fail("your model does not keep its config as `self.config`: store the config it was given.")
    if mine.lm is not lm or mine.vision is not vision:
        fail("your model must use the lm and vision it is given (`self.lm = lm`, `self.vision = vision`): they come "
             "pretrained, and building new ones would throw that away.")
    for part in _FROZEN:  # frozen but left in training mode: its dropout would keep dropping during training
        module = getattr(mine, part)
        if module.training and not any(p.requires_grad for p in module.parameters()):
            fail(f"your model leaves {_PARTS[part]} in training mode: requires_grad_(False) stops its gradients, "
                 f"but a frozen part also runs in eval mode, as the table says: `{part}.requires_grad_(False).eval()`.")
    modes = {module: module.training for module in mine.modules()}
    for module in modes:  # all in eval first, as after model.eval(), so train() must switch the new parts on itself
        module.training = False
    training = run_learner(mine.train, what=f"your {name}'s train()")
    back_in_training = [part for part in _FROZEN if getattr(mine, part).training]
    left_in_eval = [part for part in _TRAINED if not getattr(mine, part).training]
    for module, mode in modes.items():  # the model as it was built
        module.training = mode
    if training is not mine:
        fail(f"your {name}.train() returns {type(training).__name__}, not the model: end it with `return self`, as "
             "nn.Module.train does (`model = model.train()` is common).")
    if back_in_training:
        fail(f"your {name}.train() puts {_PARTS[back_in_training[0]]} back in training mode (nn.Module.train sets "
             f"every submodule's mode): override train, `super().train(mode)`, then `self.vision.eval()` and "
             "`self.lm.eval()`, so the frozen parts always run in eval mode.")
    if left_in_eval:
        fail(f"your {name}.train() leaves self.{left_in_eval[0]} in eval mode, so it would train without its "
             "training-time behaviour: call `super().train(mode)` first, then put only the frozen parts in eval.")
    keys = sorted(mine.xattn.keys(), key=int) if all(k.isdigit() for k in mine.xattn.keys()) else list(mine.xattn.keys())
    if keys != [str(i) for i in want_layers]:
        fail(_placement_mistake(keys, len(lm.blocks), config.cross_attn_every, want_layers)
             or f"your xattn holds blocks keyed {keys}; flamingo_lite's has one before each of the layers "
                f"{want_layers}, keyed by the layer index as a string.")
    layers = getattr(mine, "xattn_layers", None)
    if not isinstance(layers, (list, tuple)) or list(layers) != want_layers:
        fail(f"your `self.xattn_layers` is {layers!r}; it should be the list of layers with a block before them, "
             f"{want_layers} here.")
    if len({id(mine.xattn[k]) for k in keys}) < len(keys):
        fail(f"one gated block object sits before several layers (xattn keys {keys}), so they all share its weights: "
             "build a new GatedBlock for each layer, inside the dict comprehension.")
    sizes = _sizes_mistake(mine, reference, lm, vision)
    if sizes:
        fail(sizes)
    _compare_parameters(mine, reference)
    mine.load_state_dict(reference.state_dict(), strict=True)

    forward = f"your {name}'s forward(tokens, images)"
    mine.eval()
    try:
        with torch.no_grad(), _WhatRan(mine) as ran:
            got = mine(tokens, images)  # (b, n, V)
    except KeyError as error:
        key = str(error).strip("'\"")
        if key.isdigit() and int(key) in want_layers and not isinstance(error.args[0], str):
            fail("self.xattn is keyed by strings: write `self.xattn[str(i)]`, not `self.xattn[i]`.")
        fail(f"your forward asked for a gated block before LM layer {key}, but there are blocks only before layers "
             f"{want_layers}: run one only when i is in `self.xattn_layers`.")
    except Exception:  # the learner's own error (the stub's NotImplementedError included), in their words
        with torch.no_grad():
            run_learner(mine, tokens, images, what=forward)
    with torch.no_grad():
        want = reference(tokens, images)  # (b, n, V)
        mistakes = _mistakes(reference, tokens, images, _lm_alone(ran))
    compare(got, want, what=what, mistakes=mistakes)
    return mine


def check_flamingo_class(flamingo_class, config: FlamingoConfig) -> None:
    """Step "08.class": the learner's whole Flamingo, `flamingo_class(config, lm=lm, vision=vision)`, against
    flamingo_lite.tiny.Flamingo built from the same lm, vision and weights: the attributes, the parameter names
    (strict load), the logits with opened gates, and which parameters a backward pass reaches; then the same parts
    and logits with `other_config` (other heads than the LM's, another `<image>` id, all previous media)."""
    refuse_the_answer(flamingo_class, (Flamingo,))
    if not isinstance(flamingo_class, type):
        raise TypeError(f"check_flamingo_class takes your class itself (e.g. MyFlamingo), not a "
                        f"{type(flamingo_class).__name__}")
    config = example_config(config)
    name = flamingo_class.__name__
    torch.manual_seed(0)
    lm = TinyLM(config.lm_config())
    vision = make_vision_encoder(config).train()  # as a module comes: in training mode, so a missing eval() shows
    reference = _open_gates(Flamingo(config, lm=copy.deepcopy(lm), vision=copy.deepcopy(vision)).eval())
    tokens, images = example_batch()  # (b, n), (b, t, 3, H, W)
    mine = _build_and_compare(flamingo_class, config, lm, vision, reference, tokens, images,
                              what=f"your {name}'s logits (gates opened, blocks before layers 0 and 2 of 3)")

    mine.zero_grad(set_to_none=True)
    out = run_learner(mine, tokens, images, what=f"your {name}'s forward(tokens, images)")  # (b, n, V)
    cut = ("; they require grad, so your forward cuts them off: a `torch.no_grad()` or `.detach()` there (around the "
           "resampler, the pictures' features or an LM layer) gives the right numbers and trains nothing")
    if not out.requires_grad:
        trainable = any(p.requires_grad for n, p in mine.named_parameters() if n.split(".")[0] in _TRAINED)
        fail("no parameter of your model gets a gradient: only the vision encoder and the language model are frozen; "
             f"the resampler and the gated blocks must train{cut if trainable else ''}.")
    out.float().pow(2).mean().backward()
    for part in _FROZEN:
        leaked = [n for n, p in mine.named_parameters() if n.split(".")[0] == part and p.grad is not None]
        if leaked:
            fail(f"gradients reach {_PARTS[part]} ({leaked[0]} has one, {len(leaked)} parameters in all): it is not "
                 f"frozen; freeze it in the constructor (`{part}.requires_grad_(False).eval()`: no gradients, eval mode).")
    dead = [n for n, p in mine.named_parameters() if n.split(".")[0] in _TRAINED and p.grad is None]
    if dead:
        frozen = [n for n in dead if not dict(mine.named_parameters())[n].requires_grad]
        fail(f"{dead[0]} gets no gradient ({len(dead)} parameters of the resampler and the gated blocks in all): "
             + ("freeze only the vision encoder and the language model; the new parts must train." if frozen else
                f"the new parts must train{cut}."))

    other = other_config(config)
    with torch.random.fork_rng(devices=[]):  # the second build must not move the notebook's random numbers
        torch.manual_seed(1)
        lm, vision = TinyLM(other.lm_config()), make_vision_encoder(other).train()
        reference = _open_gates(Flamingo(other, lm=copy.deepcopy(lm), vision=copy.deepcopy(vision)).eval())
        _build_and_compare(flamingo_class, other, lm, vision, reference, _swapped(tokens, _IMAGE_ID, _OTHER_ID), images,
                           what=f"your {name}'s logits with a second config (heads={other.heads} and dim_head="
                                f"{other.dim_head} for the blocks, lm_heads={other.lm_heads}, <image> id "
                                f"{other.media_token_id}, "
                                "only_attend_immediate_media=False)")
    passed(f"your {name} loads flamingo_lite's Flamingo weights (strict), gives its logits on 3 sequences (text "
           "before the first picture, 4-5 pictures each), also with other heads than the LM's, another <image> id and "
           "all previous media, and only the resampler and the gated blocks get gradients.")


def check_placement(xattn_layer_indices) -> int:
    """Step "08.placement": the indices for several (depth, every); returns the block count of Flamingo-80B."""
    refuse_the_answer(xattn_layer_indices, (xattn_layers,))
    for depth, every in [(4, 1), (4, 2), (5, 4), (2, 1), (3, 2), (6, 4), (80, 7)]:
        want = [i for i in range(depth) if i % every == 0]
        got = run_learner(xattn_layer_indices, depth, every, what=f"your xattn_layer_indices({depth}, {every})")
        if not isinstance(got, (list, tuple, str, torch.Tensor)) and isinstance(got, Iterable):
            got = list(got)  # a range or a generator: named when its values are right
            if got == want:
                fail(f"xattn_layer_indices({depth}, {every}) gives the right layers {want}, but not as a list: return "
                     "a list (list(...)).")
        if isinstance(got, (list, tuple)) and list(got) == want and not all(type(i) is int for i in got):
            fail(f"xattn_layer_indices({depth}, {every}) gives the right layers, but as {type(got[0]).__name__} "
                 "values: layer indices are ints (range gives them), and the gated blocks are keyed str(i).")
        if isinstance(got, tuple) and list(got) == want:
            fail(f"xattn_layer_indices({depth}, {every}) gives the right layers {list(got)}, but as a tuple: return a "
                 "list, as the exercise asks (Flamingo's xattn_layers is one).")
        if not isinstance(got, (list, tuple)) or list(got) != want:
            got = list(got) if isinstance(got, (list, tuple)) else got
            if got == [i for i in range(depth) if (i + 1) % every == 0]:
                fail(f"xattn_layer_indices({depth}, {every}) = {got}: off by one; the paper's blocks start at the first "
                     f"layer (i % every == 0), so the answer is {want}.")
            if got == [i for i in range(depth + 1) if i % every == 0]:
                fail(f"xattn_layer_indices({depth}, {every}) = {got}: layer {depth} is past the last; a model of depth "
                     f"{depth} has layers 0 to {depth - 1}, so loop over range(depth): the answer is {want}.")
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
    half_frozen = lm_class(config.lm_config())
    half_frozen.blocks[0].requires_grad_(False)  # a part with some parameters frozen still trains
    cases = [(Flamingo(config), ["resampler", "xattn"]),
             (lm_class(config.lm_config()), ["blocks", "lm_head", "ln_f", "pos_emb", "tok_emb"]),
             (vision_class(), []),
             (half_frozen, ["blocks", "lm_head", "ln_f", "pos_emb", "tok_emb"])]
    for module, want in cases:
        got = run_learner(trainable_names, module, what=f"your trainable_names({type(module).__name__})")
        if isinstance(got, (set, frozenset)) and sorted(got) == want:
            fail(f"trainable_names({type(module).__name__}) has the right names, but in a {type(got).__name__}, "
                 "which has no order: return a sorted list, `sorted(...)`.")
        got = sorted(got) if isinstance(got, (set, frozenset)) else got
        if isinstance(got, tuple) and sorted(got) == want:
            fail(f"trainable_names({type(module).__name__}) has the right names, but in a tuple: return a sorted "
                 "list, `sorted(...)`.")
        if not isinstance(got, (list, tuple)):
            fail(f"trainable_names returned a {type(got).__name__}: return a sorted list of names.")
        got = list(got)
        if any("." in name for name in got):
            fail(f"trainable_names({type(module).__name__}) lists full parameter names such as {got[0]!r}: keep only the "
                 "part before the first dot.")
        if type(module) is Flamingo and "lm" in got:
            fail("the frozen parts are listed as trainable: keep only parameters with `p.requires_grad`.")
        if sorted(got) == want and got != want:
            fail(f"trainable_names({type(module).__name__}) has the right names in another order, {got}: sort them, "
                 "`return sorted(...)`.")
        if module is half_frozen and got == [name for name in want if name != "blocks"]:
            fail(f"trainable_names leaves out `blocks` of a {type(module).__name__} whose first block is frozen and the "
                 "others train: a part is trainable when at least one of its parameters has requires_grad (`any`, "
                 "not `all`).")
        if got != want:
            fail(f"trainable_names({type(module).__name__}) should be {want}, yours is {got}.")
    passed("trainable_names is right: only the resampler and the gated blocks learn.")
    return cases[0][1]


class _Runs:
    """While active (a `with` block), notes every Flamingo and every language model called on its own: `flamingos`
    and `lms`, lists of modules. A Flamingo's forward uses its LM's parts, never `lm(...)`, so `lms` holds only the
    language models a learner ran by themselves."""

    def __enter__(self):
        self.flamingos, self.lms = [], []

        def note(module, args):
            if isinstance(module, Flamingo):
                self.flamingos.append(module)
            elif isinstance(module, TinyLM):
                self.lms.append(module)

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(note)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class _ChangedLogits:
    """While active (a `with` block), every Flamingo's forward, called as `model(...)` or as `model.forward(...)`,
    returns its logits changed by `change` (logits (b, n, V) -> (b, n, V)); `ran` says whether a Flamingo ran. The
    model's gates and config are left as they are, so an answer read off them does not see the change."""

    def __init__(self, change):
        self.change = change

    def __enter__(self):
        self.ran, self.forward = False, Flamingo.forward
        forward = self.forward

        def changed(module, *args, **kwargs):
            self.ran = True
            return self.change(forward(module, *args, **kwargs))  # (b, n, V)

        Flamingo.forward = changed
        return self

    def __exit__(self, *exc):
        Flamingo.forward = self.forward


def _one_logit_off(at: tuple):
    """A change of the logits (b, n, V) -> (b, n, V) that raises one value, the one at index `at`, by 1."""
    def change(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[at] += 1.0
        return logits

    return change


def _off_by_a_millionth(logits: torch.Tensor) -> torch.Tensor:
    """The logits times (1 + 1e-6): not exactly the language model's, yet close enough for torch.allclose's default
    tolerance (rtol 1e-5): (b, n, V)."""
    return logits * (1 + 1e-6)


def _answer(differs_from_lm_at_init, config: FlamingoConfig, tokens, images, what: str) -> bool:
    got = run_learner(differs_from_lm_at_init, config, tokens, images, what=what)
    if isinstance(got, torch.Tensor):
        if got.is_floating_point() or got.is_complex():
            fail(f"differs_from_lm_at_init returned a {got.dtype} tensor (a difference, such as the largest one?), not "
                 "an answer: return True or False, `not torch.equal(a, b)` (a bool tensor of one value will do too).")
        if got.numel() != 1:
            fail(f"differs_from_lm_at_init returned a tensor of {got.numel()} values: compare the whole logits at "
                 "once (`torch.equal`) to get one answer.")
        got = bool(got)
    if not isinstance(got, bool):
        fail(f"differs_from_lm_at_init returned a {type(got).__name__}: return True or False.")
    return got


def check_no_gate(differs_from_lm_at_init, tokens, images) -> None:
    """Step "08.no_gate": False for the default config, True with `tanh_gate=False` (a bool or a one-value tensor),
    True for a model with closed gates whose logits differ from the language model's at one value only (so an
    answer that asks whether every logit differs, or reads the gates instead of the logits, is wrong), True when the
    one value is in the last sequence's last position instead (so an answer that compares the first sequence only,
    or the last position only, is wrong), and True for
    a model whose logits are off the language model's by one part in a million (exactly equal is asked, so a
    comparison with a tolerance, such as torch.allclose, is wrong)."""
    answers, runs = {}, {}
    for gated in (True, False):
        torch.manual_seed(0)
        with _Runs() as runs[gated]:
            answers[gated] = _answer(differs_from_lm_at_init, FlamingoConfig(tanh_gate=gated), tokens, images,
                                     what=f"your differs_from_lm_at_init(FlamingoConfig(tanh_gate={gated}), ...)")
    if answers == {True: True, False: False}:
        fail("differs_from_lm_at_init answers the opposite question: return True when the logits differ from the "
             "LM's, that is `not torch.equal(...)`.")
    for gated, want in ((True, False), (False, True)):
        if answers[gated] == want:
            continue
        seen = runs[gated]
        if seen.flamingos and not seen.lms:
            why = ("it never runs the language model on its own, so it compares the model with itself, which is "
                   "always equal: compare `model(tokens, images)` with `model.lm(tokens)`")
        elif seen.flamingos and any(lm is not f.lm for lm in seen.lms for f in seen.flamingos):
            why = ("it compares with another language model than the model's own: compare `model(tokens, images)` "
                   "with `model.lm(tokens)`")
        elif seen.flamingos and any(f.config.tanh_gate != gated for f in seen.flamingos):
            why = f"it builds its model with tanh_gate={not gated}: build it from the given config, `Flamingo(config)`"
        elif gated:
            why = ("with tanh gates at 0 the logits are exactly the LM's: compare with `torch.equal`, and build the model "
                   "from the given config")
        else:
            why = "with the gates fixed open the blocks change the logits from the start: use the given config"
        fail(f"for tanh_gate={gated} the answer is {want}, yours is {answers[gated]}: {why}.")
    with torch.random.fork_rng(devices=[]):  # the extra calls must not move the notebook's random numbers
        torch.manual_seed(0)
        with _ChangedLogits(_one_logit_off((0, 0, 0))) as one_off:  # the first sequence's first position
            one = _answer(differs_from_lm_at_init, FlamingoConfig(), tokens, images,
                          what="your differs_from_lm_at_init(FlamingoConfig(), ...), one of its logits raised by 1")
        torch.manual_seed(0)
        with _ChangedLogits(_one_logit_off((-1, -1, -1))):  # the last sequence's last position
            last = _answer(differs_from_lm_at_init, FlamingoConfig(), tokens, images,
                           what="your differs_from_lm_at_init(FlamingoConfig(), ...), its last logit raised by 1")
        torch.manual_seed(0)
        with _ChangedLogits(_off_by_a_millionth) as nudged:
            close = _answer(differs_from_lm_at_init, FlamingoConfig(), tokens, images,
                            what="your differs_from_lm_at_init(FlamingoConfig(), ...), its logits off by a millionth")
    if not one and not one_off.ran:
        fail("differs_from_lm_at_init answers without running the model (from its gates, such as `model.gates()`, or "
             "from its config): a model whose gates are 0 but whose logits are not the LM's (one raised by 1, here) "
             "differs, and yours says it does not. The question is about the logits: compare `model(tokens, images)` "
             "with `model.lm(tokens)`.")
    if not one and not last:
        fail("differs_from_lm_at_init says a model whose logits differ from the LM's at one value only (raised by 1) "
             "does not differ: `(a != b).all()` asks whether every logit differs, but one is enough: use "
             "`not torch.equal(a, b)` (or `(a != b).any()`).")
    if one != last:
        seen, unseen = (("the first sequence's first position", "the last sequence's last position") if one else
                        ("the last sequence's last position", "the first sequence's first position"))
        fail(f"differs_from_lm_at_init compares part of the logits only: it sees one value raised by 1 at {seen} but "
             f"not at {unseen}, where it says the model does not differ (a slice such as `logits[0]` or "
             "`logits[:, -1]`?). Compare the whole logits, every sequence and every position: "
             "`not torch.equal(model(tokens, images), model.lm(tokens))`.")
    if nudged.ran and not close:
        fail("differs_from_lm_at_init says a model whose logits are the LM's times (1 + 1e-6) does not differ: it "
             "compares with a tolerance (torch.allclose forgives 1e-5 relative), but the question is whether they are "
             "exactly equal: use `torch.equal`.")
    passed("differs_from_lm_at_init is right: with gates fixed open, the model is knocked off the language model "
           "from step 0.")


keep_rng(globals())  # no check moves the lesson's random numbers

register_nudges({  # first hints for the steps whose full hint is the answer
    "08.class": "Write __init__ first, from the table of attributes above, then forward, from Fig. 3 read bottom to "
    "top.",
    "08.class.init": "Six attributes: the three given (the config, and the two pretrained parts, frozen), the list "
    "self.xattn_layers, and the two that train, the resampler and one gated block for each layer index in "
    "self.xattn_layers, each built from the config's sizes.",
    "08.class.forward": "Pictures become features, then media; the <image> tokens say where each picture is; then the "
    "language model's own steps, with a gated block run just before each layer that has one.",
    "08.no_gate": "Build the model of the given config, then run it and its own language model on the same tokens, and "
    "compare the two outputs exactly.",
    "08.placement": "A block goes before some of the language model's layers: the first one, and then one every so often. "
    "Which layers those are is a condition on the layer index.",
    "08.trainable": "Each parameter's name starts with the part of the model it belongs to. Keep the parts of the "
    "parameters that train, each once, in order.",
})
