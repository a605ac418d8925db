"""The procedural coloured-shapes data: captions, tokenizer, pictures, determinism, held-out split."""
import numpy as np
import pytest
import torch

from flamingo_lite.tiny.data import (
    COLOURS, FORMATS, RGB, SHAPES, Tokenizer, caption_words, make_dataset, make_splits, max_sequence_length,
    parse_caption, render_shape,
)
from flamingo_lite.masks import MEDIA_TOKEN


def test_caption_formats_parse_back():
    for colour in COLOURS:
        for shape in SHAPES:
            for fmt in FORMATS:
                assert parse_caption(caption_words(colour, shape, fmt)) == (colour, shape, fmt)
    assert caption_words("red", "circle", "colour_first") == ["a", "red", "circle"]
    assert caption_words("red", "circle", "shape_first") == ["a", "circle", "in", "red"]
    assert parse_caption(["a", "red"]) is None
    assert parse_caption(["a", "circle", "red"]) is None
    with pytest.raises(ValueError, match="colour"):
        caption_words("purple", "circle")


def test_tokenizer_round_trip_and_special_ids():
    tok = Tokenizer()
    assert tok.pad_id == 0 and tok.vocab[tok.media_id] == MEDIA_TOKEN and tok.vocab[tok.eoc_id] == "<eoc>"
    text = "<image> a red circle <eoc> <image> a square in blue <eoc>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.pad_id] * 3) == text
    assert tok.encode("<image>a red circle") == tok.encode("<image> a red circle")
    with pytest.raises(ValueError, match="unknown"):
        tok.encode("a purple circle")


def test_render_shape_colour_and_background():
    img = render_shape("square", "red", image_size=16, center=(8.0, 8.0), radius=5.0)
    assert img.shape == (3, 16, 16) and img.dtype == np.float32
    assert np.allclose(img[:, 8, 8], RGB["red"])  # the centre is the shape's colour
    assert img[:, 0, 0].max() < 0.2  # a corner is dark background
    masks = {s: render_shape(s, "red", image_size=16, center=(8.0, 8.0), radius=5.0)[0] > 0.5 for s in SHAPES}
    assert not (masks["circle"] == masks["square"]).all() and not (masks["circle"] == masks["triangle"]).all()
    rows = masks["triangle"].sum(1)  # (H,): filled pixels per row
    filled_rows = rows[rows > 0]
    assert filled_rows[0] < filled_rows[-1]  # an upright triangle: narrow apex, wide base
    square_rows = masks["square"].sum(1)
    assert len(set(square_rows[square_rows > 0].tolist())) == 1  # a square: every row equally wide


def test_dataset_shapes_markers_and_labels():
    data = make_dataset(20, seed=3, max_images=5)
    tok = Tokenizer()
    n = max_sequence_length(5)
    assert data.tokens.shape == (20, n) and data.images.shape == (20, 5, 3, 16, 16)
    assert torch.equal(data.media_locations, data.tokens == tok.media_id)
    assert torch.equal(data.media_locations.sum(1), data.num_images)
    assert int(data.num_images.min()) >= 1 and int(data.num_images.max()) <= 5
    for i in range(20):
        k = int(data.num_images[i])
        assert len(data.labels[i]) == k
        assert float(data.images[i, k:].abs().sum()) == 0.0  # unused media slots are empty
        words = tok.words(data.tokens[i])
        captions = " ".join(words).split("<eoc>")[:-1]
        assert len(captions) == k
        for cap, label in zip(captions, data.labels[i]):
            parsed = parse_caption(cap.replace(MEDIA_TOKEN, "").split())
            assert parsed == (*label, data.formats[i])  # one format per sequence, the right colour and shape


def test_deterministic_by_seed_and_heldout_differs():
    a, b = make_dataset(8, seed=5), make_dataset(8, seed=5)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    c = make_dataset(8, seed=6)
    assert not torch.equal(a.images, c.images)
    train, heldout = make_splits(30, 10, seed=0)
    train2, heldout2 = make_splits(30, 10, seed=0)
    assert torch.equal(train.images, train2.images) and torch.equal(heldout.tokens, heldout2.tokens)
    flat_train = {tuple(x.flatten().tolist()) for x in train.images.flatten(0, 1)[:50] if x.abs().sum() > 0}
    assert all(tuple(x.flatten().tolist()) not in flat_train for x in heldout.images.flatten(0, 1) if x.abs().sum() > 0)


def test_subset_and_bad_arguments():
    data = make_dataset(6, seed=0)
    sub = data[[1, 3]]
    assert len(sub) == 2 and torch.equal(sub.tokens[1], data.tokens[3]) and sub.labels[0] == data.labels[1]
    assert len(data[2:5]) == 3
    with pytest.raises(ValueError, match="min_images"):
        make_dataset(4, min_images=3, max_images=2)
    with pytest.raises(ValueError, match="formats"):
        make_dataset(4, formats=("upside_down",))
    with pytest.raises(ValueError, match="num_sequences"):
        make_dataset(0)
