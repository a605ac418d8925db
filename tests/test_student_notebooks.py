"""The student notebooks: in sync with the lessons, and every exercise really is an exercise.

* The committed `notebooks/student/` is exactly what `python tools/make_student_notebooks.py` makes from the
  lessons (so an edited lesson with stale student versions fails here, with the command that fixes it).
* The generator's rules, on small hand-made cells: markers, indentation, no markers, bad markers, determinism.
* Each lesson with exercises is executed in one kernel, as a learner would meet it in the student version: every
  cell up to the first stub must run cleanly; at each exercise the check cell must FAIL with the stub and PASS
  once the lesson's solution is run instead. Execution stops after the last check cell (the recap and the
  lesson's final asserts are nbval's job).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_student_notebooks", ROOT / "tools" / "make_student_notebooks.py")
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

LESSONS = gen.lessons()
CELL_TIMEOUT_S = 300


def is_check(cell) -> bool:
    return cell.cell_type == "code" and "check" in cell.get("metadata", {}).get("tags", [])


# ----------------------------------------------------------------------------------------------------------------
# in sync


def test_committed_student_notebooks_are_what_the_generator_makes():
    problems = gen.out_of_date()
    assert problems == [], "notebooks/student/ is out of date:\n" + "\n".join(problems) + f"\nrun: {gen.COMMAND}"


def test_check_mode_exits_non_zero_when_out_of_date(tmp_path, capsys):
    lesson = tmp_path / "01_example.ipynb"
    nbformat.write(example_lesson(), lesson)
    assert gen.main(["--lessons", str(tmp_path), "--check"]) == 1  # nothing generated yet
    assert "01_example.ipynb: missing" in capsys.readouterr().out
    assert gen.main(["--lessons", str(tmp_path)]) == 0
    assert gen.main(["--lessons", str(tmp_path), "--check"]) == 0
    nb = nbformat.read(lesson, as_version=4)
    nb.cells[0].source += "\n\nOne more sentence."
    nbformat.write(nb, lesson)
    assert gen.main(["--lessons", str(tmp_path), "--check"]) == 1
    assert "01_example.ipynb: differs from its lesson" in capsys.readouterr().out
    (tmp_path / "student" / "02_gone.ipynb").write_text("{}")
    assert gen.main(["--lessons", str(tmp_path)]) == 0
    assert not (tmp_path / "student" / "02_gone.ipynb").exists()  # a student notebook whose lesson is gone goes


# ----------------------------------------------------------------------------------------------------------------
# the generator's rules


def example_lesson():
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}, "widgets": {"state": {}}}
    solution = nbformat.v4.new_code_cell(
        'def double(x):\n    """Twice x."""\n    ### BEGIN SOLUTION\n    y = 2 * x\n    return y\n    ### END SOLUTION'
    )
    solution.metadata["tags"] = ["solution"]
    solution.outputs = [nbformat.v4.new_output("stream", text="hello\n")]
    solution.execution_count = 3
    check = nbformat.v4.new_code_cell("assert double(2) == 4")
    check.metadata["tags"] = ["check"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Example\n\n![the idea](../assets/idea.png)\n\n**Exercise.** Write `double`."),
        solution,
        check,
    ]
    return nb


def test_solution_between_markers_becomes_an_indented_stub():
    src = 'def f(x):\n    """Doc."""\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n\nprint(f)'
    assert gen.stub_source(src) == f'def f(x):\n    """Doc."""\n    {gen.STUB}\n\nprint(f)'


def test_several_marked_blocks_and_top_level_markers():
    src = "a = 1\n### BEGIN SOLUTION\nb = a\n### END SOLUTION\nclass C:\n    def g(self):\n        ### BEGIN SOLUTION\n        pass\n        ### END SOLUTION"
    assert gen.stub_source(src) == f"a = 1\n{gen.STUB}\nclass C:\n    def g(self):\n        {gen.STUB}"


def test_solution_without_markers_keeps_its_leading_comments():
    src = "# Exercise: the mask for two images\n# (b, n) -> (b, n, t)\n\nmask = make_mask(locations)\nprint(mask)"
    assert gen.stub_source(src) == f"# Exercise: the mask for two images\n# (b, n) -> (b, n, t)\n{gen.STUB}"
    assert gen.stub_source("x = 1") == gen.STUB


@pytest.mark.parametrize(
    "src",
    [
        "### BEGIN SOLUTION\nx = 1",
        "x = 1\n### END SOLUTION",
        "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION",
    ],
)
def test_unbalanced_markers_are_an_error(src):
    with pytest.raises(gen.SolutionMarkerError):
        gen.stub_source(src)


def test_a_stub_that_is_not_python_is_an_error_naming_the_cell():
    nb = example_lesson()
    nb.cells[1].source = "for x in range(3):\n### BEGIN SOLUTION\n    print(x)\n### END SOLUTION"
    with pytest.raises(gen.SolutionMarkerError, match="lesson.ipynb, cell 1"):
        gen.make_student_notebook(nb, "lesson.ipynb")


def test_student_notebook_keeps_the_text_and_clears_outputs_and_widget_state():
    lesson = example_lesson()
    student = gen.make_student_notebook(lesson, "01_example.ipynb")
    assert lesson.cells[1].outputs  # the input is left as it was
    header, colab, *cells = student.cells
    assert "Student version" in header.source and gen.COMMAND in header.source
    assert 'if "google.colab" in sys.modules:' in colab.source and gen.GITHUB_REPO in colab.source
    assert cells[0].source == lesson.cells[0].source.replace("../assets/", "../../assets/")
    assert "../../assets/idea.png" in cells[0].source
    assert "**Exercise.** Write `double`." in cells[0].source
    assert gen.STUB in cells[1].source and "2 * x" not in cells[1].source
    assert cells[1].metadata["tags"] == ["solution"]
    assert cells[2].source == lesson.cells[2].source
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert set(student.metadata) == {"kernelspec"}
    nbformat.validate(student)


def test_paths_into_the_repository_get_one_more_level():
    src = 'Path("../benchmarks/x.json")  # and ![a](../assets/a.png), not ../../assets/b.png or ../notebooks/'
    want = 'Path("../../benchmarks/x.json")  # and ![a](../../assets/a.png), not ../../assets/b.png or ../notebooks/'
    assert gen.one_level_deeper(src) == want


def test_output_bytes_are_deterministic(tmp_path):
    lesson = tmp_path / "01_example.ipynb"
    nbformat.write(example_lesson(), lesson)
    first = gen.student_bytes(lesson)
    nbformat.write(nbformat.read(lesson, as_version=4), lesson)  # re-saved: same content, same bytes out
    assert gen.student_bytes(lesson) == first
    assert first.endswith(b"}\n") and b'"outputs": []' in first


def test_student_pictures_resolve():
    """Every relative picture a student notebook links to exists (the student folder is one level deeper)."""
    import re

    for path in sorted(gen.STUDENT_DIR.glob(gen.LESSON_GLOB)):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            for link in re.findall(r"\]\((\.\.?/[^)\s]+)", cell.source) + re.findall(r'src="(\.\.?/[^"]+)"', cell.source):
                if link.endswith(".ipynb"):
                    continue
                assert (path.parent / link).exists(), f"{path.name}: {link} does not exist"


def test_the_guide_has_a_colab_badge_and_a_link_for_every_lesson_and_the_colab_cell():
    import re

    guide = (ROOT / "docs" / "teaching.md").read_text()
    for lesson in LESSONS:
        colab = f"https://colab.research.google.com/github/{gen.GITHUB_REPO}/blob/main/notebooks/student/{lesson.name}"
        assert colab in guide, f"docs/teaching.md has no Colab badge for {lesson.name}"
        assert f"](../notebooks/{lesson.name})" in guide, f"docs/teaching.md does not link {lesson.name}"
    for line in gen.COLAB_SETUP.splitlines():  # the Colab cell the guide shows is the one the generator writes
        if not line.lstrip().startswith("#"):
            assert line in guide, f"docs/teaching.md shows another Colab setup cell than the generator's: {line!r}"
    for link in re.findall(r"\]\((\.\./[^)#\s]+)\)", guide):
        assert (ROOT / "docs" / link).exists(), f"docs/teaching.md links {link}, which does not exist"


# ----------------------------------------------------------------------------------------------------------------
# the exercises, executed


def current_env_kernel():
    """A kernel manager for a kernel in this very Python (the environment the tests run in)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            return KernelSpec(argv=argv, display_name="this Python", language="python")

    return KernelManager(kernel_name="this-python", kernel_spec_manager=ThisPython())


def lessons_with_exercises():
    found = []
    for path in LESSONS:
        nb = nbformat.read(path, as_version=4)
        if any(gen.is_solution(c) for c in nb.cells):
            found.append(path)
    return found


@pytest.mark.skipif(not LESSONS, reason="no lessons yet")
def test_every_lesson_with_exercises_is_covered():
    assert lessons_with_exercises(), "no lesson has a `solution` cell: the student versions would teach nothing"


@pytest.mark.parametrize("lesson_path", lessons_with_exercises(), ids=lambda p: p.stem)
def test_exercise_checks_fail_on_the_stub_and_pass_with_the_solution(lesson_path, tmp_path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    lesson = nbformat.read(lesson_path, as_version=4)
    student = gen.make_student_notebook(lesson, lesson_path.name)
    offset = len(student.cells) - len(lesson.cells)  # the cells the generator puts in front
    cells = student.cells
    last_check = max(i for i, c in enumerate(cells) if is_check(c))
    client = NotebookClient(
        student,
        km=current_env_kernel(),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(gen.STUDENT_DIR)}},
    )

    def run(index, source=None):
        """Execute cell `index` (with `source` instead of its own, if given); the error name, or None."""
        cell = cells[index] if source is None else nbformat.v4.new_code_cell(source, metadata=cells[index].metadata)
        try:
            client.execute_cell(cell, index)
        except CellExecutionError as err:
            return err.ename or "error"
        return None

    def must_pass(index, source=None, why=""):
        error = run(index, source)
        assert error is None, f"{lesson_path.name}, cell {index - offset} ({why}) raised {error}:\n{cells[index].source[:400]}"

    checked = 0
    # The learner's own my_flamingo.py: a copy of the course's, so the earlier lessons' code is there, and the
    # %%my_flamingo cells write to it, not into the repository.
    own_file = tmp_path / "my_flamingo.py"
    shutil.copyfile(ROOT / "notebooks" / "my_flamingo.py", own_file)
    # The kernel runs in notebooks/student/: put this checkout first on its path, whatever else is installed.
    path = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    with client.setup_kernel(env={**os.environ, "MY_FLAMINGO_FILE": str(own_file), "PYTHONPATH": path}):
        segment = []  # code cells from an exercise's first solution cell to its check cell
        for index, cell in enumerate(cells[: last_check + 1]):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            if gen.is_solution(cell) or (segment and not is_check(cell)):
                segment.append(index)
                run(index)  # the stub: it may fail, that is the point
                continue
            if is_check(cell) and segment:
                error = run(index)
                assert error is not None, (
                    f"{lesson_path.name}, cell {index - offset}: this check passes with the stub, so it cannot tell a "
                    f"learner their solution is right:\n{cell.source[:400]}"
                )
                for j in segment:  # now the lesson's own solution, in the same kernel
                    solution = gen.one_level_deeper(lesson.cells[j - offset].source)
                    must_pass(j, solution, "the lesson's solution")
                must_pass(index, why="the check, with the lesson's solution")
                segment, checked = [], checked + 1
                continue
            # before the first stub, this is what a learner runs first: it must run cleanly
            must_pass(index, why="a cell of the student notebook")
    assert segment == []
    assert checked >= 1
    solutions_after_last_check = [i - offset for i, c in enumerate(cells) if gen.is_solution(c) and i > last_check]
    assert solutions_after_last_check == [], f"{lesson_path.name}: solution cells with no check after them"


def test_a_name_error_after_a_failed_check_says_which_cell_to_run(tmp_path):
    """A lesson's last cell reads names its checks set: run on after a failed check and it meets a NameError, which
    then says why (a cell above stopped early) besides the usual traceback, whose error stays a NameError."""
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from flamingo_lite.teaching.exercises import hint"),
        nbformat.v4.new_code_cell("assert result_x.passed"),
        nbformat.v4.new_code_cell("print(1 + 1)"),
    ])
    client = NotebookClient(notebook, km=current_env_kernel(), timeout=CELL_TIMEOUT_S, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    path = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    with client.setup_kernel(env={**os.environ, "PYTHONPATH": path}):
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
    outputs = notebook.cells[1].outputs
    assert [o.ename for o in outputs if o.output_type == "error"] == ["NameError"]
    said = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "'result_x' is set by a cell above that has not run to its end" in said and "Run All Above" in said
    assert [o.text for o in notebook.cells[2].outputs] == ["2\n"]  # other cells are untouched
