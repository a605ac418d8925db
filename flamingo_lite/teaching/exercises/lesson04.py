"""Lesson 04's checks: text time from media_locations, the text-to-media mask in both modes, the whole
cross-attention mask, and the prediction puzzle."""
from __future__ import annotations

import torch
from einops import rearrange, repeat

from ... import masks
from . import Mistake, compare, fail, passed, register_hints, run_learner

register_hints({
    "04.text_time": "media_locations.long().cumsum(dim=-1): the number of markers at or before each token. The "
    "marker itself already belongs to its image, so it counts.",
    "04.media_mask": "Media are numbered 1..t: torch.arange(1, num_media + 1). Put text time on a column, 'b n -> "
    "b n 1', media time on a row, 't -> 1 1 t', and compare: == for the immediate mode, >= for all previous.",
    "04.mask": "my_text_time, then the comparison of the previous step, then repeat(per_media, 'b n t -> b n (t m)', "
    "m=num_latents): each media's column becomes m columns side by side, media-major.",
    "04.predict": "Write the text time under each token first: a 0, <image> 1, b 1, c 1, <image> 2, <image> 3, d 3. "
    "Immediate: a 1 in the column of its own text time; all previous: 1s in every column up to it.",
})

_CASES = [
    [[1, 0, 0, 1, 0, 0, 0, 0]],
    [[0, 0, 1, 0, 1, 1, 0, 0]],  # text before the first image, two markers in a row
    [[1, 0, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0, 0, 1]],  # a batch of two
]

_FROM_0 = ("media are numbered from 0 here, so every word looks at the image before its own: number them 1..t, "
           "torch.arange(1, num_media + 1), as text time counts from 1.")
_SWAPPED = "the modes are swapped: only_attend_immediate_media=True keeps text time == media time, False keeps >=."
_FUTURE = ("text before the first image sees every image, the future ones included (the original code's look into "
           "the future): text time 0 must see nothing, in both modes.")


_FIRST_SEES_ONE = ("text before the first image sees image 1: its text time is 0 and must match no image (clamping "
                   "text time to 1 is the leak this lesson fixes).")
_INVERTED = "the mask is inverted: True must mean may attend, so keep the comparison, not its negation (~)."


def _check_dtype(got, dtype, what) -> None:
    """The answer's dtype, named: a long mask passes an equality test here and breaks masked_fill in lesson 05."""
    if isinstance(got, torch.Tensor) and got.dtype != dtype:
        fail(f"{what} returned a {got.dtype} tensor: return {dtype} ({'a comparison gives it' if dtype == torch.bool else 'cumsum of a .long() gives it'}).")


def check_text_time(my_text_time) -> None:
    """Step 04.text_time: `my_text_time(media_locations)`, (b, n) bool -> (b, n) running count of markers."""
    for rows in _CASES:
        loc = torch.tensor(rows, dtype=torch.bool)  # (b, n)
        what = f"your my_text_time({rows})"
        got = run_learner(my_text_time, loc, what=what)
        _check_dtype(got, torch.long, what)
        want = masks.text_time(loc)  # (b, n)
        compare(got, want, what=what, mistakes=[
            Mistake("media numbered from 0", want - 1,
                    "every token is one too low: the first image is image 1, and a marker counts itself (cumsum)."),
            Mistake("marker not counted", want - loc.long(),
                    "a marker gets the count before it: cumsum counts the marker itself, so the <image> token "
                    "belongs to its own image."),
            Mistake("total count", loc.long().sum(-1, keepdim=True).expand_as(want),
                    "every token got the total number of images: a running count is cumsum(dim=-1), not sum."),
        ])
    passed("my_text_time is right: a running count of the images, 0 before the first.")


def reference_media_mask(text_time, num_media, immediate, *, first=1, future=False, clamp=False):
    if clamp:
        text_time = text_time.clamp(min=1)  # (b, n): text before the first image treated as image 1's
    media_time = torch.arange(first, num_media + first)  # (t,)
    tt, mt = rearrange(text_time, "b n -> b n 1"), rearrange(media_time, "t -> 1 1 t")  # (b, n, 1), (1, 1, t)
    per_media = (tt == mt) if immediate else (tt >= mt)  # (b, n, t)
    if future:
        per_media = per_media | (tt == 0)
    return per_media


def check_media_mask(my_text_to_media_mask) -> None:
    """Step 04.media_mask: `my_text_to_media_mask(text_time, num_media, only_attend_immediate_media)` -> (b, n, t)."""
    for rows in _CASES:
        loc = torch.tensor(rows, dtype=torch.bool)
        tt, t = masks.text_time(loc), int(loc.sum(-1).max())  # (b, n)
        for mode in (True, False):
            what = f"your my_text_to_media_mask(text_time, {t}, only_attend_immediate_media={mode}) for {rows}"
            got = run_learner(my_text_to_media_mask, tt, t, mode, what=what)
            _check_dtype(got, torch.bool, what)
            compare(got, reference_media_mask(tt, t, mode), what=what, mistakes=[
                Mistake("media numbered from 0", reference_media_mask(tt, t, mode, first=0), _FROM_0),
                Mistake("modes swapped", reference_media_mask(tt, t, not mode), _SWAPPED),
                Mistake("look into the future", reference_media_mask(tt, t, mode, future=True), _FUTURE),
                Mistake("first image seen early", reference_media_mask(tt, t, mode, clamp=True), _FIRST_SEES_ONE),
                Mistake("inverted", ~reference_media_mask(tt, t, mode), _INVERTED),
            ])
    passed("my_text_to_media_mask is right in both modes; text before the first image sees nothing.")


def check_cross_attention_mask(my_cross_attention_mask) -> None:
    """Exercise 2: `my_cross_attention_mask(media_locations, num_media, num_latents, mode)` -> (b, n, t*m)."""
    for rows in _CASES:
        loc = torch.tensor(rows, dtype=torch.bool)
        tt, t = masks.text_time(loc), int(loc.sum(-1).max())
        for mode in (True, False):
            for m in (1, 3):
                what = f"your my_cross_attention_mask({rows}, {t}, {m}, only_attend_immediate_media={mode})"
                got = run_learner(my_cross_attention_mask, loc, t, m, mode, what=what)
                _check_dtype(got, torch.bool, what)
                expand = lambda per_media: repeat(per_media, "b n t -> b n (t m)", m=m)  # noqa: E731
                compare(got, masks.cross_attention_mask(loc, t, m, mode), what=what, mistakes=[
                    Mistake("media numbered from 0", expand(reference_media_mask(tt, t, mode, first=0)), _FROM_0),
                    Mistake("modes swapped", expand(reference_media_mask(tt, t, not mode)), _SWAPPED),
                    Mistake("look into the future", expand(reference_media_mask(tt, t, mode, future=True)), _FUTURE),
                    Mistake("first image seen early", expand(reference_media_mask(tt, t, mode, clamp=True)), _FIRST_SEES_ONE),
                    Mistake("inverted", expand(~reference_media_mask(tt, t, mode)), _INVERTED),
                    Mistake("latents interleaved", repeat(reference_media_mask(tt, t, mode), "b n t -> b n (m t)", m=m),
                            "the latents are interleaved across images: write '(t m)', so each image's m latents sit "
                            "side by side, as the media tensor (b, t, m, d) flattens."),
                ])
    passed("my_cross_attention_mask equals flamingo_lite's mask in both modes.")


def check_predicted_masks(predicted_masks) -> None:
    """Exercise 1: the two masks of "a <image> b c <image> <image> d", predicted by hand."""
    puzzle = "a <image> b c <image> <image> d".split()
    puzzle_time = masks.text_time(masks.media_locations_from_tokens(puzzle).unsqueeze(0))  # (1, n)
    guesses = run_learner(predicted_masks, what="your predicted_masks()")
    if not isinstance(guesses, (tuple, list)) or len(guesses) != 2:
        fail("predicted_masks() must return two lists of rows: (immediate, all_previous).")
    for mode, guess in zip((True, False), guesses):
        want = masks.text_to_media_mask(puzzle_time, 3, only_attend_immediate_media=mode)[0].int().tolist()  # (n, t)
        if len(guess) != len(puzzle):
            fail(f"only_attend_immediate_media={mode}: one row per token, {len(puzzle)} rows; you gave {len(guess)}.")
        wrong = [f"{i} ({tok})" for i, (tok, row, right) in enumerate(zip(puzzle, guess, want)) if [int(v) for v in row] != right]
        if wrong:
            fail(f"only_attend_immediate_media={mode}: look again at rows {', '.join(wrong)}; write each token's text "
                 "time under it first.")
    passed("both masks predicted right. In the immediate mode image 2 is seen by its own marker only.")
