"""Draw the Flamingo architecture picture used by the lessons: `python assets/make_architecture.py`.

Vision encoder -> Perceiver Resampler -> gated cross-attention blocks interleaved with frozen LM layers, and
`media_locations` deciding which text sees which image. Frozen parts are blue, trained parts are orange, as in
the paper's Fig. 3, redrawn from scratch so it can be changed.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flamingo_lite.files import write_figure_atomic  # noqa: E402

FROZEN, TRAINED, DATA, TEXT = "#cfe2f3", "#f9cb9c", "#eeeeee", "#333333"
OUT = Path(__file__).resolve().parent / "flamingo_architecture.png"


def box(ax, x, y, w, h, label, color, fontsize=9, weight="normal"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#555555", lw=1))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize, color=TEXT, weight=weight)


def arrow(ax, start, end, color="#555555", style="-|>"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=color, lw=1.2))


def draw():
    fig, ax = plt.subplots(figsize=(9.6, 5.2), dpi=90)
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 6.6)
    ax.axis("off")

    # the interleaved input along the bottom
    tokens = ["<image>", "a", "red", "circle", "<image>", "a", "blue", "square"]
    ax.text(2.6, 0.72, "media_locations", ha="right", fontsize=8.5, family="monospace", color="#7a3e00")
    ax.text(2.6, 0.25, "tokens", ha="right", fontsize=8.5, family="monospace")
    for i, tok in enumerate(tokens):
        x = 3.3 + 0.95 * i
        ax.text(x, 0.25, tok, ha="center", fontsize=9.5, family="monospace")
        ax.text(x, 0.72, "T" if tok == "<image>" else "F", ha="center", fontsize=9, family="monospace",
                color="#7a3e00", weight="bold" if tok == "<image>" else "normal")

    # vision side, two images
    for i, (x, color_name) in enumerate([(0.35, "tab:red"), (2.35, "tab:blue")]):
        box(ax, x, 1.2, 1.5, 0.7, f"image {i + 1}", DATA)
        ax.add_patch(plt.Circle((x + 1.3, 1.55), 0.12, color=color_name) if i == 0 else
                     plt.Rectangle((x + 1.18, 1.43), 0.24, 0.24, color=color_name))
        box(ax, x, 2.25, 1.5, 0.7, "vision\nencoder", FROZEN)
        arrow(ax, (x + 0.75, 1.9), (x + 0.75, 2.25))
        box(ax, x, 3.35, 1.5, 0.8, "Perceiver\nResampler", TRAINED)
        arrow(ax, (x + 0.75, 2.95), (x + 0.75, 3.35))
        arrow(ax, (x + 0.75, 4.15), (x + 0.75, 4.6))
    ax.text(1.95, 4.75, "media latents (b, t, m, d)\nm = 64 per image", ha="center", fontsize=8)

    # language side: a stack of gated xattn blocks before frozen LM layers
    lx, lw = 5.6, 3.3
    box(ax, lx, 1.2, lw, 0.55, "text embeddings (frozen)", FROZEN, fontsize=8.5)
    layers = [("gated xattn-dense", TRAINED), ("LM layer 1", FROZEN), ("gated xattn-dense", TRAINED), ("LM layer 2", FROZEN)]
    y = 1.95
    for label, color in layers:
        box(ax, lx, y, lw, 0.5, label, color, fontsize=8.5, weight="bold" if color == TRAINED else "normal")
        arrow(ax, (lx + lw / 2, y - 0.2), (lx + lw / 2, y))
        if color == TRAINED:
            arrow(ax, (3.85, 4.55), (lx, y + 0.25), color="#b45f06")
        y += 0.72
    box(ax, lx, y, lw, 0.5, "... more blocks and LM layers", DATA, fontsize=7.5)
    arrow(ax, (lx + lw / 2, y - 0.2), (lx + lw / 2, y))
    box(ax, lx, y + 0.75, lw, 0.5, "next-word prediction", DATA, fontsize=8.5)
    arrow(ax, (lx + lw / 2, y + 0.5), (lx + lw / 2, y + 0.75))

    # the gate, spelled out
    ax.text(9.25, 3.1, "y = x + tanh(α) · xattn(x, media)\nα starts at 0:\nthe block starts as\nthe identity", fontsize=8.5,
            va="center", color="#7a3e00")
    ax.text(9.25, 1.6, "mask: each word sees\nonly the latest image\nbefore it (text before\nthe first image: none)",
            fontsize=8.5, va="center", color="#7a3e00")
    # legend
    box(ax, 0.35, 5.75, 0.45, 0.3, "", FROZEN)
    ax.text(0.9, 5.9, "frozen", va="center", fontsize=8.5)
    box(ax, 1.9, 5.75, 0.45, 0.3, "", TRAINED)
    ax.text(2.45, 5.9, "trained", va="center", fontsize=8.5)
    ax.set_title("Flamingo: a frozen vision encoder and a frozen language model, joined by trained parts", fontsize=10.5)
    write_figure_atomic(fig, OUT, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return OUT


if __name__ == "__main__":
    print(f"wrote {draw().name}")
