"""Argument checks shared by every module.

Every public constructor and forward pass checks its inputs here first, so that a mistake is reported as a
`TypeError` or `ValueError` that names the argument and shows the shapes, before any computation runs, and
never as an einops or broadcasting error from deep inside.
"""
from __future__ import annotations

import math
import numbers

import torch


def shape_str(t: torch.Tensor) -> str:
    """`(2, 5, 512)`: a tensor's shape the way the messages print it."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_positive_int(name: str, value) -> int:
    """A size such as `dim` or `heads`: an int (not a bool) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_non_negative_int(name: str, value) -> int:
    """A count such as `depth`: an int (not a bool) of at least 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """A switch such as `qk_layer_norms`: True or False, not a string or a number that happens to be truthy."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")
    return value


def check_finite_number(name: str, value) -> float:
    """A real number (an int or a float, not a bool) that is neither infinite nor NaN, such as a gain."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def check_positive_number(name: str, value) -> float:
    """A multiplier or a rate such as `ff_mult` or `lr`: a finite real number greater than 0."""
    if not check_finite_number(name, value) > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def check_non_negative_number(name: str, value) -> float:
    """A weight such as `weight_decay`: a finite real number of at least 0."""
    if not check_finite_number(name, value) >= 0:
        raise ValueError(f"{name} must be at least 0, got {value}")
    return value


def check_probability(name: str, value) -> float:
    """A probability such as `p_next`: a finite real number from 0 to 1."""
    if not 0 <= check_finite_number(name, value) <= 1:
        raise ValueError(f"{name} must be a probability, from 0 to 1, got {value}")
    return value


MAX_SEED = 2**32 - 1  # numpy's limit (np.random.seed); torch and Python's random take these seeds too


def check_seed(name: str, value) -> int:
    """A random seed: an int from 0 to MAX_SEED = 2**32 - 1, which every generator here (numpy's too) accepts."""
    value = check_non_negative_int(name, value)
    if value > MAX_SEED:
        raise ValueError(f"{name} must be at most 2**32 - 1 = {MAX_SEED} (numpy's largest seed), got {value}")
    return value


def check_tensor(name: str, value, *, ndim, dim: int | None = None, layout: str) -> torch.Tensor:
    """A floating-point tensor of rank `ndim` (an int or a tuple of allowed ranks) whose last axis is `dim`.

    `layout` is the expected shape in words, e.g. "(batch, text, dim)", shown in every message.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(value).__name__}")
    ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if value.ndim not in ranks:
        wanted = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"{name} must have rank {wanted}, shape {layout}; got rank {value.ndim}, shape {shape_str(value)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if dim is not None and value.shape[-1] != dim:
        raise ValueError(
            f"{name} must have width dim={dim} in its last axis, shape {layout}; got shape {shape_str(value)}"
        )
    for axis, size in enumerate(value.shape):
        if size == 0:
            raise ValueError(f"{name} has an empty axis {axis}: shape {shape_str(value)}, expected {layout}")
    return value


def check_same_dtype(names_and_tensors) -> None:
    """All the given tensors share one dtype (mixing fp16 text with fp32 media is a mistake, not a cast)."""
    (first_name, first), *rest = names_and_tensors
    for name, t in rest:
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has dtype {first.dtype}; use one dtype")


def check_matches_weights(module: str, weight: torch.Tensor, names_and_tensors) -> None:
    """The inputs of a layer live on its weights' device and have their dtype, checked before any computation.

    Under `torch.autocast` for the weights' device type, the autocast dtype is accepted too, and inputs may mix
    the two dtypes (autocast casts each operation's inputs itself; the previous layer's output is often in the
    lower precision). Otherwise every input must have the weights' dtype: mixing is a mistake, not a cast.
    Only metadata is read (no values), so the check costs nothing and `torch.compile` traces it.
    """
    device_type = weight.device.type
    allowed = (weight.dtype,)
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):  # not on "meta"
        allowed = (weight.dtype, torch.get_autocast_dtype(device_type))
    elif len(names_and_tensors) > 1:
        check_same_dtype(names_and_tensors)  # inputs that disagree with each other: name both
    for name, t in names_and_tensors:
        if t.device != weight.device:
            raise ValueError(
                f"{name} is on device {t.device} but the {module}'s weights are on {weight.device}; "
                f"move one of them, e.g. {name}.to({str(weight.device)!r})"
            )
        if t.dtype not in allowed:
            wanted = " or ".join(str(d) for d in allowed)
            raise TypeError(
                f"{name} has dtype {t.dtype} but the {module}'s weights are {weight.dtype}"
                + (f" (under torch.autocast: {wanted})" if len(allowed) > 1 else "")
                + f"; convert one of them, e.g. {name}.to({weight.dtype}) or module.to({t.dtype})"
            )
