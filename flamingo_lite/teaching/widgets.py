"""Interactive controls for the lessons (ipywidgets): poke at the mask and at the gate, and watch them change.

Each widget is a thin shell around plain functions that return `(figure, readout_text)`; those callbacks are
what the unit tests call, and the notebooks call them too, so the numbers nbval checks are the ones the widgets
show. The layers never import this module.

* `mask_explorer(sequence)`: a toggle for `only_attend_immediate_media` and a text box for the sequence redraw the
  cross-attention mask (lesson 04). Callback: `mask_view(sequence, only_attend_immediate_media, num_latents)`.
* `gate_explorer()`: a slider for the gate value alpha shows tanh(alpha) and how far a `GatedCrossAttentionBlock`
  moves its input (lesson 06). Callback: `gate_view(alpha, block, inputs)`.
"""
from __future__ import annotations

import base64
import html
import io

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..gated import GatedCrossAttentionBlock
from ..masks import media_locations_from_tokens, tokenize_interleaved
from .viz import gates as gate_plots
from .viz import masks as mask_plots

READOUT_CLASS = "flamingo-readout"
DEFAULT_SEQUENCE = "<image> a red circle <image> a blue square"
MAX_TOKENS = 40  # longer sequences make a mask picture too tall to read


# ----------------------------------------------------------------------------------------------------------------
# plain callbacks (unit-tested; the widgets only display what they return)


def mask_readout(sequence, only_attend_immediate_media: bool = True, num_latents: int = 2) -> str:
    """A short text summary of the mask: the mode, then one line per word saying which media it sees."""
    sm = mask_plots.sequence_mask(sequence, num_latents, only_attend_immediate_media)
    markers = int(sm.media_locations.sum())
    head = (
        f"only_attend_immediate_media={sm.only_attend_immediate_media}: {len(sm.tokens)} tokens, "
        f"{markers} <image> marker{'' if markers == 1 else 's'}, {sm.num_media} media x {num_latents} latents"
    )
    if markers == 0:  # the picture still draws one media, so say why no word can see it
        head += "\n(no <image> marker: every word comes before the first image, so none sees the media)"
    return "\n".join([head, *mask_plots.describe_mask(sm)])


def mask_view(sequence=DEFAULT_SEQUENCE, only_attend_immediate_media: bool = True, num_latents: int = 2):
    """The mask figure and its text readout for one sequence: `(figure, readout_text)`.

    The figure's image array is `flamingo_lite.masks.cross_attention_mask(...)` for this sequence and mode.
    An empty sequence gives a figure that says so; more than MAX_TOKENS tokens is a ValueError (the widget shows
    its message in the readout).
    """
    tokens = tokenize_interleaved(sequence)
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"the sequence has {len(tokens)} tokens; the picture stays readable up to {MAX_TOKENS}")
    if not tokens:
        fig, ax = plt.subplots(figsize=(3.5, 1.2), dpi=mask_plots.DPI)
        ax.axis("off")
        ax.text(0.5, 0.5, "type a sequence such as\n<image> a red circle", ha="center", va="center")
        return fig, "the sequence is empty: type words and <image> markers"
    fig = mask_plots.mask_figure(sequence, num_latents, only_attend_immediate_media)
    return fig, mask_readout(sequence, only_attend_immediate_media, num_latents)


def gate_setup(dim: int = 16, seed: int = 0, only_attend_immediate_media: bool = True):
    """A small seeded `GatedCrossAttentionBlock` and inputs for it: `(block, (x, media, media_locations))`.

    The inputs are the sequence "<image> a red circle <image> a blue square" (8 tokens, 2 media of 4 latents).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded weights, without touching the caller's random state
        torch.manual_seed(seed)
        block = GatedCrossAttentionBlock(dim=dim, dim_head=8, heads=2, only_attend_immediate_media=only_attend_immediate_media)
    locations = media_locations_from_tokens(tokenize_interleaved(DEFAULT_SEQUENCE)).unsqueeze(0)  # (1, n)
    x = torch.randn(1, locations.shape[1], dim, generator=g)  # (1, n, d)
    media = torch.randn(1, 2, 4, dim, generator=g)  # (1, t, m, d)
    return block, (x, media, locations)


def gate_readout(alpha: float, block=None, inputs=None) -> str:
    """How open the gate is and how far the block moves its input, for both gates set to `alpha`."""
    if block is None or inputs is None:
        block, inputs = gate_setup()
    move = gate_plots.block_movement(block, inputs, alpha)
    return (
        f"gate alpha = {alpha:.2f}, tanh(alpha) = {np.tanh(alpha):.4f}, slope 1 - tanh^2 = {1 - np.tanh(alpha) ** 2:.4f}\n"
        f"mean |block(x) - x| = {move:.4f}" + ("  (exactly the identity)" if move == 0.0 else "")
    )


def gate_view(alpha: float = 0.0, block=None, inputs=None):
    """The gate figure and its text readout for both gates set to `alpha`: `(figure, readout_text)`."""
    if block is None or inputs is None:
        block, inputs = gate_setup()
    fig, _, _ = gate_plots.gate_figure(block, inputs, alpha)
    return fig, gate_readout(alpha, block, inputs)


# ----------------------------------------------------------------------------------------------------------------
# the widgets


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (and closed, so it is not shown twice)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    plt.close(fig)
    return buffer.getvalue()


def readout_html(text: str) -> str:
    return f'<pre style="margin:0; font-size:12px; line-height:1.35">{html.escape(text)}</pre>'


def _show(output, readout, view):
    """Run a callback and show its figure (as a PNG) in `output` and its text in `readout`."""
    try:
        fig, text = view()
    except (ValueError, TypeError) as error:  # a half-typed sequence should not break the widget
        readout.value = readout_html(f"cannot draw this: {error}")
        return
    png = base64.b64encode(figure_png(fig)).decode("ascii")
    # set the Output's content directly: works in a kernel and in plain Python (tests) alike
    output.outputs = ({"output_type": "display_data", "data": {"image/png": png, "text/plain": "<figure>"}, "metadata": {}},)
    readout.value = readout_html(text)


def mask_explorer(sequence: str = DEFAULT_SEQUENCE, num_latents: int = 2, only_attend_immediate_media: bool = True):
    """Toggle `only_attend_immediate_media` and edit the sequence; the mask and the readout redraw.

    Returns a VBox holding a ToggleButton (description "only_attend_immediate_media"), a Text box, an Output
    with the mask as a PNG image, and an HTML readout with the CSS class "flamingo-readout".
    """
    toggle = widgets.ToggleButton(
        value=bool(only_attend_immediate_media),
        description="only_attend_immediate_media",
        tooltip="on: each word sees only the latest image before it; off: every image before it",
        layout=widgets.Layout(width="auto"),
    )
    text = widgets.Text(value=sequence, description="sequence", continuous_update=True, layout=widgets.Layout(width="32em"))
    output = widgets.Output()
    readout = widgets.HTML()
    readout.add_class(READOUT_CLASS)

    def redraw(_change=None):
        _show(output, readout, lambda: mask_view(text.value, toggle.value, num_latents))

    toggle.observe(redraw, names="value")
    text.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([toggle, text]), output, readout])


def gate_explorer(alpha: float = 0.0, dim: int = 16, seed: int = 0, block=None, inputs=None):
    """Slide the gate value alpha (both gates of a small block); the curves and the readout redraw.

    Returns a VBox holding a FloatSlider (description "gate"), an Output with the figure as a PNG image, and an
    HTML readout with the CSS class "flamingo-readout" stating mean |block(x) - x|.
    """
    if block is None or inputs is None:
        block, inputs = gate_setup(dim=dim, seed=seed)
    slider = widgets.FloatSlider(value=float(alpha), min=-3.0, max=3.0, step=0.1, description="gate", readout_format=".2f", continuous_update=False)
    output = widgets.Output()
    readout = widgets.HTML()
    readout.add_class(READOUT_CLASS)

    def redraw(_change=None):
        _show(output, readout, lambda: gate_view(slider.value, block, inputs))

    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, output, readout])
