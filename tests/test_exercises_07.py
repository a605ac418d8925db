"""Mutation tests of lesson 07's checks: each fails on the stub with a message, passes with the solution, and names
each mistake it claims to recognise when fed a wrong implementation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flamingo_lite.teaching.exercises import ExerciseFailed, hint, lesson07
from flamingo_lite.tiny.contrastive import MAX_LOG_TEMPERATURE, MIN_LOG_TEMPERATURE, contrastive_loss, training_step


def stub(*args, **kwargs):
    raise NotImplementedError("Your turn")


def fails(check, *args, match: str):
    with pytest.raises(ExerciseFailed, match=match):
        check(*args)


def make_loss(*, normalise=True, clamp=True, labels="diagonal", directions="both", divide=True, detach=False,
              in_place=False, dim=-1, only=None, exp=True, bounds_on_log=False, log_bounds_on_t=False, fixed=None,
              reduction="mean", batch=None, cut=None, lower_only=False, as_float32=False, roll=0, twice=None):
    def loss(image, text, log_t):
        if cut in ("both", "text"):  # the right numbers; the encoders before the loss would never learn
            image, text = (image if cut == "text" else image.detach()), text.detach()
        if as_float32:
            image, text, log_t = image.float(), text.float(), log_t.float()
        if in_place:
            image.div_(image.norm(dim=-1, keepdim=True))
            text.div_(text.norm(dim=-1, keepdim=True))
        elif normalise:
            image = F.normalize(image, dim=dim) if only in (None, "image") else image
            text = F.normalize(text, dim=dim) if only in (None, "text") else text
        if detach:
            log_t = torch.tensor(float(log_t.detach()))
        if bounds_on_log:
            t = log_t.clamp(0.01, 1.0).exp()
        elif log_bounds_on_t:
            t = log_t.exp().clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE)
        else:
            t = log_t.clamp(min=MIN_LOG_TEMPERATURE) if lower_only else (
                log_t.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE) if clamp else log_t)
            t = t.exp() if exp else t
        if fixed is not None:
            t = fixed
        logits = image @ text.T / t if divide else image @ text.T * t
        if twice == "divided":  # the temperature applied a second time: divided by T again, or by exp(log T)
            logits = logits / t
        elif twice == "log":
            logits = logits * (-log_t.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE)).exp()
        size = len(logits) if batch is None else batch  # `batch`: the batch size written into the loss
        y = torch.arange(size).roll(roll) if labels == "diagonal" else torch.zeros(size, dtype=torch.long)
        i2t, t2i = F.cross_entropy(logits, y, reduction=reduction), F.cross_entropy(logits.T, y, reduction=reduction)
        return {"both": (i2t + t2i) / 2, "i2t": i2t, "t2i": t2i, "sum": i2t + t2i}[directions]

    return loss


def test_loss_check_passes_the_solution_and_the_reference():
    state = torch.random.get_rng_state()
    lesson07.check_loss(make_loss())
    lesson07.check_loss(contrastive_loss)
    assert torch.equal(torch.random.get_rng_state(), state)  # the lesson's own random draws stay as they were


@pytest.mark.parametrize("wrong, match", [
    (dict(labels="zeros"), "labels are not on the diagonal"),
    (dict(directions="i2t"), "only one direction: you have the image-to-text term"),
    (dict(directions="t2i"), "only one direction: you have the text-to-image term"),
    (dict(directions="sum"), "two directions are added"),
    (dict(normalise=False), "features are not normalised"),
    (dict(clamp=False), "temperature is not clamped"),
    (dict(divide=False), "multiplied by the temperature"),
    (dict(detach=True), "temperature is not learned"),
    (dict(in_place=True), "changed its input image_emb in place"),
    (dict(dim=0), "normalised over the batch \\(dim=0\\)"),
    (dict(only="image"), "only the picture embeddings are normalised"),
    (dict(only="text"), "only the caption embeddings are normalised"),
    (dict(exp=False), "divided by the log of the temperature"),
    (dict(bounds_on_log=True), "bounds are put on its log"),
    (dict(log_bounds_on_t=True), "log's bounds are put on the temperature itself"),
    (dict(fixed=0.07), "temperature is a fixed 0.07"),
    (dict(fixed=0.123), "for every log_temperature .* does not use log_temperature \\(a fixed temperature\\?\\)"),
    (dict(reduction="sum"), "summed over the batch \\(reduction=\"sum\"\\)"),
    (dict(batch=6), "raised .*right for a batch of 6 pairs but not of 4: take the batch size from the input"),
    (dict(reduction="none"), r"returned a tensor of shape \(6,\): return one number, a 0-d tensor"),
    (dict(cut="both"), r"your contrastive_loss is right, but its output has no gradient"),
    (dict(cut="text"), r"no gradient reaches text_emb"),
    (dict(lower_only=True), r"not held at its upper bound: at log_temperature .*, above MAX_LOG_TEMPERATURE"),
    (dict(as_float32=True), r"on float64 embeddings returns torch\.float32: keep the inputs' dtype"),
    (dict(roll=1), r"labels are rolled by one: picture i matches caption i"),
    (dict(roll=-1), r"labels are rolled by one: picture i matches caption i"),
    (dict(twice="divided"), r"divided by the temperature twice, by T \* T: divide once"),
    (dict(twice="log"), r"divided by the temperature twice, by T \* T: divide once"),
])
def test_loss_check_names_each_mistake(wrong, match):
    fails(lesson07.check_loss, make_loss(**wrong), match=match)


def test_a_temperature_clamped_in_place_is_told_how_to_clamp_it():
    def in_place(image, text, log_t):
        log_t.data.clamp_(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE)  # the caller's log_temperature changes
        return make_loss()(image, text, log_t)

    fails(lesson07.check_loss, in_place, match="changed its input log_temperature in place.*never through `.data`")


def test_loss_check_on_the_stub_and_on_a_number():
    fails(lesson07.check_loss, stub, match="not written yet")
    fails(lesson07.check_loss, lambda i, t, l: make_loss()(i, t, l).item(), match="return the loss as a 0-d tensor")
    fails(lesson07.check_loss, lambda i, t, l: make_loss()(i, t, l).reshape(1), match=r"shape \(1,\): return one number")

    def under_no_grad(i, t, l):
        with torch.no_grad():
            return make_loss()(i, t, l)

    fails(lesson07.check_loss, under_no_grad, match=r"temperature is not learned.*`torch\.no_grad\(\)`")
    fails(lesson07.check_loss, lambda i, t, l: make_loss()(i, t, l) + 0.3, match=r"gives \d+\.\d+, the answer is \d+\.\d+; no usual mistake matches")


def learner_loss(image, text, log_t):
    """The learner's own loss, as the notebook's step calls my_contrastive_loss (the package's would be refused)."""
    return make_loss()(image, text, log_t)


def embed(vision, text, log_t, batch):
    return vision.embed(batch["images"].to(log_t.dtype)), text(batch["tokens"])


def step_no_zero_grad(vision, text, log_t, optimizer, batch):
    loss = learner_loss(*embed(vision, text, log_t, batch), log_t)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_zero_grad_late(vision, text, log_t, optimizer, batch):
    loss = learner_loss(*embed(vision, text, log_t, batch), log_t)
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    return loss.item()


def step_without_step(vision, text, log_t, optimizer, batch):
    optimizer.zero_grad()
    loss = learner_loss(*embed(vision, text, log_t, batch), log_t)
    loss.backward()
    return loss.item()


def step_detached(vision, text, log_t, optimizer, batch):
    optimizer.zero_grad()
    loss = learner_loss(*embed(vision, text, log_t, batch), torch.tensor(log_t.item(), dtype=log_t.dtype))
    loss.backward()
    optimizer.step()
    return loss.item()


def step_vision_no_grad(vision, text, log_t, optimizer, batch):
    optimizer.zero_grad()
    with torch.no_grad():  # the pictures' embedding computed without gradients
        image_emb = vision.embed(batch["images"].to(log_t.dtype))
    loss = learner_loss(image_emb, text(batch["tokens"]), log_t)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_text_no_grad(vision, text, log_t, optimizer, batch):
    optimizer.zero_grad()
    with torch.no_grad():
        text_emb = text(batch["tokens"])
    loss = learner_loss(vision.embed(batch["images"].to(log_t.dtype)), text_emb, log_t)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_new_optimizer(vision, text, log_t, optimizer, batch):
    optimizer = torch.optim.Adam([*vision.parameters(), *text.parameters(), log_t], lr=1e-2)  # a new one every step
    optimizer.zero_grad()
    loss = learner_loss(*embed(vision, text, log_t, batch), log_t)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_twice(vision, text, log_t, optimizer, batch):
    optimizer.zero_grad()
    loss = learner_loss(*embed(vision, text, log_t, batch), log_t)
    loss.backward()
    optimizer.step()
    optimizer.step()  # a second update with the same gradient
    return loss.item()


def right_step(vision, text, log_t, optimizer, batch):
    optimizer.zero_grad()
    loss = learner_loss(*embed(vision, text, log_t, batch), log_t)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_returns_tensor(vision, text, log_t, optimizer, batch):
    right_step(vision, text, log_t, optimizer, batch)
    return torch.tensor(0.0)


def step_images_not_cast(vision, text, log_t, optimizer, batch):
    optimizer.zero_grad()
    loss = learner_loss(vision.embed(batch["images"]), text(batch["tokens"]), log_t)  # float32 pictures, float64 weights
    loss.backward()
    optimizer.step()
    return loss.item()


def step_grid_not_embedding(vision, text, log_t, optimizer, batch):
    optimizer.zero_grad()
    image_emb = vision(batch["images"].to(log_t.dtype)).mean(dim=(1, 2))  # the resampler's grid, pooled by hand
    loss = learner_loss(image_emb[:, : text(batch["tokens"]).shape[1]], text(batch["tokens"]), log_t)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_grid_raises(vision, text, log_t, optimizer, batch):
    optimizer.zero_grad()
    loss = learner_loss(vision(batch["images"].to(log_t.dtype)), text(batch["tokens"]), log_t)  # rank 4: raises
    loss.backward()
    optimizer.step()
    return loss.item()


def test_step_check_passes_the_right_step_and_refuses_the_packages():
    state = torch.random.get_rng_state()
    lesson07.check_training_step(right_step)
    assert torch.equal(torch.random.get_rng_state(), state)
    fails(lesson07.check_training_step, training_step, match=r"calls flamingo_lite\.tiny\.contrastive\.contrastive_loss")


@pytest.mark.parametrize("wrong, match", [
    (step_no_zero_grad, "gradients are not cleared"),
    (step_zero_grad_late, "weights do not change"),
    (step_without_step, "weights do not change"),
    (step_detached, "temperature is not learned"),
    (step_returns_tensor, "return the loss as a Python float"),
    (step_images_not_cast, r"cast the images with `\.to\(log_temperature\.dtype\)`"),
    (step_vision_no_grad, "the vision encoder does not learn"),
    (step_text_no_grad, "the text encoder does not learn"),
    (step_new_optimizer, "a new optimizer made inside the step"),
    (step_grid_not_embedding, "calls vision\\(images\\), which gives the grid .* vision.embed\\(images\\)"),
    (step_grid_raises, "calls vision\\(images\\), which gives the grid"),
    (stub, "not written yet"),
])
def test_step_check_names_each_mistake(wrong, match):
    fails(lesson07.check_training_step, wrong, match=match)


def test_hints_exist(capsys):
    for key in ("07.loss", "07.step"):
        hint(key)
    assert capsys.readouterr().out.count("Hint (07.") == 2


def test_step_check_without_a_usual_mistake_reads_well():
    with pytest.raises(ExerciseFailed) as caught:
        lesson07.check_training_step(step_twice)
    message = str(caught.value)
    assert message.startswith("the vector of all weights after two of your training steps differs from the answer")
    assert "maths" not in message and "in the hint's order" in message


def test_a_step_that_calls_the_packages_loss_is_refused():
    def packaged(vision, text, log_t, optimizer, batch):
        loss = contrastive_loss(*embed(vision, text, log_t, batch), log_t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    fails(lesson07.check_training_step, packaged, match=r"calls flamingo_lite\.tiny\.contrastive\.contrastive_loss")
