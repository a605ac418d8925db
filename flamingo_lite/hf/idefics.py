"""A whole IDEFICS model (transformers' `IdeficsForVisionText2Text`) as a `flamingo_lite.hf.Flamingo`.

IDEFICS (Laurençon et al. 2023) is Flamingo's architecture with its own readings, all of which flamingo_lite's layers
have as variants: its resampler (ReLU feed-forwards, optional qk LayerNorms, no media embedding), its gated layers
(RMSNorm, SwiGLU, per-channel gates with `alpha_type="vector"`, optional qk RMSNorms), blocks before layer 0 and every
`cross_layer_interval`-th after it (`xattn_placement="first"`), and the immediate-media mode. `from_idefics` builds:

* the **language model**: IDEFICS's decoder is Llama's (its `IdeficsDecoderLayer`, `IdeficsRMSNorm`, rotary
  embeddings and SwiGLU MLP compute what transformers' Llama computes), so it becomes a `LlamaForCausalLM` with the
  same weights; IDEFICS's decoupled embedding and head (the vocabulary, then `additional_vocab_size` new tokens in
  their own matrices) become one matrix each, the new rows after the old ones, so token ids and logits are IDEFICS's;
* the **vision encoder**: a copy of IDEFICS's vision transformer, whose `last_hidden_state` (class token included)
  the resampler reads, as IDEFICS's does;
* the **resampler** and **gated blocks**: converted by `flamingo_lite.interop.from_idefics`.

What stays different (docs/interop.md): IDEFICS takes its image mask from its processor, which also hides every
picture from text after an end-of-sequence token until the next `<image>`; here `media_locations` come from the
`<image>` tokens alone, so give each sequence its own row. IDEFICS numbers positions from `attention_mask`
(`cumsum - 1`), Llama from the cache position: the same for rows without left padding. Logits agree to 1e-4 in fp32
(`tests/test_hf_idefics.py`).
"""
from __future__ import annotations

import copy

import torch

from .. import interop
from ..norms import RMSNorm
from .model import Flamingo


def _language_model(idefics, config):
    """IDEFICS's text decoder as a LlamaForCausalLM with the same weights (embedding and head made whole)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    text = idefics.model
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=config.vocab_size + config.additional_vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_attention_heads,
            hidden_act=config.hidden_act,
            max_position_embeddings=config.max_position_embeddings,
            rms_norm_eps=config.rms_norm_eps,
            rope_parameters=dict(config.rope_parameters),
            tie_word_embeddings=False,
            pad_token_id=config.pad_token_id,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
        )
    ).to(text.embed_tokens.weight.dtype)
    llama.config._attn_implementation = config._attn_implementation

    def whole(module, extra_name):
        """The decoupled matrix and its additional rows, one after the other: (V + extra, d)."""
        extra = getattr(module, extra_name, None)
        return module.weight if extra is None else torch.cat((module.weight, extra.weight))

    weights = {
        "model.embed_tokens.weight": whole(text.embed_tokens, "additional_embedding"),
        "model.norm.weight": text.norm.weight,
        "lm_head.weight": whole(idefics.lm_head, "additional_fc"),
    }
    for key, value in text.layers.state_dict().items():
        weights[f"model.layers.{key}"] = value  # the same names: self_attn.{q,k,v,o}_proj, mlp.*, the two norms
    llama.load_state_dict({k: v.detach().clone() for k, v in weights.items()}, strict=True)
    return llama.eval()


def from_idefics(idefics, *, media_token_id: int, eoc_token_id: int) -> Flamingo:
    """transformers' `IdeficsForVisionText2Text` -> `Flamingo` with the same weights and (to 1e-4) the same logits.

    media_token_id: the id of `<image>` in IDEFICS's tokenizer (its processor's `image_token_id`); eoc_token_id: where
    generate stops (IDEFICS's `<end_of_utterance>`, or its eos token). The IDEFICS model is not changed.
    """
    config = getattr(idefics, "config", None)
    if type(idefics).__name__ != "IdeficsForVisionText2Text" or config is None:
        raise TypeError(f"from_idefics takes transformers' IdeficsForVisionText2Text, got {type(idefics).__name__}")
    if not config.use_resampler:
        raise ValueError(
            "this IDEFICS model has use_resampler=False (its gated layers read the vision encoder's tokens directly); "
            "flamingo_lite.hf.Flamingo always resamples them, as Flamingo does"
        )
    text = idefics.model
    resampler = interop.from_idefics(text.perceiver_resampler)
    blocks = [interop.from_idefics(layer) for layer in text.gated_cross_attn_layers]
    vision_config, perceiver = config.vision_config, config.perceiver_config
    heads = config.num_attention_heads
    flamingo = Flamingo(
        copy.deepcopy(text.vision_model),
        _language_model(idefics, config),
        eoc_token_id,
        media_token_id,
        vis_dim=vision_config.embed_dim,
        cross_attn_every_n_layers=config.cross_layer_interval,
        xattn_placement="first",
        freeze_lm_embeddings=True,
        perceiver_kwargs=dict(
            depth=perceiver.resampler_depth, dim_head=perceiver.resampler_head_dim, heads=perceiver.resampler_n_heads,
            num_latents=perceiver.resampler_n_latents, ff_mult=4, ff_activation="relu",
            qk_layer_norms=perceiver.qk_layer_norms_perceiver,
        ),
        xattn_kwargs=dict(
            dim_head=config.hidden_size // heads, heads=heads, ff_mult=config.intermediate_size / config.hidden_size,
            ff_activation="swiglu", norm="rmsnorm", qk_layer_norms=config.qk_layer_norms,
            gate="per_channel" if config.alpha_type == "vector" else "scalar",
        ),
    )
    flamingo.perceiver.load_state_dict(resampler.state_dict(), strict=True)
    for ours, theirs in zip(flamingo.xattn_blocks(), blocks, strict=True):
        ours.load_state_dict(theirs.state_dict(), strict=True)
        for norm in ours.modules():
            if isinstance(norm, RMSNorm):
                norm.eps = config.rms_norm_eps  # IDEFICS's, a setting rather than a weight
    return flamingo
