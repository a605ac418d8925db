"""The checker: does a learner's module compute what the reference computes, with the same weights?

`check_module(my_module, flamingo_lite.MaskedCrossAttention)` copies the reference's weights into the learner's
module through `state_dict` (so the parameter names must match flamingo-pytorch's), runs both on the same
inputs, and prints a verdict a person can read: a match, or the largest difference and where it is. On a
`state_dict` mismatch it lists the missing, unexpected and mis-shaped parameter names in plain words.

It never leaves the learner stranded: when their forward raises (the student stub's `NotImplementedError`
included) the verdict says which call raised and what; NaN in their output is reported as NaN; a forward that
splits into a different number of heads than the module's `heads` is diagnosed as that; and the learner's module
is left exactly as it was (weights, and the train/eval mode of every submodule), whatever happens.
"""
from __future__ import annotations

import copy
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..cross_attention import MaskedCrossAttention
from ..feedforward import FeedForward
from ..gated import GatedCrossAttentionBlock
from ..perceiver import PerceiverAttention, PerceiverResampler


@dataclass
class CheckResult:
    """What `check_module` found. Truthy when the outputs match."""

    passed: bool
    name: str
    message: str
    max_abs_diff: float | None = None
    where: tuple | None = None  # index of the largest difference
    num_mismatched: int = 0
    num_values: int = 0
    output_shape: tuple | None = None
    missing_keys: list = field(default_factory=list)  # in the reference, not in the learner's module
    unexpected_keys: list = field(default_factory=list)  # in the learner's module, not in the reference
    shape_mismatches: list = field(default_factory=list)  # (key, learner shape, reference shape)
    error: str | None = None  # "NotImplementedError: ..." when the learner's forward raised
    num_nan: int = 0  # values that are NaN in the learner's output but not in the reference's
    heads_used: int | None = None  # the head count the learner's forward matches, when it is not the module's
    output: torch.Tensor | None = field(default=None, repr=False)  # the learner's output, with the reference's weights
    expected: torch.Tensor | None = field(default=None, repr=False)  # the reference's output
    reference: nn.Module | None = field(default=None, repr=False)  # the reference as run (gates opened)
    inputs: tuple | None = field(default=None, repr=False)  # the inputs both were run on

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"CheckResult(passed={self.passed}, max_abs_diff={self.max_abs_diff})"


def _heads_of(module: nn.Module, fallback_module: nn.Module | None = None) -> int:
    for m in (module, fallback_module):
        if m is not None and isinstance(getattr(m, "heads", None), int):
            return m.heads
    raise TypeError("cannot tell the number of heads: give your module a `heads` attribute or pass reference_kwargs")


class HeadsMismatch(ValueError):
    """The learner's `heads` does not divide the width its projections make."""


def _dim_head(inner: int, heads: int, where: str) -> int:
    if heads <= 0 or inner % heads:
        raise HeadsMismatch(
            f"{where} says heads={heads}, but its to_q makes {inner} numbers per token, which do not split into "
            f"{heads} equal heads: the projections must be heads * dim_head wide"
        )
    return inner // heads


def infer_reference_kwargs(reference_cls: type, learner: nn.Module) -> dict:
    """Constructor arguments for `reference_cls` that fit the learner's weights (shapes and `heads`)."""
    sd = learner.state_dict()
    name = type(learner).__name__
    try:
        if reference_cls is FeedForward:
            dim = sd["0.weight"].shape[0]
            return dict(dim=dim, mult=sd["1.weight"].shape[0] / dim)
        if reference_cls is PerceiverAttention:
            heads = _heads_of(learner)
            return dict(dim=sd["norm_media.weight"].shape[0], heads=heads, dim_head=_dim_head(sd["to_q.weight"].shape[0], heads, name))
        if reference_cls is MaskedCrossAttention:
            heads = _heads_of(learner)
            return dict(
                dim=sd["norm.weight"].shape[0],
                heads=heads,
                dim_head=_dim_head(sd["to_q.weight"].shape[0], heads, name),
                only_attend_immediate_media=bool(getattr(learner, "only_attend_immediate_media", True)),
            )
        if reference_cls is GatedCrossAttentionBlock:
            attn = getattr(learner, "attn", None)
            heads = _heads_of(attn) if attn is not None else _heads_of(learner)
            dim = sd["attn.norm.weight"].shape[0]
            return dict(
                dim=dim,
                heads=heads,
                dim_head=_dim_head(sd["attn.to_q.weight"].shape[0], heads, f"{name}.attn"),
                ff_mult=sd["ff.1.weight"].shape[0] / dim,
                only_attend_immediate_media=bool(getattr(attn, "only_attend_immediate_media", True)),
            )
        if reference_cls is PerceiverResampler:
            depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
            first_attn = learner.layers[0][0] if depth else None
            heads = _heads_of(first_attn) if depth else 8
            dim = sd["latents"].shape[1]
            kwargs = dict(
                dim=dim, depth=depth, num_latents=sd["latents"].shape[0], num_media_embeds=sd["media_pos_emb"].shape[0]
            )
            if depth:
                kwargs.update(heads=heads, dim_head=_dim_head(sd["layers.0.0.to_q.weight"].shape[0], heads, f"{name}.layers[0][0]"))
                kwargs.update(ff_mult=sd["layers.0.1.1.weight"].shape[0] / dim)
            return kwargs
    except KeyError as missing:
        raise TypeError(
            f"cannot build a {reference_cls.__name__} to match your module: it has no parameter {missing}. "
            "Name your parameters as the reference does, or pass reference_kwargs=dict(...)"
        ) from None
    raise TypeError(f"pass reference_kwargs=dict(...) to build a {reference_cls.__name__}, or pass an instance")


def example_inputs(module: nn.Module, *, seed: int = 0, batch: int = 2) -> tuple:
    """Small, seeded inputs that exercise `module`, including the tricky cases.

    The layer is recognised by its parameter names, so this works for flamingo_lite's layers, for a learner's
    module named the same way, and for flamingo-pytorch's. For the cross-attention layers the media_locations
    hold text before the first media, a marker at position 0 and two consecutive markers.
    """
    sd = module.state_dict()
    if not sd:
        raise TypeError(f"{type(module).__name__} has no parameters: pass inputs=(...) to check_module")
    first = next(iter(sd.values()))
    device, dtype = first.device, first.dtype
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    if "attn.norm.weight" in sd or ("norm.weight" in sd and "to_kv.weight" in sd):  # (gated) cross-attention
        dim = sd.get("attn.norm.weight", sd.get("norm.weight")).shape[0]
        pattern = [
            [0, 1, 0, 0, 1, 0, 1, 0],  # text before the first media, three media
            [1, 0, 1, 1, 0, 0, 0, 0],  # a marker at position 0, two consecutive markers
        ]
        locations = torch.tensor([pattern[i % 2] for i in range(batch)], dtype=torch.bool, device=device)  # (b, n)
        return randn(batch, 8, dim), randn(batch, 3, 4, dim), locations  # (b, n, d), (b, t, m, d), (b, n)
    if "latents" in sd and "media_pos_emb" in sd:  # PerceiverResampler
        num_media = min(2, sd["media_pos_emb"].shape[0])
        return (randn(batch, num_media, 6, sd["latents"].shape[1]),)  # (b, t, n, d)
    if "norm_media.weight" in sd:  # PerceiverAttention
        dim = sd["norm_media.weight"].shape[0]
        return (randn(batch, 2, 6, dim), randn(batch, 2, 4, dim))  # (b, t, n, d), (b, t, L, d)
    if set(sd) == {"0.weight", "0.bias", "1.weight", "3.weight"}:  # FeedForward
        return (randn(batch, 5, sd["0.weight"].shape[0]),)  # (b, n, d)
    raise TypeError(f"no example inputs for {type(module).__name__}: pass inputs=(...) to check_module")


def _compare_state_dicts(learner: nn.Module, reference: nn.Module):
    mine, ref = learner.state_dict(), reference.state_dict()
    missing = [k for k in ref if k not in mine]
    unexpected = [k for k in mine if k not in ref]
    misshaped = [(k, tuple(mine[k].shape), tuple(ref[k].shape)) for k in ref if k in mine and mine[k].shape != ref[k].shape]
    return missing, unexpected, misshaped


def _state_dict_report(name, missing, unexpected, misshaped) -> str:
    lines = [f"✗ {name}: the parameters do not line up with the reference, so its weights cannot be copied in."]
    if missing:
        lines.append(f"  Missing (the reference has them, your module does not): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  Unexpected (your module has them, the reference does not): {', '.join(unexpected)}")
    for key, mine, ref in misshaped:
        lines.append(f"  Wrong shape: {key} is {mine} in your module but {ref} in the reference")
    lines.append("  Use the same attribute names and sizes as the reference (print(reference) shows them).")
    return "\n".join(lines)


def _shapes(inputs) -> str:
    """The call's arguments as a learner reads them: shapes for tensors, values for the rest."""
    parts = []
    for value in inputs:
        parts.append(f"a tensor {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value))
    return ", ".join(parts)


_HERE = Path(__file__).resolve()


def _learner_line(error: BaseException) -> str:
    """' (line N: `code`)' for the deepest frame of the traceback that is the learner's code, or ''."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__)
        if Path(f.filename).resolve() != _HERE and "site-packages" not in f.filename and "/lib/python" not in f.filename
    ]
    if not frames or not (frames[-1].line or "").strip():
        return ""
    return f" (line {frames[-1].lineno}: `{frames[-1].line.strip()}`)"


def _raised(name: str, inputs, error: BaseException) -> str:
    said = str(error).strip().splitlines()[0] if str(error).strip() else ""
    what = f"{type(error).__name__}: {said}" if said else type(error).__name__
    call = f"{name}.forward({_shapes(inputs)})"
    if isinstance(error, NotImplementedError):
        return (f"✗ {name} is not written yet: {call} raised {what}. Replace the `raise NotImplementedError` in "
                "the exercise cell with your code, run that cell, then this check again.")
    return f"✗ {call} raised {what}{_learner_line(error)}. The error is in your forward, not in the reference."


def _other_head_counts(reference_cls, kwargs: dict, state: dict, inputs, got: torch.Tensor, atol, rtol):
    """The head count (other than kwargs['heads']) with which the reference computes `got`, or None.

    The weights do not depend on how the inner width h*e is split into heads, so a forward that hard-codes a
    different head count computes exactly the reference with that many heads and the same weights.
    """
    if reference_cls not in (PerceiverAttention, MaskedCrossAttention, GatedCrossAttentionBlock, PerceiverResampler):
        return None
    if "heads" not in kwargs or "dim_head" not in kwargs:
        return None
    inner = kwargs["heads"] * kwargs["dim_head"]
    for heads in range(1, inner + 1):
        if inner % heads or heads == kwargs["heads"]:
            continue
        other = reference_cls(**{**kwargs, "heads": heads, "dim_head": inner // heads})
        other = other.to(device=got.device, dtype=got.dtype)
        try:
            other.load_state_dict(state, strict=True)
            other.eval()
            with torch.no_grad():
                out = other(*inputs)
        except Exception:  # this split does not fit at all: not the learner's
            continue
        if out.shape == got.shape and torch.allclose(out, got, atol=atol, rtol=rtol, equal_nan=True):
            return heads
    return None


def check_module(
    learner: nn.Module,
    reference,
    inputs=None,
    *,
    reference_kwargs: dict | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    seed: int = 0,
    open_gates: bool = True,
    raise_on_mismatch: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Copy the reference's weights into `learner`, run both, and say whether the outputs match.

    learner: your module. Its weights are the reference's during the check and are put back afterwards, with
        the train/eval mode of every submodule, so the module is left exactly as it was.
    reference: a reference class such as `flamingo_lite.MaskedCrossAttention` (built to fit your module's
        shapes, or with `reference_kwargs`) or an instance (copied, never changed).
    inputs: a tuple of positional arguments for both modules; small seeded ones are made if None.
    open_gates: gates that are exactly zero make a gated block the identity, which would hide mistakes, so
        the reference's zero gates are set to 0.5 before copying (the verdict says so).
    Returns a `CheckResult` (also when your forward raises: the verdict says which call raised and what);
    with `raise_on_mismatch=True` a mismatch raises `AssertionError` with that verdict instead.
    """
    if not isinstance(learner, nn.Module):
        raise TypeError(f"learner must be an nn.Module (your module), got {type(learner).__name__}")
    name = type(learner).__name__
    if isinstance(reference, type):
        if not issubclass(reference, nn.Module):
            raise TypeError(f"reference must be an nn.Module class or instance, got {reference!r}")
        try:
            kwargs = reference_kwargs if reference_kwargs is not None else infer_reference_kwargs(reference, learner)
        except HeadsMismatch as error:
            return _finish(CheckResult(False, name, f"✗ {error}."), verbose, raise_on_mismatch)
        torch.manual_seed(seed)
        reference = reference(**kwargs)
        param = next(learner.parameters(), None)
        if param is not None:
            reference = reference.to(device=param.device, dtype=param.dtype)
    elif isinstance(reference, nn.Module):
        reference = copy.deepcopy(reference)
        try:
            kwargs = infer_reference_kwargs(type(reference), reference)
        except (TypeError, HeadsMismatch):
            kwargs = {}
    else:
        raise TypeError(f"reference must be an nn.Module class or instance, got {type(reference).__name__}")
    ref_name = f"{type(reference).__module__.split('.')[0]}.{type(reference).__name__}"  # e.g. flamingo_lite.FeedForward

    notes = []
    if open_gates:
        with torch.no_grad():
            for pname, p in reference.named_parameters():
                if pname.split(".")[-1].endswith("gate") and bool((p == 0).all()):
                    p.fill_(0.5)
                    notes.append(pname)
    if notes:
        notes_line = f"  (gates {', '.join(notes)} set to 0.5 so the check sees through them)"
    else:
        notes_line = ""

    missing, unexpected, misshaped = _compare_state_dicts(learner, reference)
    if missing or unexpected or misshaped:
        message = _state_dict_report(name, missing, unexpected, misshaped)
        result = CheckResult(False, name, message, missing_keys=missing, unexpected_keys=unexpected, shape_mismatches=misshaped)
        return _finish(result, verbose, raise_on_mismatch)

    if inputs is None:
        inputs = example_inputs(reference, seed=seed)
    elif not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)

    saved_state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    saved_modes = {m: m.training for m in learner.modules()}
    try:
        learner.load_state_dict(reference.state_dict(), strict=True)
        learner.eval()
        reference.eval()
        with torch.no_grad():
            try:
                expected = reference(*inputs)
            except Exception as error:
                said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                message = (f"✗ the reference {ref_name} cannot run on these inputs ({_shapes(inputs)}): {said}. "
                           "The inputs passed to check_module do not fit the layer.")
                return _finish(CheckResult(False, name, message), verbose, raise_on_mismatch)
            try:
                got = learner(*inputs)
            except Exception as error:  # the learner's bug, the stub's NotImplementedError included
                message = _raised(name, inputs, error)
                result = CheckResult(False, name, message, error=f"{type(error).__name__}: {error}")
                return _finish(result, verbose, raise_on_mismatch)
        result = _verdict(name, ref_name, got, expected, inputs, kwargs, type(reference), reference, atol, rtol, notes_line)
        if isinstance(got, torch.Tensor):
            result.output, result.expected = got.detach(), expected.detach()
        result.reference, result.inputs = reference, tuple(inputs)
        return _finish(result, verbose, raise_on_mismatch)
    finally:
        learner.load_state_dict(saved_state, strict=True)
        for module, training in saved_modes.items():
            module.training = training


def _verdict(name, ref_name, got, expected, inputs, kwargs, reference_cls, reference, atol, rtol, notes_line):
    if not isinstance(got, torch.Tensor):
        message = f"✗ {name} returned {type(got).__name__}, expected a tensor of shape {tuple(expected.shape)}"
        return CheckResult(False, name, message)
    heads = kwargs.get("heads")
    if got.shape != expected.shape:
        message = f"✗ {name} returned shape {tuple(got.shape)}, but {ref_name} returns {tuple(expected.shape)}"
        return CheckResult(False, name, message, output_shape=tuple(got.shape))

    got64, expected64 = got.double(), expected.double()
    nan_got, nan_expected = torch.isnan(got64), torch.isnan(expected64)
    diff = (got64 - expected64).abs()  # same shape as the output
    diff = torch.where(nan_got != nan_expected, torch.full_like(diff, float("inf")), diff)
    diff = torch.nan_to_num(diff, nan=0.0)  # NaN in both places counts as equal
    too_far = diff > atol + rtol * expected64.abs().nan_to_num(0.0)
    max_diff = float(diff.max())
    where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    shape = tuple(got.shape)
    num_bad = int(too_far.sum())
    new_nan = nan_got & ~nan_expected
    num_nan = int(new_nan.sum())
    if num_bad == 0:
        message = f"✓ {name} matches {ref_name}: output {shape}, every value within {atol:g} of the reference{notes_line and chr(10) + notes_line}"
        return CheckResult(True, name, message, max_diff, where, 0, diff.numel(), shape)
    if num_nan:
        first = tuple(int(i) for i in new_nan.nonzero()[0])
        message = (
            f"✗ {name} returns NaN where {ref_name} has numbers: {num_nan} of {diff.numel()} values, the first at "
            f"index {first} (reference {float(expected64[first]):.4f}). A row with nothing to attend to went "
            "through softmax after a -inf fill, or a NaN came from a division; give such rows 0 instead."
        )
        return CheckResult(False, name, message, float("nan"), first, num_bad, diff.numel(), shape, num_nan=num_nan)
    if heads is not None:
        state = reference.state_dict()
        used = _other_head_counts(reference_cls, kwargs, state, inputs, got, atol, rtol)
        if used is not None:
            message = (
                f"✗ {name} splits into {used} heads, but the module has heads={heads}: use self.heads in the "
                "rearrange that splits and merges the heads, not a fixed number."
            )
            return CheckResult(False, name, message, max_diff, where, num_bad, diff.numel(), shape, heads_used=used)
    message = (
        f"✗ {name} differs from {ref_name}: output {shape}, {num_bad} of {diff.numel()} values off by more "
        f"than {atol:g}; the largest difference is {max_diff:.3g} at index {where} "
        f"(yours {float(got64[where]):.4f}, reference {float(expected64[where]):.4f}){notes_line and chr(10) + notes_line}"
    )
    return CheckResult(False, name, message, max_diff, where, num_bad, diff.numel(), shape)


def _finish(result: CheckResult, verbose: bool, raise_on_mismatch: bool) -> CheckResult:
    if verbose:
        print(result.message)
    if raise_on_mismatch and not result.passed:
        raise AssertionError(result.message)
    return result
