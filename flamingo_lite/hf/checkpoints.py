"""OpenFlamingo's weights into `flamingo_lite.hf.Flamingo`, and back.

OpenFlamingo 2.0.1's keys, for a model built by its factory around an LM whose decoder layers are at `P`
(`gpt_neox.layers`, `transformer.blocks`, ...):

| OpenFlamingo | here |
|---|---|
| `vision_encoder.*` (open_clip's `.visual`) | the same, when the vision encoder is an open_clip model (else unused) |
| `perceiver.*` (its `PerceiverResampler(dim=vis_dim)`, no time or frame embeddings) | the same (flamingo_lite's resampler has these keys) |
| `lang_encoder.P.i.gated_cross_attn_layer.*` | the same (flamingo_lite's gated block has these keys) |
| `lang_encoder.P.i.decoder_layer.*` | the same |
| `lang_encoder.gated_cross_attn_layers.i.*`, `lang_encoder.old_decoder_blocks.i.*` (the same tensors again: OpenFlamingo keeps its blocks in three places) | mapped to the two rows above |
| every other `lang_encoder.*` (embeddings, final norm, head) | the same |
| `lang_encoder.embed_out.*` (GPT-NeoX's head in transformers 4, which OpenFlamingo's released models used) | `lang_encoder.lm_head.*` (its name in transformers 5) |

A released `checkpoint.pt` (OpenFlamingo's `filter_state_dict_to_trainable`) holds the trained part: `perceiver.*`,
`lang_encoder.P.i.gated_cross_attn_layer.*` and the LM's embeddings (trained, with the new `<image>` and
`<|endofchunk|>` rows: resize the LM's embeddings to the tokenizer with the two tokens added first, as OpenFlamingo's
factory does). Training checkpoints wrap it in `{"model_state_dict": ...}`, and DDP adds a `module.` prefix; both
are taken off.
"""
from __future__ import annotations

import re

import torch

from .. import interop
from .model import OPEN_FLAMINGO_PERCEIVER, OPEN_FLAMINGO_XATTN, Flamingo, LoadResult, xattn_layer_indices

DUPLICATES = re.compile(r"^lang_encoder\.(old_decoder_blocks|gated_cross_attn_layers)\.(\d+)\.(.*)$")
WRAPPER_PART = {"old_decoder_blocks": "decoder_layer", "gated_cross_attn_layers": "gated_cross_attn_layer"}
RENAMED = {"lang_encoder.embed_out.": "lang_encoder.lm_head."}  # transformers 4 -> 5, used where the old name is absent


def _checkpoint_state_dict(state_dict) -> dict:
    if isinstance(state_dict, dict) and "model_state_dict" in state_dict:
        state_dict = state_dict["model_state_dict"]  # OpenFlamingo's training checkpoints
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TypeError("state_dict must be a dict of tensors (an OpenFlamingo model's state_dict or checkpoint.pt)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def our_key(key: str, layers_path: str, own: dict) -> str:
    """An OpenFlamingo key -> this model's (the duplicates onto the wrapped layers; names transformers changed)."""
    match = DUPLICATES.match(key)
    if match is not None:
        kind, i, rest = match.groups()
        return f"lang_encoder.{layers_path}.{i}.{WRAPPER_PART[kind]}.{rest}"
    for old, new in RENAMED.items():
        if key.startswith(old) and key not in own:
            return new + key[len(old):]
    return key


def load_open_flamingo(model: Flamingo, state_dict) -> LoadResult:
    """Load what fits; every shape is checked before anything is loaded (the first that disagrees is a ValueError
    naming the key and both shapes). Returns the keys loaded, the checkpoint's unused keys and our missing keys."""
    sd = _checkpoint_state_dict(state_dict)
    own = model.state_dict()
    mapped, unused = {}, []
    for key, value in sd.items():
        target = our_key(key, model.decoder_layers_attr_name, own)
        if target not in own:
            unused.append(key)
            continue
        if tuple(value.shape) != tuple(own[target].shape):
            raise ValueError(
                f"checkpoint key {key!r} has shape {tuple(value.shape)}, but this model's {target!r} is "
                f"{tuple(own[target].shape)}; build Flamingo with the same vision encoder, language model (its embeddings "
                "resized to the tokenizer with <|endofchunk|> and <image>), vis_dim and cross_attn_every_n_layers"
            )
        if target in mapped and not torch.equal(mapped[target], value):
            raise ValueError(f"checkpoint keys for {target!r} disagree: {key!r} holds other values than its duplicate")
        mapped[target] = value
    model.load_state_dict(mapped, strict=False)
    missing = sorted(set(own) - set(mapped))
    return LoadResult(loaded=sorted(mapped), unused=unused, missing=missing)


def to_open_flamingo(model: Flamingo) -> dict:
    """Our state_dict with OpenFlamingo's duplicate keys added; only for a model OpenFlamingo can build."""
    if model.vision_kind != "open_clip":
        raise ValueError(
            f"OpenFlamingo reads its pictures as open_clip's `visual(images)[1]`; this model's vision encoder is "
            f"{type(model.vision_encoder).__name__} ({model.vision_kind!r}), which OpenFlamingo cannot run"
        )
    n = model.cross_attn_every_n_layers
    theirs = xattn_layer_indices(len(model.decoder_layers()), n, "open_flamingo")
    if model.xattn_layers != theirs:
        raise ValueError(
            f"OpenFlamingo puts its blocks before layers {theirs} ((i + 1) % {n} == 0); this model has them before "
            f"{model.xattn_layers} (xattn_placement={model.xattn_placement!r})"
        )
    if not model.only_attend_immediate_media:
        raise ValueError("OpenFlamingo's Flamingo builds its blocks with only_attend_immediate_media=True; this model attends to all previous media")
    for name, ours, theirs_config in (("perceiver_kwargs", model.perceiver_config, OPEN_FLAMINGO_PERCEIVER),
                                      ("xattn_kwargs", model.xattn_config, OPEN_FLAMINGO_XATTN)):
        if ours != theirs_config:
            raise ValueError(f"OpenFlamingo builds its layers with {theirs_config}; this model's {name} give {ours}")
    interop.to_open_flamingo(model.perceiver)  # refuses the variants OpenFlamingo lacks (norms, activations, gates)
    for block in model.xattn_blocks():
        interop.to_open_flamingo(block)
    sd = dict(model.state_dict())
    for i, layer in enumerate(model.decoder_layers()):
        for key, value in layer.decoder_layer.state_dict().items():
            sd[f"lang_encoder.old_decoder_blocks.{i}.{key}"] = value
        if layer.gated_cross_attn_layer is not None:
            for key, value in layer.gated_cross_attn_layer.state_dict().items():
                sd[f"lang_encoder.gated_cross_attn_layers.{i}.{key}"] = value
    return sd
