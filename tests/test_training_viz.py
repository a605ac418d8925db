"""Training plots and the stepping widget: the numbers drawn are the numbers recorded or computed."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from flamingo_lite.tiny.data import make_dataset  # noqa: E402
from flamingo_lite.tiny.model import Flamingo, FlamingoConfig  # noqa: E402
from flamingo_lite.teaching.training_widgets import frame, render_frame, training_stepper  # noqa: E402
from flamingo_lite.teaching.viz.training import (  # noqa: E402
    caption_attention, gate_curves, plot_caption_attention, plot_captioned_images, plot_gates, plot_loss,
)

TINY = dict(dim=32, dim_head=8, heads=2, lm_depth=2, lm_heads=2, num_latents=4, resampler_depth=1, vision="handmade")
HISTORY = {
    "step": [0, 10, 20],
    "loss": [2.0, 1.0, 0.5],
    "loss_every_step": list(np.linspace(2, 0.5, 20)),
    "attn_gate_tanh": [[0.0, 0.0], [0.1, -0.2], [0.15, -0.3]],
    "ff_gate_tanh": [[0.0, 0.0], [0.05, 0.1], [0.07, 0.2]],
}


def test_gate_curves_and_plot_show_the_history():
    steps, attn, ff = gate_curves(HISTORY)
    assert steps.tolist() == [0, 10, 20] and attn.shape == (3, 2) and ff[2, 1] == 0.2
    axes = plot_gates(HISTORY)
    line = axes[0].get_lines()[1]
    assert np.allclose(line.get_ydata(), [0.0, 0.2, 0.3])  # |tanh| of the second layer's attention gate
    assert np.allclose(axes[1].get_lines()[0].get_ydata(), [0.0, 0.05, 0.07])
    plt.close("all")
    with pytest.raises(ValueError, match="one list of gates"):
        gate_curves({**HISTORY, "ff_gate_tanh": [[0.0]] * 3})


def test_plot_loss_draws_the_logged_losses():
    ax = plot_loss(HISTORY)
    logged = ax.get_lines()[-1]
    assert logged.get_xdata().tolist() == [0, 10, 20] and logged.get_ydata().tolist() == [2.0, 1.0, 0.5]
    plt.close("all")


def test_an_empty_history_is_named_before_drawing():
    """A training cell stopped before its first entry leaves an empty history: the plot says so, instead of numpy's
    'zero-size array' from inside matplotlib."""
    empty = {"step": [], "loss": [], "attn_gate_tanh": [], "ff_gate_tanh": [], "loss_every_step": []}
    for plot in (plot_loss, plot_gates, gate_curves):
        with pytest.raises(ValueError, match=r"history has no logged step .*training cell above stopped"):
            plot(empty)
    plt.close("all")


def test_widget_frame_is_the_history_and_renders():
    shown = frame(HISTORY, 1)
    assert shown == {"step": 10, "loss": 1.0, "attn": [0.1, -0.2], "ff": [0.05, 0.1]}
    fig = render_frame(HISTORY, 2)
    bars = fig.axes[1].patches
    assert np.allclose([b.get_height() for b in bars], [0.15, 0.3, 0.07, 0.2])  # |attn| then |ff| per block
    plt.close(fig)
    with pytest.raises(IndexError):
        frame(HISTORY, 3)
    box = training_stepper(HISTORY)
    slider = box.children[0].children[1]
    assert slider.max == 2 and slider.value == 2
    slider.value = 0  # the callback runs and draws step 0 without error
    plt.close("all")


def test_caption_attention_is_the_models_attention():
    torch.manual_seed(0)
    model = Flamingo(FlamingoConfig(**TINY)).eval()
    data = make_dataset(2, seed=4, min_images=2, max_images=3)
    result = caption_attention(model, data.tokens[0], data.images[0], layer=1)
    n = len(result["words"])
    assert result["words"][0] == "<image>" and "<pad>" not in result["words"]
    expected = model.cross_attention_weights(data.tokens[:1, :n], data.images[:1])[1][0].mean(0)
    assert np.allclose(result["weights"], expected.numpy())
    w = result["weights"].reshape(n, 3, 4).sum(-1)  # (n, media): attention per picture
    picture = np.cumsum([word == "<image>" for word in result["words"]]) - 1  # (n,): the picture each token follows
    assert np.allclose(w[np.arange(n), picture], 1.0)  # all of each token's attention is on its own picture
    ax = plot_caption_attention(result, used_media=2)
    assert ax.images[0].get_array().shape == (n, 8)
    fig = plot_captioned_images(data.images[0, :2], ["a red circle", "a blue square"], truths=["a red circle", "x"])
    assert [a.get_title() for a in fig.axes[:2]] == ["a red circle", "a blue square"]
    plt.close("all")
