"""The plots of lessons 01-03 show the numbers the model computes (read back from the figure's artists)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from einops import rearrange  # noqa: E402

import flamingo_lite  # noqa: E402
from flamingo_lite.teaching.viz.attention import (  # noqa: E402
    cross_attention_score_entries,
    plot_attention,
    plot_cross_attention_cost,
    plot_heatmaps,
    plot_latent_attention,
    plot_tokens_in_out,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image_array(ax, index=0) -> np.ma.MaskedArray:
    return np.ma.asarray(ax.images[index].get_array())


def _toy_image(size=16):
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    image = np.full((size, size, 3), 0.1)
    image[(yy - 5) ** 2 + (xx - 5) ** 2 < 4**2] = (0.9, 0.1, 0.1)  # a red disc
    image[(yy >= 9) & (yy < 15) & (xx >= 9) & (xx < 15)] = (0.1, 0.3, 0.9)  # a blue square
    return image


def test_heatmap_shows_the_softmax_of_the_scores_and_marks_nan_cells():
    torch.manual_seed(0)
    scores = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with_inf = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # row 1 is all NaN
    with_max = scores.masked_fill(~mask, -torch.finfo(scores.dtype).max).softmax(-1)  # row 1 is uniform
    fig = plot_heatmaps({"-inf": with_inf, "-finfo.max": with_max}, divider=2)
    shown_inf, shown_max = _image_array(fig.axes[0]), _image_array(fig.axes[1])
    assert shown_inf.mask[1].all() and not shown_inf.mask[[0, 2]].any()  # exactly the NaN row is masked
    np.testing.assert_allclose(shown_inf.filled(0)[[0, 2]], with_inf[[0, 2]].double().numpy())
    np.testing.assert_allclose(shown_max.data, with_max.double().numpy())
    assert np.allclose(shown_max.data[1], 0.2)  # the fully masked row became a uniform average
    nan_labels = [t for t in fig.axes[0].texts if t.get_text() == "NaN"]
    assert len(nan_labels) == 5
    assert any(line.get_xdata()[0] == 1.5 for line in fig.axes[0].lines)  # the divider before column 2


def test_plot_attention_shows_attention_weights_of_the_perceiver():
    torch.manual_seed(0)
    layer = flamingo_lite.PerceiverAttention(dim=8, dim_head=4, heads=2)
    x, latents = torch.randn(1, 1, 6, 8), torch.randn(1, 1, 3, 8)
    weights = layer.attention_weights(x, latents)  # (1, 1, 2, 3, 9)
    fig = plot_attention(weights[0, 0, 1], title="head 1", divider=6)
    np.testing.assert_allclose(_image_array(fig.axes[0]).data, weights[0, 0, 1].double().numpy())
    assert fig.axes[0].get_title() == "head 1"


def test_perceiver_attention_weights_are_the_ones_its_forward_pass_uses():
    """The weights lesson 02 plots, applied to the layer's own values and output projection, give its forward output."""
    torch.manual_seed(0)
    layer = flamingo_lite.PerceiverAttention(dim=8, dim_head=4, heads=2)
    x, latents = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 5, 8)  # (b, t, n, d), (b, t, L, d)
    with torch.no_grad():
        weights = layer.attention_weights(x, latents)  # (b, t, h, L, n+L)
        kv_input = torch.cat((layer.norm_media(x), layer.norm_latents(latents)), dim=-2)  # (b, t, n+L, d)
        v = rearrange(layer.to_kv(kv_input).chunk(2, dim=-1)[1], "b t j (h e) -> b t h j e", h=2)  # (b, t, h, n+L, e)
        out = torch.einsum("b t h i j, b t h j e -> b t h i e", weights, v)  # (b, t, h, L, e)
        out = layer.to_out(rearrange(out, "b t h L e -> b t L (h e)"))  # (b, t, L, d)
        torch.testing.assert_close(out, layer(x, latents))
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 3, 2, 5))


def test_latent_attention_panels_hold_each_latents_weights_on_the_patch_grid():
    torch.manual_seed(0)
    image = _toy_image(16)
    p, grid = 4, (4, 4)
    patches = rearrange(torch.tensor(image, dtype=torch.float32), "(gh p1) (gw p2) c -> (gh gw) (p1 p2 c)", p1=p, p2=p)
    features = torch.nn.Linear(patches.shape[-1], 16)(patches).detach()  # (n, d)
    layer = flamingo_lite.PerceiverAttention(dim=16, dim_head=8, heads=2)
    weights = layer.attention_weights(features[None, None], torch.randn(1, 1, 5, 16))  # (1, 1, 2, 5, 16+5)
    averaged = weights[0, 0].mean(0)  # (5, 21)
    fig = plot_latent_attention(image, averaged, grid, latents=[0, 3, 4])
    assert len(fig.axes) == 4
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), image)
    for ax, lat in zip(fig.axes[1:], [0, 3, 4]):
        shown = _image_array(ax, -1).data
        assert shown.shape == grid
        np.testing.assert_allclose(shown, averaged[lat, :16].reshape(grid).double().numpy(), rtol=1e-12)
        share = float(averaged[lat, :16].sum())
        assert f"{share:.0%} on patches" in ax.get_title()
    # patches with the same content get the same weight: all background patches are equal in the figure
    background = (patches.std(-1) == 0) & (patches[:, 0] < 0.2)  # (n,) uniform dark patches
    values = _image_array(fig.axes[1], -1).data.reshape(-1)[background.numpy()]
    assert background.sum() >= 3 and np.ptp(values) < 1e-6


def test_latent_attention_rejects_weights_that_do_not_fit_the_grid():
    with pytest.raises(ValueError, match="n = 3\\*3 = 9"):
        plot_latent_attention(_toy_image(12), torch.rand(2, 10), (3, 3))
    with pytest.raises(ValueError, match="grid must be"):
        plot_latent_attention(_toy_image(12), torch.rand(2, 11), (3, 0))
    with pytest.raises(ValueError, match="out of range"):
        plot_latent_attention(_toy_image(12), torch.rand(2, 11), (3, 3), latents=[2])


def test_tokens_in_out_plots_what_the_resampler_returns():
    torch.manual_seed(0)
    resampler = flamingo_lite.PerceiverResampler(dim=8, depth=1, dim_head=4, heads=2, num_latents=5)
    tokens_in = [2, 9, 40]
    tokens_out = [resampler(torch.randn(1, n, 8)).shape[-2] for n in tokens_in]
    fig = plot_tokens_in_out(tokens_in, tokens_out)
    xy = fig.axes[0].lines[0].get_xydata()
    np.testing.assert_array_equal(xy, np.array([[2, 5], [9, 5], [40, 5]], dtype=float))


def test_cross_attention_cost_bars_are_the_score_matrix_sizes():
    text_len, num_media, num_latents, tokens_in = 7, 3, 4, [16, 64]
    fig = plot_cross_attention_cost(tokens_in, num_latents, text_len=text_len, num_media=num_media)
    without, with_resampler = fig.axes[0].containers[:2]
    # the sizes of real score matrices q k^T, per head
    for bar, n in zip(without, tokens_in):
        scores = torch.randn(text_len, 8) @ torch.randn(num_media * n, 8).T  # (text, media * n)
        assert bar.get_height() == scores.numel() == cross_attention_score_entries(text_len, num_media, n)
    for bar in with_resampler:
        assert bar.get_height() == text_len * num_media * num_latents
    assert [t.get_text() for t in fig.axes[0].texts] == ["x4", "x16"]


def test_score_entries_validates_its_arguments():
    assert cross_attention_score_entries(2, 3, 4, heads=5) == 120
    with pytest.raises(ValueError, match="tokens_per_media"):
        cross_attention_score_entries(2, 3, 0)
