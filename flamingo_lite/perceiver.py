"""The Perceiver Resampler: any number of visual features in, a fixed number of visual tokens out.

Paper, Sec. 2.1 and Fig. 3 (Alayrac et al. 2022, arXiv 2204.14198). A small set of learned *latent* queries
(64 in the paper) attends to the features of each image or video frame, so the language model's
cross-attention always sees the same number of tokens per media, however many patches the vision encoder gave.
One difference from the Perceiver: the keys and values are the visual features *concatenated with the latents*,
so each latent can also attend to the other latents. Each layer is attention then feed-forward, both residual.

Which embedding tells the media apart is a reading, and the readings differ. The paper adds learned temporal
embeddings to the *frames of one video* (Sec. 2.1; App. A.1.1, Fig. 5); an image is a single-frame video, so no
embedding tells separate images apart: the cross-attention mask does, so a model trained with 5 images can be
prompted with 32. flamingo-pytorch adds a learned embedding per *media* (`media_pos_emb`), which caps a sequence
at `num_media_embeds` media: that is the default here (`media_embedding="per_media"`), for weight compatibility.
`media_embedding="none"` is the paper's choice for images and OpenFlamingo's released models: no embedding, no cap.

Variants (constructor arguments; the defaults are flamingo-pytorch's, `state_dict` keys unchanged):
- `frame_axis=True`: the input may be OpenFlamingo's `(b, t, F, v, d)`, F frames of v features per media, flattened
  into the media's features (a 4-D input is then one frame per media). `num_frames=F` adds the paper's temporal
  embeddings (Sec. 2.1, Fig. 3: one learned embedding per video frame, `frame_embs` (F, d)) and implies the frame
  axis: OpenFlamingo's `max_num_frames` (off in its released models).
- `ff_activation`: "gelu" (flamingo-pytorch, OpenFlamingo), "relu" (IDEFICS), "squared_relu" (the paper, Table 4).
- `qk_layer_norms=True`: a LayerNorm over each head's queries and keys before the scores (IDEFICS's
  `qk_layer_norms_perceiver`).

Shapes, in einops notation: b batch, t media (images or frames), n visual features per media,
L latents, d the model width, h heads, e the width of one head (`dim_head`).
"""
from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from .attention import attend, attention_weights
from .feedforward import FeedForward
from .validation import (
    check_bool,
    check_non_negative_int,
    check_positive_int,
    check_positive_number,
    check_matches_weights,
    check_tensor,
    shape_str,
)


class PerceiverAttention(nn.Module):
    """One attention layer of the resampler: latents (queries) attend to [media features; latents].

    forward(x (b, t, n, d), latents (b, t, L, d)) -> (b, t, L, d), the update to add to the latents.
    """

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8, qk_layer_norms: bool = False):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        dim_head = check_positive_int("dim_head", dim_head)
        self.heads = check_positive_int("heads", heads)
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        inner_dim = dim_head * heads

        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)  # keys and values, side by side
        self.to_out = nn.Linear(inner_dim, dim, bias=False)
        # IDEFICS's qk_layer_norms_perceiver: each head's queries and keys normalised before the scores
        self.qk_layer_norms = check_bool("qk_layer_norms", qk_layer_norms)
        if self.qk_layer_norms:
            self.q_layer_norm = nn.LayerNorm(dim_head)
            self.k_layer_norm = nn.LayerNorm(dim_head)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, latents)
        q, k, v = self.project(x, latents)  # (b*t, h, L, e), 2 x (b*t, h, n+L, e)
        out = attend(q, k, v, scale=self.scale)  # (b*t, h, L, e): softmax(q k^T / sqrt(e)) v
        return self.to_out(rearrange(out, "(b t) h L e -> b t L (h e)", b=x.shape[0]))  # (b, t, L, d)

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The attention probabilities the forward pass uses, for plots: (b, t, h, L, n+L).

        Columns 0..n-1 are the media features, n..n+L-1 the latents themselves (the paper's concatenation).
        """
        self.check_inputs(x, latents)
        q, k, _ = self.project(x, latents)  # (b*t, h, L, e), (b*t, h, n+L, e)
        weights = attention_weights(q, k, scale=self.scale)  # (b*t, h, L, n+L)
        return rearrange(weights, "(b t) h L j -> b t h L j", b=x.shape[0])  # (b, t, h, L, n+L)

    def check_inputs(self, x, latents) -> None:
        """x (b, t, n, d) and latents (b, t, L, d) with the same b and t; checked before any computation."""
        check_tensor("x", x, ndim=4, dim=self.dim, layout=f"(batch, media, features, {self.dim})")
        check_tensor("latents", latents, ndim=4, dim=self.dim, layout=f"(batch, media, latents, {self.dim})")
        if x.shape[:2] != latents.shape[:2]:
            raise ValueError(
                f"x and latents must agree in batch and media axes: x is {shape_str(x)}, latents is {shape_str(latents)}"
            )
        check_matches_weights("PerceiverAttention", self.to_q.weight, [("x", x), ("latents", latents)])

    def project(self, x: torch.Tensor, latents: torch.Tensor):
        """Queries from the latents, keys and values from [features; latents], one attention problem per
        (batch, media): (b*t, h, L, e), 2 x (b*t, h, n+L, e)."""
        x = self.norm_media(x)  # (b, t, n, d)
        latents = self.norm_latents(latents)  # (b, t, L, d)
        q = self.to_q(latents)  # (b, t, L, h*e)
        kv_input = torch.cat((x, latents), dim=-2)  # (b, t, n+L, d): the paper's concatenation
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)  # 2 x (b, t, n+L, h*e)
        q = rearrange(q, "b t L (h e) -> (b t) h L e", h=self.heads)  # (b*t, h, L, e)
        k = rearrange(k, "b t j (h e) -> (b t) h j e", h=self.heads)  # (b*t, h, n+L, e)
        v = rearrange(v, "b t j (h e) -> (b t) h j e", h=self.heads)  # (b*t, h, n+L, e)
        if self.qk_layer_norms:  # IDEFICS's LayerNorm over each head's queries and keys
            q, k = self.q_layer_norm(q), self.k_layer_norm(k)  # (b*t, h, L, e), (b*t, h, n+L, e)
        return q, k, v


class PerceiverResampler(nn.Module):
    """Turns visual features into `num_latents` tokens per media.

    forward(x (b, n, d) for one media, or (b, t, n, d) for t media) -> (b, t, L, d) with L = num_latents.
    With `media_embedding="per_media"` (flamingo-pytorch's reading, the default): at most `num_media_embeds`
    media, one learned embedding each. With `media_embedding="none"` (the paper's for images, OpenFlamingo's):
    no embedding and any number of media; there is then no `media_pos_emb` parameter.
    With `frame_axis=True` or `num_frames=F` the input may also be `(b, t, F, v, d)`; with `num_frames` each frame
    gets its embedding `frame_embs[f]`; the frames are flattened into the media's features. Variants: module docstring.
    """

    MEDIA_EMBEDDINGS = ("per_media", "none")

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 8,
        num_latents: int = 64,
        num_media_embeds: int = 4,
        ff_mult: float = 4,
        media_embedding: str = "per_media",
        num_frames: int | None = None,
        frame_axis: bool = False,
        ff_activation: str = "gelu",
        qk_layer_norms: bool = False,
    ):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        depth = check_non_negative_int("depth", depth)
        check_positive_int("dim_head", dim_head)
        check_positive_int("heads", heads)
        self.num_latents = check_positive_int("num_latents", num_latents)
        self.num_media_embeds = check_positive_int("num_media_embeds", num_media_embeds)
        check_positive_number("ff_mult", ff_mult)
        if media_embedding not in self.MEDIA_EMBEDDINGS:
            raise ValueError(f"media_embedding must be one of {self.MEDIA_EMBEDDINGS}, got {media_embedding!r}")
        self.media_embedding = media_embedding
        self.num_frames = None if num_frames is None else check_positive_int("num_frames", num_frames)
        self.frame_axis = check_bool("frame_axis", frame_axis) or self.num_frames is not None  # a plain attribute, not a weight

        self.latents = nn.Parameter(torch.randn(num_latents, dim))  # (L, d): the learned queries
        if media_embedding == "per_media":
            self.media_pos_emb = nn.Parameter(torch.randn(num_media_embeds, 1, dim))  # (T, 1, d): one per media
        if self.num_frames is not None:
            self.frame_embs = nn.Parameter(torch.randn(self.num_frames, dim))  # (F, d): one per video frame

        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads, qk_layer_norms=qk_layer_norms),
                        FeedForward(dim=dim, mult=ff_mult, activation=ff_activation),
                    ]
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_inputs(x)  # (b, t, F, v, d): a single media, or a single frame, gets its axis
        b, t = x.shape[:2]
        if self.num_frames is not None:
            x = x + rearrange(self.frame_embs[: x.shape[2]], "F d -> F 1 d")  # (b, t, F, v, d): the paper's, per frame
        x = rearrange(x, "b t F v d -> b t (F v) d")  # (b, t, n, d): a media's frames are its features
        if self.media_embedding == "per_media":
            x = x + self.media_pos_emb[:t]  # (b, t, n, d): which media this is, flamingo-pytorch's reading

        latents = repeat(self.latents, "L d -> b t L d", b=b, t=t)  # (b, t, L, d)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents  # (b, t, L, d)
            latents = ff(latents) + latents  # (b, t, L, d)
        return self.norm(latents)  # (b, t, L, d)

    def check_inputs(self, x) -> torch.Tensor:
        """x checked before any computation and given its media and frame axes: (b, t, F, v, d).

        Accepted: (b, n, d), one media; (b, t, n, d), one frame per media; with the frame axis also (b, t, F, v, d).
        """
        d = self.dim
        if self.frame_axis:
            ranks, layout = (3, 4, 5), f"(batch, features, {d}), (batch, media, features, {d}) or (batch, media, frames, features, {d})"
        else:
            ranks, layout = (3, 4), f"(batch, features, {d}) or (batch, media, features, {d})"
        check_tensor("x", x, ndim=ranks, dim=d, layout=layout)
        given = shape_str(x)  # the messages name the shape the caller gave
        if x.ndim == 3:
            x = rearrange(x, "b v d -> b 1 1 v d")  # (b, 1, 1, v, d): one media, one frame
        elif x.ndim == 4:
            x = rearrange(x, "b t v d -> b t 1 v d")  # (b, t, 1, v, d): one frame per media
        t, frames = x.shape[1:3]
        if self.media_embedding == "per_media" and t > self.num_media_embeds:
            raise ValueError(
                f"x has {t} media (shape {given}), but this resampler has time embeddings for at most "
                f"num_media_embeds={self.num_media_embeds}; build it with num_media_embeds >= {t}"
            )
        if self.num_frames is not None and frames > self.num_frames:
            raise ValueError(
                f"x has {frames} frames per media (shape {given}), but this resampler has frame embeddings "
                f"for at most num_frames={self.num_frames}"
            )
        check_matches_weights("resampler", self.latents, [("x", x)])
        return x  # (b, t, F, v, d)
