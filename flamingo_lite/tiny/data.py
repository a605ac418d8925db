"""A procedural interleaved image-text dataset: coloured shapes and their captions, made on the fly, no downloads.

Flamingo is trained on web pages where images and text are interleaved (paper, Sec. 2.4, the M3W dataset). Here
each sequence holds 1 to 5 small pictures of a coloured shape, each followed by its caption and an end-of-chunk
token, e.g.

    <image> a red circle <eoc> <image> a blue square <eoc>

A caption comes in one of two formats, chosen once per sequence: colour first (`a red circle`) or shape first
(`a circle in red`). The first caption of a sequence may be either; every later caption follows the format of
the earlier ones, so the format is something a model can only get from the context (few-shot, in context),
while the colour and the shape can only come from the image.

Everything is deterministic given the seed. `make_splits` gives a training set and a held-out set drawn from
independent random streams (new jitter, new colour-shape sequences).

Shapes, in einops notation: N sequences, T media slots (`max_images`), c=3 colour channels, H=W=`image_size`,
n tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..masks import MEDIA_TOKEN, media_locations_from_tokens, tokenize_interleaved
from ..validation import check_positive_int

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
FORMATS = ("colour_first", "shape_first")
RGB = {
    "red": (0.9, 0.15, 0.15),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.2, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
PAD_TOKEN = "<pad>"
EOC_TOKEN = "<eoc>"
SPECIAL_TOKENS = (PAD_TOKEN, MEDIA_TOKEN, EOC_TOKEN)
CAPTION_WORDS = ("a", "in")


def caption_words(colour: str, shape: str, fmt: str = "colour_first") -> list[str]:
    """The caption of one picture: `['a', 'red', 'circle']` or, shape first, `['a', 'circle', 'in', 'red']`."""
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {COLOURS}, got {colour!r}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if fmt == "colour_first":
        return ["a", colour, shape]
    if fmt == "shape_first":
        return ["a", shape, "in", colour]
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def parse_caption(words) -> tuple[str, str, str] | None:
    """`(colour, shape, format)` of a well-formed caption (without `<eoc>`), or None if it is not one."""
    words = list(words)
    if len(words) == 3 and words[0] == "a" and words[1] in COLOURS and words[2] in SHAPES:
        return words[1], words[2], "colour_first"
    if len(words) == 4 and words[0] == "a" and words[1] in SHAPES and words[2] == "in" and words[3] in COLOURS:
        return words[3], words[1], "shape_first"
    return None


class Tokenizer:
    """A word-level tokenizer over a fixed vocabulary: `<pad>` (id 0), `<image>`, `<eoc>`, then the words."""

    def __init__(self, words=CAPTION_WORDS + COLOURS + SHAPES):
        self.vocab = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError(f"the vocabulary has repeated words: {self.vocab}")
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id = self.index[PAD_TOKEN]
        self.media_id = self.index[MEDIA_TOKEN]
        self.eoc_id = self.index[EOC_TOKEN]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text) -> list[int]:
        """A string such as `'<image> a red circle <eoc>'` (or a list of words) -> a list of ids."""
        words = tokenize_interleaved(text) if isinstance(text, str) else list(text)
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise ValueError(f"unknown words {unknown}; the vocabulary is {self.vocab}")
        return [self.index[w] for w in words]

    def decode(self, ids, *, skip_pad: bool = True) -> str:
        """A list (or 1-D tensor) of ids -> the words joined by spaces, padding left out."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = [self.vocab[int(i)] for i in ids]
        return " ".join(w for w in words if not (skip_pad and w == PAD_TOKEN))

    def words(self, ids) -> list[str]:
        """Ids -> a list of words (padding left out)."""
        return self.decode(ids).split()


def render_shape(shape: str, colour: str, *, image_size: int = 16, center=None, radius=None, rng=None) -> np.ndarray:
    """One picture: a filled `shape` in `colour` on a dark, slightly noisy background -> (3, H, W) float32 in [0, 1].

    `center` (row, col) and `radius` (half the size, in pixels) are drawn from `rng` when not given.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {COLOURS}, got {colour!r}")
    size = check_positive_int("image_size", image_size)
    rng = np.random.default_rng(0) if rng is None else rng
    if radius is None:
        radius = rng.uniform(0.28, 0.45) * size  # the shape is 56% to 90% of the picture wide
    if center is None:
        margin = radius + 0.5
        center = rng.uniform(margin, size - margin, size=2)  # (2,): row, col, jittered
    rows, cols = np.mgrid[0:size, 0:size] + 0.5  # (H, W) pixel centres
    dy, dx = rows - center[0], cols - center[1]  # (H, W)
    if shape == "circle":
        inside = dy**2 + dx**2 <= radius**2
    elif shape == "square":
        half = radius * 0.85  # a square of the same area as the circle would be larger; keep sizes comparable
        inside = (np.abs(dy) <= half) & (np.abs(dx) <= half)
    else:  # an upright triangle: apex at the top, base at the bottom
        top, bottom = -radius, radius * 0.8
        width_at = (dy - top) / (bottom - top) * radius  # half-width grows linearly from the apex
        inside = (dy >= top) & (dy <= bottom) & (np.abs(dx) <= width_at)
    background = 0.1 + 0.05 * rng.random((3, size, size))  # (3, H, W)
    colour_rgb = np.asarray(RGB[colour]).reshape(3, 1, 1)  # (3, 1, 1)
    image = np.where(inside[None], colour_rgb, background)  # (3, H, W)
    return image.astype(np.float32)


@dataclass
class InterleavedData:
    """A set of interleaved sequences, padded to common sizes.

    images: (N, T, 3, H, W) float, zeros in unused media slots; tokens: (N, n) long, `<pad>` on the right;
    media_locations: (N, n) bool, True at each `<image>`; num_images: (N,) long; labels: per sequence, the
    (colour, shape) of each picture; formats: per sequence, its caption format.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    media_locations: torch.Tensor
    num_images: torch.Tensor
    labels: list = field(repr=False)
    formats: list = field(repr=False)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> "InterleavedData":
        """A subset: an int, a slice, or a list/tensor of indices -> InterleavedData."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, slice):
            index = list(range(len(self)))[index]
        index = torch.as_tensor(index, dtype=torch.long)
        picked = index.tolist()
        return InterleavedData(
            images=self.images[index],
            tokens=self.tokens[index],
            media_locations=self.media_locations[index],
            num_images=self.num_images[index],
            labels=[self.labels[i] for i in picked],
            formats=[self.formats[i] for i in picked],
        )

    def to(self, device) -> "InterleavedData":
        """The same data with its tensors on `device`."""
        return InterleavedData(
            self.images.to(device), self.tokens.to(device), self.media_locations.to(device),
            self.num_images.to(device), self.labels, self.formats,
        )


def max_sequence_length(max_images: int, formats=FORMATS) -> int:
    """The longest token sequence `max_images` pictures can make: each is `<image>`, a caption, `<eoc>`."""
    longest_caption = max(len(caption_words(COLOURS[0], SHAPES[0], f)) for f in formats)
    return max_images * (longest_caption + 2)


def make_dataset(
    num_sequences: int,
    *,
    seed: int = 0,
    image_size: int = 16,
    min_images: int = 1,
    max_images: int = 5,
    formats=FORMATS,
    tokenizer: Tokenizer | None = None,
) -> InterleavedData:
    """Draw `num_sequences` interleaved sequences, deterministically from `seed`.

    Each sequence: a number of pictures uniform in [min_images, max_images], each a random colour and shape with
    jittered position and size; one caption format for the whole sequence, uniform over `formats`.
    """
    num_sequences = check_positive_int("num_sequences", num_sequences)
    check_positive_int("image_size", image_size)
    check_positive_int("min_images", min_images)
    check_positive_int("max_images", max_images)
    if min_images > max_images:
        raise ValueError(f"min_images ({min_images}) must be at most max_images ({max_images})")
    formats = tuple(formats)
    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    tok = tokenizer if tokenizer is not None else Tokenizer()
    rng = np.random.default_rng(seed)
    n_max = max_sequence_length(max_images, formats)

    images = np.zeros((num_sequences, max_images, 3, image_size, image_size), dtype=np.float32)  # (N, T, 3, H, W)
    token_rows, labels, fmts, counts = [], [], [], []
    for i in range(num_sequences):
        k = int(rng.integers(min_images, max_images + 1))
        fmt = formats[int(rng.integers(len(formats)))]
        words, seq_labels = [], []
        for j in range(k):
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            images[i, j] = render_shape(shape, colour, image_size=image_size, rng=rng)
            words += [MEDIA_TOKEN, *caption_words(colour, shape, fmt), EOC_TOKEN]
            seq_labels.append((colour, shape))
        token_rows.append(words + [PAD_TOKEN] * (n_max - len(words)))
        labels.append(seq_labels)
        fmts.append(fmt)
        counts.append(k)

    tokens = torch.tensor([tok.encode(r) for r in token_rows], dtype=torch.long)  # (N, n)
    media_locations = media_locations_from_tokens(token_rows)  # (N, n) bool
    return InterleavedData(
        images=torch.from_numpy(images),
        tokens=tokens,
        media_locations=media_locations,
        num_images=torch.tensor(counts, dtype=torch.long),
        labels=labels,
        formats=fmts,
    )


def make_splits(num_train: int = 3000, num_heldout: int = 300, *, seed: int = 0, **kwargs):
    """A training set and a held-out set from two independent random streams of one seed: (train, heldout)."""
    train_seed, heldout_seed = np.random.SeedSequence(seed).spawn(2)
    train = make_dataset(num_train, seed=int(train_seed.generate_state(1)[0]), **kwargs)
    heldout = make_dataset(num_heldout, seed=int(heldout_seed.generate_state(1)[0]), **kwargs)
    return train, heldout
