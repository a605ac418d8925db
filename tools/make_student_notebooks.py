#!/usr/bin/env python3
"""Make the student versions of the lessons: the same notebooks with the solutions taken out.

    python tools/make_student_notebooks.py           regenerate notebooks/student/ from notebooks/NN_*.ipynb
    python tools/make_student_notebooks.py --check   exit 1 (and say which) if notebooks/student/ is out of date

Run it from anywhere; paths are relative to the repository. For every lesson `notebooks/NN_topic.ipynb` it writes
`notebooks/student/NN_topic.ipynb` where

- in every code cell tagged `solution`, each block between a line `### BEGIN SOLUTION` and a line
  `### END SOLUTION` (nbgrader style) becomes one `raise NotImplementedError(...)` line, indented like the
  `### BEGIN SOLUTION` line, so a `def` line and docstring kept above the markers still define the name; a
  solution cell without markers keeps its leading comment lines and loses the rest of its body;
- the exercise text, the check cells and every other cell are kept as they are;
- all outputs, execution counts and saved widget state are cleared;
- paths into the repository's folders (`../assets/`, `../benchmarks/`, ...) become `../../assets/` etc., since the
  student folder sits one level deeper;
- two cells are put in front: a note saying what this version is, and a setup cell that fetches and installs the
  course on Google Colab (it does nothing anywhere else).

The output bytes depend only on the lesson files, so `--check` (and the test suite) can tell when someone edited a
lesson and forgot to regenerate. Edit the lessons, never the student versions.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from flamingo_lite.files import write_bytes_atomic  # noqa: E402  (standard library only, no torch)

LESSONS_DIR = ROOT / "notebooks"
STUDENT_DIR = LESSONS_DIR / "student"
LESSON_GLOB = "[0-9][0-9]_*.ipynb"
COMMAND = "python tools/make_student_notebooks.py"

# Where the course lives on GitHub: the Colab setup cell clones it from here.
GITHUB_REPO = "flamingo-from-scratch/flamingo-lite"

# A lesson refers to the repository's other folders as "../<folder>/"; from notebooks/student/ that is one more "../".
UP_ONE = re.compile(r"(?<![\w./])\.\./(?=(?:assets|benchmarks|data|docs|tools|flamingo_lite)/)")

SOLUTION_TAG = "solution"
BEGIN = re.compile(r"^(?P<indent>[ \t]*)###\s*BEGIN SOLUTION\s*$")
END = re.compile(r"^[ \t]*###\s*END SOLUTION\s*$")
STUB = 'raise NotImplementedError("Your turn: write this part (see the exercise above), then run the check below")'

HEADER_ID = "student-version-note"
COLAB_ID = "colab-setup"
COLAB_SETUP = f'''\
# Setup for Google Colab: fetch the course and install the package (about a minute, once per session).
# Anywhere else (your laptop, Binder, a JupyterHub) this cell does nothing.
import os, subprocess, sys
if "google.colab" in sys.modules:
    if not os.path.isdir("/content/flamingo-lite"):
        subprocess.run(["git", "clone", "--depth", "1", "https://github.com/{GITHUB_REPO}", "/content/flamingo-lite"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/flamingo-lite"], check=True)
    sys.path.insert(0, "/content/flamingo-lite")
    os.chdir("/content/flamingo-lite/notebooks/student")
    from google.colab import output
    output.enable_custom_widget_manager()  # lets Colab draw the ipywidgets of the lessons'''


class SolutionMarkerError(ValueError):
    """A solution cell whose `### BEGIN SOLUTION` / `### END SOLUTION` lines do not pair up."""


def is_solution(cell) -> bool:
    return cell.get("cell_type") == "code" and SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def stub_source(source: str) -> str:
    """The student version of one solution cell's source (see the module docstring for the rules)."""
    lines = source.splitlines()
    if not any(BEGIN.match(line) or END.match(line) for line in lines):
        # No markers: keep the leading comments (they usually say what to write), stub out the rest.
        keep = 0
        while keep < len(lines) and (not lines[keep].strip() or lines[keep].lstrip().startswith("#")):
            keep += 1
        head = [line for line in lines[:keep]]
        while head and not head[-1].strip():
            head.pop()
        return "\n".join(head + [STUB])
    out, inside = [], False
    for number, line in enumerate(lines, start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if inside:
                raise SolutionMarkerError(f"line {number}: '### BEGIN SOLUTION' inside another solution block")
            inside = True
            out.append(begin.group("indent") + STUB)
        elif end:
            if not inside:
                raise SolutionMarkerError(f"line {number}: '### END SOLUTION' without a '### BEGIN SOLUTION' above it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise SolutionMarkerError("'### BEGIN SOLUTION' is never closed by '### END SOLUTION'")
    return "\n".join(out)


def one_level_deeper(source: str) -> str:
    """`source` with its "../assets/"-style paths made to work from notebooks/student/."""
    return UP_ONE.sub("../../", source)


def _check_compiles(source: str) -> None:
    """Raise SyntaxError if `source` (IPython syntax allowed) is not valid Python."""
    from IPython.core.inputtransformer2 import TransformerManager

    compile(TransformerManager().transform_cell(source), "<student cell>", "exec")


def _new_cell(cell, has_ids: bool, cell_id: str):
    if has_ids:
        cell["id"] = cell_id
    return cell


def make_student_notebook(lesson, lesson_name: str = "the lesson"):
    """The student version of a lesson notebook (an nbformat NotebookNode; the input is not changed)."""
    nb = copy.deepcopy(lesson)
    has_ids = (nb.nbformat, nb.nbformat_minor) >= (4, 5)
    cells = []
    for index, cell in enumerate(nb.cells):
        cell.get("metadata", {}).pop("execution", None)  # timestamps
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            if is_solution(cell):
                try:
                    cell.source = stub_source(cell.source)
                    _check_compiles(cell.source)
                except (SolutionMarkerError, SyntaxError) as err:
                    raise SolutionMarkerError(f"{lesson_name}, cell {index}: {err}") from None
        if cell.cell_type in ("markdown", "code"):
            cell.source = one_level_deeper(cell.source)
        cells.append(cell)
    header = nbformat.v4.new_markdown_cell(
        f"**Student version** of [{lesson_name}](../{lesson_name}): the solutions are taken out. Wherever a cell says "
        "`raise NotImplementedError`, write your own code there; the check cell after each exercise tells you when "
        "it is right. Stuck? The full lesson has a solution.\n\n"
        f"*Made by `{COMMAND}` from the lesson; edit the lesson, not this file.*"
    )
    colab = nbformat.v4.new_code_cell(COLAB_SETUP)
    nb.cells = [_new_cell(header, has_ids, HEADER_ID), _new_cell(colab, has_ids, COLAB_ID)] + cells
    if not has_ids:
        for cell in nb.cells:
            cell.pop("id", None)
    # Keep only what a fresh notebook needs: no saved widget state, no editor history.
    nb.metadata = nbformat.NotebookNode(
        {k: copy.deepcopy(v) for k, v in lesson.metadata.items() if k in ("kernelspec", "language_info")}
    )
    nbformat.validate(nb)
    return nb


def student_bytes(lesson_path: Path) -> bytes:
    """The exact bytes of the student version of the lesson at `lesson_path`."""
    lesson = nbformat.read(lesson_path, as_version=4)
    nb = make_student_notebook(lesson, lesson_path.name)
    return (nbformat.writes(nb) + "\n").encode("utf-8")


def lessons(lessons_dir: Path = LESSONS_DIR) -> list[Path]:
    return sorted(lessons_dir.glob(LESSON_GLOB))


def expected(lessons_dir: Path = LESSONS_DIR, student_dir: Path = STUDENT_DIR) -> dict[Path, bytes]:
    """{student path: bytes} for every lesson in `lessons_dir`."""
    return {student_dir / p.name: student_bytes(p) for p in lessons(lessons_dir)}


def out_of_date(lessons_dir: Path = LESSONS_DIR, student_dir: Path = STUDENT_DIR) -> list[str]:
    """What differs between `student_dir` and what the generator makes now (empty when in sync)."""
    want = expected(lessons_dir, student_dir)
    problems = []
    for path, data in want.items():
        if not path.exists():
            problems.append(f"{path.name}: missing")
        elif path.read_bytes() != data:
            problems.append(f"{path.name}: differs from its lesson")
    for path in sorted(student_dir.glob(LESSON_GLOB)):
        if path not in want:
            problems.append(f"{path.name}: its lesson no longer exists")
    return problems


def write(lessons_dir: Path = LESSONS_DIR, student_dir: Path = STUDENT_DIR) -> list[Path]:
    """Regenerate `student_dir`; remove student notebooks whose lesson is gone. Returns the paths written."""
    want = expected(lessons_dir, student_dir)
    student_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(student_dir.glob(LESSON_GLOB)):
        if path not in want:
            path.unlink()
    for path, data in want.items():
        if not path.exists() or path.read_bytes() != data:
            write_bytes_atomic(path, data)
    return list(want)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that notebooks/student/ is up to date")
    parser.add_argument("--lessons", type=Path, default=LESSONS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.lessons / "student"
    try:
        if args.check:
            problems = out_of_date(args.lessons, out)
            for problem in problems:
                print(f"out of date: {problem}")
            if problems:
                print(f"Regenerate the student notebooks with: {COMMAND}")
                return 1
            print(f"student notebooks are up to date ({len(lessons(args.lessons))} lessons)")
            return 0
        written = write(args.lessons, out)
    except SolutionMarkerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} student notebooks to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
