"""flamingo_lite: a small, correct, fast reference implementation of DeepMind's Flamingo layers.

The same names, arguments, defaults and `state_dict` keys as flamingo-pytorch 0.1.2, so weights load both ways,
with three corrections: text before the first media never sees future media; more media markers than media
is an error; bad input is a clear `ValueError`/`TypeError`. See the README for the course built around it.

The layers import only torch and einops; plots and widgets live in `flamingo_lite.viz` and
`flamingo_lite.widgets` and are imported only when asked for.
"""
from .checker import CheckResult, check_module
from .cross_attention import MaskedCrossAttention, set_attention_path
from .device import get_device
from .feedforward import FeedForward
from .gated import GatedCrossAttentionBlock
from .model import Flamingo, FlamingoConfig
from .perceiver import PerceiverAttention, PerceiverResampler

__version__ = "0.1.0"

__all__ = [
    "FeedForward",
    "PerceiverAttention",
    "PerceiverResampler",
    "MaskedCrossAttention",
    "GatedCrossAttentionBlock",
    "check_module",
    "CheckResult",
    "get_device",
    "set_attention_path",
    "Flamingo",
    "FlamingoConfig",
]
