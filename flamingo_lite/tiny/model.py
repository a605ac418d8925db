"""The tiny Flamingo: a frozen vision encoder, a Perceiver Resampler, and a frozen language model with gated
cross-attention blocks placed before its layers.

Paper, Sec. 2 and Fig. 3 (Alayrac et al. 2022, arXiv 2204.14198). Pictures go through the frozen vision
encoder (a grid of features each), the Perceiver Resampler turns each picture's grid into `num_latents` visual
tokens, and the language model reads the text as before, except that before every `cross_attn_every`-th of
its layers (starting at the first) a `GatedCrossAttentionBlock` lets the text look at the visual tokens of the
picture it follows. Only the resampler and the gated blocks are trained; the vision encoder and the language
model stay frozen. Because every gate starts at tanh(0) = 0, the untrained Flamingo computes *exactly* the
frozen language model's logits (lesson 08 checks this with `torch.equal`).

Shapes, in einops notation: b batch, n tokens, t media, c=3, H=W picture size, g grid cells per picture,
L latents per picture, d the width, V the vocabulary size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..cross_attention import MediaLocations
from ..gated import GatedCrossAttentionBlock
from ..perceiver import PerceiverResampler
from ..validation import (
    check_matches_weights, check_non_negative_int, check_positive_int, check_positive_number, check_seed, check_tensor,
    shape_str,
)
from .language_model import LMConfig, TinyLM
from .vision import VisionEncoder

VISION_ENCODERS = ("pretrained", "handmade", "random")


@dataclass
class FlamingoConfig:
    """Every size of the tiny Flamingo, nanoGPT style. The defaults train on a laptop CPU in well under a minute."""

    vocab_size: int = 12  # len(flamingo_lite.tiny.data.Tokenizer())
    max_len: int = 30  # the longest token sequence (5 pictures x 6 tokens)
    media_token_id: int = 1  # the id of `<image>` in the tokenizer
    dim: int = 64  # one width for the vision features, the resampler and the language model
    lm_depth: int = 2
    lm_heads: int = 4
    # "pretrained": the ConvVisionEncoder pretrained contrastively (flamingo_lite.tiny.contrastive), its committed
    # weights (dim 64, vision_pool 8); "handmade": fixed edge filters and a fixed random mix (flamingo_lite.tiny.vision);
    # "random": the ConvVisionEncoder architecture at its random initialisation from vision_seed (the ablation)
    vision: str = "pretrained"
    vision_frozen: bool = True  # False: the vision encoder trains together with Flamingo (an ablation)
    vision_pool: int = 8  # the vision grid has one cell per vision_pool x vision_pool pixels (2 x 2 for 16 px)
    vision_seed: int = 0  # the random weights of the "handmade" and "random" encoders are drawn from this seed
    resampler_depth: int = 2
    num_latents: int = 8
    # the most pictures in a training sequence (M3W's 5, paper Sec. 2.4); with media_embedding="per_media" also the
    # most any sequence may have, one learned embedding each
    num_media_embeds: int = 5
    # "none": the paper's reading (Sec. 2.1): separate images get no embedding, the mask tells them apart, so a
    # prompt may hold more pictures than training did. "per_media": flamingo-pytorch's one embedding per picture
    media_embedding: str = "none"
    # None: still pictures, (b, t, 3, H, W). F: each media is a video of up to F frames, (b, t, F, 3, H, W), with the
    # paper's learned per-frame time embeddings (Sec. 2.1, Fig. 3) added before the resampler
    num_frames: int | None = None
    dim_head: int = 16
    heads: int = 4
    ff_mult: int = 2
    cross_attn_every: int = 1  # a gated block before layer 0, K, 2K, ... (the paper: 1 for 3B, 4 for 9B, 7 for 80B)
    # "first": blocks before layers i % K == 0, the first included (flamingo-pytorch's reading, IDEFICS's
    # cross_layer_interval); "open_flamingo": before layers (i + 1) % K == 0, the K-th, 2K-th, ... (OpenFlamingo)
    xattn_placement: str = "first"
    only_attend_immediate_media: bool = True  # text sees only the picture it follows (the paper's choice)
    tanh_gate: bool = True  # False: no gates, the blocks add their outputs as they are (the paper's "w/o tanh gating")

    def __post_init__(self):
        self.check()

    def check(self) -> "FlamingoConfig":
        """Every number in range, named in the error (run when the config is made, and again by `Flamingo`)."""
        for name in ("vocab_size", "max_len", "dim", "lm_depth", "lm_heads", "vision_pool", "num_latents",
                     "num_media_embeds", "dim_head", "heads", "cross_attn_every"):
            check_positive_int(f"FlamingoConfig.{name}", getattr(self, name))
        check_non_negative_int("FlamingoConfig.resampler_depth", self.resampler_depth)
        check_positive_number("FlamingoConfig.ff_mult", self.ff_mult)
        check_seed("FlamingoConfig.vision_seed", self.vision_seed)
        if self.num_frames is not None:
            check_positive_int("FlamingoConfig.num_frames", self.num_frames)
        if self.dim % self.lm_heads:
            raise ValueError(f"FlamingoConfig.dim ({self.dim}) must be divisible by FlamingoConfig.lm_heads ({self.lm_heads})")
        if not 0 <= check_non_negative_int("FlamingoConfig.media_token_id", self.media_token_id) < self.vocab_size:
            raise ValueError(f"FlamingoConfig.media_token_id must be a token id in [0, vocab_size={self.vocab_size}), "
                             f"got {self.media_token_id}")
        return self

    def lm_config(self) -> LMConfig:
        return LMConfig(vocab_size=self.vocab_size, max_len=self.max_len, dim=self.dim, depth=self.lm_depth, heads=self.lm_heads)

    def to_dict(self) -> dict:
        return asdict(self)


def make_vision_encoder(config: FlamingoConfig) -> nn.Module:
    """The vision encoder `config.vision` names: (b, t, 3, H, W) -> (b, t, g, d) for each of them."""
    from .contrastive import ConvVisionEncoder, load_encoders  # the pretraining module imports nothing from here

    if config.vision == "handmade":
        return VisionEncoder(dim=config.dim, pool=config.vision_pool, seed=config.vision_seed)
    if config.vision == "random":
        return ConvVisionEncoder(dim=config.dim, pool=config.vision_pool, seed=config.vision_seed)
    if config.vision != "pretrained":
        raise ValueError(f"vision must be one of {VISION_ENCODERS}, got {config.vision!r}")
    vision, _, _ = load_encoders()
    if (vision.dim, vision.pool) != (config.dim, config.vision_pool):
        raise ValueError(
            f"the pretrained vision encoder has dim={vision.dim} and vision_pool={vision.pool}, but the config asks for "
            f"dim={config.dim} and vision_pool={config.vision_pool}; use FlamingoConfig(vision='handmade') or "
            f"vision='random' for other sizes, or pretrain one with python -m flamingo_lite.tiny.contrastive"
        )
    return vision


def freeze(module: nn.Module) -> nn.Module:
    """Stop `module` from training: no gradients for its parameters, and eval mode. Returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def unfreeze(module: nn.Module) -> nn.Module:
    """Let `module` train again. Returns it."""
    for p in module.parameters():
        p.requires_grad_(True)
    return module.train()


def count_parameters(module: nn.Module) -> dict:
    """`{'trainable': ..., 'frozen': ..., 'total': ...}`: numbers of parameters (elements) of `module`."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}


XATTN_PLACEMENTS = ("first", "open_flamingo")


def xattn_layers(depth: int, every: int, placement: str = "first") -> list:
    """The LM layers that get a gated block before them: `[0, K, 2K, ...]` ("first") or `[K-1, 2K-1, ...]`."""
    if placement not in XATTN_PLACEMENTS:
        raise ValueError(f"xattn_placement must be one of {XATTN_PLACEMENTS}, got {placement!r}")
    shift = 0 if placement == "first" else 1
    return [i for i in range(depth) if (i + shift) % every == 0]


class Flamingo(nn.Module):
    """forward(tokens (b, n) long, images (b, t, 3, H, W), media_locations (b, n) bool or None) -> logits (b, n, V).

    `media_locations=None` means "True wherever tokens == media_token_id". Pass `lm` (a trained `TinyLM`) and
    `vision` to reuse pretrained parts; otherwise they are made from the config (`config.vision` names the encoder:
    by default the contrastively pretrained one, loaded from its committed weights).
    """

    def __init__(self, config: FlamingoConfig | None = None, *, lm: TinyLM | None = None, vision: nn.Module | None = None):
        super().__init__()
        self.config = config = config if config is not None else FlamingoConfig()
        config.check()  # again: a config's fields may have been changed after it was made
        self.vision = vision if vision is not None else make_vision_encoder(config)
        self.lm = lm if lm is not None else TinyLM(config.lm_config())
        if self.lm.config.dim != config.dim or self.vision.dim != config.dim:
            raise ValueError(f"the language model (dim {self.lm.config.dim}) and vision encoder (dim {self.vision.dim}) must have dim={config.dim}")
        self.resampler = PerceiverResampler(
            dim=config.dim, depth=config.resampler_depth, dim_head=config.dim_head, heads=config.heads,
            num_latents=config.num_latents, num_media_embeds=config.num_media_embeds, ff_mult=config.ff_mult,
            media_embedding=config.media_embedding, num_frames=config.num_frames,
        )
        self.xattn_layers = xattn_layers(len(self.lm.blocks), config.cross_attn_every, config.xattn_placement)
        self.xattn = nn.ModuleDict(
            {
                str(i): GatedCrossAttentionBlock(
                    dim=config.dim, dim_head=config.dim_head, heads=config.heads, ff_mult=config.ff_mult,
                    only_attend_immediate_media=config.only_attend_immediate_media,
                    gate="scalar" if config.tanh_gate else "none",
                )
                for i in self.xattn_layers
            }
        )
        self.freeze_pretrained()

    def freeze_pretrained(self) -> "Flamingo":
        """Freeze the vision encoder (unless `config.vision_frozen` is False) and the language model (the paper's
        recipe); the rest stays trainable."""
        if self.config.vision_frozen:
            freeze(self.vision)
        else:
            unfreeze(self.vision)
        freeze(self.lm)
        return self

    def train(self, mode: bool = True) -> "Flamingo":
        super().train(mode)
        self.vision.eval()  # frozen parts always run in eval mode
        self.lm.eval()
        return self

    def parameter_counts(self) -> dict:
        """Trainable and frozen parameter counts, for the whole model and for each part."""
        parts = {"vision": self.vision, "resampler": self.resampler, "xattn": self.xattn, "lm": self.lm}
        return {**count_parameters(self), "parts": {name: count_parameters(m) for name, m in parts.items()}}

    def gates(self) -> dict:
        """tanh of every gate, one float per gated block in layer order: `{'attn': [...], 'ff': [...]}`."""
        blocks = [self.xattn[str(i)] for i in self.xattn_layers]
        return {
            "attn": [float(b.attn_gate.detach().tanh()) for b in blocks],
            "ff": [float(b.ff_gate.detach().tanh()) for b in blocks],
        }

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures -> visual tokens: (b, t, 3, H, W) -> (b, t, L, d); videos (b, t, F, 3, H, W) -> (b, t, L, d)."""
        video = self.config.num_frames is not None
        layout = "(batch, media, frames, 3, height, width)" if video else "(batch, media, 3, height, width)"
        check_tensor("images", images, ndim=6 if video else 5, layout=layout)
        weight = next(self.vision.parameters(), None)  # the vision encoder's dtype and device, the model's entrance
        if weight is not None:
            check_matches_weights("vision encoder", weight, [("images", images)])
        if self.resampler.media_embedding == "per_media" and images.shape[1] > self.config.num_media_embeds:
            raise ValueError(
                f"images has {images.shape[1]} pictures per sequence (shape {shape_str(images)}), but this Flamingo "
                f"takes at most {self.config.num_media_embeds}; build it with "
                f"FlamingoConfig(num_media_embeds={images.shape[1]}) or more"
            )
        if not video:
            return self.resampler(self.vision(images))  # (b, t, g, d) frozen -> (b, t, L, d)
        b, t = images.shape[:2]
        frames = self.vision(images.flatten(1, 2))  # (b, t*F, g, d), frozen: every frame on its own
        return self.resampler(frames.unflatten(1, (t, -1)))  # (b, t, F, g, d) -> (b, t, L, d), frames embedded

    def forward(self, tokens: torch.Tensor, images=None, media_locations=None, *, media=None) -> torch.Tensor:
        """Next-token logits. Give `images`, or `media` already encoded by `encode_images` (reused when generating)."""
        tokens, media_locations = self.check_inputs(tokens, images, media_locations, media)
        if media is None:
            media = self.encode_images(images)  # (b, t, L, d)
        locations = MediaLocations.check(media_locations, batch=tokens.shape[0], text=tokens.shape[1], num_media=media.shape[1])

        x = self.lm.embed(tokens)  # (b, n, d)
        for i, block in enumerate(self.lm.blocks):
            if str(i) in self.xattn:
                x = self.xattn[str(i)](x, media, locations)  # (b, n, d): look at the pictures, gated
            x = block(x)  # (b, n, d): the frozen LM layer, unchanged
        return self.lm.head(x)  # (b, n, V)

    def check_inputs(self, tokens, images, media_locations, media):
        """The tokens, exactly one of images or media, and media_locations (None: True wherever tokens is the
        <image> id), checked before any computation; the markers themselves are checked once, by MediaLocations."""
        if torch.compiler.is_compiling():  # the same checks, the one that reads values on the device (no sync)
            self.lm.check_tokens(tokens[:0])  # type, rank, dtype, length: an empty batch, so no value is read
            vocab = self.config.vocab_size
            torch._assert_async(((tokens >= 0) & (tokens < vocab)).all(), f"token ids must lie in [0, {vocab})")
        else:
            tokens = self.lm.check_tokens(tokens)
        if (images is None) == (media is None):
            raise ValueError("give exactly one of images (batch, media, 3, H, W) or media (batch, media, latents, dim)")
        pictures = images if media is None else media
        if isinstance(pictures, torch.Tensor) and pictures.ndim >= 1 and pictures.shape[0] != tokens.shape[0]:
            raise ValueError(f"tokens and images must have the same batch size: tokens {shape_str(tokens)}, images {shape_str(pictures)}")
        if media_locations is None:
            media_locations = tokens == self.config.media_token_id  # (b, n) bool
        return tokens, media_locations

    @torch.no_grad()
    def block_inputs(self, tokens: torch.Tensor, images=None, media_locations=None, *, media=None) -> list:
        """What each gated block is given in one forward pass, for looking inside: a list, one per block in layer
        order, of (x (b, n, d), media (b, t, L, d), media_locations), caught by forward pre-hooks."""
        blocks = [self.xattn[str(i)] for i in self.xattn_layers]
        caught = {}
        hooks = [block.register_forward_pre_hook(lambda block, args: caught.setdefault(block, args)) for block in blocks]
        try:
            self.forward(tokens, images, media_locations, media=media)
        finally:
            for hook in hooks:
                hook.remove()
        return [caught[block] for block in blocks]

    @torch.no_grad()
    def cross_attention_weights(self, tokens: torch.Tensor, images: torch.Tensor, media_locations=None) -> list:
        """The attention of each gated block's cross-attention, for plots: a list of (b, h, n, t*L), one per block."""
        inputs = self.block_inputs(tokens, images, media_locations)
        return [self.xattn[str(i)].attn.attention_weights(*args) for i, args in zip(self.xattn_layers, inputs)]
