"""The work picture of lesson 10: the segment view's cells, read off its layout, are exactly the mask's kept cells."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, strategies as st  # noqa: E402

from flamingo_lite.masks import cross_attention_mask  # noqa: E402
from flamingo_lite.teaching.viz import segments as viz  # noqa: E402


@given(bits=st.lists(st.booleans(), min_size=1, max_size=16), extra_media=st.integers(0, 2), m=st.integers(1, 3))
def test_segment_view_keeps_exactly_the_cells_the_mask_keeps(bits, extra_media, m):
    locations = torch.tensor([bits, bits[::-1]])  # (2, n)
    t = max(int(sum(bits)), 1) + extra_media
    for row in range(2):
        mask_view, segment_view = viz.work_grids(locations, t, m, row)
        kept = cross_attention_mask(locations, t, m, True)[row].numpy()
        assert ((segment_view == viz.USED) == kept).all()
        assert ((mask_view == viz.USED) == kept).all() and (mask_view != viz.NOT_COMPUTED).all()


def test_the_figure_shows_the_two_grids():
    locations = torch.tensor([[0, 1, 0, 0, 1, 1, 0]], dtype=torch.bool)
    fig = viz.plot_mask_vs_segments(locations, 3, 2)
    shown = [ax.images[0].get_array() for ax in fig.axes]
    expected = viz.work_grids(locations, 3, 2)
    assert all((s == e).all() for s, e in zip(shown, expected))
    assert "12 scores computed" in fig.axes[1].get_title()  # 6 tokens see an image, 2 latents each
    assert "42 scores computed" in fig.axes[0].get_title()  # 7 tokens x 3 images x 2 latents
    with pytest.raises(ValueError, match="row"):
        viz.work_grids(locations, 3, 2, row=1)
