"""The two real codebases the interop tests compare against, loaded without their heavy package imports.

OpenFlamingo 2.0.1's `open_flamingo/__init__.py` imports open_clip (and with it a vision stack the layers do not
need), so its `src/helpers.py`, which needs only torch, einops and einops-exts, is loaded from its file; its whole
model (`src/flamingo.py`, `src/flamingo_lm.py`, `src/utils.py`, which add transformers) is loaded the same way, as a
package of its own named `open_flamingo_src`, so that their relative imports work without `open_flamingo/__init__.py`.
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


def open_flamingo_model():
    """(namespace with Flamingo, FlamingoLMMixin, extend_instance, helpers, None) or (None, why not).

    As OpenFlamingo's factory (`src/factory.py`, which imports open_clip and is not loaded) uses them:
    `extend_instance(lm, FlamingoLMMixin)`, `lm.set_decoder_layers_attr_name(...)`, then `Flamingo(...)`.
    """
    import sys
    import types

    spec = importlib.util.find_spec("open_flamingo")
    if spec is None or not spec.submodule_search_locations:
        return None, "open-flamingo==2.0.1 is not installed (pip install --no-deps open-flamingo==2.0.1)"
    if importlib.util.find_spec("transformers") is None:
        return None, "OpenFlamingo's model needs transformers, which is not installed (it is in the dev extra)"
    if importlib.util.find_spec("einops_exts") is None:
        return None, "OpenFlamingo's helpers need einops-exts, which is not installed"
    src = Path(next(iter(spec.submodule_search_locations))) / "src"
    missing = [name for name in ("flamingo.py", "flamingo_lm.py", "utils.py", "helpers.py") if not (src / name).is_file()]
    if missing:
        return None, f"open-flamingo has no src/{missing[0]} (version 2.0.1 has)"
    if "open_flamingo_src" not in sys.modules:
        package = types.ModuleType("open_flamingo_src")
        package.__path__ = [str(src)]  # a package without an __init__: `from .helpers import ...` finds the files
        sys.modules["open_flamingo_src"] = package

    ns = types.SimpleNamespace(
        Flamingo=importlib.import_module("open_flamingo_src.flamingo").Flamingo,
        FlamingoLMMixin=importlib.import_module("open_flamingo_src.flamingo_lm").FlamingoLMMixin,
        extend_instance=importlib.import_module("open_flamingo_src.utils").extend_instance,
        helpers=importlib.import_module("open_flamingo_src.helpers"),
    )
    return ns, None


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
