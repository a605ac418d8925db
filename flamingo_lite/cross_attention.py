"""Masked cross-attention: text tokens attend to the visual tokens of the media they are allowed to see.

Paper, Sec. 2.2 and 2.3, Fig. 4 and Fig. 7 (Alayrac et al. 2022, arXiv 2204.14198). The queries come from the
text, the keys and values from the media latents the Perceiver Resampler produced. Which media a token may see
is decided by `media_locations` (True at each `<image>` token) through the pure functions in
`flamingo_lite.masks`: with `only_attend_immediate_media=True` (the paper's choice) a token sees only the latest
media before it; with False it sees every media before it. Text before the first media sees none and gets
exactly zero output, in both modes (the original code lets it average over all media, future ones included).

Two exact ways to compute it (lesson 10 proves they give the same numbers):

* the *masked path* (lesson 05): score every token against the latents of every media, mask, softmax. Its cost
  grows with the number of media t. It serves the all-previous mode and small inputs.
* the *segment path* (`flamingo_lite.segments`): in the immediate mode each run of text between two media
  markers attends only to its own media, so the text is cut into those segments and each attends to its m
  latents alone. Its cost hardly grows with t.

`attention_path="auto"` (the default) takes the segment path in the immediate mode when `media_locations` is
given and the problem is big enough to pay for the gathering; "masked" or "segments" forces one. The choice is
a plain attribute, not a weight: `state_dict` keys are the same either way, and it can be changed at any time
(`module.attention_path = "masked"`). Both paths keep the same NaN contract (`flamingo_lite.attention`).

Checks and compilation. The checks that read only shapes, dtypes and devices run on every call and cost nothing.
The one that reads values, "no more `<image>` markers in a row than media", runs unless `check_markers=False`,
which a caller passes after checking once (`Flamingo.forward` checks once per batch, then passes it to every
block). The segment path's layout holds host values (its chunk count), so it is computed once per batch, by
`segment_layout`, and can be passed in as `layout=`. Under `torch.compile` "auto" takes the masked path, which
reads no values on the host: it compiles with `fullgraph=True`, and new marker layouts at the same shapes do not
recompile; the marker check then becomes `torch._assert_async` (a RuntimeError with the same message).
`torch.jit.trace` cannot follow the value-dependent choices, so tracing these layers is refused with a
RuntimeError rather than recording one marker layout; use `torch.compile` or eager mode.

Variants (constructor arguments; the defaults are flamingo-pytorch's, `state_dict` keys unchanged):
- `dim_visual`: the width of the media, when it differs from the text's (OpenFlamingo's `dim_visual`, IDEFICS's
  `vision_config.embed_dim`); only `to_kv` reads the media, so only its input width changes.
- `norm="rmsnorm"`: the text's pre-norm is an RMSNorm (IDEFICS's `input_layernorm`).
- `qk_layer_norms=True`: an RMSNorm over each head's queries and keys (IDEFICS's `qk_layer_norms`).

Shapes, in einops notation: b batch, n text tokens, t media, m latents per media, d the model width,
h heads, e the width of one head (`dim_head`).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import attend
from .norms import RMSNorm, make_norm
from .masks import check_markers_fit_media, check_media_locations, cross_attention_mask, rows_without_media
from .segments import SegmentLayout, segment_attend, segment_layout
from .validation import check_matches_weights, check_positive_int, check_tensor, shape_str


def check_cross_attention_inputs(
    dim: int, x, media, media_locations, *, weight=None, check_markers: bool = True, dim_visual: int | None = None
):
    """Validate the inputs of a cross-attention layer; return `media_locations` as bool (or None).

    weight: a weight of the layer, whose dtype and device the inputs must match (None: only x and media agree).
    check_markers=False skips the one check that reads values (markers vs media), for callers that checked.
    dim_visual: the media's width when it differs from the text's `dim` (None: the same).
    """
    text_dim, dim = dim, dim if dim_visual is None else dim_visual  # `dim` below is the media's width
    check_tensor("x", x, ndim=3, dim=None, layout=f"(batch, text, {text_dim})")
    if isinstance(media, torch.Tensor) and media.ndim == 3:
        raise ValueError(
            f"media must have a time axis, shape (batch, media, latents, {dim}); got {shape_str(media)}. "
            "For one media per sequence use media.unsqueeze(1)"
        )
    check_tensor("media", media, ndim=4, dim=None, layout=f"(batch, media, latents, {dim})")
    if x.shape[-1] != text_dim:
        raise ValueError(
            f"x must have width dim={text_dim} in its last axis, shape (batch, text, {text_dim}); got {shape_str(x)}"
        )
    if media.shape[-1] != dim:
        raise ValueError(
            f"media must have width {'dim' if dim_visual is None else 'dim_visual'}={dim} in its last axis, shape (batch, media, latents, {dim}); got {shape_str(media)}"
        )
    if media.shape[0] != x.shape[0]:
        raise ValueError(f"x and media must have the same batch size: x is {shape_str(x)}, media is {shape_str(media)}")
    check_matches_weights("cross-attention", x if weight is None else weight, [("x", x), ("media", media)])
    if media_locations is None:
        return None
    if isinstance(media_locations, torch.Tensor) and media_locations.device != x.device:
        raise ValueError(f"media_locations is on device {media_locations.device} but x is on {x.device}; use one device")
    media_locations = check_media_locations(
        media_locations, batch=x.shape[0], text_len=x.shape[1], check_values=check_markers
    )
    if check_markers:
        check_markers_fit_media(media_locations, num_media=media.shape[1])
    return media_locations


ATTENTION_PATHS = ("auto", "masked", "segments")

# "auto" takes the segment path only when the masked scores would number at least this many per head
# (b * n * t * m); below it the gathering costs more than it saves (benchmarks/README.md has the crossover).
SEGMENT_PATH_MIN_SCORES = 2**16


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
        if not isinstance(only_attend_immediate_media, bool):
            raise TypeError(f"only_attend_immediate_media must be a bool, got {only_attend_immediate_media!r}")
        self.scale = dim_head**-0.5
        inner_dim = dim_head * heads

        self.norm = make_norm(norm, dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim_visual or dim, inner_dim * 2, bias=False)  # keys and values, side by side
        self.to_out = nn.Linear(inner_dim, dim, bias=False)
        # IDEFICS's qk_layer_norms: each head's queries and keys normalised before the scores
        self.qk_layer_norms = bool(qk_layer_norms)
        if self.qk_layer_norms:
            self.q_layer_norm = RMSNorm(dim_head)
            self.k_layer_norm = RMSNorm(dim_head)

        # True: text sees only the latest media before it (the paper's choice); False: every media before it
        self.only_attend_immediate_media = only_attend_immediate_media
        # "auto", "masked" or "segments": how to compute it (same numbers either way; see the module docstring)
        self.attention_path = check_attention_path(attention_path, only_attend_immediate_media)

    def _qk_norm(self, q: torch.Tensor, k: torch.Tensor):
        """The qk_layer_norms variant on (..., h*e) projections, one norm per head; the identity by default."""
        if not self.qk_layer_norms:
            return q, k
        e = self.dim_head
        q = rearrange(self.q_layer_norm(rearrange(q, "... (h e) -> ... h e", e=e)), "... h e -> ... (h e)")  # (..., h*e)
        k = rearrange(self.k_layer_norm(rearrange(k, "... (h e) -> ... h e", e=e)), "... h e -> ... (h e)")  # (..., h*e)
        return q, k

    def uses_segment_path(self, x: torch.Tensor, media: torch.Tensor, media_locations: torch.Tensor | None) -> bool:
        """Whether forward(x, media, media_locations) takes the segment path (True) or the masked path (False).

        The inputs are checked as forward checks them. Text in which no token sees any media takes the masked path.
        """
        media_locations = check_cross_attention_inputs(
            self.dim, x, media, media_locations, weight=self.to_q.weight, dim_visual=self.dim_visual
        )
        return self.wants_segment_path(x.shape, media.shape, media_locations) and bool(media_locations.any())

    def wants_segment_path(self, x_shape, media_shape, media_locations: torch.Tensor | None) -> bool:
        """The choice for already checked inputs, from the shapes alone (no values are read).

        Under `torch.compile` "auto" takes the masked path, which needs no host values.
        """
        path = check_attention_path(self.attention_path, self.only_attend_immediate_media)
        if media_locations is None or not self.only_attend_immediate_media:
            return False  # no mask at all, or all-previous media: only the masked path applies
        if path != "auto":
            return path == "segments"
        if torch.compiler.is_compiling():
            return False
        b, n = x_shape[:2]
        t, m = media_shape[1:3]
        return t > 1 and b * n * t * m >= SEGMENT_PATH_MIN_SCORES

    def forward(
        self,
        x: torch.Tensor,
        media: torch.Tensor,
        media_locations: torch.Tensor | None = None,
        *,
        check_markers: bool = True,
        layout: SegmentLayout | None = None,
    ) -> torch.Tensor:
        """check_markers=False: the caller has checked that no row has more markers than media (no value read).
        layout: the segment layout of this batch (`segment_layout(media_locations, t)`), shared by the blocks."""
        if torch.jit.is_tracing():
            raise RuntimeError(
                "torch.jit.trace cannot record MaskedCrossAttention: its checks and its choice of path depend on "
                "media_locations, so a trace would hold one marker layout; use torch.compile or eager mode"
            )
        media_locations = check_cross_attention_inputs(
            self.dim, x, media, media_locations, weight=self.to_q.weight, check_markers=check_markers,
            dim_visual=self.dim_visual,
        )
        b, t, m = media.shape[:3]
        h = self.heads

        segments = self.wants_segment_path(x.shape, media.shape, media_locations)
        if segments:
            if layout is None:
                layout = segment_layout(media_locations, t)  # index tensors only: no gradient, no weights
            layout.check_fits(b, x.shape[1], t)
            segments = layout.num_chunks > 0  # no text sees any media: the masked path gives the zeros

        x = self.norm(x)  # (b, n, d)
        q = self.to_q(x)  # (b, n, h*e)
        k, v = self.to_kv(media).chunk(2, dim=-1)  # 2 x (b, t, m, h*e)
        q, k = self._qk_norm(q, k)  # (b, n, h*e), (b, t, m, h*e)

        if segments:
            out = segment_attend(q, k, v, layout, heads=h, scale=self.scale)  # (b, n, h*e)
            return self.to_out(out)  # (b, n, d); no bias, so rows that saw nothing stay exactly zero

        q = rearrange(q, "b n (h e) -> b h n e", h=h)  # (b, h, n, e)
        k = rearrange(k, "b t m (h e) -> b h (t m) e", h=h)  # (b, h, t*m, e): all media latents in one row
        v = rearrange(v, "b t m (h e) -> b h (t m) e", h=h)  # (b, h, t*m, e)

        mask = zero_rows = None
        if media_locations is not None:
            zero_rows = rows_without_media(media_locations)  # (b, n): text before the first media
            if t > 1:  # with one media every other row sees all of it, in both modes: no mask needed
                mask = cross_attention_mask(media_locations, t, m, self.only_attend_immediate_media)  # (b, n, t*m)

        out = attend(q, k, v, scale=self.scale, mask=mask, zero_rows=zero_rows)  # (b, h, n, e)
        out = rearrange(out, "b h n e -> b n (h e)")  # (b, n, h*e)
        return self.to_out(out)  # (b, n, d); no bias, so rows that saw nothing stay exactly zero

    @torch.no_grad()
    def attention_weights(
        self, x: torch.Tensor, media: torch.Tensor, media_locations: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attention probabilities the forward pass uses, for plots: (b, h, n, t*m).

        Computed explicitly (softmax of the masked scores); each row sums to 1, except rows of text that sees no
        media, which are exactly 0. Column j is latent j % m of media j // m.
        """
        media_locations = check_cross_attention_inputs(
            self.dim, x, media, media_locations, weight=self.to_q.weight, dim_visual=self.dim_visual
        )
        b, t, m = media.shape[:3]
        q = self.to_q(self.norm(x))  # (b, n, h*e)
        k = self.to_kv(rearrange(media, "b t m d -> b (t m) d")).chunk(2, dim=-1)[0]  # (b, t*m, h*e)
        q, k = self._qk_norm(q, k)  # (b, n, h*e), (b, t*m, h*e)
        q = rearrange(q, "b n (h e) -> b h n e", h=self.heads)  # (b, h, n, e)
        k = rearrange(k, "b j (h e) -> b h j e", h=self.heads)  # (b, h, t*m, e)
        scores = torch.einsum("b h i e, b h j e -> b h i j", q, k) * self.scale  # (b, h, n, t*m)
        if media_locations is None:
            return scores.softmax(dim=-1)  # (b, h, n, t*m)
        mask = rearrange(cross_attention_mask(media_locations, t, m, self.only_attend_immediate_media), "b i j -> b 1 i j")
        scores = scores.masked_fill(~mask, float("-inf"))  # (b, h, n, t*m)
        sees_nothing = rearrange(rows_without_media(media_locations), "b i -> b 1 i 1")  # (b, 1, n, 1)
        weights = scores.masked_fill(sees_nothing, 0.0).softmax(dim=-1)  # (b, h, n, t*m)
        return weights.masked_fill(sees_nothing, 0.0)  # (b, h, n, t*m)
