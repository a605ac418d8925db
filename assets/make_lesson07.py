"""Draw the picture of lesson 07: `python assets/make_lesson07.py`.

- contrastive_loss.png: the contrastive pretraining of the vision encoder (the paper's App. B.1.3, CLIP's loss):
  B pictures and their B captions, two encoders, normalised vectors, the (B, B) similarity matrix divided by the
  temperature, the diagonal as the labels, and the two cross-entropies (over each row, over each column).
Colours as in flamingo_architecture.png: trained parts orange, data grey; the matching pairs are green.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flamingo_lite.files import write_figure_atomic  # noqa: E402

TRAINED, DATA, MATCH, TEXT = "#f9cb9c", "#eeeeee", "#b6d7a8", "#333333"
HERE = Path(__file__).resolve().parent
PAIRS = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "square")]  # B = 4 of the 12 classes
COLOURS = {"red": "#d9534f", "blue": "#4a7bd0", "green": "#5cb85c"}


def box(ax, x, y, w, h, label, color, fontsize=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#555555", lw=1))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize, color=TEXT)


def arrow(ax, start, end, color="#555555"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color, lw=1.2))


def shape(ax, x, y, colour, kind, size=0.32):
    """A small picture of the course's data: one coloured shape, centred at (x, y), in a frame of side 0.84."""
    ax.add_patch(Rectangle((x - 0.42, y - 0.42), 0.84, 0.84, fc="white", ec="#999999", lw=0.8))
    fill = COLOURS[colour]
    if kind == "circle":
        ax.add_patch(plt.Circle((x, y), size, fc=fill, ec="none"))
    elif kind == "square":
        ax.add_patch(Rectangle((x - size, y - size), 2 * size, 2 * size, fc=fill, ec="none"))
    else:
        ax.add_patch(plt.Polygon([(x - size, y - size), (x + size, y - size), (x, y + size)], fc=fill, ec="none"))


def contrastive_loss():
    fig, ax = plt.subplots(figsize=(9.6, 6.4), dpi=90)
    ax.set_xlim(0, 13.5)
    ax.set_ylim(-0.6, 9.0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("contrastive pretraining of the eyes (App. B.1.3): each picture must pick its own caption, and each "
                 "caption its picture", fontsize=10)
    cell, left, top = 1.0, 5.6, 6.4  # the similarity matrix: B x B cells, its top-left corner at (left, top)
    b = len(PAIRS)
    # the pictures down the left, the captions along the top
    for i, (colour, kind) in enumerate(PAIRS):
        y = top - (i + 0.5) * cell
        shape(ax, 0.7, y, colour, kind)
        arrow(ax, (1.15, y), (left - 2.85, y))
        x = left + (i + 0.5) * cell
        ax.text(x, top + 2.15, f"a {colour}\n{kind}", ha="center", va="center", fontsize=7.5, family="monospace",
                rotation=0)
        arrow(ax, (x, top + 1.75), (x, top + 0.95))
    box(ax, left - 2.8, top - b * cell, 1.3, b * cell, "vision\nencoder\n.embed\n\nnormalize\nv  (B, e)", TRAINED,
        fontsize=7.5)
    arrow(ax, (left - 1.48, top - b * cell / 2), (left - 0.05, top - b * cell / 2))
    box(ax, left, top + 0.1, b * cell, 0.8, "text encoder, normalize:  w  (B, e)", TRAINED, fontsize=7.5)
    # the matrix: the diagonal is where a picture meets its own caption
    for i in range(b):
        for j in range(b):
            ax.add_patch(Rectangle((left + j * cell, top - (i + 1) * cell), cell, cell,
                                   fc=MATCH if i == j else "white", ec="#555555", lw=0.8))
            ax.text(left + (j + 0.5) * cell, top - (i + 0.5) * cell, f"v{i}·w{j}\n/ T", ha="center", va="center",
                    fontsize=7, family="monospace")
    ax.text(left + b * cell / 2, top - b * cell - 0.35, "logits = v @ w.T / T   (B, B);   labels = arange(B): the diagonal",
            ha="center", va="center", fontsize=8.5, family="monospace")
    # the two cross-entropies
    right = left + b * cell
    arrow(ax, (right + 0.1, top - 0.5 * cell), (right + 0.9, top - 0.5 * cell))
    ax.text(right + 1.0, top - 1.4 * cell, "CE over each row:\npicture i picks\ncaption i\n(image -> text)",
            ha="left", va="center", fontsize=8)
    arrow(ax, (left + 0.5 * cell, top - b * cell - 0.7), (left + 0.5 * cell, top - b * cell - 1.3))
    ax.text(left + 0.75 * cell, top - b * cell - 1.15, "CE over each column: caption j picks picture j (text -> image)",
            ha="left", va="center", fontsize=8)
    ax.text(
        0.2, 0.0,
        "loss = ( CE(logits, labels) + CE(logits.T, labels) ) / 2\n"
        "T: a learned temperature, kept in [0.01, 1]; the other B - 1 captions of the batch are the negatives,\n"
        "so a batch holds each class once (a second red circle would be a negative that is really a match)",
        ha="left", va="center", fontsize=8, family="monospace",
    )
    return fig


if __name__ == "__main__":
    fig = contrastive_loss()
    write_figure_atomic(fig, HERE / "contrastive_loss.png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print("wrote assets/contrastive_loss.png")
