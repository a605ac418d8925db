"""Checks for lesson 07: the learner writes the symmetric contrastive loss and one step of contrastive pretraining.

`check_loss` runs the learner's loss on copies of small embeddings (an embedding normalised in place is named) and
compares it with the reference (`flamingo_lite.tiny.contrastive.contrastive_loss`) and with the usual mistakes
computed on the same input: labels not on the diagonal (or rolled by one), only one direction, features not
normalised (or over the batch, or on one side only), the temperature not clamped, clamped with its own bounds on its
log or its log's bounds on itself, used without `.exp()`, fixed, multiplied instead of divided, or applied twice,
the two terms added instead of averaged or summed over the batch; then it checks that the temperature is learned (it
gets a gradient). `check_training_step` runs two steps of the learner's `training_step` and of the usual wrong steps
on copies of the same small encoders, and names the mistake whose weights the learner's match, an encoder whose
weights never move, or an optimizer passed in that never steps.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ...tiny import contrastive
from ...tiny.contrastive import MAX_LOG_TEMPERATURE, MIN_LOG_TEMPERATURE, CaptionEncoder, ConvVisionEncoder
from . import (ExerciseFailed, Mistake, check_gradients_reach, compare, fail, passed, register_hints, register_nudges,
               refuse_the_answer, run_learner, run_untouched, keep_rng)

register_hints({
    "07.loss": "Normalise both with `F.normalize(x, dim=-1)`; the temperature is "
               "`log_temperature.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE).exp()`; `logits = image @ text.T / "
               "temperature` is (B, B); `labels = torch.arange(B)`; the loss is the mean of "
               "`F.cross_entropy(logits, labels)` and `F.cross_entropy(logits.T, labels)`.",
    "07.step": "Embed the pictures with `vision.embed(batch['images'].to(log_temperature.dtype))` and the captions with "
               "`text(batch['tokens'])`, take your loss, then `optimizer.zero_grad()`, `loss.backward()`, "
               "`optimizer.step()`, and return `loss.item()`.",
})
register_nudges({  # a first hint where the full one is the answer: hint(key), then hint(key, 2)
    "07.loss": "CLIP's loss: every picture against every caption, cosine similarity divided by the learned "
    "temperature, a (B, B) table whose diagonal holds the true pairs; score it both ways, pictures to "
    "captions and captions to pictures, and average.",
    "07.step": "One optimisation step: an embedding per picture and per caption, your loss, then the optimizer's "
    "three usual calls in their usual order; return the loss as a Python number.",
})


def _logits(image, text, log_t, *, normalise=("image", "text"), dim=-1, clamp=True, divide=True, exp=True,
            bounds_on_log=False, clamp_after_exp=False, twice=False):
    if "image" in normalise:
        image = F.normalize(image, dim=dim)  # (B, e)
    if "text" in normalise:
        text = F.normalize(text, dim=dim)  # (B, e)
    if bounds_on_log:  # the temperature's bounds, 0.01 and 1, put on log T
        log_t = log_t.clamp(math.exp(MIN_LOG_TEMPERATURE), math.exp(MAX_LOG_TEMPERATURE))
    elif clamp:
        log_t = log_t.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE)
    t = log_t.exp() if exp else log_t  # ()
    if clamp_after_exp:  # the log's bounds put on T itself: T > 0 is clamped to at most log(1) = 0
        t = t.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE)  # ()
    if twice:  # the temperature applied twice: the logits divided by T * T
        t = t * t
    return image @ text.T / t if divide else image @ text.T * t  # (B, B)


def _loss_variants(image, text, log_t) -> dict:
    """The right loss and the usual mistakes', each a 0-d tensor, on the same input."""
    b = image.shape[0]
    diagonal = torch.arange(b)  # (B,)
    logits = _logits(image, text, log_t)  # (B, B)
    i2t, t2i = F.cross_entropy(logits, diagonal), F.cross_entropy(logits.T, diagonal)
    out = {"right": (i2t + t2i) / 2}
    first = torch.zeros(b, dtype=torch.long)  # (B,): every row's label is pair 0
    out["labels not on the diagonal"] = (F.cross_entropy(logits, first) + F.cross_entropy(logits.T, first)) / 2
    flipped = diagonal.flip(0)  # (B,): the anti-diagonal
    out["labels on the anti-diagonal"] = (F.cross_entropy(logits, flipped) + F.cross_entropy(logits.T, flipped)) / 2
    rolled = diagonal.roll(1)  # (B,): picture i labelled with caption i - 1; roll(-1) gives the same mean of the two
    out["labels rolled"] = (F.cross_entropy(logits, rolled) + F.cross_entropy(logits.T, rolled)) / 2
    out["only image to text"] = i2t
    out["only text to image"] = t2i
    out["the two terms added"] = i2t + t2i
    out["summed over the batch"] = b * out["right"]  # reduction="sum" in both terms

    def symmetric(logits):  # (B, B) -> the mean of the two directions' cross-entropies
        return (F.cross_entropy(logits, diagonal) + F.cross_entropy(logits.T, diagonal)) / 2

    out["features not normalised"] = symmetric(_logits(image, text, log_t, normalise=()))
    out["normalised over the batch"] = symmetric(_logits(image, text, log_t, dim=0))
    out["only the images normalised"] = symmetric(_logits(image, text, log_t, normalise=("image",)))
    out["only the captions normalised"] = symmetric(_logits(image, text, log_t, normalise=("text",)))
    out["temperature not clamped"] = symmetric(_logits(image, text, log_t, clamp=False))
    out["temperature multiplied"] = symmetric(_logits(image, text, log_t, divide=False))
    out["no exp"] = symmetric(_logits(image, text, log_t, exp=False))
    out["bounds on log T"] = symmetric(_logits(image, text, log_t, bounds_on_log=True))
    out["log bounds on T"] = symmetric(_logits(image, text, log_t, clamp=False, clamp_after_exp=True))
    out["no temperature"] = symmetric(_logits(image, text, torch.zeros(())))  # cosines alone, temperature 1
    out["temperature twice"] = symmetric(_logits(image, text, log_t, twice=True))
    return out


FIXED_TEMPERATURES = (0.01, 0.05, 0.07, 0.1, 0.2, 0.5)  # CLIP's starting 0.07 and other round numbers


def _fixed_temperature_mistakes(image, text, log_t) -> list[Mistake]:
    """The loss with the temperature a fixed number, for the usual numbers other than the right temperature."""
    right = math.exp(min(max(float(log_t), MIN_LOG_TEMPERATURE), MAX_LOG_TEMPERATURE))
    diagonal = torch.arange(image.shape[0])  # (B,)
    out = []
    for t in FIXED_TEMPERATURES:
        if abs(t - right) < 1e-9:
            continue
        logits = _logits(image, text, torch.tensor(math.log(t)))  # (B, B)
        out.append(Mistake(f"fixed temperature {t}",
                           (F.cross_entropy(logits, diagonal) + F.cross_entropy(logits.T, diagonal)) / 2,
                           f"the temperature is a fixed {t:g}: compute it from the log_temperature argument, "
                           "`log_temperature.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE).exp()`, so it is learned."))
    return out


LOSS_MESSAGES = {
    "labels not on the diagonal": "the labels are not on the diagonal: picture i matches caption i, so the labels are "
                                  "`torch.arange(B)`, not zeros.",
    "labels on the anti-diagonal": "the labels are not on the diagonal (yours are reversed): picture i matches caption "
                                   "i, so the labels are `torch.arange(B)`.",
    "only image to text": "only one direction: you have the image-to-text term; add the text-to-image one, the cross-"
                          "entropy of `logits.T`, and average the two.",
    "only text to image": "only one direction: you have the text-to-image term; add the image-to-text one, the cross-"
                          "entropy of `logits`, and average the two.",
    "the two terms added": "the two directions are added: take their mean, `(image_to_text + text_to_image) / 2`.",
    "summed over the batch": "each cross-entropy is summed over the batch (reduction=\"sum\"): keep the default "
                             "mean, so the loss does not grow with the batch size.",
    "features not normalised": "the features are not normalised: apply `F.normalize(..., dim=-1)` to both embeddings, "
                               "so `image @ text.T` is a cosine similarity.",
    "normalised over the batch": "the features are normalised over the batch (dim=0): normalise each embedding, "
                                 "`F.normalize(..., dim=-1)`, so `image @ text.T` is a cosine similarity.",
    "only the images normalised": "only the picture embeddings are normalised: apply `F.normalize(..., dim=-1)` to the "
                                  "caption embeddings too, so `image @ text.T` is a cosine similarity.",
    "only the captions normalised": "only the caption embeddings are normalised: apply `F.normalize(..., dim=-1)` to the "
                                    "picture embeddings too, so `image @ text.T` is a cosine similarity.",
    "temperature not clamped": "the temperature is not clamped: with a very small log_temperature your logits blow "
                               "up; clamp it with `log_temperature.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE)` "
                               "before `.exp()` (1/T at most 100, as CLIP).",
    "temperature multiplied": "the logits are multiplied by the temperature: divide by it, `image @ text.T / "
                              "temperature` (a small temperature sharpens the softmax).",
    "no exp": "the logits are divided by the log of the temperature: the temperature is "
              "`log_temperature.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE).exp()`; the `.exp()` is missing.",
    "bounds on log T": "the temperature's bounds are put on its log: 0.01 and 1 bound the temperature itself, so clamp "
                       "the log with their logs, `log_temperature.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE)`, "
                       "then `.exp()`.",
    "log bounds on T": "the log's bounds are put on the temperature itself: T = exp(...) is positive, so "
                       "`.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE)` after `.exp()` makes it 0 (the upper bound is "
                       "log 1 = 0) and the logits infinite; clamp the log first, `log_temperature.clamp(...).exp()`.",
    "no temperature": "the temperature is missing: divide the cosine similarities by "
                      "`log_temperature.clamp(...).exp()`.",
    "labels rolled": "the labels are rolled by one: picture i matches caption i, not its neighbour, so the labels "
                     "are `torch.arange(B)`, with no `.roll`.",
    "temperature twice": "the logits are divided by the temperature twice, by T * T: divide once, `image @ text.T / "
                         "temperature`.",
}


def loss_inputs(seed: int = 0):
    """Small embeddings and three temperatures: one inside the clamp, one below it, one above it."""
    g = torch.Generator().manual_seed(seed)
    image = 3 * torch.randn(6, 5, generator=g)  # (B, e): not unit length, so a missing normalisation shows
    text = 0.5 * torch.randn(6, 5, generator=g)  # (B, e)
    return image, text, [math.log(0.2), MIN_LOG_TEMPERATURE - 3.0, MAX_LOG_TEMPERATURE + 1.0]


def _check_uses_temperature(results: dict) -> None:
    """The same loss at all three temperatures, whose right losses differ: the loss ignores log_temperature (a fixed
    number other than the usual ones, which are named by value)."""
    losses = [got.detach().double().reshape(-1)[:1] for got, _ in results.values()]
    if all(loss.shape == (1,) for loss in losses) and all(torch.allclose(loss, losses[0], rtol=1e-6, atol=1e-9) for loss in losses):
        said = ", ".join(f"{log_t:.2f}" for log_t in results)
        fail(f"your loss is {losses[0].item():.4f} for every log_temperature ({said}), where the right losses differ: "
             "it does not use log_temperature (a fixed temperature?). Compute the temperature from the argument, "
             "`log_temperature.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE).exp()`, so it is learned.")


def _check_other_batch_size(loss_fn) -> None:
    """The loss on a batch of 4 pairs, not the 6 of the other cases: a batch size written into the loss fails here."""
    image, text, _ = loss_inputs(seed=1)
    image, text = image[:4], text[:4]  # (4, e) each
    t = torch.tensor(math.log(0.2))
    what = "your contrastive_loss on a batch of 4 pairs"
    sized = ("the loss was right for a batch of 6 pairs but not of 4: take the batch size from the input, "
             "`image_emb.shape[0]`, for the labels `torch.arange(B)`, not a fixed number.")
    with torch.no_grad():
        try:
            got = run_learner(loss_fn, image, text, t, what=what)
        except ExerciseFailed as failed:
            fail(f"{str(failed).rstrip('.')}. {sized[0].upper()}{sized[1:]}")
        compare(torch.as_tensor(got).reshape(()), _loss_variants(image, text, t)["right"], what=what,
                mistakes=[], unmatched=sized)


def check_loss(loss_fn) -> None:
    """Step "07.loss": the learner's contrastive_loss(image_emb, text_emb, log_temperature) on three temperatures,
    then on another batch size, then whether the temperature gets a gradient."""
    image, text, temperatures = loss_inputs()
    results = {}
    for log_t in temperatures:
        t = torch.tensor(log_t)
        with torch.no_grad():
            got = run_untouched(loss_fn, image, text, t, what=f"your contrastive_loss(image_emb, text_emb, "
                                f"log_temperature={log_t:.2f})", names=("image_emb", "text_emb", "log_temperature"),
                                fix={"image_emb": "normalise with `F.normalize(x, dim=-1)`, which returns a new tensor.",
                                     "text_emb": "normalise with `F.normalize(x, dim=-1)`, which returns a new tensor.",
                                     "log_temperature": "clamp it with `log_temperature.clamp(...)`, which returns a "
                                     "new tensor, never through `.data` or `.clamp_()`."})
            variants = _loss_variants(image, text, t)
        if not isinstance(got, torch.Tensor):
            fail(f"contrastive_loss returned a {type(got).__name__}: return the loss as a 0-d tensor (no `.item()`), so "
                 "it can be backpropagated.")
        if got.dim() != 0:
            fail(f"contrastive_loss returned a tensor of shape {tuple(got.shape)}: return one number, a 0-d tensor: "
                 "the mean of the two cross-entropies, each the default mean over the batch (no reduction='none', no "
                 "reshape).")
        results[log_t] = (got, variants)
    for log_t, (got, variants) in results.items():
        t = torch.tensor(log_t)
        messages = dict(LOSS_MESSAGES)
        if log_t > MAX_LOG_TEMPERATURE:  # a clamp of the lower end alone shows here, with the upper end left open
            messages["temperature not clamped"] = (
                f"the temperature is not held at its upper bound: at log_temperature {log_t:.2f}, above "
                "MAX_LOG_TEMPERATURE, your loss uses it as it is; clamp both ends, `log_temperature.clamp("
                "MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE)`, before `.exp()`.")
        mistakes = [Mistake(name, variants[name], messages[name]) for name in messages]
        mistakes += _fixed_temperature_mistakes(image, text, t)
        try:
            compare(got.reshape(()), variants["right"], what=f"your loss (log_temperature {log_t:.2f})", mistakes=mistakes)
        except ExerciseFailed as failed:
            if "fixed" not in str(failed):  # a fixed temperature of another value than the usual ones is named here
                _check_uses_temperature(results)
            raise
    _check_other_batch_size(loss_fn)
    log_t = torch.tensor(math.log(0.2), requires_grad=True)
    loss = run_learner(loss_fn, image, text, log_t, what="your contrastive_loss with a learned log_temperature")
    if not loss.requires_grad:
        fail("the temperature is not learned: the loss has no gradient for log_temperature; keep it a tensor in the "
             "computation (no `.item()`, `float()`, `.detach()` or `torch.no_grad()`).")
    loss.backward()
    if log_t.grad is None or float(log_t.grad.abs()) == 0.0:
        fail("the temperature is not learned: log_temperature gets no gradient; compute the temperature from it with "
             "tensor operations (clamp, exp), not from a number.")
    # the encoders before the loss learn only through the embeddings' gradients
    t = torch.tensor(math.log(0.2))
    check_gradients_reach(lambda a, b: loss_fn(a, b, t), lambda a, b: contrastive.contrastive_loss(a, b, t),
                          (image, text), ("image_emb", "text_emb"), what="your contrastive_loss", of="the loss's")
    double = run_learner(loss_fn, image.double(), text.double(), t.double(), what="your contrastive_loss in float64")
    if isinstance(double, torch.Tensor) and double.dtype != torch.float64:
        fail(f"your contrastive_loss on float64 embeddings returns {double.dtype}: keep the inputs' dtype (no `.float()` "
             "inside); the training step below runs in float64.")
    passed("your contrastive loss matches the reference: normalised features, labels on the diagonal, both "
           "directions, a clamped temperature that learns.")


def _small_setup(seed: int = 0):
    vision = ConvVisionEncoder(dim=16, channels=8, embed_dim=8, seed=seed).double()
    text = CaptionEncoder(dim=16, embed_dim=8, seed=seed).double()
    log_t = torch.nn.Parameter(torch.tensor(math.log(0.07), dtype=torch.float64))
    return vision, text, log_t


def _params(vision, text, log_t) -> torch.Tensor:
    """Every weight in one vector (P,), the temperature last."""
    return torch.cat([p.detach().flatten() for p in [*vision.parameters(), *text.parameters()]] + [log_t.detach().reshape(1)])


def _run_steps(step_fn, *, what: str, learner: bool) -> tuple[torch.Tensor, list, torch.optim.Optimizer]:
    """Two steps of `step_fn` from the same start and batches -> (the weights after, the returned losses, the
    optimizer passed to it)."""
    vision, text, log_t = _small_setup()
    optimizer = torch.optim.Adam([*vision.parameters(), *text.parameters(), log_t], lr=1e-2)
    rng, _ = contrastive.streams(0)
    losses = []
    for _ in range(2):
        batch = contrastive.draw_pairs(rng)
        if learner:
            losses.append(run_learner(step_fn, vision, text, log_t, optimizer, batch, what=what, advice={
                "should be the same": "the pictures and the encoder have different dtypes: cast the images with "
                                      "`.to(log_temperature.dtype)` before the encoder (training runs in float64)"}))
        else:
            losses.append(step_fn(vision, text, log_t, optimizer, batch))
    return _params(vision, text, log_t), losses, optimizer


def _embed(vision, text, log_t, batch):
    return vision.embed(batch["images"].to(log_t.dtype)), text(batch["tokens"])  # (B, e) each


def _no_zero_grad(vision, text, log_t, optimizer, batch):
    loss = contrastive.contrastive_loss(*_embed(vision, text, log_t, batch), log_t)
    loss.backward()
    optimizer.step()
    return loss.item()


def _no_step(vision, text, log_t, optimizer, batch):
    loss = contrastive.contrastive_loss(*_embed(vision, text, log_t, batch), log_t)
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


def _detached_temperature(vision, text, log_t, optimizer, batch):
    loss = contrastive.contrastive_loss(*_embed(vision, text, log_t, batch), log_t.detach())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


STEP_MISTAKES = {
    "no zero_grad": (_no_zero_grad, "the gradients are not cleared: call `optimizer.zero_grad()` before "
                     "`loss.backward()`, or each step adds the previous step's gradient to its own."),
    "no update": (_no_step, "the weights do not change: call `optimizer.zero_grad()` first, then `loss.backward()`, then "
                  "`optimizer.step()` (without the step, or with the gradients cleared after backward, nothing moves)."),
    "temperature not learned": (_detached_temperature, "the temperature is not learned: pass `log_temperature` itself "
                                "to the loss (not `.detach()`, `.item()` or a number), so it gets a gradient."),
}


def _parts_left_behind(got, want, optimizer) -> None:
    """Name what the whole-vector comparison cannot: the optimizer passed in never stepped although the weights
    moved, or one encoder's weights left where they started while the other's moved."""
    start = _params(*_small_setup())  # (P,)
    moved = lambda part: not torch.equal(got[part], start[part])  # noqa: E731
    vision, text, _ = _small_setup()
    n_vision, n_text = (sum(p.numel() for p in m.parameters()) for m in (vision, text))
    parts = {"vision": slice(0, n_vision), "text": slice(n_vision, n_vision + n_text)}
    if moved(slice(None)) and not optimizer.state:
        fail("the optimizer passed in never stepped, though the weights moved: a new optimizer made inside the step "
             "starts Adam's running averages afresh at every step; use the optimizer argument, made once before "
             "the training loop.")
    for name, other in (("vision", "text"), ("text", "vision")):
        if not moved(parts[name]) and moved(parts[other]) and not torch.equal(want[parts[name]], start[parts[name]]):
            fail(f"the {name} encoder does not learn: its weights are where they started after two steps, while the "
                 f"{other} encoder's moved; compute its embedding with gradients on (not under torch.no_grad(), no "
                 "`.detach()`), so loss.backward() reaches it.")


def _grid_instead_of_embedding(step_fn) -> bool:
    """Whether one step of `step_fn` calls the vision encoder itself, `vision(images)` (the (B, 1, g, d) grid the
    resampler reads), and never `vision.embed`, the one vector per picture the contrastive loss compares."""
    vision, text, log_t = _small_setup()
    optimizer = torch.optim.Adam([*vision.parameters(), *text.parameters(), log_t], lr=1e-2)
    calls = {"embed": 0, "forward": 0}
    embed = vision.embed

    def counted_embed(images):
        calls["embed"] += 1
        return embed(images)

    vision.embed = counted_embed
    hook = vision.register_forward_pre_hook(lambda module, args: calls.__setitem__("forward", calls["forward"] + 1))
    try:
        step_fn(vision, text, log_t, optimizer, contrastive.draw_pairs(contrastive.streams(0)[0]))
    except Exception:  # noqa: BLE001 - a step that fails is named by the check itself
        pass
    finally:
        hook.remove()
    return calls["forward"] > 0 and calls["embed"] == 0


def check_training_step(step_fn) -> None:
    """Step "07.step": two steps of the learner's training_step(vision, text, log_temperature, optimizer, batch)."""
    # the step trains with the learner's own loss: the package's would hide a wrong one
    refuse_the_answer(step_fn, (contrastive.contrastive_loss, contrastive.training_step))
    if _grid_instead_of_embedding(step_fn):
        fail("training_step calls vision(images), which gives the grid of features (B, 1, g, d) that Flamingo's "
             "resampler reads: the contrastive loss compares one vector per picture, vision.embed(images), (B, e).")
    got, losses, optimizer = _run_steps(step_fn, what="your training_step(vision, text, log_temperature, optimizer, batch)",
                                        learner=True)
    if not all(isinstance(loss, float) for loss in losses):
        kinds = sorted({type(loss).__name__ for loss in losses})
        fail(f"training_step returned {', '.join(kinds)}: return the loss as a Python float, `loss.item()`.")
    want, want_losses, _ = _run_steps(contrastive.training_step, what="", learner=False)
    _parts_left_behind(got, want, optimizer)
    mistakes = [Mistake(name, _run_steps(fn, what="", learner=False)[0], message) for name, (fn, message) in STEP_MISTAKES.items()]
    compare(got, want, what="the vector of all weights after two of your training steps", mistakes=mistakes,
            unmatched="go through the step in the hint's order: embed the pictures and the captions, the loss, "
                      "optimizer.zero_grad(), loss.backward(), optimizer.step().")
    if abs(losses[0] - want_losses[0]) > 1e-6 * max(1.0, abs(want_losses[0])):
        fail(f"training_step returned {losses[0]:.6f} for the first batch, the loss is {want_losses[0]:.6f}: return the "
             "loss of this batch, computed before the step.")
    passed("your training step matches the reference: gradients cleared, backward, one optimizer step, and the "
           "temperature learns with the encoders.")


keep_rng(globals())  # no check moves the lesson's random numbers
