"""Draw the pictures of lessons 01-03: `python assets/make_lesson01_03.py`.

- attention_shapes.png: scaled dot-product attention as matrices with their shapes (lesson 01).
- perceiver_attention.png: latents ask, [media features; latents] answer (lesson 02).
- perceiver_resampler.png: t media of n features each in, t x L latents out, `depth` layers (lesson 03).
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

FROZEN, TRAINED, DATA, TEXT = "#cfe2f3", "#f9cb9c", "#eeeeee", "#333333"
MEDIA, LATENT = "#9fc5e8", "#e69138"
HERE = Path(__file__).resolve().parent


def box(ax, x, y, w, h, label, color, fontsize=9, weight="normal"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#555555", lw=1))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize, color=TEXT, weight=weight)


def matrix(ax, x, y, w, h, label, shape, color):
    """A matrix drawn as a rectangle of w x h, its name inside and its shape underneath."""
    ax.add_patch(Rectangle((x, y), w, h, fc=color, ec="#555555", lw=1))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=10, color=TEXT, weight="bold")
    ax.text(x + w / 2, y - 0.18, shape, ha="center", va="top", fontsize=8, family="monospace", color="#444444")


def arrow(ax, start, end, color="#555555"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color, lw=1.2))


def tokens(ax, x, y, count, color, size=0.28, gap=0.06, label=None):
    """A row of small squares, one per token; returns the x of its right end."""
    for i in range(count):
        ax.add_patch(Rectangle((x + i * (size + gap), y), size, size, fc=color, ec="#555555", lw=0.6))
    if label:
        ax.text(x - 0.1, y + size / 2, label, ha="right", va="center", fontsize=8.5)
    return x + count * (size + gap)


def canvas(width, height, xlim, ylim, title):
    fig, ax = plt.subplots(figsize=(width, height), dpi=90)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10.5)
    return fig, ax


def attention_shapes():
    fig, ax = canvas(9.0, 3.4, (0, 13.5), (0, 5), "attention for one head: each query i takes a weighted average of the values")
    matrix(ax, 0.3, 2.2, 0.9, 1.6, "Q", "(i, e)", LATENT)
    matrix(ax, 1.7, 2.6, 1.8, 0.9, "Kᵀ", "(e, j)", MEDIA)
    ax.text(1.45, 3.0, "·", fontsize=16, ha="center", va="center")
    arrow(ax, (3.7, 3.0), (4.4, 3.0))
    matrix(ax, 4.6, 2.2, 1.8, 1.6, "S", "(i, j)", "#ffffff")
    ax.text(5.5, 4.2, "scores × scale\nscale = 1/√e", ha="center", fontsize=8)
    arrow(ax, (6.6, 3.0), (7.3, 3.0))
    ax.text(6.95, 3.35, "softmax\nover j", ha="center", va="bottom", fontsize=8)
    matrix(ax, 7.5, 2.2, 1.8, 1.6, "A", "(i, j)", "#fff2cc")
    ax.text(8.4, 4.2, "each row sums to 1", ha="center", fontsize=8)
    ax.text(9.55, 3.0, "·", fontsize=16, ha="center", va="center")
    matrix(ax, 9.8, 2.1, 0.9, 1.8, "V", "(j, e)", MEDIA)
    arrow(ax, (10.9, 3.0), (11.6, 3.0))
    matrix(ax, 11.8, 2.2, 0.9, 1.6, "O", "(i, e)", LATENT)
    ax.text(
        6.75, 0.65,
        "S = einsum('i e, j e -> i j', Q, K) / √e      A = softmax(S, dim=j)      O = einsum('i j, j e -> i e', A, V)\n"
        "masked keys: set their scores to -∞ (or -finfo.max) before the softmax, so their weight is 0",
        ha="center", va="center", fontsize=8, family="monospace",
    )
    return fig


def perceiver_attention():
    fig, ax = canvas(8.4, 4.0, (0, 12), (0, 5.6), "PerceiverAttention: the latents ask, the media features and the latents answer")
    x_end = tokens(ax, 2.2, 4.3, 12, MEDIA, label="media features x  (n, d)")
    tokens(ax, 2.2, 3.6, 4, LATENT, label="latents  (L, d)")
    # keys / values: the concatenation
    ax.text(8.6, 4.75, "keys, values from\n[x ; latents]  (n+L, d)", ha="center", fontsize=8.5)
    kv_end = tokens(ax, 6.5, 3.95, 12, MEDIA)
    tokens(ax, kv_end, 3.95, 4, LATENT)
    arrow(ax, (x_end + 0.05, 4.45), (6.45, 4.15))
    arrow(ax, (3.6, 3.65), (6.45, 4.05))
    # queries
    tokens(ax, 2.2, 2.1, 4, LATENT, label="queries from latents  (L, d)")
    arrow(ax, (2.9, 3.55), (2.9, 2.45))
    box(ax, 4.6, 1.75, 4.6, 1.0, "attention: (L, n+L) weights\nrow l = where latent l looks", "#fff2cc", fontsize=8.5)
    arrow(ax, (3.65, 2.25), (4.55, 2.25))
    arrow(ax, (9.0, 3.9), (7.9, 2.8))
    tokens(ax, 10.0, 2.1, 4, LATENT)
    ax.text(10.65, 1.75, "update (L, d)", ha="center", va="top", fontsize=8.5)
    arrow(ax, (9.25, 2.25), (9.95, 2.25))
    ax.text(
        6.0, 0.55,
        "the paper's change to the Perceiver: keys and values also come from the latents,\n"
        "so in one attention a latent can look at the image or at the other latents",
        ha="center", va="center", fontsize=8.5, style="italic",
    )
    return fig


def perceiver_resampler():
    fig, ax = canvas(8.8, 4.6, (0, 12), (0.2, 6.5), "Perceiver Resampler: any number of features in, L latents out, per media")
    for k, (n, y) in enumerate([(12, 4.9), (12, 3.9)]):
        tokens(ax, 1.2, y, n, MEDIA, size=0.24, gap=0.05, label=f"media {k}")
        ax.text(1.2, y + 0.32, f"n features (any n: 64, 256, 1024, ...)" if k == 0 else "n features", va="bottom", fontsize=7.5)
        box(ax, 5.9, y - 0.05, 1.35, 0.35, f"+ time emb {k}", TRAINED, fontsize=7)
        arrow(ax, (1.2 + n * 0.29 + 0.05, y + 0.12), (5.85, y + 0.12))
    box(ax, 7.9, 3.6, 2.2, 1.9, "depth × [\n PerceiverAttention\n + FeedForward ]\n(both residual)", TRAINED, fontsize=8)
    arrow(ax, (7.25, 5.0), (7.85, 4.8))
    arrow(ax, (7.25, 4.0), (7.85, 4.2))
    tokens(ax, 8.2, 6.0, 6, LATENT, size=0.24, gap=0.05)
    ax.text(7.55, 6.12, "L learned\nlatents", ha="right", va="center", fontsize=7.5)
    arrow(ax, (9.0, 5.95), (9.0, 5.55))
    for k, y in enumerate([2.6, 2.0]):
        tokens(ax, 8.2, y, 6, LATENT, size=0.24, gap=0.05)
        ax.text(10.05, y + 0.12, f"media {k}: L tokens", va="center", fontsize=7.5)
    arrow(ax, (9.0, 3.55), (9.0, 2.95))
    ax.text(
        6.0, 1.0,
        "x (b, t, n, d) + media_pos_emb[:t] (t, 1, d);  latents (L, d) -> (b, t, L, d)\n"
        "depth × (attention, feed-forward), then LayerNorm  ->  (b, t, L, d)\n"
        "each media is resampled on its own; the language model then\nattends to t × L tokens, whatever n was",
        ha="center", va="center", fontsize=8, family="monospace",
    )
    return fig


if __name__ == "__main__":
    for name, draw in [
        ("attention_shapes", attention_shapes),
        ("perceiver_attention", perceiver_attention),
        ("perceiver_resampler", perceiver_resampler),
    ]:
        fig = draw()
        write_figure_atomic(fig, HERE / f"{name}.png", bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        print("wrote", f"assets/{name}.png")
