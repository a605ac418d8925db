"""The mask pictures show exactly the mask the model uses (the data in the figure, not just its look)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flamingo_lite
from flamingo_lite.masks import cross_attention_mask, media_locations_from_tokens, tokenize_interleaved
from flamingo_lite.teaching.viz import gates as gate_plots
from flamingo_lite.teaching.viz import masks as mask_plots

SEQUENCES = [
    "<image> a red circle <image> a blue square",
    "a photo of <image> a red circle <image> a blue square",
    "<image> <image> two images then words <image> green triangle",
    "no images at all",
]


def expected_mask(sequence, num_latents, mode):
    locations = media_locations_from_tokens(tokenize_interleaved(sequence)).unsqueeze(0)  # (1, n)
    num_media = max(1, int(locations.sum()))
    return cross_attention_mask(locations, num_media, num_latents, mode)[0]  # (n, t*m)


@pytest.mark.parametrize("sequence", SEQUENCES)
@pytest.mark.parametrize("mode", [True, False])
@pytest.mark.parametrize("num_latents", [1, 3])
def test_mask_figure_shows_cross_attention_mask(sequence, mode, num_latents):
    fig = mask_plots.mask_figure(sequence, num_latents, mode)
    (array,) = mask_plots.figure_image_arrays(fig)
    expected = expected_mask(sequence, num_latents, mode)
    assert array.shape == tuple(expected.shape)
    np.testing.assert_array_equal(array, expected.numpy().astype(float))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert [label.split()[0] for label in labels] == tokenize_interleaved(sequence)
    plt.close(fig)


def test_modes_differ_only_after_the_second_image():
    seq = "<image> a red circle <image> a blue square"
    immediate = mask_plots.figure_image_arrays(mask_plots.mask_figure(seq, 2, True))[0]
    previous = mask_plots.figure_image_arrays(mask_plots.mask_figure(seq, 2, False))[0]
    plt.close("all")
    differs = (immediate != previous).any(axis=1)
    assert differs.tolist() == [False] * 4 + [True] * 4
    assert previous[4:, :2].all() and not immediate[4:, :2].any()  # words after image 2 also see image 1 (or not)


@given(st.lists(st.sampled_from(["<image>", "a", "red", "dog"]), min_size=1, max_size=9), st.booleans(), st.integers(1, 3))
def test_sequence_mask_matches_the_layers_mask(tokens, mode, m):
    sm = mask_plots.sequence_mask(tokens, m, mode)
    locations = media_locations_from_tokens(tokens).unsqueeze(0)
    t = max(1, int(locations.sum()))
    assert torch.equal(sm.mask, cross_attention_mask(locations, t, m, mode)[0])
    assert sm.per_media.shape == (len(tokens), t)
    # the readout agrees with the mask: a word that "sees nothing" has an all-False row
    for line, row in zip(mask_plots.describe_mask(sm), sm.mask):
        assert line.endswith("(before the first image)") == (not bool(row.any()))


def test_weights_and_mask_figure_holds_the_real_weights():
    torch.manual_seed(0)
    sm = mask_plots.sequence_mask("a photo of <image> a red circle <image> a blue square", 3, False)
    layer = flamingo_lite.MaskedCrossAttention(dim=8, dim_head=4, heads=2, only_attend_immediate_media=False)
    x = torch.randn(1, len(sm.tokens), 8)
    media = torch.randn(1, sm.num_media, 3, 8)
    weights = layer.attention_weights(x, media, sm.media_locations.unsqueeze(0))[0]  # (h, n, t*m)
    fig = mask_plots.weights_and_mask_figure(weights, sm.mask, sm.tokens, 3, times=sm.text_time, head=1)
    shown_weights, shown_mask = mask_plots.figure_image_arrays(fig)
    np.testing.assert_array_equal(shown_weights, weights[1].numpy().astype(np.float64))
    np.testing.assert_array_equal(shown_mask, sm.mask.numpy().astype(float))
    gids = [p.get_gid() for p in fig.axes[0].patches]
    assert gids.count("leak") == 0 and gids.count("masked") == int((~sm.mask).sum())
    plt.close(fig)


def test_weights_figure_outlines_leaks():
    sm = mask_plots.sequence_mask("<image> a <image> b", 1, True)
    weights = torch.full(sm.mask.shape, 0.5)  # a broken layer that attends everywhere
    fig = mask_plots.weights_and_mask_figure(weights, sm.mask, sm.tokens, 1)
    gids = [p.get_gid() for p in fig.axes[0].patches]
    assert gids.count("leak") == int((~sm.mask).sum()) and "masked" not in gids
    plt.close(fig)


def test_draw_matrix_rejects_wrong_shapes():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="shape"):
        mask_plots.draw_matrix(ax, torch.zeros(3, 4, dtype=torch.bool), ["a", "b"], 2)
    plt.close(fig)


def test_captions_and_thumbnails():
    tokens = tokenize_interleaved("hello <image> a red circle <image> a blue square")
    assert mask_plots.media_captions(tokens) == ["a red circle", "a blue square"]
    red = mask_plots.shape_thumbnail("a red circle")
    blue = mask_plots.shape_thumbnail("a blue square")
    assert red.shape == (32, 32, 3)
    assert np.allclose(red[16, 16], mask_plots.COLOURS["red"]) and np.allclose(red[0, 0], 1.0)  # disc, white corner
    assert np.allclose(blue[6, 6], mask_plots.COLOURS["blue"])  # a square fills its corners, a disc does not
    assert np.allclose(red[6, 6], 1.0)


def test_tanh_and_derivative():
    gate, slope = gate_plots.tanh_and_derivative([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(gate, np.tanh([-1.0, 0.0, 2.0]))
    a = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    a.tanh().sum().backward()
    np.testing.assert_allclose(slope, a.grad.numpy(), rtol=1e-6)
    fig = gate_plots.tanh_figure(0.5)
    xs, ys = fig.axes[0].lines[0].get_data()
    np.testing.assert_allclose(ys, np.tanh(xs))
    plt.close(fig)


def test_block_movement_is_zero_at_closed_gates_and_restores_gates():
    torch.manual_seed(0)
    block = flamingo_lite.GatedCrossAttentionBlock(dim=8, dim_head=4, heads=2)
    x, media = torch.randn(1, 5, 8), torch.randn(1, 2, 3, 8)
    locations = torch.tensor([[1, 0, 0, 1, 0]], dtype=torch.bool)
    assert gate_plots.block_movement(block, (x, media, locations), 0.0) == 0.0
    moved = gate_plots.block_movement(block, (x, media, locations), 1.0)
    with torch.no_grad():
        block.attn_gate.fill_(1.0)
        block.ff_gate.fill_(1.0)
        direct = float((block(x, media, locations) - x).abs().mean())
        block.attn_gate.zero_()
        block.ff_gate.zero_()
    assert moved == pytest.approx(direct) and moved > 0
    assert float(block.attn_gate.detach()) == 0.0 and float(block.ff_gate.detach()) == 0.0
    fig, alphas, moves = gate_plots.gate_figure(block, (x, media, locations), 1.0, num=5)
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), moves)
    assert moves[2] == 0.0 and (moves[[0, 1, 3, 4]] > 0).all()  # alphas -3, -1.5, 0, 1.5, 3
    plt.close(fig)
