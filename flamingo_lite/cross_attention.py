"""Masked cross-attention: text tokens attend to the visual tokens of the media they are allowed to see.

Paper, Sec. 2.2-2.3, Fig. 4 and Fig. 7 (Alayrac et al. 2022, arXiv 2204.14198). The queries come from the text, the
keys and values from the media latents the Perceiver Resampler produced:

    q = W_q norm(x)        k, v = W_kv media        out = W_o softmax(q k^T / sqrt(e) + M) v

where the mask M lets a token see only the latents of the media it may attend to. Which those are is decided by
`media_locations` (True at each `<image>` token) through the pure functions in `flamingo_lite.masks`: with
`only_attend_immediate_media=True` (the paper's choice) a token sees only the latest media before it; with False
every media before it. Text before the first media sees none and gets exactly zero output, in both modes (the
original code lets it average over all media, future ones included).

Two exact ways to compute it, the same numbers either way (lesson 10 proves it):

* the *masked path* (lesson 05): every token against the latents of every media, masked. Its cost grows with the
  number of media t.
* the *segment path* (`flamingo_lite.segments`): in the immediate mode each run of text between two markers sees
  only its own media, so each run attends to its m latents alone. Its cost hardly grows with t.

`attention_path="auto"` (the default) takes the segment path in the immediate mode when `media_locations` is
given and there are at least two media; otherwise, and under `torch.compile` (whose graphs cannot hold the
segment layout's data-dependent size), the masked path. "masked" or "segments" forces one. The choice is a plain
attribute, not a weight: `state_dict` keys are the same either way (`module.attention_path = "masked"`).

Checks. `check_inputs` is the one call before the maths: shapes, dtypes and devices (against the weights) and
`media_locations`, turned into a `MediaLocations`. Its one check that reads values ("no more `<image>` markers in
a row than media") and the segment layout are made once per `MediaLocations`: a model checks once per batch
(`MediaLocations.check`) and gives the result to every block, so none reads the markers again. Under
`torch.compile` the value checks become `torch._assert_async` (a RuntimeError with the same message, no host
synchronisation); `torch.jit.trace` cannot follow value-dependent choices and is refused with a RuntimeError.

Variants (constructor arguments; the defaults are flamingo-pytorch's, `state_dict` keys unchanged):
- `dim_visual`: the width of the media, when it differs from the text's (OpenFlamingo's `dim_visual`, IDEFICS's
  `vision_config.embed_dim`); only `to_kv` reads the media, so only its input width changes.
- `norm="rmsnorm"`: the text's pre-norm is an RMSNorm (IDEFICS's `input_layernorm`).
- `qk_layer_norms=True`: an RMSNorm over each head's queries and keys (IDEFICS's `qk_layer_norms`).

Shapes, in einops notation: b batch, n text tokens, t media, m latents per media, d the model width,
h heads, e the width of one head (`dim_head`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from .attention import attend, attention_weights
from .masks import check_markers_fit_media, check_media_locations, cross_attention_mask, rows_without_media
from .norms import RMSNorm, make_norm
from .segments import SegmentLayout, segment_attend, segment_layout
from .validation import check_bool, check_matches_weights, check_positive_int, check_tensor, shape_str


@dataclass(eq=False)
class MediaLocations:
    """`media_locations` checked once for a batch: what every cross-attention layer of a model reads.

    markers: (b, n) bool, True at each `<image>` token; num_media: t, the media they were checked against (no row
    marks more). The segment path's layout is made from them on first use and kept (`segment_layout()`), so the
    gated blocks of a model that share one `MediaLocations` read the markers' values once per forward pass.
    Every layer also takes the plain (b, n) tensor and checks it itself.
    """

    markers: torch.Tensor
    num_media: int
    layout: SegmentLayout | None = None

    @classmethod
    def check(cls, media_locations, *, batch: int, text: int, num_media: int) -> "MediaLocations":
        """A bool or 0/1 integer (batch, text) tensor with at most `num_media` markers a row, or a clear error."""
        if isinstance(media_locations, cls):
            media_locations.check_fits(batch, text, num_media)
            return media_locations
        markers = check_media_locations(media_locations, batch=batch, text_len=text)  # (b, n) bool
        check_markers_fit_media(markers, num_media=num_media)
        return cls(markers, num_media)

    def check_fits(self, batch: int, text: int, num_media: int) -> None:
        """Checked for another batch: a ValueError naming both, before any computation."""
        if (*self.markers.shape, self.num_media) != (batch, text, num_media):
            raise ValueError(
                f"media_locations was checked for (batch, text, media) = ({self.markers.shape[0]}, "
                f"{self.markers.shape[1]}, {self.num_media}), but the inputs have ({batch}, {text}, {num_media}); "
                "check it for this batch with MediaLocations.check"
            )

    def segment_layout(self) -> SegmentLayout:
        """Where each token goes on the segment path (`flamingo_lite.segments`), made once."""
        if self.layout is None:
            self.layout = segment_layout(self.markers, self.num_media)
        return self.layout


def check_cross_attention_inputs(dim: int, x, media, media_locations, *, weight=None, dim_visual: int | None = None):
    """Validate the inputs of a cross-attention layer; return `media_locations` as a `MediaLocations` (or None).

    weight: a weight of the layer, whose dtype and device the inputs must match (None: only x and media agree).
    dim_visual: the media's width when it differs from the text's `dim` (None: the same).
    """
    if torch.jit.is_tracing():
        raise RuntimeError(
            "torch.jit.trace cannot record MaskedCrossAttention: its checks and its choice of path depend on "
            "media_locations, so a trace would hold one marker layout; use torch.compile or eager mode"
        )
    media_dim = dim if dim_visual is None else dim_visual
    check_tensor("x", x, ndim=3, dim=None, layout=f"(batch, text, {dim})")
    if isinstance(media, torch.Tensor) and media.ndim == 3:
        raise ValueError(
            f"media must have a time axis, shape (batch, media, latents, {media_dim}); got {shape_str(media)}. "
            "For one media per sequence use media.unsqueeze(1)"
        )
    check_tensor("media", media, ndim=4, dim=None, layout=f"(batch, media, latents, {media_dim})")
    if x.shape[-1] != dim:
        raise ValueError(f"x must have width dim={dim} in its last axis, shape (batch, text, {dim}); got {shape_str(x)}")
    if media.shape[-1] != media_dim:
        name = "dim" if dim_visual is None else "dim_visual"
        raise ValueError(
            f"media must have width {name}={media_dim} in its last axis, shape (batch, media, latents, {media_dim}); "
            f"got {shape_str(media)}"
        )
    if media.shape[0] != x.shape[0]:
        raise ValueError(f"x and media must have the same batch size: x is {shape_str(x)}, media is {shape_str(media)}")
    check_matches_weights("cross-attention", x if weight is None else weight, [("x", x), ("media", media)])
    if media_locations is None:
        return None
    markers = media_locations.markers if isinstance(media_locations, MediaLocations) else media_locations
    if isinstance(markers, torch.Tensor) and markers.device != x.device:
        raise ValueError(f"media_locations is on device {markers.device} but x is on {x.device}; use one device")
    return MediaLocations.check(media_locations, batch=x.shape[0], text=x.shape[1], num_media=media.shape[1])


ATTENTION_PATHS = ("auto", "masked", "segments")


def check_attention_path(attention_path, only_attend_immediate_media: bool) -> str:
    """`attention_path` is one of "auto", "masked", "segments"; the segment path needs the immediate mode."""
    if not isinstance(only_attend_immediate_media, bool):  # also when set on the module after construction
        raise TypeError(f"only_attend_immediate_media must be a bool (True or False), got {only_attend_immediate_media!r}")
    if attention_path not in ATTENTION_PATHS:
        raise ValueError(f"attention_path must be one of {ATTENTION_PATHS}, got {attention_path!r}")
    if attention_path == "segments" and not only_attend_immediate_media:
        raise ValueError(
            "attention_path='segments' needs only_attend_immediate_media=True (each text segment sees one media); "
            "with all previous media use attention_path='masked' or 'auto'"
        )
    return attention_path


def set_attention_path(module: nn.Module, attention_path: str) -> nn.Module:
    """Set `attention_path` on every MaskedCrossAttention inside `module` (itself included); returns `module`.

    For a GatedCrossAttentionBlock or a whole model: `set_attention_path(block, "masked")`. Forcing "segments"
    on a layer in the all-previous mode is a ValueError, as in the constructor; "auto" and "masked" always work.
    """
    layers = [m for m in module.modules() if isinstance(m, MaskedCrossAttention)]
    for layer in layers:
        check_attention_path(attention_path, layer.only_attend_immediate_media)
    for layer in layers:
        layer.attention_path = attention_path
    return module


class MaskedCrossAttention(nn.Module):
    """Text (queries) attends to media latents (keys, values) under the media_locations mask.

    forward(x (b, n, d), media (b, t, m, d), media_locations (b, n) bool or None) -> (b, n, d).
    `media_locations=None` lets every token attend to every media. Rows that see no media are exactly zero.
    attention_path (keyword only, not in the original): "auto" (default), "masked" or "segments"; the same
    numbers either way, see the module docstring. `uses_segment_path(x, media, media_locations)` says which.
    dim_visual, norm, qk_layer_norms (keyword only): the variants in the module docstring; media is then
    (b, t, m, dim_visual).
    """

    def __init__(
        self,
        *,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        only_attend_immediate_media: bool = True,
        attention_path: str = "auto",
        dim_visual: int | None = None,
        norm: str = "layernorm",
        qk_layer_norms: bool = False,
    ):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.dim_visual = None if dim_visual is None else check_positive_int("dim_visual", dim_visual)
        self.dim_head = check_positive_int("dim_head", dim_head)
        self.heads = check_positive_int("heads", heads)
        check_bool("only_attend_immediate_media", only_attend_immediate_media)
        self.scale = dim_head**-0.5
        inner_dim = dim_head * heads

        self.norm = make_norm(norm, dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim_visual or dim, inner_dim * 2, bias=False)  # keys and values, side by side
        self.to_out = nn.Linear(inner_dim, dim, bias=False)
        # IDEFICS's qk_layer_norms: each head's queries and keys normalised before the scores
        self.qk_layer_norms = check_bool("qk_layer_norms", qk_layer_norms)
        if self.qk_layer_norms:
            self.q_layer_norm = RMSNorm(dim_head)
            self.k_layer_norm = RMSNorm(dim_head)

        # True: text sees only the latest media before it (the paper's choice); False: every media before it
        self.only_attend_immediate_media = only_attend_immediate_media
        # "auto", "masked" or "segments": how to compute it (same numbers either way; see the module docstring)
        self.attention_path = check_attention_path(attention_path, only_attend_immediate_media)

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_locations=None) -> torch.Tensor:
        locations = self.check_inputs(x, media, media_locations)  # a MediaLocations, or None
        q, k, v = self.project(x, media)  # (b, n, h*e), 2 x (b, t, m, h*e): the text asks, the media latents answer
        if self.takes_segment_path(locations):
            out = segment_attend(q, k, v, locations.segment_layout(), heads=self.heads, scale=self.scale)  # (b, n, h*e)
        else:
            q, k, v, mask, sees_nothing = self.masked_view(q, k, v, locations)  # (b, h, n, e), 2 x (b, h, t*m, e)
            out = attend(q, k, v, scale=self.scale, mask=mask, sees_nothing=sees_nothing)  # (b, h, n, e)
            out = rearrange(out, "b h n e -> b n (h e)")  # (b, n, h*e)
        return self.to_out(out)  # (b, n, d); no bias, so rows that saw nothing stay exactly zero

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor, media: torch.Tensor, media_locations=None) -> torch.Tensor:
        """The attention probabilities of the forward pass, for plots: (b, h, n, t*m), column j = latent j % m of
        media j // m. Each row sums to 1, except rows of text that sees no media, which are exactly 0."""
        locations = self.check_inputs(x, media, media_locations)
        q, k, _, mask, sees_nothing = self.masked_view(*self.project(x, media), locations)  # (b, h, n, e), (b, h, t*m, e)
        return attention_weights(q, k, scale=self.scale, mask=mask, sees_nothing=sees_nothing)  # (b, h, n, t*m)

    def check_inputs(self, x, media, media_locations) -> MediaLocations | None:
        """Every input, checked before any computation (see `check_cross_attention_inputs`)."""
        return check_cross_attention_inputs(self.dim, x, media, media_locations, weight=self.to_q.weight, dim_visual=self.dim_visual)

    def project(self, x: torch.Tensor, media: torch.Tensor):
        """Queries of the text, keys and values of the media latents: (b, n, h*e), 2 x (b, t, m, h*e)."""
        q = self.to_q(self.norm(x))  # (b, n, h*e)
        k, v = self.to_kv(media).chunk(2, dim=-1)  # 2 x (b, t, m, h*e)
        if self.qk_layer_norms:  # one RMSNorm over each head's queries and keys
            e = self.dim_head
            q = rearrange(self.q_layer_norm(rearrange(q, "... (h e) -> ... h e", e=e)), "... h e -> ... (h e)")
            k = rearrange(self.k_layer_norm(rearrange(k, "... (h e) -> ... h e", e=e)), "... h e -> ... (h e)")
        return q, k, v

    def masked_view(self, q, k, v, locations: MediaLocations | None):
        """Heads split, every latent of every media in one row of keys, and the mask (lesson 05).

        Returns q (b, h, n, e); k, v (b, h, t*m, e); mask (b, n, t*m) bool or None; sees_nothing (b, n) bool or None.
        """
        t, m = k.shape[1:3]
        q = rearrange(q, "b n (h e) -> b h n e", h=self.heads)  # (b, h, n, e)
        k = rearrange(k, "b t m (h e) -> b h (t m) e", h=self.heads)  # (b, h, t*m, e)
        v = rearrange(v, "b t m (h e) -> b h (t m) e", h=self.heads)  # (b, h, t*m, e)
        if locations is None:
            return q, k, v, None, None  # every token sees every media
        sees_nothing = rows_without_media(locations.markers)  # (b, n): text before the first media
        if t == 1:  # one media: every other row sees all of it, in both modes, so no mask is needed
            return q, k, v, None, sees_nothing
        mask = cross_attention_mask(locations.markers, t, m, self.only_attend_immediate_media)  # (b, n, t*m)
        return q, k, v, mask, sees_nothing

    def takes_segment_path(self, locations: MediaLocations | None) -> bool:
        """The path a call with these (checked) media_locations takes; the rule is in the module docstring.

        Text in which no token sees any media takes the masked path, which gives it its zeros.
        """
        path = check_attention_path(self.attention_path, self.only_attend_immediate_media)
        if locations is None or not self.only_attend_immediate_media or path == "masked":
            return False
        if path == "auto" and (locations.num_media < 2 or torch.compiler.is_compiling()):
            return False
        return locations.segment_layout().num_chunks > 0

    def uses_segment_path(self, x: torch.Tensor, media: torch.Tensor, media_locations=None) -> bool:
        """Whether forward(x, media, media_locations) takes the segment path (True) or the masked path (False)."""
        return self.takes_segment_path(self.check_inputs(x, media, media_locations))
