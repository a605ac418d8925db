"""Flamingo around a real Hugging Face language model: `flamingo_lite.hf.Flamingo`.

flamingo_lite's Perceiver Resampler and gated cross-attention blocks, put around any transformers causal language
model (GPT-2, GPT-NeoX/Pythia, Llama/SmolLM/TinyLlama, OPT, MPT, or one whose layers you name) and a vision encoder
(open_clip, transformers' CLIP or SigLIP, IDEFICS's, or lesson 07's), with OpenFlamingo 2.0.1's constructor, its
weights both ways (`load_open_flamingo`, `to_open_flamingo`), and IDEFICS models converted whole (`from_idefics`).
docs/interop.md says exactly what loads.

This sub-package needs transformers (`pip install "flamingo_lite[hf]"`); the layers at the top of the package never
import it. Modules: `model` (Flamingo), `decoder` (the decoder-layer wrapper and where the layers are), `vision`
(the encoders' tokens), `checkpoints` (OpenFlamingo's keys), `idefics` (IDEFICS's whole model).
"""
from .checkpoints import load_open_flamingo, to_open_flamingo
from .decoder import DECODER_LAYER_PATHS, FlamingoDecoderLayer, find_decoder_layers
from .idefics import from_idefics
from .model import Flamingo, LoadResult

__all__ = [
    "Flamingo",
    "FlamingoDecoderLayer",
    "LoadResult",
    "DECODER_LAYER_PATHS",
    "find_decoder_layers",
    "from_idefics",
    "load_open_flamingo",
    "to_open_flamingo",
]
