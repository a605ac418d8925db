"""Plots of training the tiny Flamingo: the loss, the tanh gates opening (the paper's Fig. 6), where caption
words look among the visual tokens, and pictures with the captions the model writes.

Each plot has a plain data function beside it (`gate_curves`, `caption_attention`) that returns exactly the
numbers drawn, so tests can check the picture shows what the model computed.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ...tiny.data import Tokenizer
from ...tiny.model import Flamingo

DPI = 80


def _logged(history: dict) -> None:
    """A history with no logged step is a training run that stopped before its first entry: say so before drawing."""
    if not isinstance(history, dict) or not history.get("step"):
        raise ValueError("history has no logged step (history['step'] is empty): the training cell above stopped "
                         "before its first entry; run it again to its end, then plot.")


def gate_curves(history: dict):
    """The logged steps and tanh of each gate: `(steps (S,), attn (S, layers), ff (S, layers))` as arrays."""
    _logged(history)
    steps = np.asarray(history["step"], dtype=float)  # (S,)
    attn = np.asarray(history["attn_gate_tanh"], dtype=float)  # (S, layers)
    ff = np.asarray(history["ff_gate_tanh"], dtype=float)  # (S, layers)
    if attn.ndim != 2 or attn.shape != ff.shape or len(steps) != attn.shape[0]:
        raise ValueError(f"history must log one list of gates per step: steps {steps.shape}, attn {attn.shape}, ff {ff.shape}")
    return steps, attn, ff


def plot_loss(history: dict, *, ax=None, label: str | None = None, upto: int | None = None):
    """The training loss at every step (thin) and at the logged steps (dots). Returns the axes."""
    _logged(history)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3), dpi=DPI)
    every = history.get("loss_every_step")
    if every:
        n = len(every) if upto is None else min(upto, len(every))
        ax.plot(np.arange(1, n + 1), every[:n], lw=0.6, alpha=0.5, color="C0")
    steps = np.asarray(history["step"])
    keep = steps <= (upto if upto is not None else steps.max())
    ax.plot(steps[keep], np.asarray(history["loss"])[keep], ".-", ms=3, color="C0", label=label or "training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss")
    ax.set_title("Loss")
    ax.legend(loc="upper right", fontsize=8)
    return ax


def plot_gates(history: dict, *, axes=None, upto: int | None = None, absolute: bool = True):
    """tanh(gate) of each cross-attention layer over training, attention gates and feed-forward gates side by
    side, one line per layer (darker = deeper), like the paper's Fig. 6 (which shows |tanh|). Returns the axes."""
    steps, attn, ff = gate_curves(history)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=DPI, sharey=True)
    keep = steps <= (upto if upto is not None else steps.max())
    layers = history.get("config", {}).get("xattn_layers") or list(range(attn.shape[1]))
    colours = plt.cm.viridis(np.linspace(0.85, 0.1, attn.shape[1]))
    for ax, values, name in zip(axes, (attn, ff), ("attn_gate", "ff_gate")):
        shown = np.abs(values) if absolute else values
        for j in range(values.shape[1]):
            ax.plot(steps[keep], shown[keep, j], color=colours[j], label=f"before LM layer {layers[j]}")
        ax.set_xlim(0, steps.max())
        ax.set_xlabel("step")
        ax.set_title(f"|tanh({name})|" if absolute else f"tanh({name})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("|tanh(gate)|" if absolute else "tanh(gate)")
    axes[0].legend(fontsize=8, loc="center right")  # clear of the curves, which rise fast from 0 on the left
    return axes


@torch.no_grad()
def caption_attention(model: Flamingo, tokens: torch.Tensor, images: torch.Tensor, tokenizer: Tokenizer | None = None, *, layer: int = 0) -> dict:
    """Where each token of one sequence looks among the visual tokens, in one gated block.

    tokens (n,), images (t, 3, H, W) -> {'words': n words (padding dropped), 'weights': (n, t*L) array, the
    attention averaged over heads, 'num_media': t, 'num_latents': L}. Column j is latent j % L of picture j // L.
    """
    tok = tokenizer if tokenizer is not None else Tokenizer()
    words = tok.decode(tokens, skip_pad=False).split()
    n = sum(1 for w in words if w != "<pad>")
    weights = model.cross_attention_weights(tokens[None, :n], images[None])[layer]  # (1, h, n, t*L)
    return {
        "words": words[:n],
        "weights": weights[0].mean(dim=0).cpu().numpy(),  # (n, t*L)
        "num_media": images.shape[0],
        "num_latents": model.config.num_latents,
    }


def plot_caption_attention(data: dict, *, ax=None, used_media: int | None = None):
    """A heat map of `caption_attention`'s weights: text tokens down, the visual tokens of each picture across."""
    weights = data["weights"]
    L, t = data["num_latents"], data["num_media"]
    if used_media is not None:
        t = used_media
        weights = weights[:, : t * L]
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 0.25 * t * L, 0.25 * len(data["words"]) + 1), dpi=DPI)
    ax.imshow(weights, cmap="magma", vmin=0, vmax=max(float(weights.max()), 1e-6), aspect="auto")
    ax.set_yticks(range(len(data["words"])), data["words"], fontsize=8)
    ax.set_xticks([i * L + (L - 1) / 2 for i in range(t)], [f"picture {i + 1}" for i in range(t)], fontsize=8)
    for i in range(1, t):
        ax.axvline(i * L - 0.5, color="white", lw=1)
    ax.set_title("cross-attention: text tokens -> visual tokens", fontsize=9)
    return ax


def plot_captioned_images(images: torch.Tensor, captions, *, truths=None, ncols: int = 6):
    """Pictures with the captions the model wrote (green if equal to `truths`, red if not). Returns the figure."""
    k = len(captions)
    ncols = min(ncols, k)
    nrows = (k + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows), dpi=DPI, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= k:
            continue
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        colour = "black" if truths is None else ("green" if captions[i] == truths[i] else "red")
        ax.set_title(captions[i], fontsize=8, color=colour)
    fig.tight_layout()
    return fig


@torch.no_grad()
def next_word_probabilities(model, tokens: torch.Tensor, images: torch.Tensor | None = None, tokenizer: Tokenizer | None = None) -> dict:
    """What the model expects after the last token of one prompt: {word: probability}, in vocabulary order.

    tokens (n,) long; images (t, 3, H, W) for a `Flamingo`, None for a `TinyLM`.
    """
    tok = tokenizer if tokenizer is not None else Tokenizer()
    if images is None:
        logits = model(tokens[None])  # (1, n, V)
    else:
        logits = model(tokens[None], images[None])  # (1, n, V)
    probs = logits[0, -1].softmax(dim=-1)  # (V,)
    return {word: float(p) for word, p in zip(tok.vocab, probs)}


def plot_next_word(distributions: dict, *, words=None, ax=None):
    """Bars of next-word probabilities, one group per named distribution: {'name': {word: p}}. Returns the axes."""
    names = list(distributions)
    words = list(words) if words is not None else list(next(iter(distributions.values())))
    if ax is None:
        _, ax = plt.subplots(figsize=(1 + 0.55 * len(words), 2.6), dpi=DPI)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(np.arange(len(words)) + (i - (len(names) - 1) / 2) * width, [distributions[name][w] for w in words], width=width, label=name)
    ax.set_xticks(range(len(words)), words, rotation=30, fontsize=8)
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return ax
