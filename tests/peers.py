"""The two real codebases the interop tests compare against, loaded without their heavy package imports.

OpenFlamingo 2.0.1's `open_flamingo/__init__.py` imports open_clip (and with it a vision stack the layers do not
need), so its `src/helpers.py`, which needs only torch, einops and einops-exts, is loaded from its file.
transformers' IDEFICS layers are imported from their modules. Each loader returns None and a reason when the
package is absent, so the tests skip saying why.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def open_flamingo_helpers():
    """(module, None) with OpenFlamingo's helpers, or (None, why not)."""
    spec = importlib.util.find_spec("open_flamingo")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None, "open-flamingo==2.0.1 is not installed (pip install --no-deps open-flamingo==2.0.1)"
    path = Path(next(iter(spec.submodule_search_locations))) / "src" / "helpers.py"
    if not path.is_file():
        return None, f"open-flamingo has no src/helpers.py (version 2.0.1 has): {path.name} missing"
    if importlib.util.find_spec("einops_exts") is None:
        return None, "OpenFlamingo's helpers need einops-exts, which is not installed"
    helpers_spec = importlib.util.spec_from_file_location("open_flamingo_helpers", path)
    module = importlib.util.module_from_spec(helpers_spec)
    helpers_spec.loader.exec_module(module)
    return module, None


def idefics():
    """(namespace with IdeficsConfig, IdeficsPerceiverResampler, IdeficsGatedCrossAttentionLayer, None) or (None, why)."""
    if importlib.util.find_spec("transformers") is None:
        return None, "transformers is not installed (it is in the dev extra)"
    try:
        from transformers.models.idefics.configuration_idefics import IdeficsConfig
        from transformers.models.idefics.modeling_idefics import IdeficsGatedCrossAttentionLayer
        from transformers.models.idefics.perceiver import IdeficsPerceiverResampler
    except ImportError as missing:  # a transformers without IDEFICS, or a broken install
        return None, f"transformers' IDEFICS layers do not import: {missing}"

    class Peers:
        pass

    ns = Peers()
    ns.IdeficsConfig = IdeficsConfig
    ns.IdeficsPerceiverResampler = IdeficsPerceiverResampler
    ns.IdeficsGatedCrossAttentionLayer = IdeficsGatedCrossAttentionLayer
    return ns, None
