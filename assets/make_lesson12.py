"""Draw the pictures of lesson 12: `python assets/make_lesson12.py`.

- fewshot_circuit.png: how the frozen language model answers a k-shot prompt. The gated blocks write each picture's
  class into the tokens of its chunk; with the token shift a name's key carries the `is` before it, so the query's
  `is` matches the name after the support picture of its class, and the head copies that name.
- fewshot_heldout.png: what is trained and what is held out: the training template, the held-out template (`a`
  where training has `is`, and in training `<image> a` is always a caption), and rule inference (names given by one
  attribute, the query a combination the prompt does not show), with the nearest-neighbour baseline beside them.
Colours as in flamingo_architecture.png: frozen parts blue, trained parts orange, data grey; the answer is green.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flamingo_lite.files import write_figure_atomic  # noqa: E402
from make_lesson07 import shape  # noqa: E402  (a picture of the course's data, drawn as in lesson 07's figure)

FROZEN, TRAINED, DATA, ANSWER, TEXT = "#cfe2f3", "#f9cb9c", "#eeeeee", "#b6d7a8", "#333333"
HERE = Path(__file__).resolve().parent
WIDTH = 0.95  # one token's cell


def token(ax, x, y, word, color=DATA):
    ax.add_patch(Rectangle((x, y - 0.28), WIDTH - 0.08, 0.56, fc=color, ec="#555555", lw=0.8))
    ax.text(x + (WIDTH - 0.08) / 2, y, word, ha="center", va="center", fontsize=7.5, family="monospace")


def prompt(ax, x, y, chunks, word, query, answer=None):
    """Draw `<image> WORD NAME <eoc>` per (colour, kind, name) chunk, then the query's `<image> WORD ?`; the picture
    of each chunk above its `<image>`. Returns {(chunk, position): x of that token} for arrows."""
    where = {}
    for i, (colour, kind, name) in enumerate(list(chunks) + [(*query, None)]):
        shape(ax, x + WIDTH * 0.46, y + 0.85, colour, kind)
        words = ["<image>", word] + ([name, "<eoc>"] if name is not None else [])
        for j, w in enumerate(words):
            token(ax, x, y, w)
            where[(i, j)] = x + (WIDTH - 0.08) / 2
            x += WIDTH
        if name is None:
            token(ax, x, y, answer if answer is not None else "?", ANSWER)
            where[(i, len(words))] = x + (WIDTH - 0.08) / 2
        x += 0.25
    return where


def curve_arrow(ax, start, end, color, rad=-0.35, style="-|>", bar=None):
    """An arrow from start to end along an arc, or, with `bar`, up and over (a bar that far from the tokens)."""
    connection = f"bar,fraction={bar}" if bar is not None else f"arc3,rad={rad}"
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=color, lw=1.3,
                                 connectionstyle=connection))


def fewshot_circuit():
    fig, ax = plt.subplots(figsize=(10.4, 4.2), dpi=90)
    ax.set_xlim(0, 15.2)
    ax.set_ylim(-2.6, 3.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("how a 2-shot prompt is answered: the query's `is` attends to the name after the support picture "
                 "of its class, and copies it", fontsize=9.5)
    chunks = [("red", "circle", "dax"), ("blue", "square", "wug")]
    where = prompt(ax, 0.3, 0.0, chunks, "is", ("red", "circle"), answer="dax")
    query_is, support_name, answer = where[(2, 1)], where[(0, 2)], where[(2, 2)]
    curve_arrow(ax, (query_is, 0.3), (support_name, 0.3), "#c0504d", bar=0.17)
    ax.text((query_is + support_name) / 2, 2.3, "1. match: dax's key carries the tokens before it (the token shift) and "
            "the red circle the gated blocks wrote there;\nthe query's `is` carries the same, so the frozen head "
            "attends to dax and not to wug", ha="center", va="center", fontsize=7.5, color="#c0504d")
    curve_arrow(ax, (support_name, -0.35), (answer, -0.35), "#2e7d32", rad=0.22)
    ax.text((support_name + answer) / 2, -1.55, "2. copy: the value read there is the name, and it becomes the "
            "most likely next token", ha="center", va="center", fontsize=8, color="#2e7d32")
    ax.add_patch(Rectangle((0.3, -2.45), 3.6, 0.5, fc=TRAINED, ec="#555555", lw=0.8))
    ax.text(2.1, -2.2, "resampler + gated blocks: trained", ha="center", va="center", fontsize=7.5)
    ax.add_patch(Rectangle((4.2, -2.45), 3.6, 0.5, fc=FROZEN, ec="#555555", lw=0.8))
    ax.text(6.0, -2.2, "language model: frozen", ha="center", va="center", fontsize=7.5)
    ax.text(8.1, -2.2, "the names mean nothing outside this prompt: only its examples bind dax to a red circle",
            ha="left", va="center", fontsize=7.5)
    return fig


def fewshot_heldout():
    fig, ax = plt.subplots(figsize=(10.4, 7.2), dpi=90)
    ax.set_xlim(0, 15.2)
    ax.set_ylim(-0.6, 10.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("what is trained and what is held out", fontsize=10)
    rows = [
        (8.6, "trained: names after `is`, new names in every episode",
         [("red", "circle", "dax"), ("blue", "square", "wug")], "is", ("red", "circle"), "dax"),
        (5.6, "held out, the template: `a` where training has `is` (in training `<image> a` begins a caption)",
         [("red", "circle", "dax"), ("blue", "square", "wug")], "a", ("red", "circle"), "dax"),
        (2.6, "held out, the rule: named by colour in this prompt, the query a combination it does not show",
         [("red", "circle", "dax"), ("red", "square", "dax"), ("blue", "circle", "wug")], "is", ("red", "triangle"),
         "dax"),
    ]
    for y, title, chunks, word, query, answer in rows:
        ax.text(0.3, y + 1.6, title, ha="left", va="center", fontsize=8.5)
        prompt(ax, 0.3, y, chunks, word, query, answer)
    ax.text(
        0.3, 0.6,
        "nearest neighbour (the lookup a sceptic suspects): the name of the support picture closest to the query\n"
        "in the frozen vision encoder's features. It answers the first two rows as well as any model can when the\n"
        "query's class is in the prompt. On the last row no support picture is of the query's class: it is right\n"
        "only when the closest one happens to share the attribute that counts (here, the colour).",
        ha="left", va="center", fontsize=8, family="monospace",
    )
    return fig


if __name__ == "__main__":
    for make, name in ((fewshot_circuit, "fewshot_circuit.png"), (fewshot_heldout, "fewshot_heldout.png")):
        fig = make()
        write_figure_atomic(fig, HERE / name, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        print(f"wrote assets/{name}")
