"""The mask functions: media_locations -> text time -> mask, the one source of truth for layers and plots."""
import pytest
import torch
from hypothesis import given, strategies as st

from flamingo_lite import masks


def test_text_time_counts_markers_so_far():
    loc = torch.tensor([[0, 1, 0, 0, 1, 1, 0]], dtype=torch.bool)
    assert masks.text_time(loc).tolist() == [[0, 1, 1, 1, 2, 3, 3]]


def test_immediate_and_all_previous_masks():
    times = torch.tensor([[0, 1, 1, 2, 3]])
    immediate = masks.text_to_media_mask(times, 3, True)[0].int().tolist()
    previous = masks.text_to_media_mask(times, 3, False)[0].int().tolist()
    assert immediate == [[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert previous == [[0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_latent_columns_are_media_major():
    mask = masks.cross_attention_mask(torch.tensor([[1, 0, 1]], dtype=torch.bool), 2, 3, True)  # (1, 3, 6)
    assert mask[0].int().tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]


@given(bits=st.lists(st.booleans(), min_size=1, max_size=20), num_media=st.integers(1, 6),
       immediate=st.booleans(), num_latents=st.integers(1, 4))
def test_mask_properties(bits, num_media, immediate, num_latents):
    loc = torch.tensor([bits])
    times = masks.text_time(loc)[0]
    mask = masks.cross_attention_mask(loc, num_media, num_latents, immediate)[0]  # (n, t*m)
    per_media = mask.view(len(bits), num_media, num_latents)
    assert (per_media == per_media[..., :1]).all()  # a media is seen whole or not at all
    blind = masks.rows_without_media(loc)[0]
    assert not mask[blind].any()  # text before the first media sees nothing, in both modes
    for i, t in enumerate(times.tolist()):
        seen = per_media[i, :, 0].nonzero().flatten().add(1).tolist()  # media times seen by token i
        if immediate:
            expected = [t] if 1 <= t <= num_media else []
        else:
            expected = list(range(1, min(t, num_media) + 1))
        assert seen == expected


def test_tokenize_and_locations():
    tokens = masks.tokenize_interleaved("<image>a red circle <image> a blue square")
    assert tokens == ["<image>", "a", "red", "circle", "<image>", "a", "blue", "square"]
    assert masks.media_locations_from_tokens(tokens).tolist() == [True, False, False, False, True, False, False, False]
    batch = masks.media_locations_from_tokens([["<image>", "a"], ["a", "<image>"]])
    assert batch.shape == (2, 2) and batch.tolist() == [[True, False], [False, True]]
    with pytest.raises(ValueError, match="same length"):
        masks.media_locations_from_tokens([["<image>"], ["a", "b"]])
    with pytest.raises(TypeError, match="tokenize_interleaved"):
        masks.media_locations_from_tokens("<image> a")


def test_check_media_locations():
    ok = masks.check_media_locations(torch.tensor([[0, 1]]), batch=1, text_len=2)
    assert ok.dtype == torch.bool and ok.tolist() == [[False, True]]
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        masks.check_media_locations(torch.zeros(1, 2, dtype=torch.bool), batch=1, text_len=3)
    with pytest.raises(ValueError, match="4 media in batch row 1"):
        masks.check_markers_fit_media(torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool), 3)
