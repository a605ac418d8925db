"""The course's own files (the committed models in assets/, the benchmark records), found wherever a lesson runs.

A lesson reads a few files of the course's repository. A path relative to the notebook, `../assets/...`, breaks as
soon as the notebook is opened from another folder (a copy a teacher sent, a student version one folder deeper), so
the lessons ask `course_file("assets/fewshot_model.pt")`: it looks in the current folder and each folder above it,
then in the checkout the package itself was installed from (`pip install -e .`, as the README's setup does).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["course_file"]

_CHECKOUT = Path(__file__).resolve().parents[2]  # flamingo_lite/teaching/ -> the repository, for an editable install


def course_file(relative: str) -> Path:
    """The path of `relative` (e.g. "assets/fewshot_model.pt"), a file of the course's repository; a clear
    FileNotFoundError, naming where it looked, when no such file is there."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise ValueError(f"relative must be a path inside the course's repository such as 'assets/x.pt', got {relative!r}")
    here = Path.cwd().resolve()
    places = [here, *here.parents, _CHECKOUT]
    for base in places:
        if (base / relative).is_file():
            return base / relative
    raise FileNotFoundError(
        f"the course file {relative!r} is in neither this folder nor any above it, nor in the checkout flamingo_lite "
        f"was installed from: open the lesson inside the course's repository (its notebooks/ folder), after the "
        f"README's setup, which installs the package from it.")
