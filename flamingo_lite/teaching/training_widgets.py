"""A widget to step through a recorded training run: the loss so far and how far each gate has opened.

Lesson 09 uses it after training: drag the slider (or press play) to move through the logged steps; the
left plot draws the loss up to that step, the right one a bar per cross-attention layer with tanh of its
attention and feed-forward gates. The callbacks are plain functions (`frame`, `render_frame`) so tests can
check the numbers shown are the ones in the history.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .viz.training import DPI, gate_curves, plot_loss


def frame(history: dict, index: int) -> dict:
    """What the widget shows at logged step number `index`: {'step', 'loss', 'attn', 'ff'} (gates as tanh)."""
    steps, attn, ff = gate_curves(history)
    if not 0 <= index < len(steps):
        raise IndexError(f"index must lie in [0, {len(steps)}), the number of logged steps; got {index}")
    return {
        "step": int(steps[index]),
        "loss": float(history["loss"][index]),
        "attn": [float(a) for a in attn[index]],
        "ff": [float(f) for f in ff[index]],
    }


def render_frame(history: dict, index: int):
    """The figure for logged step `index`: the loss up to that step, and the gates as bars. Returns the figure."""
    shown = frame(history, index)
    _, attn, ff = gate_curves(history)
    fig, (ax_loss, ax_gates) = plt.subplots(1, 2, figsize=(8, 2.8), dpi=DPI)
    plot_loss(history, ax=ax_loss, upto=shown["step"])
    ax_loss.set_xlim(0, max(history["step"]))
    ax_loss.set_ylim(0, max(history["loss"]) * 1.1)
    layers = np.arange(len(shown["attn"]))
    ax_gates.bar(layers - 0.2, np.abs(shown["attn"]), width=0.4, label="|tanh(attn_gate)|", color="C1")
    ax_gates.bar(layers + 0.2, np.abs(shown["ff"]), width=0.4, label="|tanh(ff_gate)|", color="C2")
    top = max(float(np.abs(attn).max()), float(np.abs(ff).max()), 0.05) * 1.15
    ax_gates.set_ylim(0, top)
    ax_gates.set_xticks(layers, [f"block {j}" for j in layers])
    ax_gates.set_title(f"step {shown['step']}: loss {shown['loss']:.3f}")
    ax_gates.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def training_stepper(history: dict):
    """An ipywidgets box: a play button and a slider over the logged steps, and the figure for the chosen one."""
    import ipywidgets as widgets
    from IPython.display import display

    count = len(history["step"])
    slider = widgets.IntSlider(value=count - 1, min=0, max=count - 1, step=1, description="logged step", continuous_update=False)
    play = widgets.Play(value=count - 1, min=0, max=count - 1, step=1, interval=300, description="play")
    widgets.jslink((play, "value"), (slider, "value"))
    out = widgets.Output()

    def show(change=None):
        out.clear_output(wait=True)
        with out:
            fig = render_frame(history, slider.value)
            display(fig)
            plt.close(fig)

    slider.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox([play, slider]), out])
