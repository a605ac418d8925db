"""Notebook hygiene: every lesson as a learner meets it, committed executed, in order, clean, and shaped alike."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MACHINE_PATH = re.compile(r"(/root/|/home/\w+/|/tmp/|/work/|/Users/|C:\\\\Users|site-packages)")
ADDRESS = re.compile(r" at 0x[0-9a-f]{6,}")


def cells(nb, kind):
    return [c for c in nb["cells"] if c["cell_type"] == kind]


def source(cell):
    return "".join(cell["source"])


def output_text(output):
    return "".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))


@pytest.fixture(params=LESSONS, ids=[p.stem for p in LESSONS])
def lesson(request):
    return request.param, json.loads(request.param.read_text())


def test_there_are_lessons():
    assert LESSONS and LESSONS[0].name.startswith("00_")


def test_executed_in_order_from_a_fresh_kernel(lesson):
    path, nb = lesson
    counts = [c["execution_count"] for c in cells(nb, "code") if source(c).strip()]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execution counts {counts}"


def test_no_errors_paths_or_addresses_in_outputs(lesson):
    path, nb = lesson
    for i, cell in enumerate(cells(nb, "code")):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name} code cell {i}: {out.get('ename')}"
            text = output_text(out)
            assert not MACHINE_PATH.search(text), f"{path.name} code cell {i} prints a machine path"
            assert not ADDRESS.search(text), f"{path.name} code cell {i} prints a memory address"


def test_lesson_shape(lesson):
    path, nb = lesson
    markdown = "\n".join(source(c) for c in cells(nb, "markdown"))
    assert source(nb["cells"][0]).startswith("# "), "a lesson opens with its title"
    assert re.search(r"learning goals", markdown, re.I), "learning goals"
    assert re.search(r"\b\d+\s*(?:-|–)?\s*\d*\s*minutes\b", markdown), "a time estimate in minutes"
    assert re.search(r"prerequisite", markdown, re.I), "prerequisites"
    assert re.search(r"recap|summary", markdown, re.I), "a recap"
    code = cells(nb, "code")
    assert "manual_seed" in source(code[0]), "the first code cell seeds everything"
    assert re.search(r"^\s*assert ", source(code[-1]), re.M), "the lesson ends with asserts"
    number = path.name[:2]
    said = "".join(output_text(out) for out in code[-1].get("outputs", []))
    assert said.startswith(f"All checks of lesson {number} passed"), f"{path.name} ends on {said!r}: every lesson ends alike"


def test_the_last_cell_says_what_failed(lesson):
    """A lesson's last cell cannot pass while one of its exercise checks failed, and each of its asserts says which
    claim does not hold: a learner who runs it meets no empty AssertionError."""
    path, nb = lesson
    if path.name.startswith("00_"):
        pytest.skip("the welcome lesson has no exercises")
    last = source(cells(nb, "code")[-1])
    number = path.name[:2]
    first_assert = next(line for line in last.splitlines() if line.startswith("assert"))
    assert f"failed_checks(lesson{number})" in first_assert, f"{path.name}: the last cell first asserts no check failed"
    bare = [node.lineno for node in ast.walk(ast.parse(last)) if isinstance(node, ast.Assert) and node.msg is None]
    assert not bare, f"{path.name}: the last cell's asserts on lines {bare} have no message"


def test_exercises_have_solutions_and_checks(lesson):
    path, nb = lesson
    if path.name.startswith("00_"):
        pytest.skip("the welcome lesson has no exercises")
    tags = [c.get("metadata", {}).get("tags", []) for c in nb["cells"]]
    solutions = [i for i, t in enumerate(tags) if "solution" in t]
    assert len(solutions) >= 2, f"{path.name}: at least two exercises"
    for i in solutions:
        assert nb["cells"][i]["cell_type"] == "code"
        text = source(nb["cells"][i])
        assert "### BEGIN SOLUTION" in text and "### END SOLUTION" in text, f"{path.name} cell {i}: solution markers"
        later_checks = [j for j in range(i + 1, len(tags)) if "check" in tags[j]]
        next_solution = min([j for j in solutions if j > i], default=len(tags))
        assert later_checks and later_checks[0] < next_solution, f"{path.name} cell {i}: a check cell follows"
    marked = [i for i, c in enumerate(nb["cells"]) if "### BEGIN SOLUTION" in source(c)]
    assert marked == solutions, f"{path.name}: cells {sorted(set(marked) - set(solutions))} hold a solution but are not " \
        "tagged 'solution', so the student version would show it"


def test_no_student_notebook_shows_a_solution():
    student = sorted((ROOT / "notebooks" / "student").glob("[0-9][0-9]_*.ipynb"))
    assert len(student) == len(LESSONS)
    for path in student:
        assert "BEGIN SOLUTION" not in path.read_text(), f"student/{path.name} holds a solution"


def test_small_files_and_pictures_that_exist(lesson):
    path, nb = lesson
    assert path.stat().st_size < 2_000_000, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"
    for cell in cells(nb, "markdown"):
        for target in re.findall(r"\]\((\.\./assets/[^)\s]+)\)", source(cell)):
            assert (path.parent / target).resolve().exists(), f"{path.name} shows a missing picture {target}"


def test_kernel_is_plain_python3(lesson):
    path, nb = lesson
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
