"""Tiny random language models and an open_clip-like vision encoder for the flamingo_lite.hf tests (nothing downloaded).

`language_model(kind)` builds a transformers causal LM of each architecture flamingo_lite.hf finds the layers of,
at a width of 32 and 2 to 4 layers; `OpenClipLike` is a module whose `.visual` returns `(pooled, tokens)`, as open_clip's
CLIP does with `output_tokens=True` (what OpenFlamingo's Flamingo reads, `vision_encoder.visual(x)[1]`).
`open_flamingo_around(...)` builds OpenFlamingo 2.0.1's model as its factory does, without open_clip.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

VOCAB = 40
MEDIA_ID, EOC_ID, PAD_ID = 38, 39, 0  # <image>, <|endofchunk|>, padding: the last ids, as a tokenizer adds them
LM_KINDS = ("gpt2", "gpt_neox", "llama", "opt", "mpt")


def language_model(kind: str, *, layers: int = 2, dim: int = 32, seed: int = 0, vocab: int = VOCAB, attn: str | None = None):
    """A tiny random causal LM of architecture `kind`, eval mode, fp32."""
    import transformers as tf

    common = dict(vocab_size=vocab, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=EOC_ID)
    if attn is not None:
        common["attn_implementation"] = attn
    torch.manual_seed(seed)
    if kind == "gpt2":
        lm = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=dim, n_layer=layers, n_head=4, n_positions=128, **common))
    elif kind == "gpt_neox":
        lm = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=4,
                                                    intermediate_size=2 * dim, max_position_embeddings=128, **common))
    elif kind == "llama":
        lm = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=4,
                                                num_key_value_heads=2, intermediate_size=2 * dim, max_position_embeddings=128, **common))
    elif kind == "opt":
        lm = tf.OPTForCausalLM(tf.OPTConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=4, ffn_dim=2 * dim,
                                            max_position_embeddings=128, word_embed_proj_dim=dim, **common))
    elif kind == "mpt":
        common.pop("attn_implementation", None)  # transformers' MPT has the eager implementation only
        lm = tf.MptForCausalLM(tf.MptConfig(d_model=dim, n_layers=layers, n_heads=4, max_seq_len=128, **common))
    else:
        raise ValueError(kind)
    return lm.eval()


class TinyVisual(nn.Module):
    """Patches of 4x4 pixels -> tokens (N, 16, width) for 16x16 pictures; returns (pooled, tokens) like open_clip's."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.patch = nn.Conv2d(3, width, kernel_size=4, stride=4)
        self.norm = nn.LayerNorm(width)
        self.output_tokens = False  # open_clip's flag; Flamingo sets it

    def forward(self, images):
        tokens = self.norm(self.patch(images).flatten(2).transpose(1, 2))  # (N, 16, width)
        pooled = tokens.mean(dim=1)  # (N, width)
        return (pooled, tokens) if self.output_tokens else pooled


class OpenClipLike(nn.Module):
    """What OpenFlamingo's factory passes as `vision_encoder`: a model with a `.visual`."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual


def open_flamingo_around(of, lm, visual, *, layers_path: str, vis_dim: int, every: int = 1, placement: str = "open_flamingo"):
    """OpenFlamingo 2.0.1's Flamingo, built as `create_model_and_transforms` builds it, around copies of lm and visual.

    placement="first" rebuilds its blocks before layers i % every == 0 (the paper's and flamingo-pytorch's), through
    its own `init_flamingo_layers`, which re-pairs `gated_cross_attn_layers` with the decoder layers.
    """
    lm = copy.deepcopy(lm)
    of.extend_instance(lm, of.FlamingoLMMixin)
    lm.set_decoder_layers_attr_name(layers_path)
    visual = copy.deepcopy(visual)
    visual.output_tokens = True  # the factory's `vision_encoder.visual.output_tokens = True`
    model = of.Flamingo(OpenClipLike(visual), lm, EOC_ID, MEDIA_ID, vis_dim=vis_dim, cross_attn_every_n_layers=every)
    if placement == "first":
        lang_dim = lm.config.hidden_size
        lm.gated_cross_attn_layers = nn.ModuleList(
            of.helpers.GatedCrossAttentionBlock(dim=lang_dim, dim_visual=vis_dim) if i % every == 0 else None
            for i in range(len(lm.old_decoder_blocks))
        )
        lm.init_flamingo_layers(False)
    return model.eval()


def randomise(model: nn.Module, seed: int = 1) -> nn.Module:
    """Gates open (uniform in (-1, 1)) and the norms of the resampler and the gated blocks away from 1 and 0, so every
    part of a block shows in the output (the frozen LM and vision encoder are left as they are)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            flamingo_part = name.startswith(("perceiver.", "layers.", "attn", "ff")) or "gated_cross_attn_layer" in name
            if name.endswith(("attn_gate", "ff_gate")):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)
            elif flamingo_part and ("norm" in name or ".ff.0." in name or name.startswith("ff.0.") or ".1.0." in name):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def interleaved_batch(*, pictures: int = 3, seed: int = 0, image_size: int = 16):
    """vision_x (2, pictures, 1, 3, H, W) and lang_x (2, 14): text before the first picture in row 0, several
    pictures per row, row 1 with one marker fewer than pictures."""
    gen = torch.Generator().manual_seed(seed)
    vision_x = torch.rand(2, pictures, 1, 3, image_size, image_size, generator=gen)
    words = lambda n: torch.randint(2, MEDIA_ID, (n,), generator=gen).tolist()  # noqa: E731
    m, e = MEDIA_ID, EOC_ID
    row0 = words(2) + [m] + words(3) + [e, m] + words(2) + [e, m] + words(2)  # text, then 3 pictures
    row1 = [m] + words(4) + [e, m] + words(6) + [e]  # 2 markers for 3 pictures
    lang_x = torch.tensor([row0[:14], row1[:14]])
    return vision_x, lang_x


def one_thread():
    """A fixture body: these models are tiny, and on a busy machine a second thread only waits (torch's count is
    put back afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
