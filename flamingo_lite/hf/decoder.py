"""The decoder-layer wrapper: a gated cross-attention block before one layer of a Hugging Face language model.

OpenFlamingo (`open_flamingo/src/flamingo_lm.py`, after dhansmair/flamingo-mini) turns a transformers causal LM into
a Flamingo without touching its code: the LM's list of decoder layers is replaced by wrappers, each holding a gated
block (or None) and the original layer, and every wrapper is *conditioned* on the visual tokens and the media
locations before the LM runs. The LM's own forward, its KV cache and transformers' `generate` then run unchanged.
The same here, with flamingo_lite's `GatedCrossAttentionBlock` (used through its constructor and
`forward(x, media, media_locations)` only), and with three differences from OpenFlamingo's `FlamingoLayer`:

* **Any calling convention.** The wrapper hands the layer exactly what the LM gave it (`*args, **kwargs`). GPT-2
  calls its blocks with positional arguments, which OpenFlamingo's wrapper (`forward(lang_x, attention_mask, **kw)`)
  cannot take: with transformers 5 it fails there. Attributes the LM reads from its layers (Qwen2's
  `attention_type`, say) are looked up on the wrapped layer.
* **Tokens already read count.** When a token is generated, the text before it sits in the KV cache. Its markers
  come in as `media_locations` columns *in front of* the text: `media_locations` (b, k + n) for text (b, n). The
  wrapper gives those k columns k stand-in rows (zeros), so the block's own text-time count runs over the earlier
  markers, and drops them after. A token written after the prompt then sees what the prompt's last token saw, in
  both modes, as in a forward pass over the whole sequence. (In the immediate mode a call without markers, every
  step of generate, needs no stand-ins: the model conditions the layers on just the picture each row sees.
  OpenFlamingo's `use_cached_media` gives generated text the same media; but a generated `<image>` there starts the
  count again and sees the *first* picture.)
* **The NaN contract** (README, "The package", item 5) through the language model. A causal self-attention layer
  spreads a NaN row *backwards*: a NaN key of a later token poisons the scores of earlier tokens that must not see
  it (NaN + -inf is NaN), in every LM and attention implementation measured (GPT-2, GPT-NeoX, Llama, OPT, MPT; SDPA
  and eager, on the CPU: `tests/test_hf_flamingo.py`). So the model tells each wrapper which rows already hold a
  non-finite picture in their past (`nonfinite_rows`, b x n); the wrapper zeroes them before the LM's layer and sets
  them to NaN after it. Every other row is computed exactly as if the picture were finite; those rows, and only
  those, come out NaN.

Shapes: b batch, n text tokens (this call), k earlier markers, t media, m latents, d the LM's width.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..cross_attention import MediaLocations
from ..validation import shape_str

# Where the decoder layers are, tried in this order; the first nn.ModuleList found is used (OpenFlamingo's factory
# keeps a table of the same paths, `__KNOWN_DECODER_LAYERS_ATTR_NAMES`, keyed by class name).
DECODER_LAYER_PATHS = (
    "model.decoder.layers",  # OPT
    "model.layers",  # Llama, SmolLM, TinyLlama, Mistral, Qwen2, ...
    "gpt_neox.layers",  # GPT-NeoX, Pythia, RedPajama-INCITE
    "transformer.h",  # GPT-2, GPT-J
    "transformer.blocks",  # MPT (transformers' and MosaicML's)
)


def _get_path(module: nn.Module, path: str):
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def find_decoder_layers(lang_encoder: nn.Module, decoder_layers_attr_name: str | None = None) -> str:
    """The dotted path of the LM's nn.ModuleList of decoder layers: the one named, or the first known one found.

    An LM whose layers cannot be found is a ValueError that says to pass `decoder_layers_attr_name`.
    """
    if decoder_layers_attr_name is not None:
        if not isinstance(decoder_layers_attr_name, str) or not decoder_layers_attr_name:
            raise TypeError(f"decoder_layers_attr_name must be a dotted attribute path such as 'model.layers', got {decoder_layers_attr_name!r}")
        found = _get_path(lang_encoder, decoder_layers_attr_name)
        if not isinstance(found, nn.ModuleList):
            what = "nothing" if found is None else type(found).__name__
            raise ValueError(
                f"decoder_layers_attr_name={decoder_layers_attr_name!r} names {what} in {type(lang_encoder).__name__}, "
                "not an nn.ModuleList of decoder layers"
            )
        return decoder_layers_attr_name
    for path in DECODER_LAYER_PATHS:
        if isinstance(_get_path(lang_encoder, path), nn.ModuleList):
            return path
    raise ValueError(
        f"cannot find the decoder layers of {type(lang_encoder).__name__} (looked for {', '.join(DECODER_LAYER_PATHS)}); "
        "pass decoder_layers_attr_name='...' naming its nn.ModuleList of decoder layers"
    )


def set_decoder_layers(lang_encoder: nn.Module, path: str, layers: nn.ModuleList) -> None:
    """Put `layers` where `path` points (the parent module's attribute is replaced, so state_dict keys follow it)."""
    parent, _, name = path.rpartition(".")
    setattr(_get_path(lang_encoder, parent) if parent else lang_encoder, name, layers)


def _first_tensor(out):
    """A decoder layer returns its hidden states, or a tuple that starts with them (MPT's, older transformers)."""
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, hidden: torch.Tensor):
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


class FlamingoDecoderLayer(nn.Module):
    """`decoder_layer(gated_cross_attn_layer(x, media, media_locations), ...)`: one LM layer, looking at pictures.

    `gated_cross_attn_layer` is a flamingo_lite `GatedCrossAttentionBlock`, or None for the layers that get no block
    (`cross_attn_every_n_layers` > 1). The attribute names are OpenFlamingo's, so the `state_dict` keys are too.
    Call `condition(media, media_locations, nonfinite_rows)` before the LM runs; `clear()` after.
    """

    def __init__(self, gated_cross_attn_layer: nn.Module | None, decoder_layer: nn.Module):
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self.gradient_checkpointing = False  # recompute the block in the backward pass (saves its activations)
        self.clear()

    def condition(self, media: torch.Tensor, media_locations: torch.Tensor | MediaLocations, nonfinite_rows: torch.Tensor | None = None) -> None:
        """media (b, t, m, d_visual); media_locations (b, k + n) bool: the k markers of tokens already in the cache,
        then the n tokens of the next call; nonfinite_rows (b, n) bool or None: rows with a non-finite picture in
        their past (the NaN contract)."""
        self.media = media
        self.media_locations = media_locations
        self.nonfinite_rows = nonfinite_rows

    def clear(self) -> None:
        self.media = self.media_locations = self.nonfinite_rows = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers and submodules
        except AttributeError:
            if name == "decoder_layer":
                raise
            return getattr(self.decoder_layer, name)  # what the LM reads from its own layers

    def cross_attend(self, x: torch.Tensor) -> torch.Tensor:
        """The gated block on the text x (b, n, d), earlier markers stood in for by zero rows: (b, n, d)."""
        if self.media is None:
            raise ValueError(
                "this Flamingo layer has not been conditioned on pictures: run the model through Flamingo.forward or "
                "Flamingo.generate (or call condition(media, media_locations) on every layer first)"
            )
        b, n = x.shape[:2]
        locations = self.media_locations  # (b, k + n), or the MediaLocations the model checked once for all layers
        markers = locations.markers if isinstance(locations, MediaLocations) else locations  # (b, k + n)
        if markers.ndim != 2 or markers.shape[0] != b or markers.shape[1] < n:
            raise ValueError(
                f"media_locations must be (batch, earlier markers + text) with at least the text's {n} columns; "
                f"the text is {shape_str(x)}, media_locations is {shape_str(markers)}"
            )
        k = markers.shape[1] - n
        if k:
            x = torch.cat((x.new_zeros(b, k, x.shape[2]), x), dim=1)  # (b, k + n, d): stand-ins for earlier markers
        if self.gradient_checkpointing and torch.is_grad_enabled():
            x = checkpoint(self.gated_cross_attn_layer, x, self.media, locations, use_reentrant=False)  # (b, k + n, d)
        else:
            x = self.gated_cross_attn_layer(x, self.media, locations)  # (b, k + n, d)
        return x[:, k:]  # (b, n, d)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        x = hidden_states  # (b, n, d)
        if self.gated_cross_attn_layer is not None:
            x = self.cross_attend(x)  # (b, n, d): the pictures, gated
        if self.nonfinite_rows is None:
            return self.decoder_layer(x, *args, **kwargs)  # the frozen LM layer, unchanged
        rows = self.nonfinite_rows[..., None]  # (b, n, 1)
        out = self.decoder_layer(torch.where(rows, 0.0, x), *args, **kwargs)  # no NaN reaches earlier rows
        return _replace_first(out, torch.where(rows, float("nan"), _first_tensor(out)))  # (b, n, d)
