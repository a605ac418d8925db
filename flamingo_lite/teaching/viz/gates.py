"""Pictures of the tanh gates of `GatedCrossAttentionBlock` (paper, Sec. 2.2, Fig. 4 and Fig. 6).

The block adds `tanh(alpha) * f(x)` to the residual stream. At `alpha = 0` the added term is exactly zero, so the
block is the identity, while the slope `d tanh / d alpha = 1 - tanh(alpha)^2` is at its largest (1): the gate
is closed but learns fastest. These plots show the curve, its slope, and how far the block's output moves
away from its input as the gate opens.
"""
from __future__ import annotations

import contextlib

import matplotlib.pyplot as plt
import numpy as np
import torch

DPI = 80
GATE_NAMES = ("attn_gate", "ff_gate")


def tanh_and_derivative(alphas) -> tuple:
    """tanh(alpha) and its derivative 1 - tanh(alpha)^2, as numpy arrays, for any array of alphas."""
    alphas = np.asarray(alphas, dtype=np.float64)
    gate = np.tanh(alphas)
    return gate, 1.0 - gate**2


@contextlib.contextmanager
def gates_set_to(block, alpha: float, names=GATE_NAMES):
    """Temporarily set the block's gate parameters to `alpha` (restored afterwards, even on error)."""
    params = [getattr(block, name) for name in names]
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.fill_(float(alpha))
        yield block
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)


@torch.no_grad()
def block_movement(block, inputs, alpha: float) -> float:
    """Mean |block(x) - x| with both gates set to `alpha`: how far the block moves the residual stream.

    inputs: (x, media, media_locations) for the block. The block's own gates are left as they were.
    """
    x = inputs[0]
    with gates_set_to(block, alpha):
        out = block(*inputs)  # (b, n, d)
    return float((out - x).abs().mean())


def movement_curve(block, inputs, alphas) -> np.ndarray:
    """`block_movement` for each alpha in `alphas`: (len(alphas),) floats."""
    return np.array([block_movement(block, inputs, float(a)) for a in alphas])


def tanh_figure(alpha: float | None = None, limit: float = 3.0):
    """tanh(alpha) and its derivative on [-limit, limit]; a marker at `alpha` if given.

    The figure's first two lines hold the curves (x data: alphas; y data: tanh, then 1 - tanh^2).
    """
    alphas = np.linspace(-limit, limit, 241)
    gate, slope = tanh_and_derivative(alphas)
    fig, ax = plt.subplots(figsize=(4.6, 3.0), dpi=DPI)
    ax.plot(alphas, gate, color="#2a9d8f", linewidth=2, label="tanh(α): how open the gate is")
    ax.plot(alphas, slope, color="#e76f51", linewidth=2, linestyle="--", label="1 - tanh(α)²: its slope")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    if alpha is not None:
        g, s = tanh_and_derivative([alpha])
        ax.plot([alpha], g, "o", color="#2a9d8f")
        ax.plot([alpha], s, "o", color="#e76f51")
    ax.annotate("α = 0: closed (tanh = 0)\nbut steepest (slope = 1)", xy=(0, 0), xytext=(-2.9, -0.45), fontsize=8,
                arrowprops=dict(arrowstyle="->", color="black", linewidth=0.8))
    ax.set_xlabel("gate parameter α")
    ax.set_ylim(-1.1, 1.1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("the tanh gate", fontsize=10)
    fig.tight_layout()
    return fig


def gate_figure(block, inputs, alpha: float, limit: float = 3.0, num: int = 25):
    """Two panels: tanh and its slope with a marker at `alpha`; mean |block(x) - x| against alpha, marker at `alpha`.

    Returns (figure, alphas, movements): the right panel's first line holds exactly (alphas, movements).
    """
    alphas = np.linspace(-limit, limit, num)
    moves = movement_curve(block, inputs, alphas)
    here = block_movement(block, inputs, alpha)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 2.9), dpi=DPI)
    curve = np.linspace(-limit, limit, 241)
    gate, slope = tanh_and_derivative(curve)
    left.plot(curve, gate, color="#2a9d8f", linewidth=2, label="tanh(α)")
    left.plot(curve, slope, color="#e76f51", linewidth=2, linestyle="--", label="1 - tanh(α)²")
    g, s = tanh_and_derivative([alpha])
    left.plot([alpha], g, "o", color="#2a9d8f")
    left.plot([alpha], s, "o", color="#e76f51")
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_xlabel("gate α")
    left.set_ylim(-1.1, 1.1)
    left.legend(fontsize=8, loc="upper left")
    left.set_title(f"α = {alpha:.2f}, tanh(α) = {float(g[0]):.3f}", fontsize=10)
    right.plot(alphas, moves, color="#264653", linewidth=2, marker=".")
    right.plot([alpha], [here], "o", color="#e76f51", markersize=8)
    right.set_xlabel("gate α (both gates)")
    right.set_ylabel("mean |block(x) - x|")
    right.set_ylim(bottom=0)
    right.set_title(f"the block moves x by {here:.4f}", fontsize=10)
    fig.tight_layout()
    return fig, alphas, moves
