"""A small frozen vision encoder: pictures in, a grid of feature vectors out.

Flamingo's vision encoder is a Normalizer-Free ResNet, pretrained contrastively on image-text pairs and then
frozen (paper, Sec. 2.1). Its last feature map, flattened to a list of vectors, is what the Perceiver Resampler
reads. This hand-made encoder plays that part without ever being trained (`FlamingoConfig(vision="handmade")`; the
default is the encoder pretrained contrastively in `flamingo_lite.tiny.contrastive`). Its first layer holds the
filters the first layer of a trained CNN ends up with: oriented edge detectors (8 directions) beside the colour
of each pixel. Average pooling turns them into a coarse grid (the tiny Flamingo pools 8 x 8 pixels, so a 16 px
picture gives 2 x 2 cells), and a fixed random 1x1 convolution with a GELU mixes each cell's 11 numbers into `dim`
features. Colour and the mix of edge
directions in a cell (straight sides for a square, slanted ones for a triangle, every direction for a circle)
are what the resampler needs to tell the pictures apart.

Shapes, in einops notation: b batch, t media, c=3 colour channels, H=W the picture size, g=(H/p)*(W/p) grid
cells with p = `pool`, d the feature width, k=8 edge directions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..validation import check_finite_number, check_positive_int, check_seed, check_tensor

NUM_DIRECTIONS = 8


def edge_filters(num_directions: int = NUM_DIRECTIONS, size: int = 5) -> torch.Tensor:
    """Oriented derivative-of-Gaussian filters, one per direction: (k, 1, size, size).

    Filter i responds (positively) to brightness rising in the direction at angle 2*pi*i/k.
    """
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2  # (size,)
    ys, xs = torch.meshgrid(r, r, indexing="ij")  # (size, size) each
    gauss = torch.exp(-(xs**2 + ys**2) / 2.0)  # (size, size)
    filters = []
    for i in range(num_directions):
        angle = 2 * math.pi * i / num_directions
        f = (xs * math.cos(angle) + ys * math.sin(angle)) * gauss  # (size, size): a slope along the direction
        filters.append(f / f.abs().sum())
    return rearrange(torch.stack(filters), "k h w -> k 1 h w")  # (k, 1, size, size)


class VisionEncoder(nn.Module):
    """Fixed edge and colour filters -> average pool to a grid -> fixed random 1x1 conv, GELU -> LayerNorm.

    forward(images (b, t, 3, H, W) or (b, 3, H, W)) -> (b, t, g, d) with g = (H // pool) * (W // pool).
    Every weight is fixed (buffers and frozen parameters drawn from `seed`), like a pretrained, frozen encoder.
    """

    def __init__(self, *, dim: int = 64, pool: int = 4, seed: int | None = 0, edge_gain: float = 4.0):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.pool = check_positive_int("pool", pool)
        self.edge_gain = float(check_finite_number("edge_gain", edge_gain))
        if seed is not None:
            check_seed("seed", seed)
        self.register_buffer("edges", edge_filters(), persistent=False)  # (k, 1, 5, 5)
        generator = torch.Generator().manual_seed(0 if seed is None else seed)  # the caller's random stream stays untouched
        channels = 3 + NUM_DIRECTIONS
        self.mix = nn.Conv2d(channels, dim, kernel_size=1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.randn(dim, channels, 1, 1, generator=generator) / math.sqrt(channels))
            self.mix.bias.copy_(0.5 * torch.randn(dim, generator=generator))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)  # features of unit scale for the resampler
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor("images", images, ndim=(4, 5), layout="(batch, media, 3, height, width) or (batch, 3, height, width)")
        if images.ndim == 4:
            images = rearrange(images, "b c h w -> b 1 c h w")  # (b, 1, 3, H, W): one picture each
        if images.shape[2] != 3:
            raise ValueError(f"images must have 3 colour channels in axis 2, shape (batch, media, 3, H, W); got {tuple(images.shape)}")
        if images.shape[-1] < self.pool or images.shape[-2] < self.pool:
            raise ValueError(f"images must be at least pool={self.pool} pixels high and wide, got {tuple(images.shape)}")
        b, t = images.shape[:2]
        x = rearrange(images, "b t c h w -> (b t) c h w")  # (b*t, 3, H, W)
        gray = x.mean(dim=1, keepdim=True)  # (b*t, 1, H, W): brightness
        edges = F.relu(F.conv2d(gray, self.edges.to(x.dtype), padding=self.edges.shape[-1] // 2))  # (b*t, k, H, W)
        x = torch.cat([x, self.edge_gain * edges], dim=1)  # (b*t, 3+k, H, W): colour beside edges
        x = F.avg_pool2d(x, self.pool)  # (b*t, 3+k, H/p, W/p): the grid
        x = F.gelu(self.mix(x))  # (b*t, d, H/p, W/p)
        x = rearrange(x, "(b t) d h w -> b t (h w) d", b=b, t=t)  # (b, t, g, d): the grid as a list of vectors
        return self.norm(x)  # (b, t, g, d)
