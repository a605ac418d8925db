"""Plots for lessons 01-03: attention heatmaps, latent-to-patch attention, tokens in and out, cross-attention cost.

Every function draws what it is given and returns the matplotlib `Figure`; the numbers it drew stay in the
figure's artists, so a test can read them back and compare them with what the model computes:

- `plot_heatmaps` / `plot_attention`: panel k's `fig.axes[k].images[0].get_array()` is matrix k (NaN cells masked).
- `plot_latent_attention`: `fig.axes[0]` shows the image; for each latent shown, `fig.axes[1 + i].images[-1]`
  holds its weights over the patches laid out on the patch grid, `weights[latent, :n].reshape(grid)`.
- `plot_tokens_in_out`: `fig.axes[0].lines[0].get_xydata()` is the (tokens in, tokens out) pairs.
- `plot_cross_attention_cost`: `fig.axes[0].containers[0]` and `[1]` are the bars without and with the
  resampler; their heights are `cross_attention_score_entries(...)`.

This module imports matplotlib; the layers never import it (see the package docstring).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

NAN_COLOR = "#d62728"  # cells that are NaN are drawn in red, so a broken softmax is impossible to miss


def _to_numpy(x, name: str) -> np.ndarray:
    """A tensor or array as a float64 numpy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(x).__name__}") from None


def _matrix(x, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (rows, columns), got shape {tuple(arr.shape)}")
    return arr


def plot_heatmaps(
    panels: Mapping[str, object],
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    annotate: bool = True,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    divider: int | None = None,
    suptitle: str | None = None,
    xlabel: str = "key j",
    ylabel: str = "query i",
    cell_inches: float = 0.42,
) -> Figure:
    """Matrices side by side, one panel each, on one colour scale: `panels` maps a title to a (rows, cols) matrix.

    NaN cells are drawn in red and written "NaN"; `annotate` writes each value (rounded to 2 decimals) in its
    cell; `divider` draws a vertical line before column `divider` (e.g. between media and latents).
    """
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError("panels must be a non-empty mapping {title: matrix}")
    mats = {title: _matrix(m, f"panels[{title!r}]") for title, m in panels.items()}
    rows, cols = next(iter(mats.values())).shape
    width = max(2.4, cell_inches * cols + 1.0) * len(mats) + 0.8
    height = max(2.0, cell_inches * rows + 1.2)
    fig, axes = plt.subplots(1, len(mats), figsize=(width, height), squeeze=False, constrained_layout=True)
    cm = plt.get_cmap(cmap).with_extremes(bad=NAN_COLOR)
    image = None
    for ax, (title, m) in zip(axes[0], mats.items()):
        data = np.ma.masked_invalid(m)  # NaN -> masked -> drawn in the "bad" colour
        image = ax.imshow(data, cmap=cm, vmin=vmin, vmax=vmax, aspect="equal", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        r, c = m.shape
        xt, yt = range(0, c, -(-c // 16)), range(0, r, -(-r // 16))  # at most 16 labels per axis
        ax.set_xticks(list(xt))
        ax.set_yticks(list(yt))
        ax.set_xticklabels([col_labels[j] for j in xt] if col_labels is not None else list(xt), fontsize=7)
        ax.set_yticklabels([row_labels[i] for i in yt] if row_labels is not None else list(yt), fontsize=7)
        if divider is not None:
            ax.axvline(divider - 0.5, color="white", lw=2)
        if annotate:
            lo = vmin if vmin is not None else np.nanmin(m)
            hi = vmax if vmax is not None else np.nanmax(m)
            for i in range(r):
                for j in range(c):
                    v = m[i, j]
                    if np.isnan(v):
                        ax.text(j, i, "NaN", ha="center", va="center", fontsize=6, color="white")
                    else:
                        dark = (v - lo) < 0.6 * (hi - lo) if hi > lo else True
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if dark else "black")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def plot_attention(weights, *, title: str = "attention weights", **kwargs) -> Figure:
    """One attention matrix (queries, keys) as a heatmap; see `plot_heatmaps` for the keyword arguments."""
    return plot_heatmaps({title: weights}, **kwargs)


def plot_latent_attention(
    image,
    weights,
    grid: tuple[int, int],
    *,
    latents: Sequence[int] | None = None,
    title: str | None = None,
) -> Figure:
    """Where each latent looks: its attention over the image's patches, drawn on the patch grid over the image.

    image: (H, W, 3) in [0, 1]. weights: (L, n + L) for one image (one head, or averaged over heads): row l is
    latent l's attention over the n patches followed by the L latents, as `PerceiverAttention.attention_weights`
    gives it. grid: (rows, cols) of patches, rows * cols = n, in row-major (`(gh gw)`) order.
    Each latent has its own colour scale (its smallest to its largest weight on a patch, written in the title,
    with the share of its attention that goes to the patches rather than the latents); the outlines of
    the shapes are drawn in light blue.
    """
    img = _to_numpy(image, "image")
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {tuple(img.shape)}")
    w = _matrix(weights, "weights")
    if len(grid) != 2 or not all(isinstance(g, (int, np.integer)) and g > 0 for g in grid):
        raise ValueError(f"grid must be (rows, cols) of positive ints, got {grid!r}")
    gh, gw = grid
    n = gh * gw
    num_latents = w.shape[0]
    if w.shape[1] != n + num_latents:
        raise ValueError(
            f"weights must be (L, n + L) with n = {gh}*{gw} = {n} patches, so (L, {n} + L); got shape {tuple(w.shape)}"
        )
    if latents is None:
        latents = range(min(num_latents, 4))
    latents = list(latents)
    for lat in latents:
        if not 0 <= lat < num_latents:
            raise ValueError(f"latent index {lat} is out of range for {num_latents} latents")
    H, W = img.shape[:2]
    extent = (0, W, H, 0)
    fig, axes = plt.subplots(1, 1 + len(latents), figsize=(2.1 * (1 + len(latents)), 2.5), constrained_layout=True)
    axes = np.atleast_1d(axes)
    axes[0].imshow(img, extent=extent, interpolation="nearest")
    for k in range(1, gh):
        axes[0].axhline(k * H / gh, color="white", lw=0.4, alpha=0.6)
    for k in range(1, gw):
        axes[0].axvline(k * W / gw, color="white", lw=0.4, alpha=0.6)
    axes[0].set_title(f"image, {gh}x{gw} patches", fontsize=8)
    lum = img.mean(axis=-1)  # (H, W): outlines of what is drawn, to see where the patches are
    background = np.median(lum)
    ys, xs = np.arange(H) + 0.5, np.arange(W) + 0.5
    for ax, lat in zip(axes[1:], latents):
        patch_weights = w[lat, :n].reshape(gh, gw)  # (gh, gw): the weight on each patch
        lo, hi = patch_weights.min(), patch_weights.max()
        ax.imshow(patch_weights, cmap="magma", extent=extent, interpolation="nearest", vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
        if np.ptp(lum) > 0:
            ax.contour(xs, ys, (np.abs(lum - background) > 0.05).astype(float), levels=[0.5], colors="#7fd6ff", linewidths=0.8)
        to_patches = w[lat, :n].sum()
        ax.set_title(
            f"latent {lat}: {to_patches:.0%} on patches\nper patch {lo:.3f} (dark) to {hi:.3f}", fontsize=7.5
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_tokens_in_out(tokens_in: Sequence[int], tokens_out: Sequence[int], *, title: str | None = None) -> Figure:
    """Tokens per media into the resampler (x axis) against tokens out (y axis), both on log scales."""
    x, y = np.asarray(tokens_in, dtype=float), np.asarray(tokens_out, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"tokens_in and tokens_out must be equal-length lists, got {len(x)} and {len(y)}")
    fig, ax = plt.subplots(figsize=(4.2, 3.0), constrained_layout=True)
    ax.plot(x, y, "o-", color="#e69138", label="Perceiver Resampler out")
    ax.plot(x, x, "--", color="gray", lw=1, label="no resampler (out = in)")
    for k, (xi, yi) in enumerate(zip(x, y)):  # labels alternately above and below, so neighbours do not overlap
        ax.annotate(f"{int(xi)} -> {int(yi)}", (xi, yi), textcoords="offset points", xytext=(0, 6 if k % 2 == 0 else -12),
                    fontsize=7, ha="center")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.margins(x=0.12, y=0.12)  # room for the labels at both ends
    ax.set_xlabel("visual tokens in, per media (n)", fontsize=8)
    ax.set_ylabel("visual tokens out, per media", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title or "any number in, a fixed number out", fontsize=9)
    return fig


def cross_attention_score_entries(text_len: int, num_media: int, tokens_per_media: int, heads: int = 1) -> int:
    """Entries in the language model's cross-attention score matrix for one layer: text_len x (num_media * tokens).

    Each of `heads` heads has its own (text_len, num_media * tokens_per_media) matrix.
    """
    for name, v in (("text_len", text_len), ("num_media", num_media), ("tokens_per_media", tokens_per_media), ("heads", heads)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(heads) * int(text_len) * int(num_media) * int(tokens_per_media)


def plot_cross_attention_cost(
    tokens_in: Sequence[int], num_latents: int, *, text_len: int, num_media: int, title: str | None = None
) -> Figure:
    """Score-matrix entries per head in one LM cross-attention layer, without and with the resampler.

    For each number of visual tokens per media in `tokens_in`: one bar for attending to all of them, one for
    attending to `num_latents` resampled tokens instead (log scale).
    """
    tokens_in = [int(t) for t in tokens_in]
    without = [cross_attention_score_entries(text_len, num_media, t) for t in tokens_in]
    with_r = [cross_attention_score_entries(text_len, num_media, num_latents) for _ in tokens_in]
    fig, ax = plt.subplots(figsize=(5.0, 3.0), constrained_layout=True)
    pos = np.arange(len(tokens_in))
    ax.bar(pos - 0.2, without, width=0.4, color="#9fc5e8", label="all visual tokens")
    ax.bar(pos + 0.2, with_r, width=0.4, color="#e69138", label=f"{num_latents} resampled latents")
    for p, a, b in zip(pos, without, with_r):
        ax.text(p - 0.2, a, f"x{a / b:.0f}" if a >= b else f"x{a / b:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(bottom=min(without + with_r) / 10, top=max(without + with_r) * 3)  # every bar visibly tall
    ax.set_xticks(pos)
    ax.set_xticklabels([str(t) for t in tokens_in], fontsize=8)
    ax.set_xlabel("visual tokens per media from the vision encoder", fontsize=8)
    ax.set_ylabel("score entries per head", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title or f"LM cross-attention: {text_len} text tokens x {num_media} media", fontsize=9)
    return fig
