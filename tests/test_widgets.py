"""The widgets' callbacks return the real mask and gate numbers, and the widgets hold what the browser test needs."""
import base64

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

ipywidgets = pytest.importorskip("ipywidgets")

from flamingo_lite.teaching import widgets
from flamingo_lite.masks import cross_attention_mask, media_locations_from_tokens, tokenize_interleaved
from flamingo_lite.teaching.viz import masks as mask_plots

SEQ = "<image> a red circle <image> a blue square"


def the_mask(sequence, mode, m=2):
    locations = media_locations_from_tokens(tokenize_interleaved(sequence)).unsqueeze(0)
    return cross_attention_mask(locations, max(1, int(locations.sum())), m, mode)[0]


@pytest.mark.parametrize("mode", [True, False])
def test_mask_view_figure_is_the_mask(mode):
    fig, text = widgets.mask_view(SEQ, mode)
    (array,) = mask_plots.figure_image_arrays(fig)
    np.testing.assert_array_equal(array, the_mask(SEQ, mode).numpy().astype(float))
    lines = text.splitlines()
    assert lines[0].startswith(f"only_attend_immediate_media={mode}")
    assert lines[6] == ("a [2] -> image 2" if mode else "a [2] -> image 1, image 2")
    plt.close(fig)


def test_mask_view_text_before_the_first_image_and_empty():
    fig, text = widgets.mask_view("hi <image> cat", False)
    assert text.splitlines()[1] == "hi [0] -> nothing (before the first image)"
    plt.close(fig)
    fig, text = widgets.mask_view("   ", True)
    assert "empty" in text and not mask_plots.figure_image_arrays(fig)
    plt.close(fig)


def test_mask_readout_counts_markers_and_explains_a_sequence_without_images():
    one = widgets.mask_readout("<image> a cat", True).splitlines()
    assert one[0].endswith("3 tokens, 1 <image> marker, 1 media x 2 latents")
    none = widgets.mask_readout("no pictures here", False).splitlines()
    assert "0 <image> markers" in none[0] and none[1].startswith("(no <image> marker")
    assert none[2:] == [f"{w} [0] -> nothing (before the first image)" for w in ("no", "pictures", "here")]
    assert not the_mask("no pictures here", False).any()  # the note says what the mask says: nobody sees the media


def find(box, cls):
    found = []
    for child in box.children:
        if isinstance(child, cls):
            found.append(child)
        if hasattr(child, "children"):
            found.extend(find(child, cls))
    return found


def shown_png(output):
    (item,) = output.outputs
    png = base64.b64decode(item["data"]["image/png"])
    assert png.startswith(b"\x89PNG")
    return png


def test_mask_explorer_contract_and_redraw():
    box = widgets.mask_explorer(SEQ, num_latents=2)
    (toggle,) = find(box, ipywidgets.ToggleButton)
    (text,) = find(box, ipywidgets.Text)
    (output,) = find(box, ipywidgets.Output)
    (readout,) = find(box, ipywidgets.HTML)
    assert toggle.description == "only_attend_immediate_media" and toggle.value is True
    assert "flamingo-readout" in readout._dom_classes
    assert text.value == SEQ
    first_png, first_text = shown_png(output), readout.value
    assert "square [2] -&gt; image 2" in first_text
    toggle.value = False
    assert "square [2] -&gt; image 1, image 2" in readout.value
    assert shown_png(output) != first_png
    text.value = "hello <image> dog"
    assert "hello [0] -&gt; nothing (before the first image)" in readout.value
    png = shown_png(output)
    text.value = " ".join(["<image> word"] * 30)  # too long to draw: the readout says so, the picture stays
    assert "cannot draw this" in readout.value and "60 tokens" in readout.value
    assert shown_png(output) == png
    plt.close("all")


def test_gate_view_and_explorer():
    block, inputs = widgets.gate_setup()
    fig, text = widgets.gate_view(0.0, block, inputs)
    assert "mean |block(x) - x| = 0.0000  (exactly the identity)" in text
    plt.close(fig)
    with torch.no_grad():
        block.attn_gate.fill_(0.7)
        block.ff_gate.fill_(0.7)
        expected = float((block(*inputs) - inputs[0]).abs().mean())
        block.attn_gate.zero_()
        block.ff_gate.zero_()
    fig, text = widgets.gate_view(0.7, block, inputs)
    assert f"mean |block(x) - x| = {expected:.4f}" in text and expected > 0
    assert f"tanh(alpha) = {np.tanh(0.7):.4f}" in text
    plt.close(fig)

    box = widgets.gate_explorer()
    (slider,) = find(box, ipywidgets.FloatSlider)
    (output,) = find(box, ipywidgets.Output)
    (readout,) = find(box, ipywidgets.HTML)
    assert slider.description == "gate" and slider.value == 0.0
    assert "flamingo-readout" in readout._dom_classes
    assert "exactly the identity" in readout.value
    before = shown_png(output)
    slider.value = 1.0
    assert "exactly the identity" not in readout.value and shown_png(output) != before
    plt.close("all")


def test_layers_do_not_import_widgets():
    import subprocess
    import sys

    code = "import sys, flamingo_lite; print(any(m.split('.')[0] in ('ipywidgets', 'matplotlib') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
