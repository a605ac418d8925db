"""The work each view of immediate-media cross-attention does, drawn for one row of a batch (lesson 10).

Two grids of text tokens (rows) against media latents (columns, `j % m` of media `j // m`):

* the **mask view** (lesson 05) computes a score in *every* cell, then throws away the ones the mask forbids;
* the **segment view** (`flamingo_lite.segments`) computes scores only where its layout sends each token: the
  latents of the one media its chunk attends to.

The segment grid is read off `segment_layout` (the index tensors the layer uses), not off the mask, so a test can
check that the two views keep exactly the same cells.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from ...masks import cross_attention_mask
from ...segments import segment_layout

NOT_COMPUTED, THROWN_AWAY, USED = 0, 1, 2
WORK_CMAP = ListedColormap(["#ffffff", "#c9c9c9", "#2a9d8f"])  # not computed, computed then masked, used


def work_grids(media_locations: torch.Tensor, num_media: int, num_latents: int, row: int = 0):
    """(mask_view, segment_view): two (n, t*m) int arrays of NOT_COMPUTED / THROWN_AWAY / USED for batch row `row`."""
    if media_locations.ndim != 2 or media_locations.dtype != torch.bool:
        raise ValueError(f"media_locations must be a (batch, text) bool tensor, got {tuple(media_locations.shape)} "
                         f"of {media_locations.dtype}")
    b, n = media_locations.shape
    if not 0 <= row < b:
        raise ValueError(f"row must be in 0..{b - 1}, got {row}")
    locations = media_locations.cpu()
    mask = cross_attention_mask(locations, num_media, num_latents, True)[row].numpy()  # (n, t*m) bool
    mask_view = np.where(mask, USED, THROWN_AWAY)  # (n, t*m): every score computed

    layout = segment_layout(locations, num_media)
    segment_view = np.full((n, num_media * num_latents), NOT_COMPUTED)  # (n, t*m)
    for i in range(n):
        slot = int(layout.token_slot[row * n + i])
        if slot == layout.num_chunks * layout.chunk:
            continue  # text before the first media: no chunk, no scores
        media = int(layout.chunk_media[slot // layout.chunk]) - row * num_media  # the media this token's chunk sees
        segment_view[i, media * num_latents:(media + 1) * num_latents] = USED
    return mask_view, segment_view


def plot_mask_vs_segments(media_locations, num_media: int, num_latents: int, *, row: int = 0, tokens=None, dpi: int = 80):
    """Side by side: the scores the mask view computes (and throws away) and the ones the segment view computes."""
    mask_view, segment_view = work_grids(media_locations, num_media, num_latents, row)
    n = mask_view.shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.28 * n + 1.6), dpi=dpi, sharey=True)
    titles = [
        f"mask view: {mask_view.size} scores computed,\n{int((mask_view == THROWN_AWAY).sum())} of them thrown away",
        f"segment view: {int((segment_view == USED).sum())} scores computed,\nnone thrown away",
    ]
    for ax, grid, title in zip(axes, (mask_view, segment_view), titles):
        ax.imshow(grid, cmap=WORK_CMAP, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        for j in range(1, num_media):
            ax.axvline(j * num_latents - 0.5, color="black", lw=0.8)
        ax.set_xticks([j * num_latents + (num_latents - 1) / 2 for j in range(num_media)])
        ax.set_xticklabels([f"image {j + 1}" for j in range(num_media)], fontsize=8)
    labels = tokens if tokens is not None else [f"token {i}" for i in range(n)]
    axes[0].set_yticks(range(n))
    axes[0].set_yticklabels(labels, fontsize=8)
    fig.text(0.5, 0.01, "teal: score used   grey: computed, then masked away   white: never computed", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
