"""Loaders between flamingo_lite's layers and the two real open Flamingo codebases, OpenFlamingo and IDEFICS.

`from_open_flamingo(obj)` takes OpenFlamingo 2.0.1's `PerceiverResampler` or `GatedCrossAttentionBlock`
(`open_flamingo/src/helpers.py`), as a module or a `state_dict`; `from_idefics(obj)` takes transformers'
`IdeficsPerceiverResampler` or `IdeficsGatedCrossAttentionLayer` (`models/idefics/perceiver.py`,
`modeling_idefics.py`), as a module or a `state_dict`. Both return the flamingo_lite layer, built with the variants
that reproduce the peer's maths, holding the same weights; its forward takes flamingo_lite's arguments
(`media_locations`, not IDEFICS's additive mask). `to_open_flamingo(layer)` gives the `state_dict` an OpenFlamingo
layer loads with `strict=True`, where the layer has only what OpenFlamingo has. docs/interop.md has the name map and
the behaviours that stay different. Neither peer is imported here: modules are read through their attributes and
`state_dict()`.

A checkpoint that does not fit (a missing key, a key nobody maps, a tensor of the wrong rank or shape, latents
included) is a ValueError naming the key.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .gated import GatedCrossAttentionBlock
from .norms import RMSNorm
from .perceiver import PerceiverResampler
from .validation import check_positive_int


def _state_dict(obj) -> dict:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise TypeError(f"expected an nn.Module or a state_dict (dict of tensors), got {type(obj).__name__}")


def _tensor(sd: dict, key: str, who: str, rank: int | None = None) -> torch.Tensor:
    """`sd[key]`, left in place; a missing key, or a tensor whose rank is not `rank`, is a ValueError naming the key."""
    if key not in sd:
        raise ValueError(f"{who} checkpoint has no key {key!r}, which the conversion needs")
    value = sd[key]
    if rank is not None and value.ndim != rank:
        raise ValueError(f"{who} checkpoint key {key!r} must have rank {rank}, got shape {tuple(value.shape)}")
    return value


def _take(sd: dict, key: str, who: str, rank: int | None = None) -> torch.Tensor:
    """Remove and return `sd[key]`, checked as `_tensor` checks it."""
    value = _tensor(sd, key, who, rank)
    del sd[key]
    return value


def _check_consumed(sd: dict, who: str) -> None:
    if sd:
        raise ValueError(f"{who} checkpoint has keys this conversion does not map: {sorted(sd)[:5]}")


def _depth(sd: dict, prefix: str) -> int:
    """How many `prefix.<i>.` blocks the state_dict holds."""
    found = {int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return len(found)


def _heads(heads, dim_head, inner: int, who: str) -> tuple[int, int]:
    """Heads and head width: from the module where it has them, else the keywords (a state_dict does not say)."""
    if heads is None:
        raise ValueError(f"{who}: a state_dict does not say how many heads it has; pass heads=...")
    check_positive_int("heads", heads)
    dim_head = inner // heads if dim_head is None else check_positive_int("dim_head", dim_head)
    if heads * dim_head != inner:
        raise ValueError(f"{who}: heads={heads} x dim_head={dim_head} != the projections' width {inner}")
    return heads, dim_head


def _load(layer: nn.Module, sd: dict, who: str) -> nn.Module:
    own = layer.state_dict()
    for key, value in sd.items():
        if key not in own:
            raise ValueError(f"{who} checkpoint maps to key {key!r}, which the flamingo_lite layer does not have")
        if own[key].shape != value.shape:
            raise ValueError(
                f"{who} checkpoint key {key!r} has shape {tuple(value.shape)}, the flamingo_lite layer expects "
                f"{tuple(own[key].shape)}"
            )
    missing = sorted(set(own) - set(sd))
    if missing:
        raise ValueError(f"{who} checkpoint has nothing for the flamingo_lite key {missing[0]!r}")
    layer.load_state_dict(sd, strict=True)
    return layer


def _ff_mult(dim: int, inner: int, who: str) -> float:
    mult = inner / dim
    if int(dim * mult) != inner:
        raise ValueError(f"{who}: feed-forward width {inner} is not int(dim * mult) for dim={dim}")
    return mult


# ---------------------------------------------------------------- OpenFlamingo


def from_open_flamingo(obj, *, heads: int | None = None, dim_head: int | None = None,
                       only_attend_immediate_media: bool | None = None) -> nn.Module:
    """OpenFlamingo's `PerceiverResampler` or `GatedCrossAttentionBlock` (module or state_dict) -> flamingo_lite's.

    heads (and dim_head, else the projection width / heads) are read from a module; a state_dict needs them.
    only_attend_immediate_media: read from a module's cross-attention; for a state_dict the default is True.
    """
    sd = _state_dict(obj)
    if "latents" in sd:
        if isinstance(obj, nn.Module):
            attn = obj.layers[0][0] if len(obj.layers) else None
            heads = attn.heads if attn is not None else (heads or 1)
            dim_head = round(attn.scale**-2) if attn is not None else dim_head
        return _open_flamingo_resampler(sd, heads, dim_head)
    if "attn_gate" in sd:
        if isinstance(obj, nn.Module):
            heads, dim_head = obj.attn.heads, round(obj.attn.scale**-2)
            only_attend_immediate_media = obj.attn.only_attend_immediate_media
        return _open_flamingo_block(sd, heads, dim_head, only_attend_immediate_media)
    raise ValueError("not an OpenFlamingo PerceiverResampler or GatedCrossAttentionBlock: no 'latents' or 'attn_gate' key")


def _open_flamingo_resampler(sd: dict, heads, dim_head) -> PerceiverResampler:
    who = "OpenFlamingo PerceiverResampler"
    num_latents, dim = _tensor(sd, "latents", who, rank=2).shape
    depth = _depth(sd, "layers")
    time = _take(sd, "media_time_embs", who, rank=3) if "media_time_embs" in sd else None  # (T, 1, d) or absent
    frames = _tensor(sd, "frame_embs", who, rank=2) if "frame_embs" in sd else None  # (F, d) or absent
    if depth:
        heads, dim_head = _heads(heads, dim_head, _tensor(sd, "layers.0.0.to_q.weight", who, rank=2).shape[0], who)
        ff_mult = _ff_mult(dim, _tensor(sd, "layers.0.1.1.weight", who, rank=2).shape[0], who)
    else:
        heads, dim_head, ff_mult = heads or 1, dim_head or 1, 4
    layer = PerceiverResampler(
        dim=dim, depth=depth, dim_head=dim_head, heads=heads, num_latents=num_latents, ff_mult=ff_mult,
        media_embedding="none" if time is None else "per_media",
        num_media_embeds=1 if time is None else time.shape[0],
        num_frames=None if frames is None else frames.shape[0],
        frame_axis=True,  # OpenFlamingo's input is (b, T, F, v, d)
    )
    if time is not None:
        sd["media_pos_emb"] = time  # the same (T, 1, d) per-media embedding, added after the frames are flattened
    return _load(layer, sd, who)


def _open_flamingo_block(sd: dict, heads, dim_head, immediate) -> GatedCrossAttentionBlock:
    who = "OpenFlamingo GatedCrossAttentionBlock"
    inner, dim = _tensor(sd, "attn.to_q.weight", who, rank=2).shape
    dim_visual = _tensor(sd, "attn.to_kv.weight", who, rank=2).shape[1]
    heads, dim_head = _heads(heads, dim_head, inner, who)
    layer = GatedCrossAttentionBlock(
        dim=dim, dim_head=dim_head, heads=heads,
        ff_mult=_ff_mult(dim, _tensor(sd, "ff.1.weight", who, rank=2).shape[0], who),
        only_attend_immediate_media=True if immediate is None else immediate,
        dim_visual=None if dim_visual == dim else dim_visual,
    )
    return _load(layer, sd, who)  # the keys are the same: OpenFlamingo's helpers are flamingo-pytorch's


def to_open_flamingo(layer: nn.Module) -> dict:
    """The state_dict OpenFlamingo's `PerceiverResampler` / `GatedCrossAttentionBlock` loads with strict=True.

    Only for layers built with what OpenFlamingo has: GELU, LayerNorm, scalar gates, no qk_layer_norms.
    """
    if isinstance(layer, PerceiverResampler):
        for attn, ff in layer.layers:
            if attn.qk_layer_norms or ff.activation != "gelu":
                raise ValueError("OpenFlamingo's resampler has GELU feed-forwards and no qk_layer_norms; this one differs")
        sd = dict(layer.state_dict())
        if "media_pos_emb" in sd:
            sd["media_time_embs"] = sd.pop("media_pos_emb")  # OpenFlamingo's max_num_media=num_media_embeds
        return sd
    if isinstance(layer, GatedCrossAttentionBlock):
        if layer.attn.qk_layer_norms or layer.ff.activation != "gelu" or layer.attn_gate.shape != (1,) or not isinstance(
            layer.attn.norm, nn.LayerNorm
        ):
            raise ValueError(
                "OpenFlamingo's GatedCrossAttentionBlock has LayerNorm, GELU, scalar gates and no qk_layer_norms; "
                "this block differs"
            )
        return dict(layer.state_dict())
    raise TypeError(f"expected a flamingo_lite PerceiverResampler or GatedCrossAttentionBlock, got {type(layer).__name__}")


# ---------------------------------------------------------------- IDEFICS


def from_idefics(obj, *, heads: int | None = None) -> nn.Module:
    """transformers' `IdeficsPerceiverResampler` or `IdeficsGatedCrossAttentionLayer` -> flamingo_lite's layer.

    A module says how many heads it has; a state_dict needs heads=... IDEFICS's gated layer is given
    `media_locations` in flamingo_lite (its immediate-media mask) instead of `image_attention_mask`.
    """
    sd = _state_dict(obj)
    if "latents" in sd:
        if isinstance(obj, nn.Module):
            heads = obj.n_heads
        return _idefics_resampler(sd, heads)
    if "alpha_cross_attn" in sd:
        eps = None
        if isinstance(obj, nn.Module):
            heads = obj.cross_attn.num_heads
            if type(obj.mlp.act_fn).__name__ not in ("SiLU", "SiLUActivation"):
                raise ValueError(f"IDEFICS gated layer: hidden_act must be silu for SwiGLU, got {obj.mlp.act_fn}")
            eps = obj.input_layernorm.variance_epsilon
        return _idefics_gated(sd, heads, eps)
    raise ValueError("not an IdeficsPerceiverResampler or IdeficsGatedCrossAttentionLayer: no 'latents' or 'alpha_cross_attn' key")


def _idefics_resampler(sd: dict, heads) -> PerceiverResampler:
    who = "IdeficsPerceiverResampler"
    latents = _take(sd, "latents", who, rank=2)
    num_latents, dim = latents.shape
    depth = _depth(sd, "blocks")
    out = {"latents": latents}
    qk = depth > 0 and "blocks.0.0.q_layer_norm.weight" in sd
    inner = _tensor(sd, "blocks.0.0.q_proj.weight", who, rank=2).shape[0] if depth else heads or 1
    heads, dim_head = _heads(heads, None, inner, who) if depth else (heads or 1, 1)
    ff_mult = _ff_mult(dim, _tensor(sd, "blocks.0.1.fc.weight", who, rank=2).shape[0], who) if depth else 4
    for i in range(depth):
        a, f, o = f"blocks.{i}.0.", f"blocks.{i}.1.", f"layers.{i}."
        for part in ("weight", "bias"):
            out[f"{o}0.norm_media.{part}"] = _take(sd, f"{a}context_layer_norm.{part}", who)
            out[f"{o}0.norm_latents.{part}"] = _take(sd, f"{a}latents_layer_norm.{part}", who)
            if qk:
                out[f"{o}0.q_layer_norm.{part}"] = _take(sd, f"{a}q_layer_norm.{part}", who)
                out[f"{o}0.k_layer_norm.{part}"] = _take(sd, f"{a}k_layer_norm.{part}", who)
            out[f"{o}1.0.{part}"] = _take(sd, f"{f}ln.{part}", who)
        out[f"{o}0.to_q.weight"] = _take(sd, f"{a}q_proj.weight", who)
        out[f"{o}0.to_kv.weight"] = torch.cat((_take(sd, f"{a}k_proj.weight", who), _take(sd, f"{a}v_proj.weight", who)))
        out[f"{o}0.to_out.weight"] = _take(sd, f"{a}output_proj.weight", who)
        out[f"{o}1.1.weight"] = _take(sd, f"{f}fc.weight", who)
        out[f"{o}1.3.weight"] = _take(sd, f"{f}c_proj.weight", who)
    for part in ("weight", "bias"):
        out[f"norm.{part}"] = _take(sd, f"layer_norm.{part}", who)
    _check_consumed(sd, who)
    layer = PerceiverResampler(
        dim=dim, depth=depth, dim_head=dim_head, heads=heads, num_latents=num_latents, ff_mult=ff_mult,
        media_embedding="none", ff_activation="relu", qk_layer_norms=qk,
    )
    return _load(layer, out, who)


def _idefics_gated(sd: dict, heads, eps) -> GatedCrossAttentionBlock:
    who = "IdeficsGatedCrossAttentionLayer"
    sd = {k: v for k, v in sd.items() if not k.startswith("cross_attn.rotary_emb.")}  # unused by cross-attention
    c = "cross_attn."
    q = _take(sd, f"{c}q_proj.weight", who, rank=2)
    inner, dim = q.shape
    heads, dim_head = _heads(heads, None, inner, who)
    k, v = _take(sd, f"{c}k_proj.weight", who, rank=2), _take(sd, f"{c}v_proj.weight", who, rank=2)
    qk = f"{c}q_layer_norm.weight" in sd
    alpha_attn, alpha_ff = _take(sd, "alpha_cross_attn", who), _take(sd, "alpha_dense", who)
    gate = "scalar" if alpha_attn.numel() == 1 else "per_channel"
    gate_proj, up_proj = _take(sd, "mlp.gate_proj.weight", who, rank=2), _take(sd, "mlp.up_proj.weight", who, rank=2)
    out = {
        "attn.norm.weight": _take(sd, "input_layernorm.weight", who),
        "attn.to_q.weight": q,
        "attn.to_kv.weight": torch.cat((k, v)),  # (2*h*e, dim_visual): keys then values
        "attn.to_out.weight": _take(sd, f"{c}o_proj.weight", who),
        "attn_gate": alpha_attn.reshape(-1),  # (1,) or (d,) from (1,) or (1, 1, d)
        "ff.0.weight": _take(sd, "post_attention_layernorm.weight", who),
        "ff.1.weight": torch.cat((gate_proj, up_proj)),  # SwiGLU's two halves: gate first
        "ff.3.weight": _take(sd, "mlp.down_proj.weight", who),
        "ff_gate": alpha_ff.reshape(-1),
    }
    if qk:
        out["attn.q_layer_norm.weight"] = _take(sd, f"{c}q_layer_norm.weight", who)
        out["attn.k_layer_norm.weight"] = _take(sd, f"{c}k_layer_norm.weight", who)
    _check_consumed(sd, who)
    layer = GatedCrossAttentionBlock(
        dim=dim, dim_head=dim_head, heads=heads, ff_mult=_ff_mult(dim, gate_proj.shape[0], who),
        only_attend_immediate_media=True,  # IDEFICS's processor: each token sees the latest image only
        dim_visual=None if k.shape[1] == dim else k.shape[1],
        ff_activation="swiglu", norm="rmsnorm", qk_layer_norms=qk, gate=gate,
    )
    if eps is not None:
        for m in layer.modules():
            if isinstance(m, RMSNorm):
                m.eps = eps  # IDEFICS's rms_norm_eps
    return _load(layer, out, who)
