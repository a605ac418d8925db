"""flamingo_lite: a small, correct, fast reference implementation of DeepMind's Flamingo layers.

The same names, arguments, defaults and `state_dict` keys as flamingo-pytorch 0.1.2, so weights load both ways,
with three corrections: text before the first media never sees future media; more media markers than media
is an error; bad input is a clear `ValueError`/`TypeError`. See the README for the course built around it.

The package shows its layering. At the top, the layers a builder depends on, importing only torch and einops:
`masks` (pure functions: media_locations -> text time -> mask), `attention`, `segments`, `feedforward`,
`perceiver`, `cross_attention`, `gated`. Below them, `tiny/` is the tiny Flamingo (vision encoder, language
model, model, data, training, and the `python -m flamingo_lite.train` command line), and `teaching/` is for people
(the checker, the doctor, plots in `teaching.viz`, widgets), the only place that imports matplotlib or ipywidgets.
Arrows point one way: `tiny` and `teaching` use the layers, the layers use neither.

The names below are loaded on first use, so that `python -m flamingo_lite.doctor` can start, and say what is
missing, even where torch is not installed.
"""
from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "FeedForward": ".feedforward",
    "PerceiverAttention": ".perceiver",
    "PerceiverResampler": ".perceiver",
    "MaskedCrossAttention": ".cross_attention",
    "GatedCrossAttentionBlock": ".gated",
    "set_attention_path": ".cross_attention",
    "check_module": ".teaching.checker",
    "CheckResult": ".teaching.checker",
    "get_device": ".device",
    "Flamingo": ".tiny.model",
    "FlamingoConfig": ".tiny.model",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    try:  # a submodule such as flamingo_lite.masks, as if it had been imported
        return import_module(f".{name}", __name__)
    except ModuleNotFoundError as missing:
        if missing.name != f"{__name__}.{name}":
            raise  # the submodule exists but needs something that is not installed
    raise AttributeError(f"module 'flamingo_lite' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
