#!/usr/bin/env python3
"""Assemble the course's own `notebooks/my_flamingo.py` from the lessons' `%%my_flamingo` cells.

    python tools/make_my_flamingo.py           write notebooks/my_flamingo.py
    python tools/make_my_flamingo.py --check   exit 1 (and say so) if notebooks/my_flamingo.py is out of date

Every code cell of a lesson `notebooks/NN_topic.ipynb` whose first line is `%%my_flamingo` becomes one section of
the file, in lesson order and cell order, solution markers taken out: the file a learner's own `my_flamingo.py`
grows into when they run the lessons with the solutions. The sections are made by the very functions the magic
uses (`flamingo_lite.teaching.my_file`), so running a solution lesson leaves this file byte for byte as it is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from flamingo_lite.files import write_text_atomic  # noqa: E402
from flamingo_lite.teaching import my_file  # noqa: E402

LESSONS_DIR = ROOT / "notebooks"
TARGET = LESSONS_DIR / my_file.FILE_NAME
MAGIC = "%%my_flamingo"
COMMAND = "python tools/make_my_flamingo.py"


def magic_cells(lesson_path: Path) -> list[str]:
    """The bodies (without the magic line) of the lesson's `%%my_flamingo` cells, in order."""
    nb = nbformat.read(lesson_path, as_version=4)
    bodies = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            first, _, rest = cell.source.partition("\n")
            if first.strip() == MAGIC:
                bodies.append(rest)
    return bodies


def assemble(lessons_dir: Path = LESSONS_DIR) -> str:
    """The text of my_flamingo.py made from every lesson's `%%my_flamingo` cells."""
    sections = []
    for path in sorted(lessons_dir.glob("[0-9][0-9]_*.ipynb")):
        for body in magic_cells(path):
            clean = my_file.clean_source(body)
            sections = my_file.merge(sections, my_file.Section(path.name[:2], my_file.defined_names(clean), clean))
    return my_file.render(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that notebooks/my_flamingo.py is up to date")
    args = parser.parse_args(argv)
    text = assemble()
    if args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"out of date: notebooks/{TARGET.name}; regenerate it with: {COMMAND}")
            return 1
        print(f"notebooks/{TARGET.name} is up to date ({len(my_file.parse(text))} sections)")
        return 0
    if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
        write_text_atomic(TARGET, text)
    print(f"wrote notebooks/{TARGET.name} ({len(my_file.parse(text))} sections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
