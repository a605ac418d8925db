"""The checker: does a learner's module compute what the reference computes, with the same weights?

`check_module(my_module, flamingo_lite.MaskedCrossAttention)` copies the reference's weights into the learner's
module through `state_dict` (so the parameter names must match flamingo-pytorch's), runs both on the same
inputs, and prints a verdict a person can read: a match, or the largest difference and where it is. On a
`state_dict` mismatch it lists the missing, unexpected and mis-shaped parameter names in plain words.

It never leaves the learner stranded: when their forward raises (the student stub's `NotImplementedError`
included) the verdict says which call raised and what; NaN in their output is reported as NaN; a forward that
splits into a different number of heads than the module's `heads` is diagnosed as that; and the learner's module
is left exactly as it was (weights, gradients, and the train/eval mode of every submodule), whatever happens.

Matching outputs on one example is not enough for code that has to train, so once the outputs match it also checks
that the output has the reference's dtype, that the forward leaves its inputs as they were, that it is right on
inputs beyond the example (a batch of 3; for the cross-attention layers more media than markers, a row with no
marker; large attention scores, where an exp() without the max subtracted overflows) and that a backward pass gives
every parameter and every float input the reference's gradient. Each of these failures is named in one sentence.

A LayerNorm fresh from its constructor has weight 1 and bias 0, so two of them are interchangeable and a forward that
swaps them would match. The checker therefore gives every such norm of the reference its own seeded random weight
and bias before copying, and names a swap of two sibling norms (such as norm_media and norm_latents) when it finds one.
"""
from __future__ import annotations

import copy
import inspect
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
    swapped_norms: tuple | None = None  # the two sibling norms the learner's forward uses the wrong way round
    output: torch.Tensor | None = field(default=None, repr=False)  # the learner's output, with the reference's weights
    expected: torch.Tensor | None = field(default=None, repr=False)  # the reference's output
    reference: nn.Module | None = field(default=None, repr=False)  # the reference as run (gates opened)
    inputs: tuple | None = field(default=None, repr=False)  # the inputs both were run on
    failed_check: str | None = None  # which check failed: "forward", "dtype", "inputs", "train_mode", "case", "backward", "gradient", "defaults"
    case: str | None = None  # the input set beyond the example that the learner's output is wrong on
    dtype: torch.dtype | None = None  # the learner's output dtype, when it is not the reference's
    changed_inputs: list = field(default_factory=list)  # the arguments the learner's forward modified in place
    no_gradient: list = field(default_factory=list)  # parameters (or inputs) the reference trains but the learner's forward cuts off
    wrong_gradient: list = field(default_factory=list)  # parameters (or inputs) whose gradient differs from the reference's
    size_note: str | None = None  # the message's line listing the sizes, when the reference was sized from the learner's

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
            kwargs = dict(dim=dim, depth=depth, num_latents=sd["latents"].shape[0])
            if "media_pos_emb" in sd:
                kwargs.update(num_media_embeds=sd["media_pos_emb"].shape[0])
            else:  # no per-media embeddings: the paper's reading for separate images
                kwargs.update(media_embedding="none")
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
    if "latents" in sd:  # PerceiverResampler
        num_media = min(2, sd["media_pos_emb"].shape[0]) if "media_pos_emb" in sd else 2
        return (randn(batch, num_media, 6, sd["latents"].shape[1]),)  # (b, t, n, d)
    if "norm_media.weight" in sd:  # PerceiverAttention
        dim = sd["norm_media.weight"].shape[0]
        return (randn(batch, 2, 6, dim), randn(batch, 2, 4, dim))  # (b, t, n, d), (b, t, L, d)
    if set(sd) == {"0.weight", "0.bias", "1.weight", "3.weight"}:  # FeedForward
        return (randn(batch, 5, sd["0.weight"].shape[0]),)  # (b, n, d)
    raise TypeError(f"no example inputs for {type(module).__name__}: pass inputs=(...) to check_module")


@dataclass
class Case:
    """One input set beyond the example: what it is (for the verdict), the inputs, and optionally other weights."""

    label: str  # "a batch of 3": the verdict says "right on the example but not on a batch of 3"
    inputs: tuple
    scale_weights: dict | None = None  # {state_dict key suffix: factor}, e.g. large attention scores
    advice: str = ""  # what a mismatch on this case usually means
    loose: bool = False  # large values: compare within 1e-3 of the largest output value, NaN and Inf exactly


LARGE = 1000.0  # how much the large-scores cases scale the media or the queries' weights
_UNSTABLE = ("An exp() of the scores without subtracting each row's largest score first overflows to inf (inf / inf "
             "is NaN): use scores.softmax(dim=-1), or subtract scores.amax(dim=-1, keepdim=True) before the exp.")


def extra_cases(module: nn.Module, *, seed: int = 0) -> list:
    """The input sets `check_module` runs after the example, each a `Case`: shapes and values the example lacks.

    Recognised by parameter names, as in `example_inputs`; an unknown module gets none.
    """
    sd = module.state_dict()
    if not sd:
        return []
    first = next(iter(sd.values()))
    device, dtype = first.device, first.dtype
    g = torch.Generator().manual_seed(seed + 7)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    def marks(*rows):
        return torch.tensor(rows, dtype=torch.bool, device=device)  # (b, n)

    if "attn.norm.weight" in sd or ("norm.weight" in sd and "to_kv.weight" in sd):  # (gated) cross-attention
        dim = sd.get("attn.norm.weight", sd.get("norm.weight")).shape[0]
        dim_media = sd.get("attn.to_kv.weight", sd.get("to_kv.weight")).shape[1]
        x, media, locations = example_inputs(module, seed=seed)  # (b, n, d), (b, t, m, d), (b, n)
        return [
            Case("a batch of 3", (randn(3, 8, dim), randn(3, 3, 4, dim_media), marks(
                [0, 1, 0, 0, 1, 0, 1, 0], [1, 0, 1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 0, 0, 1]))),
            Case("more media than markers (4 media, rows with 2 and 1 markers)", (randn(2, 8, dim), randn(2, 4, 4, dim_media), marks(
                [0, 1, 0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0])),
                advice="The media axis has t = media.shape[1] entries, which can be more than the markers in a row: "
                       "take t from media, and a token's media from the count of markers up to it."),
            Case("a row with no marker at all", (randn(2, 8, dim), randn(2, 2, 4, dim_media), marks(
                [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 1, 0])),
                advice="Text that sees no media (here a whole row) must come out exactly 0."),
            Case("one media after several words of text", (randn(2, 8, dim), randn(2, 1, 4, dim_media), marks(
                [0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0])),
                advice="The words before the first image see no media and come out exactly 0."),
            Case(f"large attention scores (media x {LARGE:g})", (x, media * LARGE, locations), advice=_UNSTABLE, loose=True),
        ]
    if "latents" in sd:  # PerceiverResampler
        return [
            Case("a batch of 3 with one media", (randn(3, 1, 5, sd["latents"].shape[1]),)),
            Case(f"large attention scores (to_q weights x {LARGE:g})", example_inputs(module, seed=seed),
                 scale_weights={"to_q.weight": LARGE}, advice=_UNSTABLE, loose=True),
        ]
    if "norm_media.weight" in sd:  # PerceiverAttention
        dim = sd["norm_media.weight"].shape[0]
        return [
            Case("a batch of 3 with one media", (randn(3, 1, 5, dim), randn(3, 1, 3, dim))),
            Case(f"large attention scores (to_q weights x {LARGE:g})", example_inputs(module, seed=seed),
                 scale_weights={"to_q.weight": LARGE}, advice=_UNSTABLE, loose=True),
        ]
    if set(sd) == {"0.weight", "0.bias", "1.weight", "3.weight"}:  # FeedForward
        return [Case("a batch of 3 with 7 tokens", (randn(3, 7, sd["0.weight"].shape[0]),))]
    return []


def _compare_state_dicts(learner: nn.Module, reference: nn.Module):
    mine, ref = learner.state_dict(), reference.state_dict()
    missing = [k for k in ref if k not in mine]
    unexpected = [k for k in mine if k not in ref]
    misshaped = [(k, tuple(mine[k].shape), tuple(ref[k].shape)) for k in ref if k in mine and mine[k].shape != ref[k].shape]
    return missing, unexpected, misshaped


def _state_dict_report(name, missing, unexpected, misshaped, reference_shapes: dict) -> str:
    lines = [f"✗ {name}: the parameters do not line up with the reference, so its weights cannot be copied in."]
    if missing:
        lines.append(f"  Missing (the reference has them, your module does not): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  Unexpected (your module has them, the reference does not): {', '.join(unexpected)}")
    for key, mine, ref in misshaped:
        lines.append(f"  Wrong shape: {key} is {mine} in your module but {ref} in the reference")
    listed = [f"{key} {shape}" for key, shape in list(reference_shapes.items())[:12]]
    more = len(reference_shapes) - len(listed)
    lines.append(f"  The reference's parameters: {', '.join(listed)}" + (f", and {more} more" if more > 0 else "") + ".")
    lines.append("  Give yours the same attribute names and sizes (the lesson's spec names them).")
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


def _is_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return "Norm" in type(module).__name__ and isinstance(weight, nn.Parameter) and weight.ndim == 1


def randomise_norms(module: nn.Module, *, seed: int = 0) -> list:
    """Give every norm of `module` still at its initial weight 1 and bias 0 a seeded random weight (0.5 to 1.5) and
    bias (about 0.1), in place, so that no two norms are interchangeable. Returns the names of the norms changed."""
    g = torch.Generator().manual_seed(seed + 11)
    changed = []
    with torch.no_grad():
        for mname, m in module.named_modules():
            if not _is_norm(m):
                continue
            bias = getattr(m, "bias", None)
            if not bool((m.weight == 1).all()) or (isinstance(bias, torch.Tensor) and bool((bias != 0).any())):
                continue  # already trained or set: keep it
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))  # (d,)
            if isinstance(bias, torch.Tensor):
                bias.copy_(0.1 * torch.randn(bias.shape, generator=g))  # (d,)
            changed.append(mname)
    return changed


def _swapped_norms(reference: nn.Module, inputs, got: torch.Tensor, atol, rtol):
    """The pair of sibling norm names (e.g. ("norm_media", "norm_latents")) whose weights, swapped in every module
    that has both, make the reference compute `got`; or None."""
    children = {}  # parent name -> {child name: module}
    for mname, m in reference.named_modules():
        if mname and _is_norm(m):
            parent, _, child = mname.rpartition(".")
            children.setdefault(parent, {})[child] = m
    pairs = list(dict.fromkeys((a, b) for kids in children.values() for i, a in enumerate(kids) for b in list(kids)[i + 1:]))
    state = reference.state_dict()
    for a, b in pairs:
        swapped = dict(state)
        for parent, kids in children.items():
            if a not in kids or b not in kids:
                continue
            prefix = f"{parent}." if parent else ""
            for suffix in ("weight", "bias"):
                ka, kb = f"{prefix}{a}.{suffix}", f"{prefix}{b}.{suffix}"
                if ka in state and kb in state and state[ka].shape == state[kb].shape:
                    swapped[ka], swapped[kb] = state[kb], state[ka]
        other = copy.deepcopy(reference)
        try:
            other.load_state_dict(swapped, strict=True)
            other.eval()
            with torch.no_grad():
                out = other(*_cloned(inputs))
        except Exception:
            continue
        if isinstance(out, torch.Tensor) and out.shape == got.shape and torch.allclose(out, got, atol=atol, rtol=rtol, equal_nan=True):
            return a, b
    return None


SIZE_NOTE = "  (the reference was built to your module's sizes"  # how the line that lists them starts (CheckResult.size_note)


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
    check_gradients: bool = True,
    check_cases: bool = True,
    check_defaults: bool = True,
) -> CheckResult:
    """Copy the reference's weights into `learner`, run both, and say whether the outputs match.

    learner: your module. Its weights are the reference's during the check and are put back afterwards, with
        the train/eval mode of every submodule, so the module is left exactly as it was.
    reference: a reference class such as `flamingo_lite.MaskedCrossAttention` (built to fit your module's
        shapes, or with `reference_kwargs`) or an instance (copied, never changed).
    inputs: a tuple of positional arguments for both modules; small seeded ones are made if None.
    open_gates: gates that are exactly zero make a gated block the identity, which would hide mistakes, so
        the reference's zero gates are set to 0.5 before copying (the verdict says so).
    Norms still at weight 1 and bias 0 get seeded random weights in the reference before copying (see
    `randomise_norms`), so that a forward that swaps two of them is caught, and named.
    Once the outputs match it also checks that the output's dtype is the reference's, that your forward leaves its
    inputs as they were, that in train mode it gives the same output whenever the reference does (a Dropout the
    reference lacks is named), that it is right on the input sets of `extra_cases` (`check_cases=False` skips them), and
    that a backward pass gives every parameter the reference trains, and every float input, the reference's
    gradient (`check_gradients=False` skips it). Parameters the reference does not train (requires_grad=False)
    are not compared. Last, your constructor's defaults must be the reference's, where both have the argument
    (`check_defaults=False` skips it): the check builds both with the same sizes, so only the signature shows it.
    Built from a class without `reference_kwargs`, the reference takes your module's sizes, so a size you got wrong
    (a feed-forward widened by 2, not 4) is its size too: the verdict then lists the sizes it checked.
    Returns a `CheckResult` (also when your forward raises: the verdict says which call raised and what);
    with `raise_on_mismatch=True` a mismatch raises `AssertionError` with that verdict instead.
    """
    if not isinstance(learner, nn.Module):
        raise TypeError(f"learner must be an nn.Module (your module), got {type(learner).__name__}")
    name = type(learner).__name__
    sized_from_learner = isinstance(reference, type) and reference_kwargs is None
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

    randomise_norms(reference, seed=seed)
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
    size_note = None
    if sized_from_learner:  # a size the learner got wrong is the reference's too: say which sizes were checked
        sizes = ", ".join(f"{key}={int(value) if isinstance(value, float) and value.is_integer() else value!r}"
                          for key, value in kwargs.items())
        size_note = f"{SIZE_NOTE}, {sizes}: pass reference_kwargs=dict(...) with the spec's sizes to check those too)"
        notes_line = f"{notes_line}\n{size_note}" if notes_line else size_note

    missing, unexpected, misshaped = _compare_state_dicts(learner, reference)
    if missing or unexpected or misshaped:
        reference_shapes = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
        message = _state_dict_report(name, missing, unexpected, misshaped, reference_shapes)
        result = CheckResult(False, name, message, missing_keys=missing, unexpected_keys=unexpected, shape_mismatches=misshaped)
        return _finish(result, verbose, raise_on_mismatch)

    if inputs is None:
        inputs = example_inputs(reference, seed=seed)
    elif not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)

    saved_state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    saved_modes = {m: m.training for m in learner.modules()}
    saved_grads = {p: p.grad for p in learner.parameters()}  # the tensors themselves, put back as they were
    try:
        learner.load_state_dict(reference.state_dict(), strict=True)
        learner.eval()
        reference.eval()
        mine = _cloned(inputs)  # the learner's own copies, so a forward that changes its inputs changes nothing else
        versions = [_version(v) for v in mine]
        with torch.no_grad():
            try:
                expected = reference(*_cloned(inputs))
            except Exception as error:
                said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                message = (f"✗ the reference {ref_name} cannot run on these inputs ({_shapes(inputs)}): {said}. "
                           "The inputs passed to check_module do not fit the layer.")
                return _finish(CheckResult(False, name, message), verbose, raise_on_mismatch)
            try:
                got = learner(*mine)
            except Exception as error:  # the learner's bug, the stub's NotImplementedError included
                message = _raised(name, inputs, error)
                result = CheckResult(False, name, message, error=f"{type(error).__name__}: {error}")
                return _finish(result, verbose, raise_on_mismatch)
        result = _verdict(name, ref_name, got, expected, inputs, kwargs, type(reference), reference, atol, rtol, notes_line)
        result.size_note = size_note
        if isinstance(got, torch.Tensor):
            result.output, result.expected = got.detach(), expected.detach()
        result.reference, result.inputs = reference, tuple(inputs)
        if not result.passed:
            result.failed_check = "forward"
            return _finish(result, verbose, raise_on_mismatch)
        checks = [
            lambda: _dtype_problem(name, ref_name, got, expected),
            lambda: _dtype_in_float64_problem(learner, reference, name, ref_name, inputs),
            lambda: _changed_inputs_problem(learner, name, inputs, mine, versions),
            lambda: _train_mode_problem(learner, reference, name, ref_name, inputs, got, atol, rtol),
            lambda: _cases_problem(learner, reference, name, ref_name, seed, atol, rtol) if check_cases else None,
            lambda: _gradient_problem(learner, reference, name, ref_name, inputs, seed, atol, rtol) if check_gradients else None,
            lambda: _defaults_problem(learner, name, ref_name, type(reference)) if check_defaults else None,
        ]
        for check in checks:  # a failed CheckResult is falsy, so each is compared with None
            problem = check()
            if problem is not None:
                for key in ("output", "expected", "reference", "inputs"):  # the failing case's, else the example's
                    if getattr(problem, key) is None:
                        setattr(problem, key, getattr(result, key))
                result = problem
                break
        return _finish(result, verbose, raise_on_mismatch)
    finally:
        learner.load_state_dict(saved_state, strict=True)
        for p, grad in saved_grads.items():
            p.grad = grad
        for module, training in saved_modes.items():
            module.training = training
        for p in reference.parameters():
            p.grad = None


def _defaults_problem(learner, name, ref_name, reference_cls, skip: tuple = ()) -> CheckResult | None:
    """A constructor default other than the reference's (heads=4 where it has heads=8). The check builds both with
    the same sizes, so only the signature shows it, and `MyLayer(dim=...)` alone would build another layer.
    skip: arguments whose defaults the caller names itself, in its own words."""
    try:
        mine = inspect.signature(type(learner).__init__).parameters
        theirs = inspect.signature(reference_cls.__init__).parameters
    except (TypeError, ValueError):  # a constructor without a signature to read
        return None
    empty = inspect.Parameter.empty
    for key, parameter in mine.items():
        other = theirs.get(key)
        if key in skip or other is None or empty in (parameter.default, other.default):
            continue
        try:
            same = bool(parameter.default == other.default)
        except Exception:  # defaults that do not compare (tensors): not a size
            continue
        if not same:
            message = (f"✗ {name} matches {ref_name} when both are built with the same sizes, but its constructor's "
                       f"default {key}={parameter.default!r} is not the reference's, {key}={other.default!r}: keep "
                       f"the spec's defaults, so that {name} built without {key} is the same layer.")
            return CheckResult(False, name, message, failed_check="defaults")
    return None


def _version(value):
    """A tensor's version counter (bumped by every in-place op), or None (not a tensor, or an inference tensor)."""
    try:
        return value._version if isinstance(value, torch.Tensor) else None
    except RuntimeError:
        return None


def _cloned(inputs) -> tuple:
    return tuple(v.detach().clone() if isinstance(v, torch.Tensor) else v for v in inputs)


def _arg_names(module: nn.Module, count: int) -> list:
    """The names of forward's first `count` positional arguments, as the learner wrote them."""
    names = []
    try:
        for param in inspect.signature(module.forward).parameters.values():
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                names.append(param.name)
    except (TypeError, ValueError):
        pass
    return [names[i] if i < len(names) else f"argument {i + 1}" for i in range(count)]


def _listed(names: list) -> str:
    names = [str(n) for n in names]
    if len(names) > 5:
        names = names[:4] + [f"{len(names) - 4} more"]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _dtype_problem(name, ref_name, got, expected, when: str = ""):
    """when: the run it was, such as " in float64", where a cast to float32 that float32 inputs hide shows."""
    if got.dtype == expected.dtype:
        return None
    message = (f"✗ {name}{when} returns {str(got.dtype).removeprefix('torch.')} where {ref_name} returns "
               f"{str(expected.dtype).removeprefix('torch.')}: a cast inside forward (.double(), .half(), .float(), "
               "or a dtype= argument) changes the output's dtype; compute in the dtype of the inputs and weights.")
    return CheckResult(False, name, message, failed_check="dtype", dtype=got.dtype)


def _dtype_in_float64_problem(learner, reference, name, ref_name, inputs):
    """In float32 a `.float()` inside forward changes nothing, so the module runs once more in float64 (copies of both,
    the inputs' floats cast): the output must be float64 too, and the forward must run at all."""
    floats = [v for v in inputs if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not floats or any(v.dtype != torch.float32 for v in floats):
        return None
    try:
        mine, theirs = copy.deepcopy(learner).double(), copy.deepcopy(reference).double()
    except Exception:  # a module that cannot be copied is checked in its own dtype only
        return None
    doubled = [v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in _cloned(inputs)]
    with torch.no_grad():
        try:
            expected = theirs(*_cloned(doubled))
        except Exception:
            return None
        try:
            got = mine(*doubled)
        except Exception as error:
            said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            message = (f"✗ {name} runs in float32 but raises in float64 ({type(error).__name__}: {said}"
                       f"{_learner_line(error)}): a tensor made inside forward in a fixed dtype meets the inputs' "
                       "dtype; make new tensors from the inputs (`q.new_zeros(shape)`, `torch.zeros_like(x)`), so "
                       "they take their dtype and device.")
            return CheckResult(False, name, message, error=f"{type(error).__name__}: {error}", failed_check="dtype")
    if not isinstance(got, torch.Tensor) or not isinstance(expected, torch.Tensor):
        return None
    return _dtype_problem(name, ref_name, got, expected, when=" in float64")


def _train_mode_problem(learner, reference, name, ref_name, inputs, got, atol, rtol):
    """In train mode the learner gives its eval-mode output whenever the reference does: a Dropout (or another
    layer that acts only while training) that the reference lacks passes every eval-mode comparison and still
    changes what trains. Run under a forked RNG, so the check draws none of the caller's random numbers."""
    if not isinstance(got, torch.Tensor):
        return None
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        reference.train()
        reference_train = reference(*_cloned(inputs))  # the reference in train mode
        reference.eval()
        if not (isinstance(reference_train, torch.Tensor) and reference_train.shape == got.shape
                and torch.allclose(reference_train, got, atol=atol, rtol=rtol, equal_nan=True)):
            return None  # the reference itself acts otherwise while training: nothing to compare
        learner.train()
        try:
            mine_train = learner(*_cloned(inputs))  # the learner in train mode
        finally:
            learner.eval()
    if (isinstance(mine_train, torch.Tensor) and mine_train.shape == got.shape
            and torch.allclose(mine_train, got, atol=atol, rtol=rtol, equal_nan=True)):
        return None
    train_only = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.modules.batchnorm._BatchNorm)
    layers = [f"{module_name} ({type(module).__name__})" for module_name, module in learner.named_modules()
              if isinstance(module, train_only)]
    which = f"{_listed(layers)}, which {ref_name} does not have" if layers else "a layer that acts only while training"
    message = (f"✗ {name} is right in eval mode but gives other numbers in train mode, where {ref_name} gives the "
               f"same in both: {which}. Training would run through it, not through the "
               "reference's computation: remove it.")
    return CheckResult(False, name, message, failed_check="train_mode")


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


def _changed_inputs_problem(learner, name, inputs, mine, versions):
    names = _arg_names(learner, len(inputs))
    changed = [
        names[i] for i, (given, used, version) in enumerate(zip(inputs, mine, versions))
        if isinstance(given, torch.Tensor) and (_version(used) != version or not _same_values(used, given.detach()))
    ]
    if not changed:
        return None
    what = f"its input {changed[0]}" if len(changed) == 1 else f"its inputs {_listed(changed)}"
    message = (f"✗ {name}.forward modifies {what} in place (an in-place op such as `x += ...`, `x.mul_(...)` or "
               "`x[...] = ...` on an argument): the caller's tensor changes, and autograd cannot train through it; "
               "write `x = x + ...` to make a new tensor instead.")
    return CheckResult(False, name, message, failed_check="inputs", changed_inputs=changed)


def _differences(got, want, atol, rtol):
    """(values off, largest difference, its index, new non-finite values, the first of them) of got against want."""
    got64, want64 = got.double(), want.double()  # the output's shape
    bad_finite = ~torch.isfinite(got64) & torch.isfinite(want64)
    diff = (got64 - want64).abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)  # same shape as the output
    too_far = (diff > atol + rtol * want64.abs()) | bad_finite
    where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.numel() else ()
    first = tuple(int(i) for i in bad_finite.nonzero()[0]) if bool(bad_finite.any()) else None
    return int(too_far.sum()), float(diff.max()) if diff.numel() else 0.0, where, int(bad_finite.sum()), first


def _with_scaled_weights(state: dict, scale: dict | None) -> dict:
    if not scale:
        return state
    return {k: v * next((f for suffix, f in scale.items() if k.endswith(suffix)), 1.0) for k, v in state.items()}


def _cases_problem(learner, reference, name, ref_name, seed, atol, rtol):
    """The first input set beyond the example on which the learner's output differs from the reference's."""
    try:
        cases = extra_cases(reference, seed=seed)
    except Exception:  # a reference we cannot make inputs for: only the example is checked
        return None
    state = reference.state_dict()
    for case in cases:
        if case.loose and next(iter(state.values())).element_size() < 4:
            continue  # half precision rounds large scores too coarsely for two correct layers to agree
        case_ref = reference
        if case.scale_weights:
            case_ref = copy.deepcopy(reference)
            case_ref.load_state_dict(_with_scaled_weights(state, case.scale_weights), strict=True)
            learner.load_state_dict(case_ref.state_dict(), strict=True)
        try:
            with torch.no_grad():
                try:
                    want = case_ref(*_cloned(case.inputs))
                except Exception:  # this reference cannot take the case (the original code, a narrower variant)
                    continue
                if not isinstance(want, torch.Tensor) or not bool(torch.isfinite(want).all()):
                    continue
                try:
                    got = learner(*_cloned(case.inputs))
                except Exception as error:
                    said = str(error).strip().splitlines()[0] if str(error).strip() else ""
                    what = f"{type(error).__name__}: {said}" if said else type(error).__name__
                    message = (f"✗ {name} is right on the example but raises on {case.label}: "
                               f"{name}.forward({_shapes(case.inputs)}) raised {what}{_learner_line(error)}. "
                               "Take every size from the inputs' shapes, not from the example's.")
                    return CheckResult(False, name, message, error=f"{type(error).__name__}: {error}",
                                       failed_check="case", case=case.label, inputs=tuple(case.inputs))
        finally:
            if case.scale_weights:
                learner.load_state_dict(state, strict=True)
        verdict = _case_verdict(name, ref_name, case, got, want, atol, rtol)
        if verdict is not None:
            verdict.reference, verdict.inputs = case_ref, tuple(case.inputs)
            return verdict
    return None


def _case_verdict(name, ref_name, case, got, want, atol, rtol):
    head = f"✗ {name} is right on the example but not on {case.label}:"
    advice = f" {case.advice}" if case.advice else ""
    if not isinstance(got, torch.Tensor):
        return CheckResult(False, name, f"{head} it returned {type(got).__name__}, not a tensor.", failed_check="case", case=case.label)
    if got.shape != want.shape:
        message = f"{head} it returned shape {tuple(got.shape)}, but {ref_name} returns {tuple(want.shape)}.{advice}"
        return CheckResult(False, name, message, output_shape=tuple(got.shape), failed_check="case", case=case.label)
    largest = float(want.double().abs().max()) if want.numel() else 0.0
    tol = atol * max(1.0, largest)  # the example's tolerance, on the scale of this case's values
    if case.loose:
        tol = max(tol, 1e-3 * largest)  # large scores: rounding in the scores moves the weights a little
    num_bad, max_diff, where, num_nonfinite, first = _differences(got, want, tol, rtol)
    if num_bad == 0:
        return None
    result = dict(max_abs_diff=max_diff, where=where, num_mismatched=num_bad, num_values=want.numel(),
                  output_shape=tuple(got.shape), failed_check="case", case=case.label,
                  output=got.detach(), expected=want.detach())
    if num_nonfinite:
        message = (f"{head} it returns NaN or inf where {ref_name} has numbers, {num_nonfinite} of {want.numel()} "
                   f"values, the first at index {first}.{advice}")
        return CheckResult(False, name, message, num_nan=num_nonfinite, **{**result, "where": first})
    message = (f"{head} {num_bad} of {want.numel()} values are off by more than {tol:.3g}; the largest difference is "
               f"{max_diff:.3g} at index {where} (yours {float(got.double()[where]):.4f}, reference "
               f"{float(want.double()[where]):.4f}).{advice}")
    return CheckResult(False, name, message, **result)


def _backward(module, inputs, cotangent_seed: int):
    """Forward and backward with gradients on: (output, cotangent, {parameter name: grad}, [input grads]).

    The float inputs are fresh leaves that require grad; the cotangent is seeded, the same for every module.
    """
    args = [v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for v in inputs]
    for p in module.parameters():
        p.grad = None
    with torch.enable_grad():
        out = module(*args)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(cotangent_seed)).to(out)  # like the output
        if out.requires_grad:
            (out * g).sum().backward()
    grads = {k: p.grad for k, p in module.named_parameters(remove_duplicate=False)}
    return out, grads, [a.grad if isinstance(a, torch.Tensor) and a.requires_grad else None for a in args]


_NEVER_TRAINS = ("the output does not reach it through autograd (e.g. a .detach(), torch.no_grad(), or it is never "
                 "used), so it would never train")
_CHANGED_GRADIENT = ("something changes the gradient but not the values, such as a .detach() on part of an expression "
                     "or a custom autograd.Function")


def _gradient_problem(learner, reference, name, ref_name, inputs, seed, atol, rtol):
    """Whether a backward pass gives the learner's parameters and float inputs the reference's gradients."""
    try:
        want_out, want_grads, want_input_grads = _backward(reference, inputs, seed + 1)
    except Exception:  # the reference itself cannot be differentiated here: nothing to compare with
        return None
    if not isinstance(want_out, torch.Tensor) or not want_out.requires_grad:
        return None
    what_failed = "forward"
    try:
        args = [v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for v in inputs]
        for p in learner.parameters():
            p.grad = None
        with torch.enable_grad():
            out = learner(*args)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                what_failed = "backward"
                g = torch.randn(want_out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(out)  # like the output
                (out * g).sum().backward()
    except Exception as error:
        said = str(error).strip().splitlines()[0] if str(error).strip() else ""
        what = f"{type(error).__name__}: {said}" if said else type(error).__name__
        if what_failed == "forward":
            message = (f"✗ {name}.forward raises when gradients are on ({what}{_learner_line(error)}), though it runs "
                       "under torch.no_grad(): an in-place op on a tensor that requires grad is the usual cause; use "
                       "the out-of-place form (`x = x * s`, not `x.mul_(s)`).")
        else:
            message = (f"✗ {name}'s forward breaks backward: the backward pass raised {what}. An in-place op (such "
                       "as `h.mul_(...)`, `h += ...` or `.relu_()`) changed a tensor autograd saved for the gradient, "
                       "after it was used; use the out-of-place form.")
        return CheckResult(False, name, message, error=f"{type(error).__name__}: {error}", failed_check="backward")
    if not isinstance(out, torch.Tensor):
        return None  # the forward check already said what it returned
    mine = dict(learner.named_parameters(remove_duplicate=False))
    trained = {k: g for k, p in reference.named_parameters(remove_duplicate=False)
               if p.requires_grad and (g := want_grads.get(k)) is not None}
    if not out.requires_grad and trained:
        message = (f"✗ {name}: its output carries no gradient at all, to no parameter: the whole forward ran under "
                   "torch.no_grad(), or the output was detached, so it would never train.")
        return CheckResult(False, name, message, failed_check="gradient", no_gradient=list(trained))
    frozen, buffers, none, wrong = [], [], [], []
    worst = None  # (name, largest difference, index) of the first wrong gradient
    for key, want in trained.items():
        p = mine.get(key)
        if p is None:
            buffers.append(key)
        elif not p.requires_grad:
            frozen.append(key)
        elif p.grad is None:
            if bool(want.any()):  # an all-zero gradient lost is no training lost
                none.append(key)
        else:
            bad, where, diff = _gradient_differs(p.grad, want, atol, rtol)
            if bad:
                wrong.append(key)
                worst = worst or (key, diff, where)
    arg_names = _arg_names(learner, len(inputs))
    input_none, input_wrong = [], []
    for i, want in enumerate(want_input_grads):
        if want is None or not bool(want.any()):
            continue
        have = args[i].grad if isinstance(args[i], torch.Tensor) and args[i].requires_grad else None
        if have is None:
            input_none.append(arg_names[i])
        else:
            bad, where, diff = _gradient_differs(have, want, atol, rtol)
            if bad:
                input_wrong.append(arg_names[i])
                worst = worst or (f"input {arg_names[i]}", diff, where)
    sentences = []
    if frozen:
        sentences.append(f"parameter{'s' if len(frozen) > 1 else ''} {_listed(frozen)} "
                         f"{'have' if len(frozen) > 1 else 'has'} requires_grad=False, but {ref_name} trains "
                         f"{'them' if len(frozen) > 1 else 'it'}: do not freeze {'them' if len(frozen) > 1 else 'it'} in your module.")
    if buffers:
        sentences.append(f"{_listed(buffers)} {'are buffers' if len(buffers) > 1 else 'is a buffer'} in your module, "
                         f"not {'nn.Parameters' if len(buffers) > 1 else 'an nn.Parameter'}, so "
                         f"{'they' if len(buffers) > 1 else 'it'} would never train: wrap it in nn.Parameter(...).")
    if none:
        sentences.append(f"parameter{'s' if len(none) > 1 else ''} {_listed(none)} "
                         f"get{'' if len(none) > 1 else 's'} no gradient: {_NEVER_TRAINS}.")
    if input_none:
        sentences.append(f"no gradient reaches the input {_listed(input_none)}: the output does not depend on it through "
                         "autograd (e.g. a .detach() or torch.no_grad() on it), so whatever feeds it would never train.")
    if wrong:
        key, diff, where = worst if not worst[0].startswith("input ") else (wrong[0], None, None)
        extent = f" (by up to {diff:.3g}, at index {where})" if diff is not None else ""
        sentences.append(f"the gradient of parameter{'s' if len(wrong) > 1 else ''} {_listed(wrong)} differs from "
                         f"{ref_name}'s{extent} though the outputs match: {_CHANGED_GRADIENT}.")
    if input_wrong:
        key, diff, where = worst if worst[0].startswith("input ") else (None, None, None)
        extent = f" (by up to {diff:.3g}, at index {where})" if diff is not None else ""
        sentences.append(f"the gradient with respect to the input {_listed(input_wrong)} differs from {ref_name}'s"
                         f"{extent} though the outputs match: {_CHANGED_GRADIENT}.")
    if not sentences:
        return None
    message = f"✗ {name}: " + " Also, ".join(sentences)
    return CheckResult(False, name, message, failed_check="gradient", no_gradient=frozen + buffers + none + input_none,
                       wrong_gradient=wrong + input_wrong)


def _gradient_differs(have: torch.Tensor, want: torch.Tensor, atol: float, rtol: float):
    """(differs, index of the largest difference, that difference): within 10x the forward's tolerances, on the
    gradient's own scale (gradients add up more rounding than outputs)."""
    have64, want64 = have.detach().double(), want.detach().double()  # the parameter's (or input's) shape
    if have64.shape != want64.shape:
        return True, None, float("inf")
    scale = float(want64.abs().max()) if want64.numel() else 0.0
    diff = (have64 - want64).abs()  # same shape
    finite_alike = torch.isfinite(have64) == torch.isfinite(want64)  # same shape
    diff = torch.where(finite_alike, diff.nan_to_num(0.0), torch.full_like(diff, float("inf")))  # same shape
    bad = diff > 10 * atol * max(1.0, scale) + 10 * rtol * want64.abs()
    if not bool(bad.any()):
        return False, None, 0.0
    where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    return True, where, float(diff.max())


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
    pair = _swapped_norms(reference, inputs, got, atol, rtol)
    if pair is not None:
        a, b = pair
        message = (f"✗ {name} swaps {a} and {b}: each is applied to the input the other one is for; apply each norm "
                   "to its own input (the check gives every norm its own random weights, so a swap shows).")
        return CheckResult(False, name, message, max_diff, where, num_bad, diff.numel(), shape, swapped_norms=pair)
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
