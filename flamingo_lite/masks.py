"""Which text token may look at which media: the cross-attention masks, as pure tensor functions.

Flamingo marks where each image sits in the text with `media_locations`, a boolean (batch, text) tensor that is
True at every `<image>` token (paper, Sec. 2.3 and Fig. 7). A running count of those markers gives each token
its *text time*: 0 before the first image, 1 from the first image on, 2 from the second, and so on. A token
then attends to

* only the media whose time equals its own (`only_attend_immediate_media=True`, the paper's choice), or
* every media whose time is at most its own (`False`, all previous media).

Text that comes before the first media sees no media at all, in both modes: its row of the mask is all False
and the layers give it exactly zero cross-attention output. These functions are the single source of truth:
the layers call them, and so do the plots, so the picture a learner sees is the mask the model uses.

Shapes, in einops notation: b batch, n text tokens, t media, m latents per media.
"""
from __future__ import annotations

import torch
from einops import rearrange, repeat

from .validation import shape_str


def check_media_locations(media_locations, *, batch: int, text_len: int, check_values: bool = True) -> torch.Tensor:
    """Validate `media_locations` and return it as a bool tensor of shape (batch, text_len).

    Accepted: a bool tensor, or an integer tensor holding only 0 and 1 (converted to bool). Anything else is a
    `TypeError` (floats, lists) or a `ValueError` (wrong shape, other integers), raised before any computation.
    check_values=False skips the one check that reads values (integers other than 0 and 1), for callers that
    checked already; a bool tensor needs no value check.
    """
    if not isinstance(media_locations, torch.Tensor):
        raise TypeError(
            f"media_locations must be a bool torch.Tensor of shape (batch, text) = ({batch}, {text_len}), "
            f"got {type(media_locations).__name__}"
        )
    if media_locations.ndim != 2 or tuple(media_locations.shape) != (batch, text_len):
        raise ValueError(
            f"media_locations must have shape (batch, text) = ({batch}, {text_len}) to match the text, "
            f"got {shape_str(media_locations)}"
        )
    if media_locations.dtype == torch.bool:
        return media_locations
    if media_locations.is_floating_point() or media_locations.is_complex():
        raise TypeError(
            f"media_locations must be bool (or integer 0/1), got dtype {media_locations.dtype}; "
            "use media_locations.bool() if it holds 0.0/1.0"
        )
    if check_values:
        only_01 = ((media_locations == 0) | (media_locations == 1)).all()  # () bool
        message = "media_locations as an integer tensor may hold only 0 and 1 (True marks an <image> token)"
        if torch.compiler.is_compiling():
            torch._assert_async(only_01, message)  # checked on the device, no host synchronisation
        elif not bool(only_01):
            raise ValueError(message)
    return media_locations.bool()


def text_time(media_locations: torch.Tensor) -> torch.Tensor:
    """The number of media markers at or before each text token: (b, n) bool -> (b, n) long.

    `media_locations = [T, F, F, T, F]` gives `[1, 1, 1, 2, 2]`; a token before the first marker gets 0.
    """
    return media_locations.long().cumsum(dim=-1)  # (b, n)


def media_time(num_media: int, device=None) -> torch.Tensor:
    """The time of each media, counted from 1 like `text_time`: (t,) long = [1, 2, ..., t]."""
    return torch.arange(1, num_media + 1, device=device)  # (t,)


def text_to_media_mask(text_time: torch.Tensor, num_media: int, only_attend_immediate_media: bool) -> torch.Tensor:
    """Which media each text token may attend to: (b, n) long -> (b, n, t) bool, True = may attend.

    Immediate mode: text time == media time. All-previous mode: 1 <= media time <= text time. Text with time 0
    (before the first media) gets an all-False row in both modes.
    """
    times = media_time(num_media, device=text_time.device)  # (t,)
    tt = rearrange(text_time, "b n -> b n 1")  # (b, n, 1)
    mt = rearrange(times, "t -> 1 1 t")  # (1, 1, t)
    if only_attend_immediate_media:
        return tt == mt  # (b, n, t)
    return tt >= mt  # (b, n, t)


def expand_to_latents(mask: torch.Tensor, num_latents: int) -> torch.Tensor:
    """Repeat each media's column once per latent: (b, n, t) -> (b, n, t*m), media-major like the keys."""
    return repeat(mask, "b n t -> b n (t m)", m=num_latents)  # (b, n, t*m)


def cross_attention_mask(
    media_locations: torch.Tensor, num_media: int, num_latents: int, only_attend_immediate_media: bool = True
) -> torch.Tensor:
    """The mask `MaskedCrossAttention` uses: (b, n) bool -> (b, n, t*m) bool, True = may attend.

    Column `j` is latent `j % m` of media `j // m`, the order of the flattened keys `b (t m) d`.
    """
    times = text_time(media_locations)  # (b, n)
    per_media = text_to_media_mask(times, num_media, only_attend_immediate_media)  # (b, n, t)
    return expand_to_latents(per_media, num_latents)  # (b, n, t*m)


def rows_without_media(media_locations: torch.Tensor) -> torch.Tensor:
    """Text tokens that come before the first media and so see none: (b, n) bool -> (b, n) bool."""
    return text_time(media_locations) == 0  # (b, n)


def check_markers_fit_media(media_locations: torch.Tensor, num_media: int) -> None:
    """More `<image>` markers in a row than media given is a mistake; say how many of each.

    The original code silently turns such rows into an average over every media instead. This check reads values,
    so callers that run it once per batch pass `check_markers=False` to the layers. Under `torch.compile` it is a
    `torch._assert_async` (a RuntimeError with the message below, no host synchronisation).
    """
    markers = media_locations.long().sum(dim=-1)  # (b,)
    if torch.compiler.is_compiling():
        fits = (markers <= num_media).all()  # () bool
        torch._assert_async(
            fits, f"media_locations marks more media in a batch row than media holds (media.shape[1] = {num_media}); "
            "give one media per True in media_locations"
        )
        return
    worst = int(markers.max()) if markers.numel() else 0
    if worst > num_media:
        row = int(markers.argmax())
        raise ValueError(
            f"media_locations marks {worst} media in batch row {row}, but media holds only {num_media} "
            f"per row (media.shape[1] = {num_media}); give one media per True in media_locations"
        )


MEDIA_TOKEN = "<image>"


def tokenize_interleaved(text: str) -> list[str]:
    """Split an interleaved sequence into word tokens, keeping each `<image>` marker as one token.

    `"<image> a red circle<image>a blue square"` -> `['<image>', 'a', 'red', 'circle', '<image>', 'a', 'blue', 'square']`.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str such as '<image> a red circle', got {type(text).__name__}")
    return text.replace(MEDIA_TOKEN, f" {MEDIA_TOKEN} ").split()


def media_locations_from_tokens(tokens, media_token: str = MEDIA_TOKEN) -> torch.Tensor:
    """True at every media marker: a list of token strings (or a list of such lists) -> (n,) or (b, n) bool.

    A batch must have rows of equal length (pad them first).
    """
    if isinstance(tokens, str):
        raise TypeError("tokens must be a list of token strings; split a sentence with tokenize_interleaved first")
    rows = list(tokens)
    if rows and all(isinstance(r, (list, tuple)) for r in rows):
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise ValueError(f"every row of tokens must have the same length (pad them), got lengths {sorted(lengths)}")
        return torch.tensor([[tok == media_token for tok in r] for r in rows], dtype=torch.bool)  # (b, n)
    return torch.tensor([tok == media_token for tok in rows], dtype=torch.bool)  # (n,)
