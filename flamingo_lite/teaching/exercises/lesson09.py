"""Checks for lesson 09: the learner writes the pieces of the training step (the next-token loss, freezing, the AdamW
parameter groups) and greedy decoding, then two exercises that read the training's results.

The loss is checked on logits and tokens with padding, against the loss not shifted (scoring each position's own
token), shifted the wrong way or by two, its targets rolled (either way) instead of sliced, counted on padding, or
averaged over every position, padding included, then with padding of another id than 0 (a fixed `ignore_index=0` is
named); a loss written by hand with its log_softmax over the positions or the batch is named, and logits passed to
cross-entropy without flattening are named from the error they raise. Freezing and the parameter groups are read off
the learner's model and groups. Greedy decoding runs on a scripted model whose next token is known at every position
but has only about 1/5 of the probability, twice from different seeds, so a decoder that samples, does not stop at
`<eoc>`, reads the wrong position or never feeds its own word back gives a recognisable answer; a decoder that gives
the model a window of the latest tokens, or only the new ones, is named from the prompt's start missing from the
model's input. The training loop trains a model whose forward takes (tokens, images), as the learner's MyFlamingo
does, and is compared with the package's history, where "step" counts the optimizer updates done (from 1; step 0 is
before the first); a loop one step off, one that clears the gradients before the step, leaves out the weight decay,
logs a loss computed after the update, draws a new order every step, keeps each epoch's smaller last batch (the
check's 44 sequences leave 4 over), steps the schedule before the optimizer, or logs the gates without their tanh or
swapped is named, and the model must be left in eval mode. `first_step_above` is tried on gates exactly at the
threshold (not above it), on one just above it that a second tanh brings below, and on a history logged unevenly; `caption_format` on a caption whose third word is not
"in".
"""
from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ...tiny import data as shapes_data
from ...tiny import training
from ...tiny.model import Flamingo, FlamingoConfig
from . import ExerciseFailed, Mistake, compare, fail, passed, register_hints, register_nudges, run_learner, run_untouched, keep_rng, refuse_the_answer

register_hints({
    "09.loss": "The prediction at position i is for token i+1: take `logits[:, :-1]` and `tokens[:, 1:]`, flatten "
               "both (`.reshape(-1, V)` and `.reshape(-1)`), and call `F.cross_entropy(..., ignore_index=pad_id)` so "
               "padding targets are left out of the mean.",
    "09.freeze": "`model.vision.requires_grad_(False)` and `model.lm.requires_grad_(False)`; the resampler and the "
                 "gated blocks keep `requires_grad=True`. Return the model.",
    "09.groups": "Walk `model.named_parameters()`, skip `not p.requires_grad`, put names ending in `_gate` in "
                 "`{'params': gates, 'lr': gate_lr, 'weight_decay': 0.0}` and the rest in "
                 "`{'params': others, 'weight_decay': weight_decay}`.",
    "09.greedy": "Loop `max_new_tokens` times: `logits = model(ids[None], images[None])`, the next id is "
                 "`logits[0, -1].argmax()`; append it to `ids` (`torch.cat`) and to your answer, and `break` after "
                 "appending `eoc_id`.",
    "09.loop": "Freeze, `model.train()`, then `torch.optim.AdamW(parameter_groups(model, lr=lr, gate_lr=gate_lr, weight_decay=weight_decay), "
               "lr=lr)` and `LambdaLR(optimizer, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s / steps, 1.0))))`. "
               "Batches: `generator = torch.Generator().manual_seed(seed)`; when the queue is empty, "
               "`torch.randperm(len(data), generator=generator)`, keep whole batches, `.split(batch_size)`. Each step: "
               "`part = data[idx]`, loss of `model(part.tokens, part.images)` (your MyFlamingo finds the `<image>` "
               "positions itself), log step 0 before the update, then `zero_grad`, `backward`, `step`, "
               "`schedule.step()`; after the loop `model.eval()`. 'step' counts the updates done: after the update of "
               "`for step in range(steps)` (0-based) there are `step + 1`, so log `step + 1` when "
               "`(step + 1) % log_every == 0 or step + 1 == steps`.",
    "09.first_step": "Walk `zip(history['step'], history['attn_gate_tanh'])` and return the first step where "
                     "`abs(gates[layer]) > threshold`; after the loop return None.",
    "09.format": "`caption.split()`: 3 words `a COLOUR SHAPE` is colour first, 4 words `a SHAPE in COLOUR` is shape "
                 "first; check each word against `shapes_data.COLOURS` / `shapes_data.SHAPES`.",
})
register_nudges({  # a first hint where the full one is the answer: hint(key), then hint(key, 2)
    "09.loss": "Next-token prediction: the logits at position i predict token i+1, so line the two up with a shift "
    "of one; padding targets must not count, in the sum or in the mean.",
    "09.greedy": "Decode one token at a time: run the model on the ids so far, take the most likely next token, append"
    " it, and stop after <eoc> or after max_new_tokens tokens.",
    "09.loop": "Lesson 07's loop with Flamingo's pieces: freeze the pretrained parts, train mode, AdamW over your "
    "parameter groups with the cosine schedule, batches from a seeded shuffle, and a log of the loss and "
    "both gates; eval mode at the end.",
})


def example_batch(seed: int = 0, pad_id: int = 0):
    """Logits (3, 8, 12) and tokens (3, 8) whose rows end in different amounts of padding (id `pad_id`, 0 or 2); with
    pad_id 2 the id 0 is a real token, the second of every row, so a loss that leaves out id 0 is wrong there."""
    if pad_id not in (0, 2):
        raise ValueError(f"pad_id must be 0 or 2 (the other ids are real tokens here), got {pad_id}")
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 12, (3, 8), generator=generator)  # (b, n)
    tokens[:, 0] = 1  # every row starts with <image>
    if pad_id != 0:
        tokens[:, 1] = 0  # a real token with the id the usual padding has
    tokens[1, 5:] = pad_id  # padding
    tokens[2, 3:] = pad_id
    logits = torch.randn(3, 8, 12, generator=generator) * 2  # (b, n, V)
    return logits, tokens


# F.cross_entropy reads axis 1 as the classes: logits (b, n-1, V) with targets (b, n-1) are refused with this
_LOSS_ADVICE = {"Expected target size": "the logits and targets were not flattened: F.cross_entropy wants the "
                                        "classes on axis 1 of a (N, V) input, so pass `logits[:, :-1].reshape(-1, V)` "
                                        "and `tokens[:, 1:].reshape(-1)`."}


def _mean_over_every_position(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int) -> Mistake:
    """The padding's losses set to 0, then the mean over every position, padding included."""
    per_token = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                                ignore_index=pad_id, reduction="none")  # (b*(n-1),), 0 at padding
    return Mistake("mean over every position", per_token.mean(),
                   "the padding is left out of the sum but not of the count: the mean is over every position, padding "
                   "included, so the loss comes out too small; average over the real targets only (the default "
                   "`reduction='mean'` of `F.cross_entropy(..., ignore_index=pad_id)` does).")


def _mean_per_sequence(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int) -> Mistake:
    """Each sequence's mean over its own real targets, then the mean of those means."""
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], ignore_index=pad_id,
                                reduction="none")  # (b, n-1), 0 at padding
    real = (tokens[:, 1:] != pad_id).float()  # (b, n-1)
    per_sequence = per_token.sum(dim=1) / real.sum(dim=1).clamp(min=1)  # (b,)
    return Mistake("mean per sequence", per_sequence.mean(),
                   "the loss is a mean of each sequence's mean: a short sequence's tokens then weigh more than a long "
                   "one's. Average over every real target of the batch at once, "
                   "`F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=pad_id)`.")


def _mask_from_inputs(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int) -> Mistake:
    """The shifted losses averaged under a padding mask taken from the inputs `tokens[:, :-1]`, not the targets."""
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # (b, n-1)
    real = (tokens[:, :-1] != pad_id).float()  # (b, n-1), one place early: the inputs, not the targets
    return Mistake("mask from the inputs", (per_token * real).sum() / real.sum(),
                   "the padding mask is taken from the inputs (`tokens[:, :-1]`), one place off: it counts the first "
                   "padding target and drops nothing else. Mask the targets, `tokens[:, 1:] != pad_id`, or pass "
                   "`ignore_index=pad_id` to `F.cross_entropy`.")


def _log_softmax_over(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int, dim: int) -> Mistake:
    """The loss written by hand, `-log_softmax(...).gather(...)` averaged over the real targets, with the softmax over
    axis `dim` of the shifted logits (b, n-1, V): 0 is the batch, 1 the positions; only -1 (the vocabulary) is right."""
    log_p = F.log_softmax(logits[:, :-1], dim=dim)  # (b, n-1, V), normalised along the wrong axis
    picked = -log_p.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (b, n-1)
    real = (tokens[:, 1:] != pad_id).float()  # (b, n-1)
    axis = {0: "the batch (dim=0)", 1: "the positions (dim=1)"}[dim]
    return Mistake(f"log_softmax over {axis}", (picked * real).sum() / real.sum(),
                   f"the log-probabilities are normalised over {axis}, not over the vocabulary: each position's "
                   "next-token distribution is a softmax over the V words, `F.log_softmax(logits, dim=-1)` (or "
                   "`F.cross_entropy`, which does it for you).")


def check_loss(next_token_loss) -> None:
    """Step "09.loss": the shifted, padding-free mean cross-entropy, on a padded batch, then on one padded with
    another id (pad_id=2, where 0 is a real token), so a loss that leaves out a fixed id instead of pad_id is named."""
    refuse_the_answer(next_token_loss, (training.next_token_loss, training.next_token_loss_sum))
    logits, tokens = example_batch()
    given = logits.clone().requires_grad_()  # a leaf like the model's output: the loss must carry its gradient
    got = run_untouched(next_token_loss, given, tokens, 0, what="your next_token_loss(logits, tokens, pad_id)",
                        names=("logits", "tokens", "pad_id"), advice=_LOSS_ADVICE,
                        fix="mask the padding with `ignore_index=pad_id`, never by writing into tokens.")
    if isinstance(got, torch.Tensor) and not got.requires_grad:
        fail("your next_token_loss gives a loss with no gradient (a .detach(), .item() turned back into a tensor, or "
             "torch.no_grad()): the training step's backward() would have nothing to follow.")
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.reshape(())
    want = training.next_token_loss(logits, tokens, 0)  # ()
    flat = lambda lg, tk, **kw: F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tk.reshape(-1), **kw)  # noqa: E731
    mistakes = [
        Mistake("not shifted, padding left out", flat(logits, tokens, ignore_index=0),
                "each position is scored against its own token: the prediction at position i is for token i+1, so "
                "compare `logits[:, :-1]` with `tokens[:, 1:]`."),
        Mistake("not shifted", flat(logits, tokens),
                "each position is scored against its own token (and padding is counted): compare `logits[:, :-1]` "
                "with `tokens[:, 1:]`, with `ignore_index=pad_id`."),
        Mistake("padding counted", flat(logits[:, :-1], tokens[:, 1:]),
                "the loss counts the padding targets: pass `ignore_index=pad_id` to `F.cross_entropy` so only real "
                "tokens are scored."),
        Mistake("shifted the wrong way", flat(logits[:, 1:], tokens[:, :-1], ignore_index=0),
                "the shift goes the wrong way: position i predicts token i+1, so drop the *last* logits "
                "(`logits[:, :-1]`) and the *first* tokens (`tokens[:, 1:]`)."),
        Mistake("shifted by two", flat(logits[:, :-2], tokens[:, 2:], ignore_index=0),
                "the targets are shifted one place too far: position i predicts token i+1, the very next one, so "
                "compare `logits[:, :-1]` with `tokens[:, 1:]`, a shift of one."),
        Mistake("rolled", flat(logits, tokens.roll(-1, dims=1), ignore_index=0),
                "the targets are rolled (`tokens.roll(-1, dims=1)`): the roll wraps the first token round to the end, "
                "so the last position is scored against it; slice instead, `logits[:, :-1]` with `tokens[:, 1:]`."),
        Mistake("rolled the wrong way", flat(logits, tokens.roll(1, dims=1), ignore_index=0),
                "the targets are rolled the wrong way (`tokens.roll(1, dims=1)`): position i predicts token i+1, not "
                "i-1, and the roll wraps a token round; slice instead, `logits[:, :-1]` with `tokens[:, 1:]`."),
        Mistake("sum", flat(logits[:, :-1], tokens[:, 1:], ignore_index=0, reduction="sum"),
                "the loss is a sum: take the mean over the real target tokens (the default `reduction='mean'`)."),
        _mean_over_every_position(logits, tokens, 0),
        _mean_per_sequence(logits, tokens, 0),
        _mask_from_inputs(logits, tokens, 0),
        _log_softmax_over(logits, tokens, 0, dim=1),
        _log_softmax_over(logits, tokens, 0, dim=0),
        Mistake("negated", -want, "the loss has the wrong sign: cross-entropy is -log p of the right token, a positive "
                "number that training makes smaller; minimising its negative would push the right tokens down."),
        Mistake("no log_softmax", F.nll_loss(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                                             ignore_index=0),
                "the logits are read as log-probabilities (`F.nll_loss` on them, or `-logits.gather(...)`): take "
                "`F.log_softmax(logits, dim=-1)` first, or use `F.cross_entropy`, which does both."),
        Mistake("label smoothing", flat(logits[:, :-1], tokens[:, 1:], ignore_index=0, label_smoothing=0.1),
                "the targets are smoothed (`label_smoothing=0.1`): the loss the paper trains with is the plain "
                "next-token cross-entropy, -log p of the right token; leave label_smoothing at its default, 0."),
        Mistake("softmax first", flat(logits[:, :-1].softmax(dim=-1), tokens[:, 1:], ignore_index=0),
                "F.cross_entropy was given probabilities (`logits.softmax(-1)`): it takes the logits themselves and "
                "applies log_softmax inside, so a softmax before it is applied twice."),
        Mistake("row 0 only", flat(logits[:1, :-1], tokens[:1, 1:], ignore_index=0),
                "only the first sequence is scored (`logits[0]`, right for a batch of 1): flatten every sequence of "
                "the batch, `logits[:, :-1].reshape(-1, V)`."),
    ]
    compare(got, want, what="your next_token_loss", mistakes=mistakes)

    pad_id = 2
    logits, other = example_batch(pad_id=pad_id)
    got = run_learner(next_token_loss, logits.clone(), other.clone(), pad_id,
                      what=f"your next_token_loss(logits, tokens, pad_id={pad_id})", advice=_LOSS_ADVICE)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.reshape(())
    mistakes = [
        Mistake("fixed pad id", flat(logits[:, :-1], other[:, 1:], ignore_index=0),
                f"the loss leaves out the targets with id 0, not those with id pad_id ({pad_id} here): pass "
                "`ignore_index=pad_id`, not a fixed id."),
        Mistake("padding counted", flat(logits[:, :-1], other[:, 1:]),
                f"the loss counts the padding targets (id {pad_id} here): pass `ignore_index=pad_id` to "
                "`F.cross_entropy`."),
        _mean_over_every_position(logits, other, pad_id),
        _mean_per_sequence(logits, other, pad_id),
        _mask_from_inputs(logits, other, pad_id),
    ]
    compare(got, training.next_token_loss(logits, other, pad_id), what=f"your next_token_loss with pad_id={pad_id}",
            mistakes=mistakes)
    wide = torch.randn(3, 8, 20, generator=torch.Generator().manual_seed(1))  # (b, n, V=20): another vocabulary
    what = "your next_token_loss on logits of a vocabulary of 20"
    got = run_learner(next_token_loss, wide.clone(), tokens.clone(), 0, what=what,
                      advice={**_LOSS_ADVICE, **dict.fromkeys(("is invalid for input of size", "Expected input batch_size"),
                              "the vocabulary size is written into your code: take it from the logits, "
                              "`logits.shape[-1]`, as in `reshape(-1, logits.shape[-1])`.")})
    compare(got.reshape(()) if isinstance(got, torch.Tensor) and got.numel() == 1 else got,
            training.next_token_loss(wide, tokens, 0), what=what)
    passed(f"next_token_loss is right: {want.item():.4f} on a batch with padding, only the {int((tokens[:, 1:] != 0).sum())} "
           "real next tokens counted.")


def check_freeze(freeze_pretrained, config: FlamingoConfig | None = None) -> None:
    """Step "09.freeze": after the learner's function only the resampler and the gated blocks train."""
    model = Flamingo(config if config is not None else FlamingoConfig()).requires_grad_(True)  # all trainable first
    out = run_learner(freeze_pretrained, model, what="your freeze_pretrained(model)")
    if out is not model:
        fail("freeze_pretrained must return the model it was given (`return model`), after freezing its parts in place.")
    parts = {part: [p.requires_grad for n, p in model.named_parameters() if n.split(".")[0] == part]
             for part in ("vision", "lm", "resampler", "xattn")}
    left = [part for part in ("vision", "lm") if any(parts[part])]
    plain = [part for part in left if vars(getattr(model, part)).get("requires_grad") is False]
    if plain:
        fail(f"`model.{plain[0]}.requires_grad = False` sets a plain attribute on the module, which nothing reads: "
             "its parameters still train. Call the method, `model.vision.requires_grad_(False)` and "
             "`model.lm.requires_grad_(False)`, which sets it on every parameter.")
    if left:
        has = "have" if len(left) > 1 else "has"
        fail(f"the frozen parts were left trainable ({', '.join(left)} still {has} requires_grad=True): call "
             "`.requires_grad_(False)` on `model.vision` and `model.lm`.")
    shut = [part for part in ("resampler", "xattn") if not all(parts[part])]
    if shut:
        was = "were" if len(shut) > 1 else "was"
        fail(f"{' and '.join(shut)} {was} frozen too: only the pretrained parts (vision, lm) are frozen; the new parts "
             "must learn.")
    passed("freeze_pretrained is right: the vision encoder and the language model are frozen, the resampler and the "
           "gated blocks learn.")


def check_groups(parameter_groups, model: Flamingo | None = None, *, lr=7e-3, gate_lr=3e-2, weight_decay=0.3) -> list:
    """Step "09.groups": every trainable parameter in exactly one group; the gates with their learning rate and no
    weight decay, the other weights with weight decay; nothing frozen. Returns the learner's groups."""
    model = model if model is not None else Flamingo(FlamingoConfig())
    groups = run_learner(parameter_groups, model, lr=lr, gate_lr=gate_lr, weight_decay=weight_decay,
                         what="your parameter_groups(model, lr=..., gate_lr=..., weight_decay=...)")
    if isinstance(groups, dict) or not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        fail("parameter_groups must return a list of dicts, each with a 'params' list (AdamW's parameter groups).")
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for g in groups:
        if not isinstance(g.get("params"), (list, tuple)):
            fail(f"a group's 'params' is a {type(g.get('params')).__name__}, not a list: AdamW reads it once, so a "
                 "generator is empty the next time anyone looks; write `list(...)` or build a list.")
        kinds = {type(p).__name__ for p in g.get("params", []) if not isinstance(p, torch.Tensor)}
        if kinds:
            fail(f"a group's 'params' holds {', '.join(sorted(kinds))} values, not the parameters themselves: put the "
                 "tensors `p` of `for n, p in model.named_parameters()` in the list (the names are only to choose "
                 "the group).")
        for p in list(g.get("params", [])):
            if id(p) in seen:
                fail(f"{names.get(id(p), 'a parameter')} is in two groups: put each parameter in exactly one.")
            seen[id(p)] = g
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and id(p) in seen]
    if frozen:
        fail(f"frozen parameters are in the groups ({frozen[0]}, ...): leave out every parameter with "
             "requires_grad=False.")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        fail(f"{len(missing)} trainable parameters are in no group ({missing[0]}, ...): every trainable one must be in one.")
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = seen[id(p)]
        decay, rate = g.get("weight_decay", None), g.get("lr", lr)
        if n.endswith("_gate"):
            if decay is None or decay != 0.0:
                fail(f"the gates get weight decay ({n} in a group with weight_decay={decay if decay is not None else 'AdamW default 0.01'}): "
                     "decay would pull them shut, so give their group 'weight_decay': 0.0.")
            if rate != gate_lr:
                fail(f"the gates train at lr={rate}, not at gate_lr={gate_lr}: give their group 'lr': gate_lr.")
        else:
            if decay != weight_decay:
                fail(f"{n} has weight_decay={decay}, not {weight_decay}: the weights (not the gates) get weight decay.")
            if rate != lr:
                fail(f"{n} trains at lr={rate}: the weights use the base learning rate lr={lr}.")
    try:
        torch.optim.AdamW(groups, lr=lr)
    except Exception as error:  # a group AdamW itself refuses
        fail(f"AdamW does not accept your groups: {str(error).splitlines()[0]}")
    passed(f"parameter_groups is right: {sum(1 for n, p in model.named_parameters() if p.requires_grad and n.endswith('_gate'))} "
           "gates at gate_lr without weight decay, the other trainable weights with weight decay, nothing frozen.")
    return list(groups)


class ScriptedModel(nn.Module):
    """A stand-in for Flamingo whose greedy next token is known: after a prompt of `prompt_len` tokens, position
    `prompt_len - 1 + j` predicts `script[j]`; earlier positions predict `early`, later ones `late`. The predicted id's
    logit is 1 above the others: a clear argmax, but only about 1 in 5 of the probability (e / (e + 11)), so a
    decoder that samples instead of taking the argmax goes wrong at almost every token."""

    def __init__(self, script, prompt_len, vocab=12, early=11, late=6, images_shape=None):
        super().__init__()
        self.script, self.prompt_len, self.vocab, self.early, self.late = list(script), prompt_len, vocab, early, late
        self.images_shape = images_shape  # (1, t, 3, H, W) the decoder must pass, when given
        self.lengths = []  # the length of every input it was called on: a decoder that appends makes them grow
        self.starts = []  # the first row's first tokens of every input: a decoder that crops drops the prompt's start

    def forward(self, tokens, images=None, media_locations=None, **kwargs):
        if images is None and kwargs.get("media") is None:
            raise ValueError("give the pictures: model(tokens, images)")
        if self.images_shape is not None and images is not None and tuple(images.shape) != self.images_shape:
            raise ValueError(f"the model got images of shape {tuple(images.shape)}, not (1, t, 3, H, W) = "
                             f"{self.images_shape}: pass every picture of the prompt, with a batch axis of 1 "
                             "(images[None])")
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:  # a real model embeds ids: long only
            raise TypeError(f"the model got token ids of dtype {getattr(tokens, 'dtype', type(tokens).__name__)}, "
                            "not torch.long: an id appended as a float (torch.tensor([next_id]) of a float, or "
                            "torch.cat with a float tensor) cannot be embedded; keep the prompt's dtype, "
                            "`torch.tensor([next_id], dtype=ids.dtype)`")
        b, n = tokens.shape
        self.lengths.append(n)
        self.starts.append(tokens[0, : self.prompt_len].tolist())
        ids = []
        for i in range(n):
            j = i - (self.prompt_len - 1)
            ids.append(self.early if j < 0 else self.script[j] if j < len(self.script) else self.late)
        return F.one_hot(torch.tensor(ids), self.vocab).float().expand(b, n, self.vocab)  # (b, n, V)


def _decode(greedy_decode, model, prompt, images, *, eoc_id: int, max_new_tokens: int, seed: int) -> list:
    """The learner's answer as a list of ids, with the random numbers seeded in a fork: a decoder that samples draws
    its own numbers, never the notebook's."""
    given = prompt.clone()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        got = run_learner(greedy_decode, model, given, images, eoc_id=eoc_id, max_new_tokens=max_new_tokens,
                          what="your greedy_decode(model, prompt, images, eoc_id=..., max_new_tokens=...)")
    if not torch.equal(given, prompt):
        fail("greedy_decode changed the prompt it was given in place (`prompt[...] = ...` or an in-place op): the "
             "caller's prompt changes too; build the growing ids as a new tensor, `ids = torch.cat([ids, new])`.")
    if isinstance(got, torch.Tensor):
        got = got.flatten().tolist()
    if not isinstance(got, (list, tuple)):
        fail(f"greedy_decode returned a {type(got).__name__}: return the list of new token ids.")
    if any(isinstance(i, torch.Tensor) for i in got):  # a list of 0-d tensors: `ids == [3, 7, 2]` is then False
        fail("greedy_decode returned a list of tensors, not of token ids: append `int(next_id)` (or "
             "`next_id.item()`), so the caller gets Python ints it can compare, index with and decode.")
    return [int(i) for i in got]


def _check_prompt_kept(model: ScriptedModel, prompt: torch.Tensor) -> None:
    """Every call of the model began with the whole prompt: a decoder that feeds it only the latest tokens (a window,
    `ids[-w:]`) or only the new ones drops the `<image>` the prompt starts with, and the text stops seeing its picture."""
    start = prompt.tolist()
    for call, (length, first) in enumerate(zip(model.lengths, model.starts)):
        if first != start:
            fail(f"at decoding step {call}, greedy_decode gave the model {length} tokens that do not begin with the "
                 "prompt: it feeds a window of the latest tokens (or only the new ones), so the `<image>` the prompt "
                 "starts with is gone and the words no longer see their picture. Give the model every id so far, "
                 "prompt included, at each step.")


def check_greedy(greedy_decode) -> None:
    """Step "09.greedy": the learner's decoder on scripted models, stopping at `<eoc>` and at `max_new_tokens`; run
    twice from different seeds, so a decoder that samples (its answers differ) is named."""
    refuse_the_answer(greedy_decode, (training.generate,))
    tok = shapes_data.Tokenizer()
    prompt = torch.tensor(tok.encode("<image> a"))  # (p,)
    images = torch.zeros(1, 3, 16, 16)  # (t, 3, H, W): the scripted model does not look at them
    red, circle, blue, square = (tok.index[w] for w in ("red", "circle", "blue", "square"))
    cases = [([red, circle, tok.eoc_id, blue, square], 5, [red, circle, tok.eoc_id]),
             ([blue, square, red, circle, tok.eoc_id], 3, [blue, square, red])]
    for script, max_new, want in cases:
        model = ScriptedModel(script, len(prompt))
        got, again = (_decode(greedy_decode, model, prompt, images, eoc_id=tok.eoc_id, max_new_tokens=max_new,
                              seed=seed) for seed in (0, 1))
        words = lambda ids: " ".join(tok.vocab[i] if 0 <= i < len(tok.vocab) else str(i) for i in ids)  # noqa: E731
        if got != again:
            fail(f"greedy_decode gives another answer each run ({words(got)!r}, then {words(again)!r}): it draws the "
                 "next token at random (`torch.multinomial` samples); greedy decoding takes the most likely one, "
                 "`logits[0, -1].argmax()`.")
        _check_prompt_kept(model, prompt)
        if got == want:
            continue
        if got[: len(prompt)] == prompt.tolist() and got[len(prompt):] == want:
            fail("greedy_decode returned the prompt too: return only the new ids.")
        if tok.eoc_id in want and got[: len(want)] == want and len(got) > len(want):
            fail(f"greedy decoding does not stop at <eoc> ({words(got)!r}): `break` right after appending eoc_id.")
        if tok.eoc_id in want and got == want[:-1]:
            fail("greedy_decode stops at <eoc> but leaves it out: append eoc_id, then stop.")
        if len(got) > max_new:
            fail(f"greedy_decode made {len(got)} tokens with max_new_tokens={max_new}: stop after that many.")
        if got and got == want[: len(got)] and len(got) < len(want) and (len(got) == max_new - 1 or tok.eoc_id not in want):
            fail(f"greedy_decode stops early: {len(got)} tokens ({words(got)!r}) where max_new_tokens={max_new} allows "
                 f"{max_new}: loop `for _ in range(max_new_tokens)`, stopping earlier only after <eoc>.")
        if got and all(i == got[0] for i in got) and got[0] == script[0]:
            if len(set(model.lengths)) > 1:  # the input grew, and the answer stayed: the same position read each time
                fail("greedy_decode repeats its first word though the input grows: it reads the same position at every "
                     "step (the prompt's last, `len(prompt) - 1`); the next token is predicted at the last position of "
                     "what the model is given now, `logits[0, -1]`.")
            fail("greedy_decode repeats its first word: the model gets the same input at every step; append each new "
                 "id to the input before the next step.")
        if got and got[0] == model.early:
            fail("greedy_decode reads the wrong position: the next token is predicted at the last position, "
                 "`logits[0, -1]`.")
        fail(f"greedy_decode gave {words(got)!r}, the scripted model's greedy answer is {words(want)!r}.")
    _check_greedy_passes_every_picture(greedy_decode, tok)
    passed("greedy_decode is right: it reads the last position, feeds each word back, and stops at <eoc> or "
           "max_new_tokens.")


def _check_greedy_passes_every_picture(greedy_decode, tok) -> None:
    """A prompt with two pictures: the decoder hands the model all of them, as (1, t, 3, H, W). With one picture,
    `images` without `[None]` and `images[None, :1]` would look right."""
    prompt = torch.tensor(tok.encode("<image> a red circle <eoc> <image> a"))  # (p,)
    images = torch.zeros(2, 3, 16, 16)  # (t, 3, H, W)
    red, circle = tok.index["red"], tok.index["circle"]
    model = ScriptedModel([red, circle, tok.eoc_id], len(prompt), images_shape=(1, *images.shape))
    got = _decode(greedy_decode, model, prompt, images, eoc_id=tok.eoc_id, max_new_tokens=5, seed=0)
    _check_prompt_kept(model, prompt)
    if len(model.lengths) == 1 and got != [red, circle, tok.eoc_id] and len(got) <= 1:
        fail("greedy_decode stops after one step on a prompt that holds an <eoc> of its own (`<image> a red circle "
             "<eoc> <image> a`): stop at the <eoc> you generate, `if next_id == eoc_id: break`, not at one anywhere in "
             "the ids.")
    if got != [red, circle, tok.eoc_id]:
        fail("greedy_decode is wrong on a prompt with two pictures: pass the model every picture, images[None] "
             "(1, t, 3, H, W), and read the last position as with one.")


def check_first_step_above(first_step_above) -> None:
    """Exercise "09.first_step" on a small made-up history (negative gates included, and gates exactly at the
    threshold, which have not exceeded it: the comparison is a strict `>`). It is logged every 10 steps and at the
    last, 25, as train_flamingo logs (so not evenly: a step computed from the entry's index is named)."""
    toy = {"step": [0, 10, 20, 25], "attn_gate_tanh": [[0.0, 0.0], [0.01, -0.2], [0.04, -0.3], [0.06, -0.3]]}
    every = toy["step"][1]  # the logging interval
    for layer, threshold, want in [(0, 0.05, 25), (1, 0.05, 10), (0, 0.5, None), (0, 0.04, 25), (1, 0.3, None),
                                   (1, 0.295, 20)]:  # tanh(0.3) = 0.291: the logged values taken through tanh again miss it
        given = copy.deepcopy(toy)  # the learner's own: a change to it is named, and the next case starts afresh
        got = run_learner(first_step_above, given, layer, threshold, what=f"your first_step_above(history, {layer}, {threshold})",
                          advice={"ff_gate_tanh": "the exercise asks when the attention gate opens: read "
                                                  "history['attn_gate_tanh'] (this history has only that one)."})
        if given != toy:
            fail("your first_step_above changed the history it was given (sorted, or edited, a list in place): the "
                 "lesson's history would no longer line up its steps, losses and gates. Read it without changing it.")
        if got == want and (want is not None or got is None):
            continue
        if (layer, want) == (1, 10) and got is None:
            fail("first_step_above misses gates that open negative: compare `abs(gate)` with the threshold.")
        at = next((s for s, g in zip(toy["step"], toy["attn_gate_tanh"]) if abs(g[layer]) >= threshold), None)
        if got == at and at is not None:
            fail(f"first_step_above(history, {layer}, {threshold}) returned step {got}, where |tanh(attn_gate)| is "
                 f"exactly {threshold}: that does not exceed the threshold, so compare with a strict "
                 "`abs(gate) > threshold`, not `>=`.")
        twice = next((s for s, g in zip(toy["step"], toy["attn_gate_tanh"]) if abs(math.tanh(g[layer])) > threshold), None)
        if got == twice:
            fail(f"first_step_above(history, {layer}, {threshold}) returned {got!r}, where |tanh(attn_gate)| first "
                 f"exceeds {threshold} at step {want}: history['attn_gate_tanh'] holds tanh(attn_gate) already, so "
                 "compare its values themselves, without another tanh.")
        if want is None:
            fail(f"when no gate passes the threshold the answer is None, yours is {got!r}: return None after the loop.")
        index = toy["step"].index(want)
        if got == index:
            fail(f"first_step_above returned the index {got} of the logged step, not the training step {want}: read "
                 "history['step'].")
        if got == index * every:
            fail(f"first_step_above(history, {layer}, {threshold}) returned {got}, the entry's index {index} times the "
                 f"logging interval {every}, but that entry is step {want}: the last step is logged too, off the "
                 "interval, so read the step itself from history['step'] (zip it with the gates).")
        fail(f"first_step_above(history, {layer}, {threshold}) should be {want}, yours is {got!r}.")
    passed("first_step_above is right.")


def check_caption_format(caption_format) -> None:
    """Exercise "09.format"."""
    cases = [("a red circle", "colour_first"), ("a circle in red", "shape_first"), ("a yellow triangle", "colour_first"),
             ("a square in blue", "shape_first"), ("a circle red", None), ("a red", None), ("", None),
             ("a red circle in blue", None), ("a circle in square", None), ("the red circle", None),
             ("a circle on red", None), ("a red red", None), ("a blue yellow", None)]
    for caption, want in cases:
        got = run_learner(caption_format, caption, what=f"your caption_format({caption!r})")
        words = caption.split()
        if got == "shape_first" and len(words) == 4 and words[2] != "in":
            fail(f"caption_format({caption!r}) should be {want!r}, yours is {got!r}: a shape-first caption is "
                 "`a SHAPE in COLOUR`; check that the third word is 'in'.")
        if got == "colour_first" and len(words) == 3 and words[2] not in shapes_data.SHAPES:
            fail(f"caption_format({caption!r}) should be {want!r}, yours is {got!r}: a colour-first caption is "
                 "`a COLOUR SHAPE`; check that the third word is a shape too.")
        if got != want:
            fail(f"caption_format({caption!r}) should be {want!r}, yours is {got!r}: check the number of words and that "
                 "each word is from the right list.")
    passed("caption_format is right.")


# ------------------------------------------------------------------------------------------- the training loop

HISTORY_KEYS = ("step", "loss", "attn_gate_tanh", "ff_gate_tanh", "loss_every_step")


def tiny_setup(seed: int = 0):
    """A small Flamingo (dim 16, random vision encoder, three LM layers with gated blocks before layers 0 and 2, so
    `model.xattn_layers` is [0, 2]: a loop that numbers the blocks 0, 1 is wrong) with everything trainable, and 44
    sequences to train on: 5 whole batches of 8 and 4 left over, so a loop that keeps the smaller last batch differs
    at step 6."""
    config = FlamingoConfig(dim=16, lm_depth=3, cross_attn_every=2, lm_heads=2, heads=2, dim_head=8, vision="random",
                            resampler_depth=1, num_latents=4)  # gated blocks before LM layers 0 and 2
    torch.manual_seed(seed)
    model = Flamingo(config).requires_grad_(True)  # the learner's loop must freeze it
    data = shapes_data.make_dataset(44, seed=seed)
    return model, data


class TwoInputFlamingo(Flamingo):
    """flamingo_lite's Flamingo with the forward of the learner's lesson-08 MyFlamingo, `forward(tokens, images)`: it
    finds the `<image>` positions itself, and a loop that passes `media_locations` fails here as it would on
    MyFlamingo. Its parameters and their names are Flamingo's."""

    def forward(self, tokens, images):
        return super().forward(tokens, images)  # (b, n, V)


def two_input_copy(model: Flamingo) -> TwoInputFlamingo:
    """A TwoInputFlamingo with `model`'s weights, requires_grad flags and train/eval modes (the vision encoder and the
    LM copied)."""
    if not isinstance(model, Flamingo):
        raise TypeError(f"model must be a Flamingo, got {type(model).__name__}")
    with torch.random.fork_rng(devices=[]):  # building draws weights that the load below replaces
        twin = TwoInputFlamingo(model.config, lm=copy.deepcopy(model.lm), vision=copy.deepcopy(model.vision))
    twin.load_state_dict(model.state_dict(), strict=True)
    for mine, theirs in zip(twin.parameters(), model.parameters()):
        mine.requires_grad_(theirs.requires_grad)
    for mine, theirs in zip(twin.modules(), model.modules()):
        mine.training = theirs.training
    return twin


def reference_loop(model, data, *, steps, batch_size, lr, gate_lr, weight_decay, log_every, seed,
                   zero_grad=True, gate_decay=False, one_group=False, schedule=True, shift=True, freeze=True,
                   log_before_update=False, loss_after_update=False, order_every_step=False, keep_partial=False,
                   schedule_first=False, gate_log="tanh", first_after=False, cosine_over=None, clip=None) -> dict:
    """`training.train_flamingo`'s history, made by a loop that can make the usual mistakes (the flags), to name them.

    "step" in the history counts the optimizer updates done: 0 before the first, then `step + 1` right after the
    update of loop iteration `step` (0-based), logged when `(step + 1) % log_every == 0` and after the last; the loss
    logged with it is that update's batch's (computed before the update), the gates are those after it.
    log_before_update: the mistake of logging `step + 1`'s entry before `optimizer.step()`, with the old gates;
    loss_after_update: the loss computed again after the update, and that one logged; order_every_step: a new random
    order drawn at every step, its first batch taken; keep_partial: each epoch's last, smaller batch kept;
    schedule_first: `scheduler.step()` called before `optimizer.step()`; gate_log: "tanh" (right), "raw" (the gate
    parameters logged without their tanh), "abs" (the tanh's size, its sign lost), "tanh twice", "swapped" (the attention gates
    logged as the feed-forward's, and back) or "attn twice" (the attention gates logged for both); first_after: step
    0's entry logged after the first update (the gates no longer 0); cosine_over: the number of steps the cosine
    spans (`steps` is right; `steps - 1` is the usual slip); clip: the gradients' norm clipped to this before each
    update (train_flamingo clips nothing)."""
    if freeze:
        model.freeze_pretrained()
    model.train()
    gates = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("_gate")]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("_gate")]
    if one_group:
        groups = [{"params": others + gates, "weight_decay": weight_decay}]
    else:
        groups = [{"params": others, "weight_decay": weight_decay},
                  {"params": gates, "lr": gate_lr, "weight_decay": weight_decay if gate_decay else 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    span = cosine_over or steps
    rate = (lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / span, 1.0)))) if schedule else (lambda s: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    generator = torch.Generator().manual_seed(seed)
    history = {key: [] for key in HISTORY_KEYS}

    def log(step, loss):
        blocks = [model.xattn[str(i)] for i in model.xattn_layers]
        history["step"].append(step)
        history["loss"].append(loss)
        read = {"raw": lambda g: float(g.detach()), "abs": lambda g: abs(float(g.detach().tanh())),
                "tanh twice": lambda g: float(g.detach().tanh().tanh())}.get(
            gate_log, lambda g: float(g.detach().tanh()))
        attn, ff = [read(b.attn_gate) for b in blocks], [read(b.ff_gate) for b in blocks]
        if gate_log == "attn twice":
            ff = attn
        if gate_log == "swapped":
            attn, ff = ff, attn
        history["attn_gate_tanh"].append(attn)
        history["ff_gate_tanh"].append(ff)

    def loss_of(part):
        logits = model(part.tokens, part.images)  # (B, n, V)
        if shift:
            return training.next_token_loss(logits, part.tokens)  # ()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), part.tokens.reshape(-1), ignore_index=0)  # ()

    queue = []
    for step in range(steps):
        if not queue or order_every_step:
            order = torch.randperm(len(data), generator=generator)  # (N,)
            whole = len(data) if keep_partial else len(data) - len(data) % batch_size
            queue = list(order[:whole].split(batch_size))
        part = data[queue.pop(0)]
        loss = loss_of(part)
        if step == 0 and not first_after:
            log(0, loss.item())
        logged = (step + 1) % log_every == 0 or step + 1 == steps
        if logged and log_before_update:
            log(step + 1, loss.item())
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(others + gates, clip)
        if schedule_first:
            scheduler.step()
        optimizer.step()
        if not schedule_first:
            scheduler.step()
        if loss_after_update:
            with torch.no_grad():
                loss = loss_of(part)
        history["loss_every_step"].append(loss.item())
        if step == 0 and first_after:
            log(0, loss.item())
        if logged and not log_before_update:
            log(step + 1, loss.item())
    model.eval()
    return history


def _same_history(got: dict, want: dict, atol: float = 1e-5) -> bool:
    try:
        if list(got["step"]) != list(want["step"]):
            return False
        for key in ("loss", "attn_gate_tanh", "ff_gate_tanh"):
            a = torch.tensor(got[key], dtype=torch.float64)  # (S,) or (S, layers)
            b = torch.tensor(want[key], dtype=torch.float64)  # the same shape
            if a.shape != b.shape or not torch.allclose(a, b, atol=atol, rtol=0.0):
                return False
        return True
    except (KeyError, TypeError, ValueError, RuntimeError):
        return False


def _off_by_one(got: list, want: list) -> bool:
    """True when the logged steps differ from the right ones only by steps one off (0-based loop indices logged, or
    the log condition tested on them): every step that is not a right one is next to one."""
    wrong = [s for s in got if s not in want]
    return bool(wrong) and all(isinstance(s, int) and (s - 1 in want or s + 1 in want) for s in wrong)


class _StepWatch:
    """While active (a `with` block), watches the optimizer steps on `model`'s parameters: `steps` counts them,
    `cleared` those that found every gradient cleared (None or all zeros) after a backward pass had run,
    `backward` says whether any gradient was computed, `decay` is the first step's weight decay by parameter name,
    `in_eval` counts the steps taken with the model in eval mode, `kind` is the optimizer's class."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.steps, self.cleared, self.backward, self.decay, self.in_eval, self.kind = 0, 0, False, {}, 0, None
        names = {id(p): n for n, p in self.model.named_parameters()}

        def on_step(optimizer, args, kwargs):
            groups = [(g, [p for p in g["params"] if id(p) in names]) for g in optimizer.param_groups]
            params = [p for _, ps in groups for p in ps]
            if not params:  # another optimizer than the one training this model
                return
            self.steps += 1
            self.kind = type(optimizer)
            self.in_eval += not self.model.training
            if self.backward and all(p.grad is None or not p.grad.any() for p in params):
                self.cleared += 1
            if self.steps == 1:
                self.decay = {names[id(p)]: g["weight_decay"] for g, ps in groups for p in ps}

        def on_grad(grad):
            self.backward = True

        self.handles = [register_optimizer_step_pre_hook(on_step)]
        self.handles += [p.register_hook(on_grad) for p in self.model.parameters() if p.requires_grad]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# the model handed to the learner's loop takes (tokens, images), as their MyFlamingo does
_LOOP_ADVICE = {
    needle: "your loop passes `part.media_locations` to the model, but your lesson-08 MyFlamingo's forward is "
            "`forward(tokens, images)` (it finds the `<image>` positions itself): call "
            "`model(part.tokens, part.images)`."
    for needle in ("forward() takes 3 positional arguments but 4 were given",
                   "unexpected keyword argument 'media_locations'")
}
_LOOP_ADVICE["'1'"] = ("the check's model has gated blocks before LM layers 0 and 2 (`model.xattn_layers` is [0, 2]), "
                       "so there is no `model.xattn['1']`: walk the layer ids themselves, "
                       "`[model.xattn[str(i)] for i in model.xattn_layers]`, not `range(len(model.xattn_layers))`.")


def check_train_loop(train_flamingo, *, steps: int = 6, batch_size: int = 8, lr: float = 5e-3, gate_lr: float = 5e-2,
                     weight_decay: float = 0.5, log_every: int = 4, seed: int = 0) -> None:
    """Step "09.loop": the learner's `train_flamingo` and the package's, from the same tiny model and seed, give the
    same history (losses and gates within 1e-5); the frozen parts stay as they were, the new parts change, the
    weights (not the gates) are decayed, the model trains in training mode (it is handed over in eval mode) and is left
    in eval mode. The learner's loop gets the model as a
    TwoInputFlamingo, whose forward takes (tokens, images) only, as their MyFlamingo's does.

    "step" counts the optimizer updates done so far, from 1: step 0 is the model before any update, step s the model
    right after the s-th update, so `for step in range(steps)` (0-based) logs `step + 1` after its update, when
    `(step + 1) % log_every == 0` and after the last: [0, 4, 6] for the defaults here (the last, 6, off the interval). A learner one off (the
    0-based loop index logged, or the condition tested on it) is told so. The models are built in a forked RNG: the
    notebook's random numbers stay as they were."""
    refuse_the_answer(train_flamingo, (training.train_flamingo,))
    with torch.random.fork_rng(devices=[]):
        _check_train_loop(train_flamingo, steps=steps, batch_size=batch_size, lr=lr, gate_lr=gate_lr,
                          weight_decay=weight_decay, log_every=log_every, seed=seed)


def _check_train_loop(train_flamingo, *, steps, batch_size, lr, gate_lr, weight_decay, log_every, seed) -> None:
    args = dict(steps=steps, batch_size=batch_size, lr=lr, gate_lr=gate_lr, weight_decay=weight_decay,
                log_every=log_every, seed=seed)
    model, data = tiny_setup(seed)
    start = copy.deepcopy(model.state_dict())
    reference = copy.deepcopy(model).freeze_pretrained()
    want = training.train_flamingo(reference, data, **args, device="cpu", progress=False)
    model = two_input_copy(model).eval()  # as a model comes back from an earlier run: the loop must call train()
    with _StepWatch(model) as watch:
        try:
            got = run_learner(train_flamingo, model, data, **args, advice=_LOOP_ADVICE,
                              what="your train_flamingo(model, data, steps=..., batch_size=..., lr=..., gate_lr=..., "
                                   "weight_decay=..., log_every=..., seed=...)")
        except ExerciseFailed as verdict:
            learning = [n for n, p in model.named_parameters() if p.requires_grad]
            nothing_trains = ("does not require grad", "empty parameter list")  # backward's words, then AdamW's
            if any(words in str(verdict) for words in nothing_trains) and not learning:
                fail(f"{verdict}\nNo parameter of the model trains after your freeze_pretrained(model): the resampler "
                     "and the gated blocks were frozen with the rest, so the loss has no gradient. Freeze only "
                     "`model.vision` and `model.lm`, and rerun lesson09.check_freeze(freeze_pretrained) above.")
            raise
    if not isinstance(got, dict):
        fail(f"train_flamingo returned a {type(got).__name__}: return the history, a dict with the keys {list(HISTORY_KEYS)}.")
    missing = [key for key in HISTORY_KEYS if key not in got]
    if missing:
        fail(f"your history has no {', '.join(repr(k) for k in missing)}: it needs the keys {list(HISTORY_KEYS)}, "
             "as train_flamingo's (the plots read them).")
    for key in ("loss", "loss_every_step", "attn_gate_tanh", "ff_gate_tanh"):
        entries = [x for entry in got[key] for x in (entry if isinstance(entry, (list, tuple)) else [entry])]
        tensors = [x for x in entries if isinstance(x, torch.Tensor)]
        if tensors:
            graph = (" A loss tensor keeps its whole graph alive, so memory grows every step."
                     if any(x.requires_grad for x in tensors) else "")
            fail(f"your history's {key!r} holds tensors, not numbers: append `loss.item()` (and `float(...)` of the "
                 f"gates), as train_flamingo does; the plots below read plain numbers.{graph}")
    changed = {part: [n for n, p in getattr(model, part).state_dict().items() if not torch.equal(p, start[f"{part}.{n}"])]
               for part in ("vision", "lm", "resampler", "xattn")}
    moved = [part for part in ("vision", "lm") if changed[part]]
    if moved:
        names = {"vision": "the vision encoder", "lm": "the language model"}
        fail(f"{' and '.join(names[p] for p in moved)} changed during training ({moved[0]}.{changed[moved[0]][0]}, ...): "
             "the pretrained parts must stay frozen, so call your freeze_pretrained(model) before making the optimizer "
             "(the check hands you a model with everything trainable).")
    if watch.steps and watch.cleared == watch.steps:
        fail("your train_flamingo calls `optimizer.zero_grad()` after `loss.backward()`: the gradients are cleared "
             "before `optimizer.step()` uses them, so the new parts learn nothing from the loss. In each step: "
             "`optimizer.zero_grad()`, then `loss.backward()`, then `optimizer.step()`.")
    if watch.in_eval:
        fail(f"your train_flamingo takes {watch.in_eval} of its {watch.steps} optimizer steps with the model in eval "
             "mode (the check hands it over in eval mode, as a model comes back from an earlier run): call "
             "`model.train()` before the loop, as train_flamingo does, and `model.eval()` after it.")
    still = [part for part in ("resampler", "xattn") if not changed[part]]
    if still:
        said = f"the {' and the '.join(still)} did not change"
        if watch.steps == 0:
            fail(f"{said}: `optimizer.step()` is never called; call it after `loss.backward()`, with their parameters "
                 "in the optimizer.")
        if not watch.backward:
            fail(f"{said}: `loss.backward()` is never called, so there are no gradients to step with; call it before "
                 "`optimizer.step()`.")
        fail(f"{said}: the new parts must learn; call `optimizer.step()` after `loss.backward()`, with their "
             "parameters in the optimizer.")
    rule = ("'step' counts the optimizer updates done so far, from 1: log step 0 before the first update, then, after "
            "the update of loop iteration `step` (0-based, `for step in range(steps)`), `step + 1` when "
            "`(step + 1) % log_every == 0 or step + 1 == steps`.")
    if list(got["step"]) != list(want["step"]):
        steps_got = list(got["step"])
        if steps_got == list(want["step"])[:-1]:
            fail(f"your history logs the steps {steps_got}, train_flamingo logs {list(want['step'])}: the last step is "
                 f"not logged ({steps} is not a multiple of log_every={log_every}); log after the last update too, "
                 "`or step + 1 == steps`, so the plots end where the training did.")
        if steps_got[:1] == [0] and _off_by_one(steps_got, list(want["step"])):
            fail(f"your history logs the steps {steps_got}, train_flamingo logs {list(want['step'])}: off by one; {rule}")
        fail(f"your history logs the steps {steps_got}, train_flamingo logs {list(want['step'])}: {rule}")
    if len(got["loss_every_step"]) != steps:
        fail(f"your history's 'loss_every_step' has {len(got['loss_every_step'])} entries for {steps} steps: append "
             "each update's loss once, right after its update.")
    if watch.kind is not None and watch.kind is not torch.optim.AdamW:
        fail(f"your train_flamingo steps with {watch.kind.__name__}, not AdamW: the paper trains with AdamW (App. "
             "B.1.2), whose weight decay shrinks the weights apart from the gradient (Adam's adds it to the "
             "gradient, where Adam's scaling weakens it); use `torch.optim.AdamW(parameter_groups(...), lr=lr)`.")
    undecayed = sorted(n for n, decay in watch.decay.items() if not n.endswith("_gate") and decay != weight_decay)
    if undecayed:
        decay = watch.decay[undecayed[0]]
        why = ("`weight_decay=0.0` is passed to parameter_groups" if decay == 0.0
               else f"their group has weight_decay={decay}")
        fail(f"your train_flamingo: the weights are not decayed as asked ({undecayed[0]} trains with weight_decay="
             f"{decay}, the argument is {weight_decay}): {why}; pass `weight_decay=weight_decay` on to "
             "parameter_groups.")
    if _same_history(got, want):
        if model.training:
            fail("your train_flamingo leaves the model in training mode: end it with `model.eval()`, as the spec "
                 "asks, so that what runs next (captions, plots) uses the trained model as it is evaluated.")
        passed(f"train_flamingo is right: over {steps} steps its losses and gates are the package's, the vision encoder "
               "and the language model did not change, the resampler and the gated blocks did.")
        return
    variants = [
        (dict(zero_grad=False), "the gradients accumulate from step to step: call `optimizer.zero_grad()` before "
                                "`loss.backward()` in every step."),
        (dict(gate_decay=True), "the gates are in the weight-decay group: decay pulls them back towards 0, shut; build "
                                "the optimizer from your parameter_groups, where the gates have 'weight_decay': 0.0."),
        (dict(one_group=True), "the gates train in one group with the other weights (lr, with weight decay): build the "
                               "optimizer from your parameter_groups, the gates at gate_lr with no weight decay."),
        (dict(schedule=False), "the learning rate stays constant: train_flamingo lowers it along a cosine to 10% "
                               "(`LambdaLR` with `0.1 + 0.45 * (1 + cos(pi * min(s / steps, 1)))`, `schedule.step()` "
                               "after `optimizer.step()`)."),
        (dict(shift=False), "the loss is not shifted: each position is scored against its own token; use your "
                            "next_token_loss(logits, tokens)."),
        (dict(log_before_update=True), "each logged step's gates are those before its update, off by one: step s is "
                                       "the model after s updates, so log `step + 1` after `optimizer.step()`."),
        (dict(loss_after_update=True), "the loss is computed again after the update, and that one is logged: log the "
                                       "loss your `loss.backward()` used, computed before `optimizer.step()`."),
        (dict(order_every_step=True), "a new random order is drawn at every step, so some sequences come twice and "
                                      "others never: draw `torch.randperm` only when the queue of batches is empty "
                                      "(once an epoch) and take its whole batches in order."),
        (dict(keep_partial=True), f"each epoch ends with a smaller batch of the {len(data) % batch_size} sequences left "
                                  f"over ({len(data)} is not a multiple of {batch_size}): keep whole batches only, "
                                  "`order[: len(data) - len(data) % batch_size]`, as train_flamingo does."),
        (dict(schedule_first=True), "every update uses the next step's learning rate, so the first one never uses lr: "
                                    "either `schedule.step()` comes before `optimizer.step()` (call "
                                    "`optimizer.step()`, then `schedule.step()`), or the schedule's lambda reads "
                                    "step s + 1 (it gets the number of updates done, from 0: write it with s)."),
        (dict(gate_log="raw"), "the gates are logged without their tanh: the block multiplies by `tanh(attn_gate)`, "
                               "so log `float(block.attn_gate.tanh())` and `float(block.ff_gate.tanh())`."),
        (dict(gate_log="tanh twice"), "the gates are logged as tanh(tanh(gate)), the tanh applied twice: log "
                                      "`float(block.attn_gate.tanh())` once (a helper that applies tanh to a value "
                                      "already tanh'd does it again)."),
        (dict(gate_log="abs"), "the gates are logged as sizes, `abs(tanh(gate))`: log the tanh itself, sign "
                               "included (a gate can open negative)."),
        (dict(gate_log="attn twice"), "'ff_gate_tanh' holds the attention gates: log every block's "
                                      "`tanh(ff_gate)` there, `float(block.ff_gate.detach().tanh())`."),
        (dict(first_after=True), "step 0's entry is logged after the first update, so its gates are not 0: log step "
                                 "0 before `optimizer.step()`, the model as it was before any update."),
        (dict(gate_log="swapped"), "the two gates are swapped in the history: 'attn_gate_tanh' is every block's "
                                   "`tanh(attn_gate)`, 'ff_gate_tanh' its `tanh(ff_gate)`."),
        (dict(cosine_over=steps - 1), "the cosine spans steps - 1 steps, so the learning rate reaches its floor one "
                                      "step early: `min(s / steps, 1)`, over all `steps`."),
    ] + [(dict(clip=clip), f"the gradients are clipped (`clip_grad_norm_(..., {clip})`, as in some other training "
                           "loops): train_flamingo clips nothing, so leave the gradients as backward() gives them.")
         for clip in (0.1, 0.05)]  # the gradients' norms here are 0.04 to 0.16: a clip at 1.0 changes nothing
    for flags, message in variants:
        fresh, _ = tiny_setup(seed)
        with warnings.catch_warnings():  # the schedule-first variant warns as torch does: not the learner's warning
            warnings.simplefilter("ignore")
            theirs = reference_loop(fresh, data, **args, **flags)
        if _same_history(got, theirs):
            fail(f"your train_flamingo: {message}")
    if abs(float(got["loss"][0]) - float(want["loss"][0])) > 1e-5:
        fresh, _ = tiny_setup(seed)
        first = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:batch_size]]
        with torch.no_grad():
            logits = fresh.freeze_pretrained()(first.tokens, first.images)  # (B, n, V)
        flat = lambda lg, tk, **kw: F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tk.reshape(-1), **kw).item()  # noqa: E731
        wrong = [(flat(logits, first.tokens, ignore_index=0), "each position is scored against its own token"),
                 (flat(logits, first.tokens), "each position is scored against its own token, and padding is counted"),
                 (flat(logits[:, :-1], first.tokens[:, 1:]), "the padding targets are counted")]
        for value, what in wrong:
            if abs(float(got["loss"][0]) - value) <= 1e-5:
                fail(f"your train_flamingo: the loss is not shifted right ({what}): score `model(...)`'s logits "
                     "with your next_token_loss(logits, part.tokens).")
        fail(f"the loss at step 0 is {float(got['loss'][0]):.5f}, train_flamingo's is {float(want['loss'][0]):.5f}: at "
             "step 0 nothing has been updated yet, so the first batch or the loss differs. Draw the batches as "
             "train_flamingo does (`torch.Generator().manual_seed(seed)`, `torch.randperm(len(data), generator=...)` "
             "for each epoch, whole batches only, in order) and score them with your next_token_loss.")
    fail("your history is not train_flamingo's, though it starts from the same model, batches and step-0 loss, and no "
         "usual mistake matches: compare your loop with the spec above step by step (the optimizer and its groups, "
         "the schedule, zero_grad / backward / step / schedule.step in that order, what is logged when).")


keep_rng(globals())  # no check moves the lesson's random numbers

register_nudges({  # first hints for the steps whose full hint is the answer
    "09.first_step": "The history records, at each logged step, every block's gate. Go through it in order and stop at the "
    "first step where the chosen block's gate is far enough from 0; if none is, say so with None.",
    "09.format": "The two formats differ in the number of words and in which word comes first. Look at the caption's "
    "words and at which list, colours or shapes, each belongs to.",
    "09.freeze": "Freeze the two pretrained parts so that no gradient reaches them; the two parts Flamingo adds keep "
    "training. Give back the model.",
    "09.groups": "Two groups of the parameters that train: the gates, with their own learning rate and no weight "
    "decay, and everything else, with weight decay. A name tells you which is which.",
})
