"""Is this machine ready for the course? The check for the first ten minutes of a workshop.

    python -m flamingo_lite.doctor

It reports the versions of Python, torch, einops, numpy, tqdm, ipywidgets, matplotlib, JupyterLab and ipykernel, the
device the lessons will use, whether JupyterLab can draw the widgets (the `jupyterlab_widgets` extension), and runs
a tiny forward pass through each reference layer. Every failure comes with the command that fixes it. The exit code is 0 when
everything passed and 1 otherwise, so a script (or a teacher with a room of laptops) can rely on it; an unknown
argument is refused with exit code 2.

Each check is a plain function that returns a `Check`, so each can be tested on its own.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

SETUP = "python3 course.py setup"  # the course's one-command setup, from the repository root

# (what to import, the distribution name on PyPI, the oldest version the course works with, why it is needed)
PACKAGES = [
    ("torch", "torch", "2.1", "the layers"),
    ("einops", "einops", "0.7", "the layers"),
    ("numpy", "numpy", "1.24", "the data and the training"),
    ("tqdm", "tqdm", "4.60", "the training's progress bars"),
    ("matplotlib", "matplotlib", "3.7", "the plots"),
    ("ipywidgets", "ipywidgets", "8.0", "the interactive widgets"),
    ("jupyterlab", "jupyterlab", "4.0", "the course itself"),
    ("ipykernel", "ipykernel", "6.0", "the Python kernel the notebooks run in"),
    ("transformers", "transformers", "5.24", "lesson 13, Flamingo around a Hugging Face language model"),
]
MIN_PYTHON = (3, 10)
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"


@dataclass
class Check:
    """One line of the report: what was checked, whether it passed, what was found, and how to fix a failure."""

    name: str
    ok: bool
    detail: str
    remedy: str = ""


def _version_tuple(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0); stops at the first part that is not a number ('4.0.0rc1' -> (4, 0))."""
    numbers = []
    for part in version.split("+")[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def check_python(version_info=None) -> Check:
    """Python 3.10 or newer."""
    v = tuple(version_info or sys.version_info)[:3]
    text = ".".join(str(x) for x in v)
    if v[:2] >= MIN_PYTHON:
        return Check("Python", True, f"{text} ({platform.python_implementation()})")
    need = ".".join(map(str, MIN_PYTHON))
    return Check("Python", False, f"{text} is too old", f"install Python {need} or newer (python.org or conda), then {SETUP}")


def check_package(module: str, dist: str, minimum: str, why: str = "") -> Check:
    """`module` imports and its distribution `dist` is at least version `minimum`."""
    fix = f'pip install "{dist}>={minimum}"   (or, for everything at once: {SETUP})'
    try:
        importlib.import_module(module)
    except ImportError as err:
        return Check(dist, False, f"not installed ({err.__class__.__name__}: {err})", fix)
    except Exception as err:  # a broken install can fail in other ways on import
        return Check(dist, False, f"fails on import ({err.__class__.__name__}: {err})", f"reinstall it: {fix}")
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return Check(dist, False, "imports, but pip does not know its version", f"reinstall it: {fix}")
    if _version_tuple(version) < _version_tuple(minimum):
        return Check(dist, False, f"{version} is older than {minimum}, needed for {why or 'the course'}", fix)
    return Check(dist, True, version)


def widgets_extension_paths() -> list[Path]:
    """Where JupyterLab looks for prebuilt extensions (the `labextensions` folders of the Jupyter data path)."""
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return [Path(sys.prefix) / "share" / "jupyter" / "labextensions"]
    return [Path(p) for p in jupyter_path("labextensions")]


def check_widgets_extension(paths: list[Path] | None = None) -> Check:
    """JupyterLab can draw ipywidgets: `jupyterlab_widgets` is installed and its extension is on the data path."""
    fix = f'pip install "jupyterlab_widgets>=3"   (comes with ipywidgets 8; or: {SETUP}), then restart JupyterLab'
    try:
        version = importlib.metadata.version("jupyterlab_widgets")
    except importlib.metadata.PackageNotFoundError:
        return Check("widgets extension", False, "jupyterlab_widgets is not installed: sliders would show as text", fix)
    for folder in widgets_extension_paths() if paths is None else paths:
        if (folder / WIDGETS_EXTENSION / "package.json").is_file():
            return Check("widgets extension", True, f"jupyterlab_widgets {version}, {WIDGETS_EXTENSION} found")
    return Check(
        "widgets extension",
        False,
        f"jupyterlab_widgets {version} is installed but JupyterLab cannot find {WIDGETS_EXTENSION}",
        f"reinstall it into the environment JupyterLab runs from: {fix}",
    )


def check_device() -> Check:
    """The device the lessons will use (`flamingo_lite.get_device()`, which reads $FLAMINGO_DEVICE).

    On success `Check.detail` starts with the device's name (`cpu`, `cuda:0`).
    """
    import warnings

    import torch

    from ..device import ENV_VAR, get_device

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            device = get_device()
    except (ValueError, TypeError) as err:
        return Check("device", False, str(err), f"unset {ENV_VAR} or set it to cpu, cuda or auto")
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    detail = f"{device}"
    if device.type == "cuda":
        detail += f" ({torch.cuda.get_device_name(device)})"
    elif cuda:
        detail += f" ({cuda} CUDA GPU(s) present: set {ENV_VAR}=cuda to use them; the lessons' numbers are from the CPU)"
    else:
        detail += " (no CUDA GPU; the course is made for the CPU)"
    if caught:
        detail += f"; note: {caught[0].message}"
    return Check("device", True, detail)


def tiny_layers() -> list[tuple[str, object, tuple]]:
    """(name, a small instance of each reference layer, example inputs), all seeded."""
    import torch

    from .. import FeedForward, GatedCrossAttentionBlock, MaskedCrossAttention, PerceiverAttention, PerceiverResampler

    torch.manual_seed(0)
    d = 16
    x = torch.randn(2, 5, d)  # (b, n, d) text
    media = torch.randn(2, 2, 3, d)  # (b, t, m, d) two media with three latents each
    locations = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)  # (b, n)
    block = GatedCrossAttentionBlock(dim=d, dim_head=8, heads=2)
    with torch.no_grad():  # open the gates, so the forward pass goes through the attention too
        block.attn_gate.fill_(1.0)
        block.ff_gate.fill_(1.0)
    return [
        ("FeedForward", FeedForward(d), (x,)),
        ("PerceiverAttention", PerceiverAttention(dim=d, dim_head=8, heads=2), (media, torch.randn(2, 2, 4, d))),
        ("PerceiverResampler", PerceiverResampler(dim=d, depth=1, dim_head=8, heads=2, num_latents=4), (media,)),
        ("MaskedCrossAttention", MaskedCrossAttention(dim=d, dim_head=8, heads=2), (x, media, locations)),
        ("GatedCrossAttentionBlock", block, (x, media, locations)),
    ]


def check_forward(name: str, layer, inputs: tuple, device="cpu") -> Check:
    """A forward pass of `layer` on `inputs` (on `device`) gives a finite tensor."""
    import torch

    label = f"forward {name}"
    fix = f"reinstall the package ({SETUP}, or pip install -e . from the repository root) and run this again"
    try:
        device = torch.device(device)
        layer = layer.to(device).eval()
        with torch.no_grad():
            out = layer(*(t.to(device) for t in inputs))
        if not torch.isfinite(out).all():
            return Check(label, False, f"output {tuple(out.shape)} holds NaN or inf", fix)
        return Check(label, True, f"output {tuple(out.shape)} on {device}")
    except Exception as err:
        return Check(label, False, f"{err.__class__.__name__}: {err}", fix)


def run_checks() -> list[Check]:
    """Every check, in the order of the report; layers are only tried when torch and einops are there."""
    checks = [check_python()]
    checks += [check_package(module, dist, minimum, why) for module, dist, minimum, why in PACKAGES]
    checks.append(check_widgets_extension())
    if all(c.ok for c in checks if c.name in ("torch", "einops")):
        device = check_device()
        checks.append(device)
        on = device.detail.split()[0] if device.ok else "cpu"  # the lessons' device, or the CPU if that failed
        try:
            layers = tiny_layers()
        except Exception as err:
            checks.append(Check("reference layers", False, f"{err.__class__.__name__}: {err}", f"reinstall: {SETUP}"))
        else:
            checks += [check_forward(name, layer, inputs, on) for name, layer, inputs in layers]
    else:
        checks.append(Check("reference layers", False, "skipped: torch and einops are needed first", "fix those above"))
    return checks


def report(checks: list[Check]) -> str:
    """The checks as a plain-text report for a person."""
    width = max(len(c.name) for c in checks)
    lines = ["flamingo_lite doctor: is this machine ready for the course?", ""]
    for c in checks:
        lines.append(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}")
        if not c.ok and c.remedy:
            lines.append(f"        {'':<{width}}  fix: {c.remedy}")
    failed = [c for c in checks if not c.ok]
    lines.append("")
    if failed:
        lines.append(f"{len(failed)} of {len(checks)} checks failed: apply the fixes above, then run this again.")
    else:
        lines.append(f"All {len(checks)} checks passed: open the course with `python3 course.py lab` (or `jupyter lab`).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args:
        print(f"unknown argument {args[0]!r}: the doctor takes none (python -m flamingo_lite.doctor, or --help)", file=sys.stderr)
        return 2
    checks = run_checks()
    print(report(checks))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
