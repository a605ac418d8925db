"""Pictures of the cross-attention mask: which word may look at which media latent.

Every picture here is drawn from the mask functions in `flamingo_lite.masks` (the ones the layers call), so what
a learner sees is exactly the mask the model uses. Rows are text tokens, labelled with their words and their
text time; columns are media latents, grouped per media (`image 1`, `image 2`, ...) with a small thumbnail of
each image when the words after its `<image>` marker name a colour and a shape ("a red circle").

Column `j` is latent `j % m` of media `j // m`, the order of the keys `b (t m) d` in `MaskedCrossAttention`.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from ...masks import (
    MEDIA_TOKEN,
    cross_attention_mask,
    media_locations_from_tokens,
    rows_without_media,
    text_time,
    text_to_media_mask,
    tokenize_interleaved,
)

MASK_CMAP = ListedColormap(["#ececec", "#2a9d8f"])  # False: light grey, True: teal
DPI = 80

COLOURS = {
    "red": (0.85, 0.15, 0.15),
    "blue": (0.12, 0.47, 0.71),
    "green": (0.17, 0.63, 0.17),
    "yellow": (0.95, 0.80, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "purple": (0.58, 0.40, 0.74),
    "black": (0.10, 0.10, 0.10),
    "pink": (0.95, 0.55, 0.75),
}
SHAPES = ("circle", "square", "triangle")


@dataclass
class SequenceMask:
    """An interleaved sequence and everything the mask functions make of it (one row, no batch axis)."""

    tokens: list  # n words, `<image>` markers included
    media_locations: torch.Tensor  # (n,) bool, True at each <image>
    text_time: torch.Tensor  # (n,) long, the number of <image> markers at or before each token
    per_media: torch.Tensor  # (n, t) bool, True = the token may attend to that media
    mask: torch.Tensor  # (n, t*m) bool, the mask MaskedCrossAttention uses
    num_media: int
    num_latents: int
    only_attend_immediate_media: bool

    @property
    def captions(self) -> list:
        return media_captions(self.tokens)


def sequence_mask(sequence, num_latents: int = 2, only_attend_immediate_media: bool = True, num_media=None) -> SequenceMask:
    """Run an interleaved sequence through the mask functions: words -> media_locations -> text time -> mask.

    sequence: a string such as "<image> a red circle <image> a blue square", or a list of tokens.
    num_media: how many media the model is given; by default one per `<image>` marker (at least 1).
    """
    tokens = tokenize_interleaved(sequence) if isinstance(sequence, str) else [str(tok) for tok in sequence]
    if not isinstance(num_latents, int) or isinstance(num_latents, bool) or num_latents < 1:
        raise ValueError(f"num_latents must be a positive int, got {num_latents!r}")
    locations = media_locations_from_tokens(tokens).reshape(1, len(tokens))  # (1, n)
    if num_media is None:
        num_media = max(1, int(locations.sum()))
    times = text_time(locations)  # (1, n)
    per_media = text_to_media_mask(times, num_media, only_attend_immediate_media)  # (1, n, t)
    mask = cross_attention_mask(locations, num_media, num_latents, only_attend_immediate_media)  # (1, n, t*m)
    return SequenceMask(
        tokens=tokens,
        media_locations=locations[0],
        text_time=times[0],
        per_media=per_media[0],
        mask=mask[0],
        num_media=num_media,
        num_latents=num_latents,
        only_attend_immediate_media=bool(only_attend_immediate_media),
    )


def media_captions(tokens) -> list:
    """The words after each `<image>` marker, up to the next one: ['a red circle', 'a blue square']."""
    captions = []
    for tok in tokens:
        if tok == MEDIA_TOKEN:
            captions.append([])
        elif captions:
            captions[-1].append(tok)
    return [" ".join(words) for words in captions]


def shape_thumbnail(caption: str, size: int = 32) -> np.ndarray:
    """A small picture drawn from a caption's colour and shape words: (size, size, 3) floats in [0, 1].

    "a red circle" draws a red disc; an unknown colour is grey, an unknown shape a diamond.
    """
    words = caption.lower().split()
    colour = next((COLOURS[w] for w in words if w in COLOURS), (0.55, 0.55, 0.55))
    shape = next((w for w in words if w in SHAPES), "diamond")
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1  # coordinates in [-1, 1]
    if shape == "circle":
        inside = xx**2 + yy**2 <= 0.72**2
    elif shape == "square":
        inside = (np.abs(xx) <= 0.62) & (np.abs(yy) <= 0.62)
    elif shape == "triangle":
        inside = (yy <= 0.65) & (yy >= -0.7 + 2.2 * np.abs(xx))
    else:
        inside = np.abs(xx) + np.abs(yy) <= 0.75
    image = np.ones((size, size, 3))  # white background
    image[inside] = colour
    return image


def _label_rows(ax, tokens, times):
    labels = [f"{tok}  [{int(tt)}]" for tok, tt in zip(tokens, times)] if times is not None else list(tokens)
    ax.set_yticks(range(len(tokens)))
    ax.set_yticklabels(labels, fontsize=9, family="monospace")
    for label, tok in zip(ax.get_yticklabels(), tokens):
        if tok == MEDIA_TOKEN:
            label.set_fontweight("bold")


def _label_media_columns(ax, num_media, num_latents, captions=None, thumbnails=True):
    """Group the columns per media: separators, one label per media, thumbnails above the groups."""
    centres = [i * num_latents + (num_latents - 1) / 2 for i in range(num_media)]
    ax.set_xticks(centres)
    ax.set_xticklabels([f"image {i + 1}\nlatents {i * num_latents}-{(i + 1) * num_latents - 1}" for i in range(num_media)], fontsize=8)
    ax.set_xticks([j for j in range(num_media * num_latents)], minor=True)
    ax.tick_params(axis="x", which="minor", length=2)
    for i in range(1, num_media):
        ax.axvline(i * num_latents - 0.5, color="black", linewidth=1.5)
    if thumbnails and captions:
        zoom = 0.55 if num_latents >= 2 else 0.4
        for i, caption in enumerate(captions[:num_media]):
            box = OffsetImage(shape_thumbnail(caption), zoom=zoom)
            ab = AnnotationBbox(box, (centres[i], 1.0), xycoords=("data", "axes fraction"), box_alignment=(0.5, 0.0), frameon=False, pad=0.1)
            ax.add_artist(ab)


def draw_matrix(
    ax,
    values,
    tokens,
    num_latents: int,
    *,
    times=None,
    captions=None,
    thumbnails: bool = True,
    title: str | None = None,
    cmap=None,
    vmin=None,
    vmax=None,
):
    """Draw an (n, t*m) matrix (a mask or attention weights) with words on the rows and media latents on the columns.

    Returns the AxesImage; `ax.images[0].get_array()` holds exactly `values` (bool masks as 0/1).
    """
    values = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    if values.ndim != 2 or values.shape[0] != len(tokens) or values.shape[1] % num_latents:
        raise ValueError(
            f"values must have shape (n, t*m) = ({len(tokens)}, t*{num_latents}) for {len(tokens)} tokens, "
            f"got {tuple(values.shape)}"
        )
    is_mask = values.dtype == torch.bool
    array = values.numpy().astype(np.float64)  # (n, t*m)
    if is_mask:
        cmap, vmin, vmax = MASK_CMAP, 0, 1
    image = ax.imshow(array, cmap=cmap or "Blues", vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    n, tm = array.shape
    # thin white lines between cells
    for j in range(1, tm):
        ax.axvline(j - 0.5, color="white", linewidth=0.6)
    for i in range(1, n):
        ax.axhline(i - 0.5, color="white", linewidth=0.6)
    _label_rows(ax, tokens, times)
    _label_media_columns(ax, tm // num_latents, num_latents, captions, thumbnails)
    if title:
        ax.set_title(title, fontsize=10, pad=34 if (thumbnails and captions) else 6)
    return image


def mask_figure(
    sequence,
    num_latents: int = 2,
    only_attend_immediate_media: bool = True,
    *,
    thumbnails: bool = True,
    title: str | None = None,
):
    """The cross-attention mask of one interleaved sequence, as `MaskedCrossAttention` builds it.

    Rows: the words, with their text time in brackets. Columns: media latents grouped per image.
    Teal = may attend, grey = masked. Returns the figure; its axes' image array equals
    `cross_attention_mask(media_locations, num_media, num_latents, only_attend_immediate_media)[0]`.
    """
    sm = sequence_mask(sequence, num_latents, only_attend_immediate_media)
    n, tm = sm.mask.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 2.2 + 0.42 * tm), 1.3 + 0.3 * n), dpi=DPI)  # wide enough for the title
    mode = "only_attend_immediate_media=True" if sm.only_attend_immediate_media else "only_attend_immediate_media=False"
    draw_matrix(ax, sm.mask, sm.tokens, num_latents, times=sm.text_time, captions=sm.captions, thumbnails=thumbnails, title=title or mode)
    ax.set_ylabel("text token  [text time]", fontsize=9)
    fig.tight_layout()
    return fig


def masks_side_by_side(panels, tokens, num_latents: int, *, times=None, captions=None, thumbnails: bool = True, cmap=None, vmax=None):
    """Several (n, t*m) matrices for the same words, side by side: `panels` is a list of (title, values).

    Bool panels are drawn as masks (teal / grey), float panels as weights (0 to `vmax`, default their max).
    """
    if not panels:
        raise ValueError("panels must hold at least one (title, values) pair")
    tm = panels[0][1].shape[-1]
    n = len(tokens)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (2.0 + 0.42 * tm) + 0.6, 1.3 + 0.3 * n), dpi=DPI, squeeze=False)
    for k, (ax, (panel_title, values)) in enumerate(zip(axes[0], panels)):
        values = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(values)
        top = vmax if vmax is not None else (float(values.max()) if values.numel() and values.dtype != torch.bool else 1.0)
        image = draw_matrix(
            ax, values, tokens, num_latents, times=times, captions=captions, thumbnails=thumbnails,
            title=panel_title, cmap=cmap, vmin=0.0, vmax=max(top, 1e-6),
        )
        if k:
            ax.set_yticklabels([])
        if values.dtype != torch.bool:
            fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    fig.tight_layout()
    return fig


def weights_and_mask_figure(
    weights, mask, tokens, num_latents: int, *, times=None, captions=None, head: int | None = None, title: str | None = None
):
    """Attention weights (n, t*m) next to the mask (n, t*m) they must respect.

    `weights` is one head's (n, t*m) matrix, or (h, n, t*m) with `head` picking one. On the weights panel, cells
    the mask forbids are hatched grey when their weight is zero and outlined in red when it is not, so a broken
    layer is easy to spot.
    `title` names the weights panel (default: "attention weights", with the head if given).
    """
    weights = weights.detach().cpu() if isinstance(weights, torch.Tensor) else torch.as_tensor(weights)
    if weights.ndim == 3:
        weights = weights[0 if head is None else head]  # (n, t*m)
    mask = mask.detach().cpu().bool()
    name = title or (f"attention weights, head {head}" if head is not None else "attention weights")
    fig = masks_side_by_side(
        [(name, weights), ("mask (teal = may attend)", mask)], tokens, num_latents, times=times, captions=captions, cmap="Blues", vmax=float(weights.max()) if weights.numel() else 1.0
    )
    ax = fig.axes[0]
    for i, j in (~mask).nonzero().tolist():
        if weights[i, j] != 0:  # a weight the mask forbids: outline it in red
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5, gid="leak"))
        else:  # forbidden and zero, as it must be: hatched in grey
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#bbbbbb", linewidth=0, gid="masked"))
    return fig


def figure_image_arrays(fig) -> list:
    """The data of every image drawn in a figure, one (rows, cols) array per image, in axes order (for tests)."""
    return [np.asarray(im.get_array()) for ax in fig.axes for im in ax.images]


def describe_mask(sm: SequenceMask) -> list:
    """One line per word saying which media it sees: ['<image> [1] -> image 1', 'a [1] -> image 1', ...]."""
    lines = []
    before_first = rows_without_media(sm.media_locations.reshape(1, -1))[0]  # (n,)
    for i, tok in enumerate(sm.tokens):
        seen = [f"image {k + 1}" for k in range(sm.num_media) if bool(sm.per_media[i, k])]
        if before_first[i]:
            what = "nothing (before the first image)"
        else:
            what = ", ".join(seen) if seen else "nothing"
        lines.append(f"{tok} [{int(sm.text_time[i])}] -> {what}")
    return lines
