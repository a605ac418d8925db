"""The eyes of `flamingo_lite.hf.Flamingo`: the vision encoders it takes, and how each gives its visual tokens.

Flamingo's Perceiver Resampler reads a grid of visual features per picture (paper, Sec. 2.1), not a pooled vector, so
every encoder here is asked for its tokens, (N pictures, v tokens, d_visual):

| kind | encoder | its tokens |
|---|---|---|
| `"open_clip"` | any module with a `.visual` (open_clip's CLIP) | `visual(images)[1]`, with `visual.output_tokens = True` set as OpenFlamingo's factory sets it; the `.visual` is what the model keeps, as OpenFlamingo keeps it, so its `state_dict` keys are OpenFlamingo's |
| `"clip"` | transformers' `CLIPVisionModel` | `last_hidden_state[:, 1:]`: the patch tokens, class token dropped, before the final LayerNorm, as the open_clip versions OpenFlamingo trained with returned them (`pooled = ln_post(x[:, 0])`, `tokens = x[:, 1:]`; later open_clip versions normalise the tokens too) |
| `"siglip"` | transformers' `SiglipVisionModel` | `last_hidden_state` (SigLIP has no class token; its `post_layernorm` is applied) |
| `"hidden_states"` | IDEFICS's vision transformer (`IdeficsVisionTransformer`) | `last_hidden_state`, class token included, as IDEFICS's resampler reads it |
| `"grid"` | lesson 07's `flamingo_lite.tiny.contrastive.ConvVisionEncoder` (from `load_encoders()`) | its grid of cells, `encoder(images)[:, 0]` |

The encoder is frozen (the paper's Sec. 2.1; OpenFlamingo's factory), and run without gradients unless some of
its parameters require them.

Shapes: N pictures (batch x media x frames), c=3, H, W, v tokens per picture, d the visual width.
"""
from __future__ import annotations

import torch
from torch import nn

from ..validation import shape_str

VISION_KINDS = ("open_clip", "clip", "siglip", "hidden_states", "grid")


def vision_kind(vision_encoder: nn.Module) -> tuple[nn.Module, str]:
    """(the module the model keeps, its kind) for one of the encoders in the module docstring; else a TypeError."""
    from transformers import CLIPVisionModel, SiglipVisionModel
    from transformers.models.idefics.vision import IdeficsVisionTransformer

    from ..tiny.contrastive import ConvVisionEncoder

    if not isinstance(vision_encoder, nn.Module):
        raise TypeError(f"vision_encoder must be an nn.Module, got {type(vision_encoder).__name__}")
    if isinstance(vision_encoder, CLIPVisionModel):
        return vision_encoder, "clip"
    if isinstance(vision_encoder, SiglipVisionModel):
        return vision_encoder, "siglip"
    if isinstance(vision_encoder, IdeficsVisionTransformer):
        return vision_encoder, "hidden_states"
    if isinstance(vision_encoder, ConvVisionEncoder):
        return vision_encoder, "grid"
    visual = getattr(vision_encoder, "visual", None)
    if isinstance(visual, nn.Module):
        if hasattr(visual, "output_tokens"):
            visual.output_tokens = True  # open_clip returns (pooled, tokens) then; OpenFlamingo's factory sets it too
        return visual, "open_clip"
    raise TypeError(
        f"vision_encoder {type(vision_encoder).__name__} is not one Flamingo can read tokens from: pass an open_clip "
        "model (anything with a .visual returning (pooled, tokens)), a transformers CLIPVisionModel or "
        "SiglipVisionModel, IDEFICS's vision transformer, or flamingo_lite.tiny.contrastive.ConvVisionEncoder"
    )


def vision_width(encoder: nn.Module, kind: str) -> int | None:
    """The width of the encoder's tokens where its configuration says it (None for open_clip: read at run time)."""
    if kind in ("clip", "siglip"):
        return encoder.config.hidden_size
    if kind == "hidden_states":
        return encoder.config.embed_dim
    if kind == "grid":
        return encoder.dim
    return None


def vision_tokens(encoder: nn.Module, kind: str, images: torch.Tensor) -> torch.Tensor:
    """images (N, c, H, W) -> visual tokens (N, v, d)."""
    if kind == "open_clip":
        out = encoder(images)
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            raise ValueError(
                "the vision encoder's .visual returned a single tensor; Flamingo needs its tokens: "
                "(pooled, tokens), as open_clip gives with visual.output_tokens = True"
            )
        return out[1]  # (N, v, d): OpenFlamingo's `self.vision_encoder(vision_x)[1]`
    if kind == "clip":
        return encoder(pixel_values=images).last_hidden_state[:, 1:]  # (N, v, d): the class token dropped
    if kind in ("siglip", "hidden_states"):
        return encoder(pixel_values=images).last_hidden_state  # (N, v, d)
    if kind == "grid":
        return encoder(images)[:, 0]  # (N, g, d): one picture per row
    raise ValueError(f"unknown vision kind {kind!r}; one of {VISION_KINDS}")


def check_vision_tokens(tokens, vis_dim: int) -> torch.Tensor:
    """The encoder's output is (N, v, vis_dim) floats; otherwise say what it was."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[-1] != vis_dim:
        got = shape_str(tokens) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(
            f"the vision encoder gave tokens of shape {got}, but Flamingo was built with vis_dim={vis_dim}: it needs "
            f"(pictures, tokens, {vis_dim}); pass the encoder's token width as vis_dim"
        )
    return tokens
