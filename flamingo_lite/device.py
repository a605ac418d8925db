"""Choosing where tensors live: the CPU by default, a CUDA GPU when one is present *and* asked for.

Ask by argument (`get_device("cuda")`) or for a whole session with the environment variable
`FLAMINGO_DEVICE` (`cpu`, `cuda`, `cuda:1` or `auto`). `auto` means "CUDA if present, else CPU". The default is
the CPU so that every learner, with or without a GPU, sees the same numbers as the committed lessons.
"""
from __future__ import annotations

import os
import warnings

import torch

ENV_VAR = "FLAMINGO_DEVICE"


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use: `device` if given, else `$FLAMINGO_DEVICE`, else the CPU.

    Asking for CUDA on a machine without it falls back to the CPU with a warning, so a lesson still runs.
    """
    requested = device if device is not None else os.environ.get(ENV_VAR, "cpu")
    if isinstance(requested, torch.device):
        requested = str(requested)
    if not isinstance(requested, str):
        raise TypeError(f"device must be a str or torch.device such as 'cpu' or 'cuda', got {type(requested).__name__}")
    name = requested.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if torch.cuda.is_available():
            return torch.device(name)
        warnings.warn(f"{requested!r} was asked for but CUDA is not available here; using the CPU", stacklevel=2)
        return torch.device("cpu")
    source = "device" if device is not None else f"${ENV_VAR}"
    raise ValueError(f"{source} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {requested!r}")
