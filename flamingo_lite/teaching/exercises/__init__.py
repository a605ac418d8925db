"""Checks for the lessons' exercises: each one runs the learner's code and says, in one sentence, what is wrong
and where to look, recognising the usual mistakes by name.

A lesson's checks live in `exercises/lessonNN.py`. They are built from three pieces defined here:

- `run_learner(fn, *args, what=...)` calls the learner's code; if it raises (the student stub's
  `NotImplementedError` included), the check fails saying which call raised and what it said.
- `compare(got, want, what=..., mistakes=...)` passes when `got` equals `want` (shape, then values, NaN where and
  only where `want` has NaN); otherwise it tries each known mistake: a `Mistake` is a name, a wrong result
  computed on the same input, and the sentence to say when the learner's result matches it.
- `check_layer(learner, reference, what=..., mistakes=...)` runs `check_module` on the learner's module and, when
  it differs, tries each known mistake computed with the same weights on the same inputs.
- `hint(key)` prints the hint for one step (hidden until asked for).

A failed check raises `ExerciseFailed`, whose message is the sentence; a passed one prints a line starting with
"OK". Nothing here uses a bare `assert`, so checks keep working under `python -O`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "ExerciseFailed", "Mistake", "run_learner", "compare", "check_layer", "passed", "fail", "hint", "register_hints",
]


class ExerciseFailed(Exception):
    """A check that did not pass. The message says what is wrong and where to look."""

    def _render_traceback_(self) -> list[str]:
        # Jupyter shows this instead of a traceback through the check's own code: the learner's bug is not there.
        return [f"✗ {self}"]


@dataclass(frozen=True)
class Mistake:
    """A usual mistake: its name, what the code computes when it makes it, and what to tell the learner."""

    name: str
    output: torch.Tensor
    message: str


def fail(message: str) -> None:
    raise ExerciseFailed(message)


def passed(message: str) -> None:
    print(f"OK: {message}")


def run_learner(fn: Callable, *args, what: str, advice: dict[str, str] | None = None, **kwargs):
    """Call the learner's `fn`; turn any exception into a verdict naming `what` (e.g. "your attention(q, k, v)").

    advice: {text in the error message: what it usually means}, added to the verdict when the error matches.
    """
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        fail(f"{what} is not written yet: replace the `raise NotImplementedError` in the exercise cell with your code.")
    except Exception as error:  # the learner's own bug: say where it happened, in their words
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        said = f"{what} raised {type(error).__name__}: {message}" if message else f"{what} raised {type(error).__name__}"
        for needle, meaning in (advice or {}).items():
            if needle in message:
                fail(f"{said.rstrip('.')}; {meaning}")
        fail(said if said.endswith(".") else said + ".")


def _same(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> bool:
    if got.shape != want.shape:
        return False
    if not torch.equal(torch.isnan(got), torch.isnan(want)):
        return False
    return torch.allclose(got.nan_to_num(0.0), want.nan_to_num(0.0), atol=atol, rtol=rtol)


def compare(
    got,
    want: torch.Tensor,
    *,
    what: str,
    mistakes: list[Mistake] = (),
    atol: float = 1e-5,
    rtol: float = 1e-4,
    shape_advice: str = "check the einops patterns and which axes you reduce over.",
) -> None:
    """Pass when `got` equals `want`; otherwise fail with the message of the first mistake `got` matches, or with
    what differs (shape, NaN, or the largest difference and where). `shape_advice` ends a wrong-shape verdict."""
    if not isinstance(got, torch.Tensor):
        fail(f"{what} returned a {type(got).__name__}, not a tensor: return the result, do not print it.")
    got = got.detach().to(want.device, torch.float32)
    want = want.detach().float()
    if _same(got, want, atol, rtol):
        return
    for mistake in mistakes:
        if _same(got, mistake.output.detach().to(want.device, torch.float32), atol, rtol):
            fail(f"{what}: {mistake.message}")
    if got.shape != want.shape:
        fail(f"{what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}: {shape_advice}")
    nan_got, nan_want = torch.isnan(got), torch.isnan(want)
    if (nan_got & ~nan_want).any():
        where = tuple(int(i) for i in (nan_got & ~nan_want).nonzero()[0])
        fail(f"{what} has NaN where the answer has a number (first at index {where}): a row with nothing to "
             "attend to went through softmax; fill it with 0 instead.")
    if (nan_want & ~nan_got).any():
        fail(f"{what} has numbers where the answer is NaN: a NaN in the input must reach the outputs that use it.")
    diff = (got - want).abs().nan_to_num(0.0)
    where = tuple(int(i) for i in (diff == diff.max()).nonzero()[0])
    fail(f"{what} differs from the answer by up to {diff.max().item():.3g} (at index {where}); no usual mistake "
         "matches, so compare your code with the maths above step by step.")


def check_layer(
    learner,
    reference,
    inputs=None,
    *,
    what: str,
    mistakes: Callable | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    **check_kwargs,
):
    """Check the learner's module with `check_module` (its weights are put back afterwards).

    reference: a reference class or instance, as for `check_module`.
    mistakes: `mistakes(reference, *inputs) -> list[Mistake]`, the outputs of the usual wrong implementations with
        the reference's weights; when the learner's output matches one, the check says that mistake's sentence
        (on the input set beyond the example where the output went wrong, when it was right on the example).
    Passes with a line starting "OK"; otherwise raises `ExerciseFailed` with `check_module`'s verdict.
    Returns the `CheckResult`.
    """
    from ..checker import check_module  # the checker imports the layers; keep this module light to import

    try:
        result = check_module(learner, reference, inputs, atol=atol, rtol=rtol, verbose=False, **check_kwargs)
    except TypeError as error:  # no reference can be built to fit it: a constructor that names a parameter otherwise
        fail(f"{what}: {error}; the exercise's table lists the names the constructor must create.")
    if result.passed:
        passed(f"{what} matches the reference ({result.message.split(': ', 1)[-1]}).")
        return result
    forward_wrong = result.failed_check in (None, "forward", "case")  # the values differ, on the example or a case
    if forward_wrong and result.output is not None and mistakes is not None:  # a mistake may change the shape too
        try:
            with torch.no_grad():
                known = mistakes(result.reference, *result.inputs)
        except Exception:  # the usual mistakes cannot be computed on this case: the checker's verdict stands
            known = []
        got = result.output.float()
        for mistake in known:
            if _same(got, mistake.output.detach().to(got.device, torch.float32), atol, rtol):
                if result.case is not None:
                    fail(f"{what} is right on the example but not on {result.case}: {mistake.message}")
                fail(f"{what}: {mistake.message}")
    named = (result.heads_used is not None or result.swapped_norms is not None or result.missing_keys
             or result.unexpected_keys or result.shape_mismatches or result.error is not None)
    if not forward_wrong or named or result.output is None:
        # the verdict is exact already: the values match and something else is wrong (dtype, inputs, gradients),
        # or it names the mistake (a head count, swapped norms, the parameter names, an error raised)
        fail(f"{what}: {result.message.removeprefix('✗ ')}")
    fail(f"{what}: {result.message.removeprefix('✗ ')}; no usual mistake matches, so compare each line with the "
         "steps above.")


_HINTS: dict[str, str] = {}


def register_hints(hints: dict[str, str]) -> None:
    """Add a lesson's hints, keyed like "02.scores"."""
    _HINTS.update(hints)


def hint(key: str) -> None:
    """Print the hint for one exercise step, e.g. `hint("02.scores")`."""
    if key not in _HINTS:
        known = ", ".join(sorted(_HINTS)) or "none yet: import the lesson's checks first"
        raise KeyError(f"no hint named {key!r}; the hints are: {known}")
    print(f"Hint ({key}): {_HINTS[key]}")
