"""Draw the pictures of lesson 11: `python assets/make_lesson11.py`.

- lesson11_names.png: one gated block, its weights under flamingo_lite's (and OpenFlamingo's) names and IDEFICS's,
  with the two weights IDEFICS splits in two (to_kv, ff.1).
- lesson11_placement.png: where the gated blocks go in an 8-layer language model with one block every 4 layers:
  before layers 0 and 4 (flamingo-pytorch, IDEFICS, the tiny model's default), before 3 and 7 (OpenFlamingo).
Colours as in flamingo_architecture.png: frozen parts blue, trained parts orange, data grey.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flamingo_lite.files import write_figure_atomic  # noqa: E402
from flamingo_lite.tiny.model import xattn_layers  # noqa: E402

FROZEN, TRAINED, GATE, TEXT = "#cfe2f3", "#f9cb9c", "#fff2cc", "#333333"
HERE = Path(__file__).resolve().parent

# One gated block, top to bottom: (flamingo_lite / OpenFlamingo key, what it is, IDEFICS keys)
BLOCK = [
    ("attn.norm.weight, .bias", "LayerNorm  |  RMSNorm", ["input_layernorm.weight"]),
    ("attn.to_q.weight", "queries from the text", ["cross_attn.q_proj.weight"]),
    ("attn.to_kv.weight", "keys, then values, from the media", ["cross_attn.k_proj.weight", "cross_attn.v_proj.weight"]),
    ("attn.to_out.weight", "back to the text's width", ["cross_attn.o_proj.weight"]),
    ("attn_gate", "tanh gate, starts at 0", ["alpha_cross_attn"]),
    ("ff.0.weight, .bias", "LayerNorm  |  RMSNorm", ["post_attention_layernorm.weight"]),
    ("ff.1.weight", "widen: GELU's input  |  SwiGLU's gate, then up", ["mlp.gate_proj.weight", "mlp.up_proj.weight"]),
    ("ff.3.weight", "narrow", ["mlp.down_proj.weight"]),
    ("ff_gate", "tanh gate, starts at 0", ["alpha_dense"]),
]


def box(ax, x, y, w, h, label, color, fontsize=8.5, family="monospace"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.06", fc=color, ec="#555555", lw=1))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize, color=TEXT, family=family)


def arrow(ax, start, end, color="#555555"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, color=color, lw=1.0))


def canvas(width, height, xlim, ylim, title):
    fig, ax = plt.subplots(figsize=(width, height), dpi=90)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10.5)
    return fig, ax


def names():
    rows = sum(len(idefics) for _, _, idefics in BLOCK)  # one row per IDEFICS key
    height = 0.62 * rows + 1.6
    fig, ax = canvas(10.5, height * 0.75, (0, 14), (0, height), "one gated block, two sets of names")
    ax.text(2.2, height - 0.55, "flamingo_lite = OpenFlamingo", ha="center", fontsize=9.5, weight="bold")
    ax.text(6.8, height - 0.55, "what it is (flamingo_lite | IDEFICS)", ha="center", fontsize=9.5, weight="bold")
    ax.text(11.6, height - 0.55, "IDEFICS", ha="center", fontsize=9.5, weight="bold")
    y = height - 1.2
    for ours, meaning, idefics in BLOCK:
        span = 0.62 * len(idefics)
        top = y
        color = GATE if "gate" in ours else TRAINED
        box(ax, 0.3, top - span + 0.1, 3.8, span - 0.2, ours, color)
        meaning_y = top - span / 2 + 0.06 if len(idefics) == 1 else top - 0.08  # above the arrows
        ax.text(6.8, meaning_y, meaning, ha="center", va="bottom" if len(idefics) == 1 else "top", fontsize=8, style="italic")
        for k, key in enumerate(idefics):
            row_y = top - 0.62 * (k + 1) + 0.1
            box(ax, 9.2, row_y, 4.6, 0.42, key, color)
            arrow(ax, (9.15, row_y + 0.21), (4.2, top - span / 2))
        if len(idefics) == 2:
            ax.text(4.3, top - span / 2 - 0.1, "stacked on dim 0", va="top", fontsize=7, color="#555555")
        y -= span
    ax.text(7.0, 0.35, "two weights in ours are two in IDEFICS: to_kv = [k_proj; v_proj] and ff.1 = [gate_proj; up_proj]",
            ha="center", va="center", fontsize=8)
    return fig


def placement():
    depth, every = 8, 4
    readings = [
        ("flamingo-pytorch, IDEFICS", "first", "i % K == 0"),
        ("OpenFlamingo", "open_flamingo", "(i + 1) % K == 0"),
    ]
    layer_w, gated_w, gap = 1.1, 1.0, 0.32
    fig, ax = canvas(11.0, 3.2, (0, 18.6), (0, 5.0), f"where the gated blocks go: {depth} language-model layers, K = {every}")
    for row, (who, name, rule) in enumerate(readings):
        y = 3.4 - row * 2.0
        ax.text(0.1, y + 0.5, who, ha="left", va="center", fontsize=8.5, weight="bold")
        ax.text(0.1, y + 0.05, f'tiny model: "{name}"', ha="left", va="center", fontsize=8)
        ax.text(0.1, y - 0.4, rule, ha="left", va="center", fontsize=8.5, family="monospace")
        gated = xattn_layers(depth, every, name)  # the layers with a block in front of them
        x = 4.2
        for i in range(depth):
            if i in gated:
                box(ax, x, y - 0.25, gated_w, 0.6, "gated", TRAINED, fontsize=7.5)
                arrow(ax, (x + gated_w, y + 0.05), (x + gated_w + gap, y + 0.05))
                x += gated_w + gap
            box(ax, x, y - 0.25, layer_w, 0.6, f"LM {i}", FROZEN, fontsize=8)
            if i < depth - 1:
                arrow(ax, (x + layer_w, y + 0.05), (x + layer_w + gap, y + 0.05))
            x += layer_w + gap
    ax.text(9.3, 0.3, "the paper gives a frequency (every layer, every 4th, every 7th: Table 4), not a first index;\n"
            "weights trained with one placement run each block before the wrong layer in the other",
            ha="center", va="center", fontsize=8)
    return fig


if __name__ == "__main__":
    for name, draw in [("lesson11_names", names), ("lesson11_placement", placement)]:
        fig = draw()
        write_figure_atomic(fig, HERE / f"{name}.png", bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        print("wrote", f"assets/{name}.png")
