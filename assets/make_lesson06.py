"""Draw the picture of lesson 06: `python assets/make_lesson06.py`.

- gated_block.png: inside one gated xattn-dense block (the paper's Fig. 4): the text x asks, the media latents
  answer, and each of the two updates passes a tanh gate before it is added back to x.
Colours as in flamingo_architecture.png: frozen parts blue, trained parts orange, data grey.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flamingo_lite.files import write_figure_atomic  # noqa: E402

FROZEN, TRAINED, GATE, DATA, TEXT = "#cfe2f3", "#f9cb9c", "#fff2cc", "#eeeeee", "#333333"
HERE = Path(__file__).resolve().parent


def box(ax, x, y, w, h, label, color, fontsize=9, weight="normal"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#555555", lw=1))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize, color=TEXT, weight=weight)


def arrow(ax, start, end, color="#555555"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color, lw=1.2))


def line(ax, points, color="#555555"):
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=color, lw=1.2)


def plus(ax, x, y):
    """The residual addition, a circled +, centred at (x, y)."""
    ax.add_patch(Circle((x, y), 0.22, fc="white", ec="#555555", lw=1.2))
    ax.text(x, y, "+", ha="center", va="center", fontsize=12)


def gated_block():
    fig, ax = plt.subplots(figsize=(8.6, 6.4), dpi=90)
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 9.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("inside a gated xattn-dense block (the paper's Fig. 4): each update passes a tanh gate", fontsize=10.5)
    trunk = 3.0  # the x of the text stream, the residual path
    box(ax, trunk - 1.3, 0.3, 2.6, 0.7, "text x  (b, n, d)", DATA)
    box(ax, 8.2, 2.0, 3.3, 0.9, "media latents (b, t, m, d)\nfrom the resampler", DATA, fontsize=8.5)
    # the cross-attention branch
    box(ax, 4.35, 2.0, 3.2, 0.9, "masked cross-attention\nq from x; k, v from media", TRAINED, fontsize=8)
    box(ax, 4.35, 3.3, 3.2, 0.6, "× tanh(attn_gate)", GATE, fontsize=8.5)
    line(ax, [(trunk, 1.0), (trunk, 1.5), (5.95, 1.5)])
    arrow(ax, (5.95, 1.5), (5.95, 1.98))
    arrow(ax, (8.18, 2.45), (7.57, 2.45))
    arrow(ax, (5.95, 2.9), (5.95, 3.28))
    line(ax, [(5.95, 3.9), (5.95, 4.3)])
    arrow(ax, (5.95, 4.3), (trunk + 0.24, 4.3))
    line(ax, [(trunk, 1.5), (trunk, 4.08)])
    plus(ax, trunk, 4.3)
    ax.text(trunk - 0.4, 4.3, "y", ha="right", va="center", fontsize=10, style="italic")
    # the feed-forward branch
    box(ax, 4.35, 5.2, 3.2, 0.7, "feed-forward\nLayerNorm, widen, GELU, narrow", TRAINED, fontsize=7.5)
    box(ax, 4.35, 6.25, 3.2, 0.6, "× tanh(ff_gate)", GATE, fontsize=8.5)
    line(ax, [(trunk, 4.52), (trunk, 4.8), (5.95, 4.8)])
    arrow(ax, (5.95, 4.8), (5.95, 5.18))
    arrow(ax, (5.95, 5.9), (5.95, 6.23))
    line(ax, [(5.95, 6.85), (5.95, 7.2)])
    arrow(ax, (5.95, 7.2), (trunk + 0.24, 7.2))
    line(ax, [(trunk, 4.8), (trunk, 6.98)])
    plus(ax, trunk, 7.2)
    ax.text(trunk - 0.4, 7.2, "z", ha="right", va="center", fontsize=10, style="italic")
    box(ax, trunk - 1.3, 8.1, 2.6, 0.7, "frozen LM layer", FROZEN)
    arrow(ax, (trunk, 7.42), (trunk, 8.08))
    ax.text(
        8.0, 6.6,
        "y = x + tanh(attn_gate) · xattn(x, media)\n"
        "z = y + tanh(ff_gate) · ff(y)\n\n"
        "both gates start at 0, and tanh(0) = 0:\n"
        "z = x, the block is the identity, and the\n"
        "frozen LM sees what it saw in pretraining",
        ha="left", va="center", fontsize=8.5, family="monospace",
    )
    return fig


if __name__ == "__main__":
    fig = gated_block()
    write_figure_atomic(fig, HERE / "gated_block.png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print("wrote assets/gated_block.png")
