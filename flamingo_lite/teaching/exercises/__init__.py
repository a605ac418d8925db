"""Checks for the lessons' exercises: each one runs the learner's code and says, in one sentence, what is wrong
and where to look, recognising the usual mistakes by name.

A lesson's checks live in `exercises/lessonNN.py`. They are built from three pieces defined here:

- `run_learner(fn, *args, what=...)` calls the learner's code; if it raises (the student stub's
  `NotImplementedError` included), the check fails saying which call raised and what it said.
- `run_untouched(fn, *args, what=..., names=...)` is `run_learner` on copies of the tensor arguments; it fails
  naming an argument the learner's code changed in place.
- `compare(got, want, what=..., mistakes=...)` passes when `got` equals `want` (shape, then values, NaN where and
  only where `want` has NaN); otherwise it tries each known mistake: a `Mistake` is a name, a wrong result
  computed on the same input, and the sentence to say when the learner's result matches it.
- `check_layer(learner, reference, what=..., mistakes=...)` runs `check_module` on the learner's module and, when
  it differs, tries each known mistake computed with the same weights on the same inputs.
- `check_layer_in_sizes(layer_cls, reference_cls, sizes, ...)` runs `check_layer` on the learner's class built in
  each size, so a number fixed to the first size (a head count, a scale) is named in the second; `scale_mistakes`
  and `heads_mistakes` are those numbers' usual mistakes, `check_parameter_names` names a parameter that is
  missing or not the reference's, and `check_shapes_follow` one whose shape does not follow the constructor's
  arguments.
- `needs(*checks)`, at the top of a cell that runs the learner's code, stops it in one line when one of those
  checks found that code wrong, has not run, or ran on code the notebook has since replaced by other code.
- `failed_checks(lesson)` names the lesson's checks whose last run failed or judged code since changed; a lesson's
  last cell asserts it is empty.
- `hint(key)` prints the hint for one step (hidden until asked for).
- `explain_name_errors()`, run on import, follows a NameError in a lesson with why it usually happens there: a
  check above failed, so the rest of its cell, which sets the name, never ran.

A failed check raises `ExerciseFailed`, whose message is the sentence; a passed one prints a line starting with
"OK". Nothing here uses a bare `assert`, so checks keep working under `python -O`.
"""
from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = [
    "ExerciseFailed", "Mistake", "run_learner", "run_untouched", "compare", "check_layer", "check_layer_in_sizes",
    "check_gradients_reach", "check_dtype_kept", "check_parameter_names", "check_shapes_follow", "scale_mistakes",
    "heads_mistakes", "passed", "fail", "hint", "register_hints", "register_nudges", "refuse_the_answer",
    "explain_name_errors", "failed_checks", "needs", "passed_on_other_code", "record_verdicts",
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


def keep_rng(namespace: dict) -> None:
    """Make every `check_*` function of a lesson's module (pass its `globals()`) leave the global random state as it
    found it: a check builds modules and draws inputs, and the lesson's later cells must draw the same numbers
    whether the check ran, failed early, or changed since the lesson's outputs were committed."""
    _wrap_checks(namespace, fork=True)


def record_verdicts(namespace: dict) -> None:
    """Keep each `check_*` function's verdict for `failed_checks`, leaving the random state to the check (lessons
    10-13, whose committed outputs follow the draws their checks make). `keep_rng` records them too."""
    _wrap_checks(namespace, fork=False)


def _wrap_checks(namespace: dict, *, fork: bool) -> None:
    for name, fn in list(namespace.items()):
        if name.startswith("check_") and callable(fn) and getattr(fn, "__module__", None) == namespace["__name__"]:
            namespace[name] = _judged(fn, fork=fork)


_VERDICTS: dict[tuple[str, str], bool] = {}  # (lesson module, check name): whether its last run passed
_CHECKED: dict[tuple[str, str], dict] = {}  # (lesson module, check name): {name: code} of the functions and classes it ran on
_RUNNING: list[str] = []  # the checks now running, outermost first: only the outermost one's verdict is kept


def _judged(check: Callable, *, fork: bool = True) -> Callable:
    """`check`, with its verdict kept for failed_checks and, when `fork`, the global random state restored after."""

    @functools.wraps(check)
    def run(*args, **kwargs):
        key = (check.__module__, check.__name__)
        outermost = not _RUNNING
        if outermost:
            _CHECKED[key] = {a.__name__: _code_of(a) for a in (*args, *kwargs.values())
                             if isinstance(getattr(a, "__name__", None), str) and _code_of(a) is not None}
        _RUNNING.append(check.__name__)
        try:
            with torch.random.fork_rng(devices=[], enabled=fork):  # the notebook's own draws stay as they were
                result = check(*args, **kwargs)
        except BaseException:
            if outermost:
                _VERDICTS[key] = False
            raise
        finally:
            _RUNNING.pop()
        if outermost:
            _VERDICTS[key] = True
        return result

    return run


def _code_of(obj, _seen=None):
    """What a check judged of a function or class: its code objects (the same code run again compares equal), and
    those of the notebook's own functions and classes it calls by name, so a helper changed later counts too."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:  # a function that calls itself, or two that call each other
        return "recursion"
    seen.add(id(obj))
    if isinstance(obj, types.FunctionType):
        functions = [obj]
    elif isinstance(obj, type) and obj.__module__ == "__main__":
        functions = [v for _, v in sorted(vars(obj).items()) if isinstance(v, types.FunctionType)]
    else:
        return None
    own = tuple(f.__code__ for f in functions)
    namespace = functions[0].__globals__ if functions else {}  # the notebook's: every function of it shares one
    called = sorted({name for f in functions for name in _names_read(f.__code__)
                     if _is_notebooks(namespace.get(name)) and namespace.get(name) is not obj})
    return own, tuple((name, _code_of(namespace[name], seen)) for name in called)


def _names_read(code) -> set:
    """The global names a code object and the functions nested in it read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_read(const)
    return names


def _is_notebooks(obj) -> bool:
    """A function or class defined in the notebook (not imported from a package)."""
    return isinstance(obj, (types.FunctionType, type)) and getattr(obj, "__module__", None) == "__main__"


def _changed_since(key, namespace: dict | None = None) -> list[str]:
    """The names a check ran on whose code in `namespace` (default: the notebook's) is no longer the code it judged
    (a cell run again with other code): its verdict no longer says anything about them."""
    if namespace is None:
        try:
            from IPython import get_ipython
            shell = get_ipython()
        except ImportError:
            shell = None
        if shell is None:
            return []
        namespace = shell.user_ns
    return [name for name, code in _CHECKED.get(key, {}).items()
            if name in namespace and _code_of(namespace[name]) != code]


def passed_on_other_code(names, namespace: dict) -> list[tuple[str, str]]:
    """(check, name) for each of `names` whose code in `namespace` is not the code a check passed on in this
    kernel: the learner's file marks such a section until the check runs again (`my_file.CHANGED`)."""
    return [(key[1], name) for key in _CHECKED if _VERDICTS.get(key)
            for name in _changed_since(key, namespace) if name in names]


def needs(*checks: Callable) -> None:
    """Stop a cell that runs the learner's code when one of `checks` (a lesson's check functions) found that code
    wrong, or has not run in this kernel yet: say so in one line, instead of a traceback from inside code already
    known to be wrong, or from a stub still unwritten (its `NotImplementedError`) whose check cell was skipped."""
    verdicts = [(check.__name__, _VERDICTS.get((check.__module__, check.__name__))) for check in checks]
    wrong = [name for name, ok in verdicts if ok is False]
    if wrong:
        fail(f"this cell builds on your code that {', '.join(wrong)} found wrong above: fix it there, run that check "
             "again, then this cell.")
    changed = [(check.__name__, what) for check in checks
               if (what := _changed_since((check.__module__, check.__name__)))]
    if changed:
        name, what = changed[0]
        fail(f"this cell builds on your {', '.join(what)}, changed since {name} last ran on it: run that check again, "
             "then this cell.")
    unrun = [name for name, ok in verdicts if ok is None]
    if unrun:
        fail(f"this cell builds on your code that {', '.join(unrun)} {'has' if len(unrun) == 1 else 'have'} not checked "
             "yet in this kernel: run the exercise "
             "and its check cell above first (after a restart, run the cells above in order).")


def failed_checks(lesson: types.ModuleType) -> list[str]:
    """The names of `lesson`'s checks whose last run in this kernel did not pass (a lesson's last cell asserts there
    are none, so that it cannot pass while an exercise above still fails)."""
    mine = [(name, ok, _changed_since((module, name))) for (module, name), ok in _VERDICTS.items()
            if module == lesson.__name__]
    return sorted(name if not ok else f"{name}, not run since your {', '.join(what)} changed"
                  for name, ok, what in mine if not ok or what)


def refuse_the_answer(learner, answers: tuple) -> None:
    """Fail when the learner's function or class hands the exercise to flamingo_lite's own answer: a class that
    subclasses one of `answers`, or code (the function, or any method of the class, nested functions included) that
    calls one, by a name imported from the package or through the package's module (`fl.masks.text_time`). Such code
    matches the reference exactly, because it is the reference, and the learner's file would hold none of their own.
    answers: the package's functions and classes that solve this exercise."""
    what = f"your {getattr(learner, '__name__', type(learner).__name__)}"
    if isinstance(learner, type):
        for base in learner.__mro__[1:]:
            if base in answers:
                fail(f"{what} subclasses {_package_name(base)}, the package's own answer: write the class yourself, "
                     "from nn.Module, so that its constructor and forward are yours.")
        functions = [getattr(member, "__func__", member) for member in vars(learner).values()]
    else:
        functions = [learner]
    for fn in functions:
        code = getattr(fn, "__code__", None)
        if not isinstance(code, types.CodeType):
            continue
        names = _names_used(code)
        scope = dict(getattr(fn, "__globals__", {}))
        scope.update(inspect.getclosurevars(fn).nonlocals if fn.__closure__ else {})
        via_package = any(name.split(".")[0] == "flamingo_lite" for name in names) or any(
            isinstance(scope.get(name), types.ModuleType) and scope[name].__name__.startswith("flamingo_lite")
            for name in names)
        for answer in answers:
            if any(scope.get(name) is answer for name in names) or (via_package and answer.__name__ in names):
                fail(f"{what} calls {_package_name(answer)}, the package's own answer to this exercise: write the "
                     "computation yourself, from torch and einops; the check compares yours with that function.")


def _names_used(code: types.CodeType) -> set:
    """Every global, attribute, imported and closed-over name the code reads, its nested functions' included."""
    names = set(code.co_names) | set(code.co_freevars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def _package_name(obj) -> str:
    module = obj.__module__
    return f"{module}.{obj.__qualname__}"


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


def run_untouched(fn: Callable, *args, what: str, names: tuple[str, ...], fix: str | dict | None = None,
                  trains: bool = True, **kwargs):
    """`run_learner` on copies of the tensor arguments, then fail naming the first one `fn` changed in place.

    A function that changes its input in place can return the right value and still pass a check that computes
    the answer afterwards from the changed input; the copies keep the check's own inputs as they were.
    names: each positional argument's name, as the learner's function calls it. fix: the sentence that ends the
    verdict, how to make a new tensor instead (or {name: sentence}, one per argument). trains: whether `fn` is part of
    what trains (then an in-place change also breaks autograd, and the verdict says so)."""
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    result = run_learner(fn, *copies, what=what, **kwargs)
    for name, given, used in zip(names, args, copies):
        if isinstance(given, torch.Tensor) and not (used.shape == given.shape and torch.equal(
                torch.isnan(used), torch.isnan(given)) and torch.equal(used.nan_to_num(0.0), given.nan_to_num(0.0))):
            fail(f"{what} changed its input {name} in place (an in-place op such as `{name} += ...`, `{name}.div_(...)` "
                 f"or `{name}[...] = ...`): the caller's tensor changes too"
                 f"{', and autograd cannot train through it' if trains else ''}; "
                 f"{(fix.get(name) if isinstance(fix, dict) else fix) or f'write `{name} = {name} + ...`, which makes a new tensor.'}")
    return result


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
    shape_advice: str = ("check the shape each step makes: the einops patterns, the axes you reduce over, a batch axis "
                         "kept whole."),
    unmatched: str = "compare your code with the maths above step by step.",
) -> None:
    """Pass when `got` equals `want`; otherwise fail with the message of the first mistake `got` matches, or with
    what differs (shape, NaN, or the largest difference and where). `shape_advice` ends a wrong-shape verdict,
    `unmatched` a verdict that no usual mistake matches (where to look instead)."""
    if not isinstance(got, torch.Tensor):
        fix = ("keep it a tensor: float(...), .item() and .tolist() turn it into Python numbers"
               if isinstance(got, (int, float, list)) else
               "stay in torch: .numpy() turns it into an array" if type(got).__module__ == "numpy" else
               "return the result, do not print it")
        fail(f"{what} returned a {type(got).__name__}, not a tensor: {fix}.")
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
        fail(f"{what} has NaN where the answer has a number (first at index {where}): in attention, a row with "
             "nothing to attend to went through softmax (fill it with 0 instead); elsewhere, look for a division by 0 "
             "or an infinity, such as a temperature or a norm that became 0.")
    if (nan_want & ~nan_got).any():
        fail(f"{what} has numbers where the answer is NaN: a NaN in the input must reach the outputs that use it.")
    if got.dim() == 0:  # one number: say both
        fail(f"{what} gives {got.item():.5g}, the answer is {want.item():.5g}; no usual mistake matches, so {unmatched}")
    diff = (got - want).abs().nan_to_num(0.0)
    where = tuple(int(i) for i in (diff == diff.max()).nonzero()[0])
    fail(f"{what} differs from the answer by up to {diff.max().item():.3g} (at index {where}); no usual mistake "
         f"matches, so {unmatched}")


def check_layer(
    learner,
    reference,
    inputs=None,
    *,
    what: str,
    mistakes: Callable | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    quiet: bool = False,
    **check_kwargs,
):
    """Check the learner's module with `check_module` (its weights are put back afterwards).

    reference: a reference class or instance, as for `check_module`.
    mistakes: `mistakes(reference, *inputs) -> list[Mistake]`, the outputs of the usual wrong implementations with
        the reference's weights; when the learner's output matches one, the check says that mistake's sentence
        (on the input set beyond the example where the output went wrong, when it was right on the example).
    Passes with a line starting "OK" (none when `quiet`: a part of a larger check); otherwise raises `ExerciseFailed`
    with `check_module`'s verdict.
    Returns the `CheckResult`.
    """
    from ..checker import check_module  # the checker imports the layers; keep this module light to import

    _check_modules_registered(learner, what)
    try:
        result = check_module(learner, reference, inputs, atol=atol, rtol=rtol, verbose=False, **check_kwargs)
    except TypeError as error:  # no reference can be built to fit it: a constructor that names a parameter otherwise
        fail(f"{what}: {error}; the exercise's table lists the names the constructor must create.")
    # the exercise checks the sizes itself (check_layer_in_sizes, check_shapes_follow): no need to list them
    if result.size_note:
        result.message = "\n".join(line for line in result.message.split("\n") if line != result.size_note)
    if result.passed:
        if not quiet:
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
    unused = _parameters_left_out(learner, result.inputs) if forward_wrong and result.inputs is not None else []
    if unused:
        fail(f"{what}: {', '.join(unused)} take{'s' if len(unused) == 1 else ''} no part in your forward, so no gradient "
             "would reach them and they would never train: use every layer your constructor makes, each on its own "
             "input (a norm applied to the wrong tensor, or a layer made and never called?).")
    named = (result.heads_used is not None or result.swapped_norms is not None or result.missing_keys
             or result.unexpected_keys or result.shape_mismatches or result.error is not None)
    if not forward_wrong or named or result.output is None:
        # the verdict is exact already: the values match and something else is wrong (dtype, inputs, gradients),
        # or it names the mistake (a head count, swapped norms, the parameter names, an error raised)
        fail(f"{what}: {result.message.removeprefix('✗ ')}")
    fail(f"{what}: {result.message.removeprefix('✗ ')}; no usual mistake matches, so compare each line with the "
         "steps above.")


def check_dtype_kept(got, given: torch.Tensor, what: str, *, inputs: str = "inputs", fix: str) -> None:
    """Fail when a returned tensor (or any of a tuple of them) has another dtype than the input `given`: the
    comparisons cast to float32, so a float64 step passes them and breaks the layer that calls it. fix: how to keep
    the dtype, the verdict's end."""
    for t in got if isinstance(got, (tuple, list)) else (got,):
        if isinstance(t, torch.Tensor) and t.dtype != given.dtype:
            fail(f"{what} returns {t.dtype} for {given.dtype} {inputs}: {fix}")


def check_gradients_reach(fn, reference, inputs, names, *, what: str, of: str = "attention's") -> None:
    """Every input the reference's output depends on gets the reference's gradient from the learner's `fn` too: a
    `.detach()` or `torch.no_grad()` inside cuts it off, and whatever feeds that input would never train. The same
    random cotangent goes back through both. fn and reference return a tensor each; of: whose gradient the right one
    is, for the verdict ("attention's")."""
    mine = [t.detach().clone().requires_grad_() for t in inputs]
    theirs = [t.detach().clone().requires_grad_() for t in inputs]
    with torch.enable_grad():
        got = run_learner(fn, *mine, what=what)
        want = reference(*theirs)
        cotangent = torch.randn(want.shape, generator=torch.Generator().manual_seed(7))
        (want * cotangent).sum().backward()
        if not isinstance(got, torch.Tensor) or not got.requires_grad:
            fail(f"{what} is right, but its output has no gradient (a .detach() or torch.no_grad() on it), so nothing "
                 "before it would ever train: compute it with gradients.")
        try:
            (got * cotangent).sum().backward()
        except RuntimeError as error:  # autograd's own message points inside torch: say what the learner did
            said = str(error).strip().splitlines()[0].split(": [")[0]  # autograd's sentence, without its tensor dump
            fail(f"{what} gives the right numbers, but its backward pass fails ({said}): an in-place op "
                 "(`w.masked_fill_(...)`, `w[rows] = 0`, `e /= ...`, `.exp_()`) changed a tensor autograd saved "
                 "for the gradient; use the out-of-place form (`w = w.masked_fill(...)`, `e = e / ...`).")
    for name, a, b in zip(names, mine, theirs):
        if a.grad is None or not bool(a.grad.any()):
            fail(f"{what} is right, but no gradient reaches {name} (a .detach() or torch.no_grad() in the way), so "
                 f"whatever makes {name} would never train: keep every step in autograd.")
        if not torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4):
            fail(f"{what} is right, but the gradient it gives {name} is not {of} (a step is detached, so "
                 "only part of the gradient flows back): keep every step in autograd, no .detach().")


def _check_modules_registered(learner, what: str) -> None:
    """Fail naming a module's attribute that holds layers in a plain list, tuple or dict: PyTorch does not see the
    layers inside, so their weights are in no state_dict and no optimizer, and they would never train or load."""
    if not isinstance(learner, nn.Module):
        return
    registered = {id(m) for m in learner.modules()}  # a list of layers registered elsewhere too is only a view
    for module_name, module in learner.named_modules():
        for name, value in vars(module).items():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
            unseen = [item for item in items if isinstance(item, nn.Module) and id(item) not in registered]
            if name.startswith("_") or not unseen:
                continue
            where = f"{module_name}.{name}" if module_name else name
            kind = {dict: "nn.ModuleDict"}.get(type(value), "nn.ModuleList")
            fail(f"{what} keeps layers in a plain Python {type(value).__name__}, `{where}`: PyTorch does not see the "
                 f"layers inside, so their weights are in no state_dict and no optimizer (they would never train, "
                 f"nor load): wrap it, `self.{name} = {kind}(...)`.")


def _parameters_left_out(learner, inputs) -> list[str]:
    """The names of the learner's trainable parameters that its forward never uses: no gradient reaches them."""
    named = [(name, p) for name, p in learner.named_parameters() if p.requires_grad]
    if not named:
        return []
    try:
        with torch.enable_grad():
            out = learner(*(a.clone() if isinstance(a, torch.Tensor) else a for a in inputs))
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                return []  # the whole output is cut off: check_module's own verdict says what it can
            grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    except Exception:  # a forward that fails here fails in check_module too, which names it
        return []
    return [name for (name, _), grad in zip(named, grads) if grad is None]


def scale_mistakes(layer, run) -> list[Mistake]:
    """`run(scale_value=s)` (the layer's output with its scores scaled by s) for the usual wrong scales, each named
    with the number it uses; `layer` has `to_q` and `heads`."""
    inner = layer.to_q.weight.shape[0]  # h*e
    dim_head, dim = inner // layer.heads, layer.to_q.weight.shape[1]
    right = dim_head**-0.5
    candidates = [
        (dim_head**0.5, "dim_head ** 0.5: the scores are divided by self.scale instead of multiplied"),
        (1 / dim_head, "1 / dim_head: the square root is missing, or the scale is applied twice"),
        (inner**-0.5, "(heads * dim_head) ** -0.5: the width of all heads together, not of one head"),
        (dim**-0.5, "dim ** -0.5: the model width, not one head's"),
        *((fixed**-0.5, "a fixed number: compute it from the dim_head argument") for fixed in (4, 8, 64)),
    ]
    reasons: dict[float, list[str]] = {}  # at some sizes two mistakes give one number: name them both
    for value, why in candidates:
        if abs(value - right) >= 1e-9:
            reasons.setdefault(round(value, 9), []).append(why)
    return [Mistake("wrong scale", run(scale_value=value),
                    f"the scores are scaled by {value:.4g} ({' or '.join(whys)}); the scale is dim_head ** -0.5 = "
                    f"{right:.4g}, self.scale = dim_head ** -0.5.")
            for value, whys in reasons.items()]


def heads_mistakes(layer, run) -> list[Mistake]:
    """`run(heads=h, scale_value=s)` for every other head count the inner width splits into, with the layer's scale or
    the split's; `layer` has `to_q`, `heads` and `scale`."""
    inner = layer.to_q.weight.shape[0]  # h*e
    out = []
    for h in range(1, inner + 1):
        if inner % h or h == layer.heads:
            continue
        for value in (layer.scale, (inner // h) ** -0.5):
            out.append(Mistake(f"{h} heads", run(heads=h, scale_value=value),
                               f"the forward splits into {h} heads, but this layer has heads={layer.heads}: a fixed "
                               "number in the rearrange or in self.heads; write self.heads = heads in the constructor "
                               "and h=self.heads in every rearrange."))
    return out


def _call(cls, kwargs: dict) -> str:
    return f"{cls.__name__}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"


def check_layer_in_sizes(layer_cls, reference_cls, sizes: list[dict], *, what: str, mistakes: Callable | None = None):
    """`check_layer` on `layer_cls(**size)` against `reference_cls(**size)`, for each size in turn; a failure after
    the first size says that a number is fixed to the first. The sizes after the first are built under
    `fork_rng`, so the lesson's own random draws stay as they were."""
    for i, size in enumerate(sizes):
        call = _call(layer_cls, size)
        if i == 0:
            check_layer(run_learner(layer_cls, **size, what=call), reference_cls, what=what, mistakes=mistakes,
                        reference_kwargs=size)
            continue
        try:
            with torch.random.fork_rng(devices=[]):  # building draws random weights: the lesson's draws stay as they were
                check_layer(run_learner(layer_cls, **size, what=call), reference_cls, what=call, mistakes=mistakes,
                            reference_kwargs=size)
        except ExerciseFailed as failed:
            first = ", ".join(f"{k}={v}" for k, v in sizes[0].items())
            fail(f"{str(failed).rstrip('.')}. It passed with {first}, so a number is fixed to that size: take every "
                 "size from the constructor's arguments (heads, dim_head, dim).")


def check_parameter_names(learner, reference, *, what: str, whose: str = "the reference's", parts: str = "",
                          shapes: bool = False, most: int | None = None, fix: str = "") -> None:
    """Fail when the learner's module has other parameters than `reference` (their state_dict keys), saying in words
    which are missing and which the reference does not have, before load_state_dict's own report.
    what: the module, for the verdict ("your block"); whose: the reference, possessive; parts: its top-level
    attributes, named in the verdict; shapes: also list each parameter whose shape differs; most: list at most this
    many names of each kind; fix: a sentence that ends the verdict."""
    from ..checker import _compare_state_dicts  # the checker imports the layers; keep this module light to import

    if isinstance(learner, nn.Module):
        missing, extra, misshaped = _compare_state_dicts(learner, reference)
    else:
        missing, extra, misshaped = list(reference.state_dict()), [], []
    missing, extra = sorted(missing), sorted(extra)

    def listed(names: list) -> str:
        if most is None or len(names) <= most:
            return ", ".join(names)
        return f"{', '.join(names[:most])} and {len(names) - most} more"

    said = [f"missing {listed(missing)}" if missing else "", f"not in the reference {listed(extra)}" if extra else ""]
    if shapes:
        said += [f"{k} is {mine}, not {theirs}" for k, mine, theirs in misshaped]
    said = "; ".join(part for part in said if part)
    if said:
        named = f"{whose} ({parts})" if parts else whose
        fail(f"{what}'s parameters are not {named}: {said}." + (f" {fix}" if fix else ""))


def check_shapes_follow(learner, reference, call: str, advice) -> None:
    """Every parameter's shape is the reference's built with the same arguments: a number fixed in the constructor
    fails here, even where a forward check (which builds its reference from the learner's shapes) passed.
    advice: what to do, a sentence, or a function of the parameter's name giving one."""
    theirs = {name: tuple(p.shape) for name, p in learner.state_dict().items()}
    for name, p in reference.state_dict().items():
        if name in theirs and theirs[name] != tuple(p.shape):
            said = advice(name) if callable(advice) else advice
            fail(f"{call}'s {name} has shape {theirs[name]}, where {tuple(p.shape)} is expected: {said}")


_HINTS: dict[str, str] = {}  # the full hint of each step: what to write
_NUDGES: dict[str, str] = {}  # a first hint for some steps: what to think about, before the full one


def register_hints(hints: dict[str, str]) -> None:
    """Add a lesson's hints, keyed like "02.scores"."""
    _HINTS.update(hints)


def register_nudges(nudges: dict[str, str]) -> None:
    """Add first hints to steps whose full hint is the answer: `hint(key)` then gives the nudge and `hint(key, 2)`
    the full hint. Each key must have a full hint already (`register_hints`)."""
    unknown = sorted(set(nudges) - set(_HINTS))
    if unknown:
        raise KeyError(f"nudges for steps without a hint: {', '.join(unknown)}; register_hints them first")
    _NUDGES.update(nudges)


def hint(key: str, level: int = 1) -> None:
    """Print the hint for one exercise step, e.g. `hint("02.scores")`. Where a step has two levels, the first
    says what to think about and ends by naming the second, `hint("02.scores", 2)`, which says what to write."""
    if key not in _HINTS:
        known = ", ".join(sorted(_HINTS)) or "none yet: import the lesson's checks first"
        raise KeyError(f"no hint named {key!r}; the hints are: {known}")
    if isinstance(level, bool) or level not in (1, 2):
        raise ValueError(f"level must be 1 (a first hint) or 2 (the full one), got {level!r}")
    if level == 1 and key in _NUDGES:
        print(f"Hint ({key}): {_NUDGES[key]} Still stuck? hint(\"{key}\", 2) says what to write.")
    else:
        print(f"Hint ({key}): {_HINTS[key]}")


def name_error_advice(error: NameError) -> str:
    """What a NameError in a lesson usually means: a cell above did not run to its end."""
    name = getattr(error, "name", None) or "that name"
    return (f"'{name}' is set by a cell above that has not run to its end: a check that failed stops its cell "
            "before the rest of it runs, and so does a skipped cell. Make the check above pass (or run the cells "
            "above this one: Run > Run All Above Selected Cell), then run this cell again.")


def explain_name_errors(shell=None) -> bool:
    """In a notebook, follow a NameError's usual traceback with `name_error_advice`. A lesson's last cell reads
    names its checks set, so after a failed check a learner who runs on meets a NameError there: this says why.
    shell: the IPython shell (default: the running one). Returns whether one was found to install into."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
        if shell is None:
            return False

    def explain(shell, etype, value, tb, tb_offset=None):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        print(name_error_advice(value))

    shell.set_custom_exc((NameError,), explain)
    return True


explain_name_errors()  # every lesson imports its checks from here, so every lesson gets it
