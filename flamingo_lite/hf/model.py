"""`Flamingo`: flamingo_lite's resampler and gated blocks around a real Hugging Face language model.

The constructor takes OpenFlamingo 2.0.1's `Flamingo` arguments, in its order and with its meaning
(`open_flamingo/src/flamingo.py`), so that an OpenFlamingo script runs with its import changed:

    model = Flamingo(vision_encoder, lang_encoder, eoc_token_id, media_token_id, vis_dim, cross_attn_every_n_layers=1)

and the model is left as OpenFlamingo's factory leaves it (`open_flamingo/src/factory.py`): the vision encoder and
the language model frozen, the Perceiver Resampler and the gated blocks trainable, and the LM's input embeddings
too unless `freeze_lm_embeddings=True` (OpenFlamingo trains them, for its new `<image>` and `<|endofchunk|>`
tokens). Paper: Alayrac et al. 2022, arXiv 2204.14198, Sec. 2 and Fig. 3.

The pieces, and whose reading each is:

* the **vision encoder**'s tokens (`flamingo_lite.hf.vision`: open_clip, transformers' CLIP and SigLIP, IDEFICS's,
  lesson 07's), frozen, run without gradients;
* flamingo_lite's **`PerceiverResampler`** on them, at OpenFlamingo's sizes (`dim=vis_dim`, depth 6, 8 heads of 64,
  64 latents, GELU feed-forwards x4), with no media embedding (`media_embedding="none"`, as OpenFlamingo's released
  models and the paper for images) and OpenFlamingo's frame axis: `vision_x` is (B, T_img, F, C, H, W);
* flamingo_lite's **`GatedCrossAttentionBlock`** (`dim` = the LM's width, `dim_visual=vis_dim`, 8 heads of 64) before
  the LM's decoder layers (`flamingo_lite.hf.decoder`), at OpenFlamingo's placement by default, before the layers
  with `(i + 1) % n == 0` (`xattn_placement="open_flamingo"`), or at the paper's and flamingo-pytorch's, before
  layer 0 and every n-th after it, `i % n == 0` (`xattn_placement="first"`, IDEFICS's `cross_layer_interval` too);
  the immediate-media mode by default (the paper's), `only_attend_immediate_media=False` for all previous media;
* `media_locations` are `lang_x == media_token_id`, computed by the model for every call of the LM.

Differences from OpenFlamingo, each deliberate: text before the first picture sees none in both modes (the
package's item 1); more `<image>` tokens in a row than pictures is a ValueError, before any computation; `generate`
never writes `<image>` (there is no picture for it: the token is suppressed), and text it writes sees what the
prompt's last token sees, in both modes; the frozen parts stay in eval mode when the model trains (OpenFlamingo
leaves the LM's dropout on); a non-finite picture reaches exactly the text rows at and after the first token that
may see it, and no other row (`flamingo_lite.hf.decoder`); GPT-2 works (OpenFlamingo's layer wrapper fails there
with transformers 5).

Shapes: B batch, T_img pictures per row, F frames per picture, n text tokens, v visual tokens per frame,
m latents per picture, d_v = vis_dim, d the LM's width, V the vocabulary.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..cross_attention import MediaLocations
from ..gated import GatedCrossAttentionBlock
from ..masks import text_to_media_mask
from ..perceiver import PerceiverResampler
from ..validation import check_positive_int, check_tensor, shape_str
from .decoder import FlamingoDecoderLayer, find_decoder_layers, set_decoder_layers
from .vision import check_vision_tokens, vision_kind, vision_tokens, vision_width

# OpenFlamingo's Flamingo builds `PerceiverResampler(dim=vis_dim)` and `GatedCrossAttentionBlock(dim=..., dim_visual=...)`
# with its helpers' defaults; these are those defaults, in flamingo_lite's argument names
OPEN_FLAMINGO_PERCEIVER = dict(depth=6, dim_head=64, heads=8, num_latents=64, ff_mult=4)
OPEN_FLAMINGO_XATTN = dict(dim_head=64, heads=8, ff_mult=4)
XATTN_PLACEMENTS = ("open_flamingo", "first")


def xattn_layer_indices(num_layers: int, every: int, placement: str) -> list[int]:
    """The decoder layers that get a gated block: `(i + 1) % every == 0` ("open_flamingo") or `i % every == 0` ("first")."""
    if placement not in XATTN_PLACEMENTS:
        raise ValueError(f"xattn_placement must be one of {XATTN_PLACEMENTS}, got {placement!r}")
    shift = 1 if placement == "open_flamingo" else 0
    return [i for i in range(num_layers) if (i + shift) % every == 0]


@dataclass
class Conditioning:
    """The pictures of one forward or generate call, and what the LM has read so far, row by row.

    media (B, T_img, m, d_v); nonfinite_media (B, T_img) bool, or None when every picture is finite; markers (B,):
    `<image>` tokens read so far; poisoned (B,) bool: a row that already read a token seeing a non-finite picture;
    tokens_seen: how many tokens the LM's cache holds.
    """

    media: torch.Tensor
    nonfinite_media: torch.Tensor | None
    markers: torch.Tensor = field(init=False)
    poisoned: torch.Tensor = field(init=False)
    tokens_seen: int = 0

    def __post_init__(self):
        self.restart()

    def restart(self) -> None:
        """A new sequence: nothing read yet (a call with an empty cache)."""
        b = self.media.shape[0]
        self.markers = torch.zeros(b, dtype=torch.long, device=self.media.device)
        self.poisoned = torch.zeros(b, dtype=torch.bool, device=self.media.device)
        self.tokens_seen = 0

    def fit_batch(self, batch: int) -> None:
        """transformers' generate repeats each row for beams and returned sequences (repeat_interleave); so do we."""
        b = self.media.shape[0]
        if batch == b:
            return
        if batch % b:
            raise ValueError(f"the language model was called with batch {batch}, but the pictures have batch {b}")
        repeat = lambda t: None if t is None else t.repeat_interleave(batch // b, dim=0)  # noqa: E731
        self.media, self.nonfinite_media = repeat(self.media), repeat(self.nonfinite_media)
        self.markers, self.poisoned = repeat(self.markers), repeat(self.poisoned)

    def read(self, markers: torch.Tensor, only_attend_immediate_media: bool):
        """The next tokens' markers (B, n) bool -> (media (B, t', m, d_v), media_locations (B, k + n),
        nonfinite_rows (B, n) or None): what the layers are conditioned on for this call.

        The k leading columns of media_locations stand for the markers already read (row b: its first markers[b]
        columns True). In the immediate mode, a call without markers (every step of generate after the prompt) sees
        only the picture each row saw last: media is then that picture, (B, 1, m, d_v), marked at the call's first
        token (k = 0), so the blocks project the keys and values of one picture per step, not of all of them
        (OpenFlamingo's use_cached_media does the same).
        """
        t = self.media.shape[1]
        before = self.markers  # (B,)
        if only_attend_immediate_media and markers.shape[1] and not bool(markers.any()):
            rows = torch.arange(before.shape[0], device=before.device)
            media = self.media[rows, (before - 1).clamp(min=0)][:, None]  # (B, 1, m, d_v): the latest picture
            locations = torch.zeros_like(markers)  # (B, n)
            locations[:, 0] = before > 0  # a row that has seen no picture sees none
        else:
            media = self.media  # (B, T_img, m, d_v)
            k = int(before.max()) if before.numel() else 0
            history = torch.arange(k, device=markers.device) < before[:, None]  # (B, k)
            locations = torch.cat((history, markers), dim=1)  # (B, k + n)
        # checked once here: every decoder layer's block reads this one MediaLocations (and its segment layout)
        locations = checked_locations(locations, media.shape[1], "the language model's input (with the tokens it read before)")
        nonfinite_rows = None
        if self.nonfinite_media is not None:
            time = before[:, None] + markers.long().cumsum(dim=1)  # (B, n): each token's text time
            sees = text_to_media_mask(time, t, only_attend_immediate_media)  # (B, n, T_img)
            sees_bad = (sees & self.nonfinite_media[:, None, :]).any(dim=-1)  # (B, n)
            # a causal LM carries what one row saw to every later row of its sequence
            nonfinite_rows = self.poisoned[:, None] | (sees_bad.long().cumsum(dim=1) > 0)  # (B, n)
            self.poisoned = nonfinite_rows[:, -1] if nonfinite_rows.shape[1] else self.poisoned
        self.markers = before + markers.sum(dim=1)  # (B,)
        self.tokens_seen += markers.shape[1]
        return media, locations, nonfinite_rows


def checked_locations(media_locations: torch.Tensor, num_pictures: int, where: str = "lang_x") -> MediaLocations:
    """media_locations (B, n) bool as a checked `MediaLocations`. No row may have more `<image>` tokens than
    pictures: the package's check (its correction 2), said in lang_x's words."""
    try:
        return MediaLocations.check(media_locations, batch=media_locations.shape[0], text=media_locations.shape[1],
                                    num_media=num_pictures)
    except ValueError as err:
        raise ValueError(
            f"{where} has more <image> tokens than vision_x has pictures (vision_x.shape[1] = {num_pictures}), "
            f"with media_locations = (lang_x == media_token_id): {err}"
        ) from None


@dataclass
class LoadResult:
    """What `Flamingo.load_open_flamingo` did: the keys it loaded (this model's names), the checkpoint's keys it did
    not use, and this model's keys the checkpoint did not have (for a released checkpoint.pt: the frozen parts)."""

    loaded: list
    unused: list
    missing: list


class Flamingo(nn.Module):
    """forward(vision_x (B, T_img, F, C, H, W), lang_x (B, n), attention_mask, labels) -> CausalLMOutputWithPast.

    Arguments as OpenFlamingo's (`open_flamingo.Flamingo`): vision_encoder, lang_encoder (any transformers causal
    LM; its decoder layers are wrapped in place), eoc_token_id (`<|endofchunk|>`, where generate stops),
    media_token_id (`<image>`), vis_dim (the width of the vision encoder's tokens), cross_attn_every_n_layers,
    gradient_checkpointing (recompute the gated blocks in the backward pass).
    Keyword only: decoder_layers_attr_name (where the LM's decoder layers are, e.g. "model.layers", when they are not
    found), xattn_placement ("open_flamingo" or "first"), only_attend_immediate_media, freeze_lm_embeddings,
    perceiver_kwargs and xattn_kwargs (more arguments for `PerceiverResampler` and `GatedCrossAttentionBlock`, such
    as IDEFICS's variants; they override OpenFlamingo's sizes), decoder_layer_class (the wrapper, by default
    `FlamingoDecoderLayer`; another one, lesson 13's, takes `(gated_cross_attn_layer, decoder_layer)`, keeps them under
    those names, and has `condition(media, media_locations, nonfinite_rows=None)` and `clear()`).
    """

    def __init__(
        self,
        vision_encoder: nn.Module,
        lang_encoder: nn.Module,
        eoc_token_id: int,
        media_token_id: int,
        vis_dim: int,
        cross_attn_every_n_layers: int = 1,
        gradient_checkpointing: bool = False,
        *,
        decoder_layers_attr_name: str | None = None,
        xattn_placement: str = "open_flamingo",
        only_attend_immediate_media: bool = True,
        freeze_lm_embeddings: bool = False,
        perceiver_kwargs: dict | None = None,
        xattn_kwargs: dict | None = None,
        decoder_layer_class: type = FlamingoDecoderLayer,
    ):
        super().__init__()
        if not isinstance(lang_encoder, nn.Module) or not hasattr(lang_encoder, "config"):
            raise TypeError(f"lang_encoder must be a transformers causal language model, got {type(lang_encoder).__name__}")
        if any(isinstance(m, FlamingoDecoderLayer) for m in lang_encoder.modules()):
            raise ValueError("lang_encoder already has Flamingo layers; build Flamingo around a fresh language model")
        self.vis_dim = check_positive_int("vis_dim", vis_dim)
        check_positive_int("cross_attn_every_n_layers", cross_attn_every_n_layers)
        if not isinstance(only_attend_immediate_media, bool):
            raise TypeError(f"only_attend_immediate_media must be a bool, got {only_attend_immediate_media!r}")
        vocab = lang_encoder.get_input_embeddings().weight.shape[0]
        for name, token in (("eoc_token_id", eoc_token_id), ("media_token_id", media_token_id)):
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
                raise ValueError(
                    f"{name} must be a token id in [0, {vocab}) (the language model's vocabulary; add the token to the "
                    f"tokenizer and resize the embeddings first), got {token!r}"
                )
        self.eoc_token_id, self.media_token_id = eoc_token_id, media_token_id
        self.only_attend_immediate_media = only_attend_immediate_media
        self.xattn_placement, self.cross_attn_every_n_layers = xattn_placement, cross_attn_every_n_layers
        config = lang_encoder.config
        self.lang_dim = config.d_model if hasattr(config, "d_model") else config.hidden_size  # MPT calls it d_model

        self.vision_encoder, self.vision_kind = vision_kind(vision_encoder)
        width = vision_width(self.vision_encoder, self.vision_kind)
        if width is not None and width != vis_dim:
            raise ValueError(f"vis_dim={vis_dim}, but the vision encoder's tokens are {width} wide; pass vis_dim={width}")

        weight = lang_encoder.get_input_embeddings().weight  # the new layers take the LM's dtype and device
        self.perceiver_config = {**OPEN_FLAMINGO_PERCEIVER, **(perceiver_kwargs or {})}
        self.perceiver = PerceiverResampler(
            dim=vis_dim, media_embedding="none", frame_axis=True, **self.perceiver_config
        ).to(weight.device, weight.dtype)

        self.decoder_layers_attr_name = find_decoder_layers(lang_encoder, decoder_layers_attr_name)
        layers = lang_encoder.get_submodule(self.decoder_layers_attr_name)
        self.xattn_layers = xattn_layer_indices(len(layers), cross_attn_every_n_layers, xattn_placement)
        self.xattn_config = {**OPEN_FLAMINGO_XATTN, **(xattn_kwargs or {})}
        wrapped = nn.ModuleList(
            decoder_layer_class(
                GatedCrossAttentionBlock(
                    dim=self.lang_dim, dim_visual=None if vis_dim == self.lang_dim else vis_dim,
                    only_attend_immediate_media=only_attend_immediate_media, **self.xattn_config,
                ).to(weight.device, weight.dtype) if i in self.xattn_layers else None,
                layer,
            )
            for i, layer in enumerate(layers)
        )
        set_decoder_layers(lang_encoder, self.decoder_layers_attr_name, wrapped)
        self.lang_encoder = lang_encoder
        self.conditioning: Conditioning | None = None

        # OpenFlamingo's factory: freeze everything, then train the resampler, the blocks and the input embeddings
        self.requires_grad_(False)
        self.perceiver.requires_grad_(True)
        for block in self.xattn_blocks():
            block.requires_grad_(True)
        if not freeze_lm_embeddings:
            lang_encoder.get_input_embeddings().requires_grad_(True)
        self.set_gradient_checkpointing(gradient_checkpointing)
        self.train(self.training)

    # ------------------------------------------------------------------ parts
    def decoder_layers(self) -> list[FlamingoDecoderLayer]:
        return list(self.lang_encoder.get_submodule(self.decoder_layers_attr_name))

    def xattn_blocks(self) -> list[GatedCrossAttentionBlock]:
        """The gated blocks, in layer order."""
        return [layer.gated_cross_attn_layer for layer in self.decoder_layers() if layer.gated_cross_attn_layer is not None]

    def gates(self) -> dict:
        """tanh of every gate, one float per block in layer order (the mean for per-channel gates): {'attn', 'ff'}."""
        blocks = self.xattn_blocks()
        return {
            "attn": [float(b.attn_gate.detach().tanh().mean()) for b in blocks],
            "ff": [float(b.ff_gate.detach().tanh().mean()) for b in blocks],
        }

    def train(self, mode: bool = True) -> "Flamingo":
        super().train(mode)
        self.vision_encoder.eval()  # frozen parts run in eval mode (no dropout), as the tiny Flamingo's
        self.lang_encoder.eval()  # the gated blocks inside it have no dropout, so they are unaffected
        return self

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the gated blocks in the backward pass instead of keeping their activations (the frozen LM's
        layers run in eval mode, where transformers does not checkpoint them)."""
        if not isinstance(enabled, bool):
            raise TypeError(f"gradient_checkpointing must be a bool, got {enabled!r}")
        for layer in self.decoder_layers():
            layer.gradient_checkpointing = enabled

    def parameter_groups(self, weight_decay: float = 0.1) -> list[dict]:
        """AdamW groups as OpenFlamingo's training script makes them (`get_grouped_params`, `train/train.py`):
        weight decay only on the gated blocks' weights that are not gates, norms or biases; none on the gates, the
        resampler or the embeddings. Only trainable parameters. `torch.optim.AdamW(model.parameter_groups(0.1), lr=...)`."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            blocked = "gated_cross_attn_layer" in name and not any(s in name for s in ("ff_gate", "attn_gate", "norm", "bias"))
            (decay if blocked else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------ checks
    def _check_lang_x(self, lang_x, attention_mask=None, labels=None) -> None:
        if not isinstance(lang_x, torch.Tensor) or lang_x.ndim != 2 or lang_x.dtype != torch.long:
            got = f"{lang_x.dtype} tensor of shape {shape_str(lang_x)}" if isinstance(lang_x, torch.Tensor) else type(lang_x).__name__
            raise TypeError(f"lang_x must be a long tensor of token ids, shape (B, n); got {got}")
        vocab = self.lang_encoder.get_input_embeddings().weight.shape[0]
        if lang_x.numel() and (int(lang_x.min()) < 0 or int(lang_x.max()) >= vocab):
            raise ValueError(f"lang_x holds ids in [{int(lang_x.min())}, {int(lang_x.max())}], outside the vocabulary [0, {vocab})")
        for name, t in (("attention_mask", attention_mask), ("labels", labels)):
            if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(lang_x.shape)):
                got = shape_str(t) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must have lang_x's shape {shape_str(lang_x)}, got {got}")

    def _check_vision_x(self, vision_x, lang_x) -> None:
        check_tensor("vision_x", vision_x, ndim=6, layout="(B, T_img, F, C, H, W)")
        if vision_x.shape[0] != lang_x.shape[0]:
            raise ValueError(f"vision_x and lang_x must have the same batch: vision_x is {shape_str(vision_x)}, lang_x {shape_str(lang_x)}")
        params = next(self.vision_encoder.parameters(), None)
        if params is not None and (vision_x.device != params.device or vision_x.dtype != params.dtype):
            raise TypeError(
                f"vision_x is {vision_x.dtype} on {vision_x.device}, the vision encoder's weights {params.dtype} on "
                f"{params.device}; convert one of them, e.g. vision_x.to({params.dtype})"
            )
        checked_locations(lang_x == self.media_token_id, vision_x.shape[1])

    # ------------------------------------------------------------------ pictures
    def encode_vision_x(self, vision_x: torch.Tensor) -> torch.Tensor:
        """vision_x (B, T_img, F, C, H, W) -> media (B, T_img, m, d_v): the frozen encoder's tokens, resampled."""
        b, t, f = vision_x.shape[:3]
        images = rearrange(vision_x, "b t f c h w -> (b t f) c h w")  # (B*T*F, C, H, W)
        trains = any(p.requires_grad for p in self.vision_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):  # frozen: no graph, as OpenFlamingo's no_grad
            tokens = check_vision_tokens(vision_tokens(self.vision_encoder, self.vision_kind, images), self.vis_dim)  # (B*T*F, v, d_v)
        tokens = rearrange(tokens.to(self.perceiver.latents.dtype), "(b t f) v d -> b t f v d", b=b, t=t, f=f)  # (B, T, F, v, d_v)
        return self.perceiver(tokens)  # (B, T, m, d_v)

    def _condition(self, vision_x: torch.Tensor) -> None:
        media = self.encode_vision_x(vision_x)  # (B, T, m, d_v)
        nonfinite = ~torch.isfinite(media).all(dim=-1).all(dim=-1)  # (B, T): the resampler keeps each picture's NaN its own
        self.conditioning = Conditioning(media, nonfinite if bool(nonfinite.any()) else None)

    def clear_conditioned_layers(self) -> None:
        """Forget the pictures (OpenFlamingo's name)."""
        self.conditioning = None
        for layer in self.decoder_layers():
            layer.clear()

    def _before_lm(self, module, args, kwargs):
        """A forward pre-hook on the LM: condition every layer on the pictures and on this call's markers."""
        state = self.conditioning
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if state is None or input_ids is None:
            raise ValueError(
                "Flamingo finds the <image> tokens in the language model's input_ids; call the model through "
                "Flamingo.forward or Flamingo.generate with lang_x (token ids, not inputs_embeds)"
            )
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        state.fit_batch(input_ids.shape[0])
        if past == 0:
            state.restart()
        elif past != state.tokens_seen:
            raise ValueError(
                f"the language model's cache holds {past} tokens, but Flamingo's pictures were read with {state.tokens_seen}: "
                "continue a sequence with the cache of the call that read its pictures (clear_conditioned_layers=False)"
            )
        media, locations, nonfinite_rows = state.read(input_ids == self.media_token_id, self.only_attend_immediate_media)
        for layer in self.decoder_layers():
            # the package's layers share the checked MediaLocations; a layer with a condition() of its own (lesson
            # 13's) gets the plain tensor it documents
            own = type(layer).condition is not FlamingoDecoderLayer.condition
            shared = locations.markers if own else locations  # (B, k + n)
            layer.condition(media, shared, nonfinite_rows)

    @contextmanager
    def _lm_reads_pictures(self):
        hook = self.lang_encoder.register_forward_pre_hook(self._before_lm, with_kwargs=True)
        try:
            yield
        finally:
            hook.remove()

    # ------------------------------------------------------------------ running
    def forward(
        self,
        vision_x: torch.Tensor | None,
        lang_x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        clear_conditioned_layers: bool = True,
        past_key_values=None,
        use_cache: bool = False,
    ) -> CausalLMOutputWithPast:
        """Logits (B, n, V), and the LM's loss when labels are given (OpenFlamingo's arguments).

        `vision_x=None` continues with the pictures of the previous call, which must have passed
        `clear_conditioned_layers=False` (and `use_cache=True`, its cache given here as past_key_values).
        """
        self._check_lang_x(lang_x, attention_mask, labels)
        if vision_x is None:
            if self.conditioning is None:
                raise ValueError("vision_x is None and no pictures are kept from a previous call: pass vision_x (B, T_img, F, C, H, W)")
        else:
            self._check_vision_x(vision_x, lang_x)
            self._condition(vision_x)
        lm_kwargs = dict(input_ids=lang_x, attention_mask=attention_mask, labels=labels, use_cache=use_cache)
        if past_key_values is not None:
            lm_kwargs["cache"] = past_key_values
        try:
            with self._lm_reads_pictures():
                out = self.lang_encoder(**lm_kwargs)
        finally:
            if clear_conditioned_layers:
                self.clear_conditioned_layers()
        return CausalLMOutputWithPast(
            loss=out.loss, logits=out.logits, cache=getattr(out, "cache", None),
            hidden_states=getattr(out, "hidden_states", None), attentions=getattr(out, "attentions", None),
        )

    @torch.no_grad()
    def generate(self, vision_x: torch.Tensor, lang_x: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """transformers' `generate` on the LM: `lang_x` with the new tokens appended (B * num_return_sequences, n + s).

        The pictures are encoded once (and repeated for beams, not re-encoded); the LM's KV cache is used; generation
        stops at `<|endofchunk|>` unless `eos_token_id` says otherwise; `<image>` is never written. Any of generate's
        keywords: `max_new_tokens`, `num_beams=3` (the paper's beam search, App. A.2), `do_sample`, ...
        """
        self._check_lang_x(lang_x, attention_mask)
        self._check_vision_x(vision_x, lang_x)
        kwargs.setdefault("eos_token_id", self.eoc_token_id)
        suppress = list(kwargs.pop("suppress_tokens", None) or [])
        kwargs["suppress_tokens"] = suppress + ([] if self.media_token_id in suppress else [self.media_token_id])
        self._condition(vision_x)
        try:
            with self._lm_reads_pictures():
                return self.lang_encoder.generate(input_ids=lang_x, attention_mask=attention_mask, **kwargs)
        finally:
            self.clear_conditioned_layers()

    # ------------------------------------------------------------------ weights
    def load_open_flamingo(self, state_dict: dict) -> LoadResult:
        """Load an OpenFlamingo model's weights: its whole `state_dict()`, or a released `checkpoint.pt` (the trained
        part: the dict such a file holds, read with torch.load on the CPU)."""
        from .checkpoints import load_open_flamingo

        return load_open_flamingo(self, state_dict)

    def to_open_flamingo(self) -> dict:
        """The state_dict OpenFlamingo's `Flamingo`, built around the same encoder and LM, loads with strict=True."""
        from .checkpoints import to_open_flamingo

        return to_open_flamingo(self)
