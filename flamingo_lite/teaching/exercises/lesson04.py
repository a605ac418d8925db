"""Lesson 04's checks: text time from media_locations, the text-to-media mask in both modes, the whole
cross-attention mask, and the prediction puzzle."""
from __future__ import annotations

import torch
from einops import rearrange, repeat

from ... import masks
from . import Mistake, compare, fail, passed, register_hints, register_nudges, run_learner, keep_rng, refuse_the_answer

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
register_nudges({  # a first hint where the full one is the answer: hint(key), then hint(key, 2)
    "04.text_time": "A token's text time is how many <image> markers come at or before it, counted along the "
    "sequence. One cumulative operation of torch gives it; a marker counts for its own position.",
    "04.media_mask": "Compare each token's text time with each image's number, 1 to t, by broadcasting a column "
    "against a row. The two modes differ in one comparison.",
    "04.mask": "Build it from your two earlier steps, then give each image's column one column per latent, "
    "the latents of one image side by side.",
    "04.predict": "Write each token's text time under it first: the number of <image> markers at or before it. Each row"
    " then follows from that number: which images may the token see in each mode?",
})

_CASES = [
    [[1, 0, 0, 1, 0, 0, 0, 0]],
    [[0, 0, 1, 0, 1, 1, 0, 0]],  # text before the first image, two markers in a row
    [[1, 0, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0, 0, 1]],  # a batch of two
]

_FROM_0 = ("media are numbered from 0 here, so every text time points one image too far: a word after image i sees "
           "image i + 1, and text before the first image sees the first: number them 1..t, "
           "torch.arange(1, num_media + 1), as text time counts from 1.")
_ONE_LOW = ("every word's text time is one too low (`text_time - 1`): a word after image i sees image i - 1, and the "
            "words after the first image see nothing; text time is already the number of the image a word follows, "
            "so compare it as it is.")
_SWAPPED = "the modes are swapped: only_attend_immediate_media=True keeps text time == media time, False keeps >=."
_FUTURE = ("text before the first image sees every image, the future ones included (the original code's look into "
           "the future): text time 0 must see nothing, in both modes.")

_ANSWERS = (masks.text_time, masks.text_to_media_mask, masks.cross_attention_mask)  # what lesson 04 writes


_FIRST_SEES_ONE = ("text before the first image sees image 1: its text time is 0 and must match no image in either "
                   "mode, since no image comes before it; do not clamp text time to 1.")
_INVERTED = "the mask is inverted: True must mean may attend, so keep the comparison, not its negation (~)."
_IGNORED = ("the mode is ignored: only_attend_immediate_media=True and False give the same mask; keep text time == "
            "media time when it is True and text time >= media time when it is False.")
_STRICT = ("a token does not see its own image in the all-previous mode: keep text time >= media time, not >, so "
           "text time i sees image i too.")
_FIXED = "a fixed number where the size comes from the arguments (num_media / num_latents)"


def _check_dtype(got, dtype, what) -> None:
    """The answer's dtype, named: a long mask passes an equality test here and breaks masked_fill in lesson 05."""
    if isinstance(got, torch.Tensor) and got.dtype != dtype:
        fail(f"{what} returned a {got.dtype} tensor: return {dtype} ({'a comparison gives it' if dtype == torch.bool else 'cumsum of a .long() gives it'}).")


def check_text_time(my_text_time) -> None:
    """Step 04.text_time: `my_text_time(media_locations)`, (b, n) bool -> (b, n) running count of markers."""
    refuse_the_answer(my_text_time, _ANSWERS)
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
            Mistake("count down the batch", loc.long().cumsum(dim=0),
                    "the count runs down the batch (dim=0), not along the text: cumsum(dim=-1)."),
            Mistake("one too high", want + 1,
                    "every token is one too high: text before the first image has text time 0, and a marker "
                    "already counts itself in cumsum(dim=-1), so do not add 1."),
        ])
    passed("my_text_time is right: a running count of the images, 0 before the first.")


def reference_media_mask(text_time, num_media, immediate, *, first=1, future=False, clamp=False, strict=False,
                         backwards=None):
    if clamp:
        text_time = text_time.clamp(min=1)  # (b, n): text before the first image treated as image 1's
    media_time = torch.arange(first, num_media + first)  # (t,)
    tt, mt = rearrange(text_time, "b n -> b n 1"), rearrange(media_time, "t -> 1 1 t")  # (b, n, 1), (1, 1, t)
    per_media = (tt == mt) if immediate else (tt > mt) if strict else (tt >= mt)  # (b, n, t)
    if backwards is not None:  # the comparison the wrong way round: "<=" or "<", each word sees the later images
        per_media = (tt <= mt) if backwards == "<=" else (tt < mt)  # (b, n, t)
    if future:
        per_media = per_media | (tt == 0)
    return per_media


def _runs():
    """(rows, media_locations, num_media, number of markers): each case with num_media = its most markers, then each
    with one media more than markers (a batch padded with media no marker points to yet), so a size taken from
    the markers instead of num_media shows, after a number fixed to the example has been named."""
    for extra in (0, 1):
        for rows in _CASES:
            loc = torch.tensor(rows, dtype=torch.bool)  # (b, n)
            markers = int(loc.sum(-1).max())
            yield rows, loc, markers + extra, markers


def _media_mistakes(tt, t, mode, markers, expand=lambda per_media: per_media) -> list[Mistake]:
    """The usual wrong per-media masks, each passed through `expand` (the full mask's repeat over latents)."""
    out = [
        Mistake("media numbered from 0", expand(reference_media_mask(tt, t, mode, first=0)), _FROM_0),
        *([Mistake("text time one too low", expand(reference_media_mask(tt - 1, t, mode)), _ONE_LOW)]
          if mode else []),  # in the all-previous mode it is the mask of `>` (named below): the immediate mode tells
        Mistake("modes swapped", expand(reference_media_mask(tt, t, not mode)), _SWAPPED),
        Mistake("look into the future", expand(reference_media_mask(tt, t, mode, future=True)), _FUTURE),
        Mistake("first image seen early", expand(reference_media_mask(tt, t, mode, clamp=True)), _FIRST_SEES_ONE),
        *(Mistake(f"later images ({op})", expand(reference_media_mask(tt, t, mode, backwards=op)),
                  f"the comparison is the wrong way round: with text_time {op} media_time each word sees "
                  f"{'its own image and ' if op == '<=' else ''}every *later* image, the future it has not read yet, "
                  "and text before the first image sees them all. A word sees image j when j <= its text time: "
                  "text_time >= media_time (all previous), or == (immediate).") for op in ("<=", "<")),
        Mistake("inverted", expand(~reference_media_mask(tt, t, mode)), _INVERTED),  # after "<": in all-previous mode they are one mask
    ]
    if not mode:
        out.append(Mistake("> for all previous", expand(reference_media_mask(tt, t, mode, strict=True)), _STRICT))
    if markers != t:
        out.append(Mistake("size from the markers", expand(reference_media_mask(tt, markers, mode)),
                           f"the mask has media columns for the <image> markers only ({markers}), but num_media={t}: a "
                           "batch can hold media that no marker points to yet, so take the size from the num_media "
                           "argument, not from the markers."))
    for k in range(1, 6):
        if k not in (t, markers):
            out.append(Mistake("fixed number of media", expand(reference_media_mask(tt, k, mode)),
                               f"the mask has {k} media columns, but num_media={t}: {_FIXED}; number the media "
                               "torch.arange(1, num_media + 1)."))
    return out


def _both_modes(fn, args, what, right) -> dict:
    """The learner's mask in each mode, {mode: mask}, each of dtype bool; a mask that ignores the mode is named.
    right: mode -> the right mask. The same mask in both modes is the mode ignored only when it is one mode's right
    mask: a mask wrong in another way (text time one too low) can be the same in both modes on a short sentence."""
    got = {}
    for mode in (True, False):
        call = what.format(mode=mode)
        got[mode] = run_learner(fn, *args, mode, what=call)
        _check_dtype(got[mode], torch.bool, call)
    same = all(isinstance(g, torch.Tensor) for g in got.values()) and torch.equal(got[True], got[False])
    if same and any(torch.equal(got[True], right(mode)) for mode in (True, False)):
        fail(f"{what.format(mode='True or False')}: {_IGNORED}")
    return got


def check_media_mask(my_text_to_media_mask) -> None:
    """Step 04.media_mask: `my_text_to_media_mask(text_time, num_media, only_attend_immediate_media)` -> (b, n, t)."""
    refuse_the_answer(my_text_to_media_mask, _ANSWERS)
    for rows, loc, t, markers in _runs():
        tt = masks.text_time(loc)  # (b, n)
        what = f"your my_text_to_media_mask(text_time, {t}, only_attend_immediate_media={{mode}}) for {rows}"
        got = _both_modes(my_text_to_media_mask, (tt, t), what, lambda mode: reference_media_mask(tt, t, mode))
        for mode in (True, False):
            compare(got[mode], reference_media_mask(tt, t, mode), what=what.format(mode=mode),
                    mistakes=_media_mistakes(tt, t, mode, markers))
    passed("my_text_to_media_mask is right in both modes; text before the first image sees nothing.")


def check_cross_attention_mask(my_cross_attention_mask) -> None:
    """Exercise 2: `my_cross_attention_mask(media_locations, num_media, num_latents, mode)` -> (b, n, t*m)."""
    refuse_the_answer(my_cross_attention_mask, _ANSWERS)
    for rows, loc, t, markers in _runs():
        tt = masks.text_time(loc)  # (b, n)
        for m in (1, 3):
            what = f"your my_cross_attention_mask({rows}, {t}, {m}, only_attend_immediate_media={{mode}})"
            got = _both_modes(my_cross_attention_mask, (loc, t, m), what,
                              lambda mode: masks.cross_attention_mask(loc, t, m, mode))
            expand = lambda per_media: repeat(per_media, "b n t -> b n (t m)", m=m)  # noqa: E731
            for mode in (True, False):
                right = reference_media_mask(tt, t, mode)  # (b, n, t)
                fixed_m = [Mistake("fixed number of latents", repeat(right, "b n t -> b n (t m)", m=k),
                                   f"each media's column is repeated {k} times, but num_latents={m}: {_FIXED}; "
                                   "repeat with m=num_latents.") for k in (1, 2, 3, 4, 8) if k != m]
                compare(got[mode], masks.cross_attention_mask(loc, t, m, mode), what=what.format(mode=mode), mistakes=[
                    *_media_mistakes(tt, t, mode, markers, expand),
                    *fixed_m,
                    Mistake("latents interleaved", repeat(right, "b n t -> b n (m t)", m=m),
                            "the latents are interleaved across images: write '(t m)', so each image's m latents sit "
                            "side by side, as the media tensor (b, t, m, d) flattens."),
                ])
    loc = torch.tensor(_CASES[0], dtype=torch.bool)  # (1, n): the modes differ on it
    default = run_learner(my_cross_attention_mask, loc, 2, 3, what="your my_cross_attention_mask(media_locations, 2, 3)",
                          advice={"missing 1 required positional argument": "keep the signature's default, "
                                  "only_attend_immediate_media=True."})
    if isinstance(default, torch.Tensor) and not torch.equal(default, masks.cross_attention_mask(loc, 2, 3, True)):
        fail("your my_cross_attention_mask called without only_attend_immediate_media is not the immediate mode: keep "
             "the signature's default, only_attend_immediate_media=True, the paper's choice (each word attends to the "
             "image just before it, Sec. 2.3 and Fig. 7) and the one every layer of the course assumes when none is given.")
    passed("my_cross_attention_mask equals flamingo_lite's mask in both modes.")


def _rows_as_ints(rows):
    """A guessed mask as a list of int rows, or None if it is not rows of numbers."""
    try:
        return [[int(v) for v in row] for row in rows]
    except (TypeError, ValueError):
        return None


def check_predicted_masks(predicted_masks) -> None:
    """Exercise 1: the two masks of "a <image> b c <image> <image> d", predicted by hand."""
    puzzle = "a <image> b c <image> <image> d".split()
    puzzle_time = masks.text_time(masks.media_locations_from_tokens(puzzle).unsqueeze(0))  # (1, n)
    guesses = run_learner(predicted_masks, what="your predicted_masks()")
    if not isinstance(guesses, (tuple, list)) or len(guesses) != 2:
        fail("predicted_masks() must return two lists of rows: (immediate, all_previous).")
    wants = [masks.text_to_media_mask(puzzle_time, 3, only_attend_immediate_media=mode)[0].int().tolist()  # (n, t)
             for mode in (True, False)]
    if [_rows_as_ints(g) for g in guesses] == wants[::-1]:
        fail("the two masks are the right way round in each other's place: return (immediate, all_previous), the "
             "mask of only_attend_immediate_media=True first.")
    for mode, guess, want in zip((True, False), guesses, wants):
        if len(guess) != len(puzzle):
            fail(f"only_attend_immediate_media={mode}: one row per token, {len(puzzle)} rows; you gave {len(guess)}.")
        wrong = [f"{i} ({tok})" for i, (tok, row, right) in enumerate(zip(puzzle, guess, want)) if [int(v) for v in row] != right]
        if wrong:
            fail(f"only_attend_immediate_media={mode}: look again at rows {', '.join(wrong)}; write each token's text "
                 "time under it first.")
    passed("both masks predicted right. In the immediate mode image 2 is seen by its own marker only.")


keep_rng(globals())  # no check moves the lesson's random numbers
