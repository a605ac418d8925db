"""Draw the picture of lesson 09: `python assets/make_lesson09.py`.

- training_stages.png: the two stages of training in the paper's order (the language model on text alone, then
  Flamingo's new parts with everything else frozen), what receives updates in each, and the next-token targets:
  each position predicts the token after it, and padding is no target.
Colours as in flamingo_architecture.png: frozen parts blue, trained parts orange, data grey.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flamingo_lite.files import write_figure_atomic  # noqa: E402

FROZEN, TRAINED, DATA, TEXT, GRAD = "#cfe2f3", "#f9cb9c", "#eeeeee", "#333333", "#b45f06"
HERE = Path(__file__).resolve().parent


def box(ax, x, y, w, h, label, color, fontsize=8.5, weight="normal"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#555555", lw=1))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize, color=TEXT, weight=weight)


def arrow(ax, start, end, color="#555555", style="-"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color, lw=1.2, linestyle=style))


def stage(ax, x0, title, parts, height=6.9):
    """A column of boxes, bottom to top: (label, colour), spread over the same height whatever their number."""
    ax.text(x0 + 1.6, 3.1 + height, title, ha="center", va="center", fontsize=9.5, weight="bold")
    step = height / (len(parts) - 1)
    for k, (label, color) in enumerate(parts):
        y = 1.6 + k * step
        box(ax, x0, y, 3.2, 0.75, label, color)
        if k:
            arrow(ax, (x0 + 1.6, y - 0.4), (x0 + 1.6, y - 0.02))


def training_stages():
    fig, ax = plt.subplots(figsize=(10.2, 6.2), dpi=90)
    ax.set_xlim(0, 15.5)
    ax.set_ylim(-2.4, 10.8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("training in the paper's order: the language model first, on text alone; then only the new parts",
                 fontsize=10.5)
    stage(ax, 0.4, "stage 1\nthe language model", [
        ("caption tokens", DATA), ("token embeddings", TRAINED), ("LM layer 1", TRAINED), ("LM layer 2", TRAINED),
        ("next-token loss", DATA),
    ])
    ax.text(2.0, 0.75, "it learns the grammar and\nthe format; without pictures\nit can only guess the colour\nand the shape",
            ha="center", va="center", fontsize=8)
    stage(ax, 5.6, "stage 2\nFlamingo, the LM frozen", [
        ("<image> and caption tokens", DATA), ("token embeddings", FROZEN), ("gated block", TRAINED), ("LM layer 1", FROZEN),
        ("gated block", TRAINED), ("LM layer 2", FROZEN), ("next-token loss", DATA),
    ])
    box(ax, 10.6, 1.6, 3.6, 0.75, "vision encoder (lesson 07)", FROZEN)
    box(ax, 10.6, 2.75, 3.6, 0.75, "Perceiver Resampler", TRAINED)
    arrow(ax, (12.4, 2.38), (12.4, 2.73))
    arrow(ax, (10.58, 3.12), (8.82, 4.28))
    arrow(ax, (10.58, 3.3), (8.82, 6.58))
    ax.text(12.4, 5.6, "only the orange parts are updated;\nthe gradient flows back through the\nfrozen LM layers to reach them",
            ha="center", va="center", fontsize=8, color=GRAD)
    arrow(ax, (9.05, 8.5), (9.05, 7.05), color=GRAD, style="--")
    arrow(ax, (9.05, 6.25), (9.05, 4.75), color=GRAD, style="--")
    ax.text(7.2, 0.75, "at step 0 every gate is 0:\nthe loss is exactly the frozen\nLM's, and only the gates\nget gradient",
            ha="center", va="center", fontsize=8)
    # the next-token targets
    inputs = ["<image>", "a", "red", "circle", "<eoc>", "<pad>"]
    targets = ["a", "red", "circle", "<eoc>", "<pad>", "—"]
    ax.text(0.4, -0.6, "input", ha="left", va="center", fontsize=8.5)
    ax.text(0.4, -1.6, "target", ha="left", va="center", fontsize=8.5)
    for i, (word, target) in enumerate(zip(inputs, targets)):
        x = 2.0 + i * 1.7
        ax.add_patch(Rectangle((x, -0.9), 1.5, 0.6, fc=DATA, ec="#555555", lw=0.8))
        ax.text(x + 0.75, -0.6, word, ha="center", va="center", fontsize=8, family="monospace")
        counted = target not in ("<pad>", "—")
        ax.add_patch(Rectangle((x, -1.9), 1.5, 0.6, fc="#ffffff" if counted else "#dddddd", ec="#555555", lw=0.8,
                               hatch=None if counted else "///"))
        ax.text(x + 0.75, -1.6, target, ha="center", va="center", fontsize=8, family="monospace")
        arrow(ax, (x + 0.75, -0.92), (x + 0.75, -1.28))
    ax.text(12.4, -1.1, "position l predicts token l + 1;\npadding is no target (ignored)", ha="left", va="center",
            fontsize=8)
    return fig


if __name__ == "__main__":
    fig = training_stages()
    write_figure_atomic(fig, HERE / "training_stages.png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print("wrote assets/training_stages.png")
