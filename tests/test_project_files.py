"""The project's own files agree with each other: dependencies, the test command, the lesson list."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def environment_pip_lines():
    lines, inside = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.strip() == "- pip:":
            inside = True
            continue
        if inside and line.strip().startswith("- "):
            lines.append(line.strip()[2:].strip())
    return [spec for spec in lines if not spec.startswith("-")]  # options such as --extra-index-url, -e .


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = pyproject()["project"]
    wanted = {requirement_name(s): s for s in project["dependencies"] + project["optional-dependencies"]["dev"]}
    listed = {requirement_name(s): s for s in environment_pip_lines()}
    assert set(listed) == set(wanted), f"only in environment.yml: {set(listed) - set(wanted)}; only in pyproject: {set(wanted) - set(listed)}"
    for name, spec in wanted.items():
        if name == "torch":
            assert listed[name] == "torch==2.13.0"  # the version course.py installs, satisfying pyproject's range
            continue
        assert listed[name].replace(" ", "") == spec.replace(" ", ""), name


def test_course_extra_is_part_of_dev():
    extras = pyproject()["project"]["optional-dependencies"]
    assert set(extras["course"]) <= set(extras["dev"])


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3 course\.py \w+$", readme, flags=re.M)
    assert "python3 course.py test" in commands and "python3 course.py lab" in commands
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if "python3 course.py" in line
          and not line.lstrip().startswith("#")]
    assert ci[0] == "python3 course.py test </dev/null"  # first the README's command, verbatim
    # then the lessons once more under another floating-point setting, so CI catches a CPU-bound output
    assert ci[1:] == ["ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 python3 course.py test-lessons </dev/null"]


def test_course_py_lists_the_lessons_in_order_without_student_versions():
    sys.path.insert(0, str(ROOT))
    try:
        import course
    finally:
        sys.path.pop(0)
    lessons = course.lessons()
    assert lessons == sorted(lessons) and lessons
    assert all(re.fullmatch(r"notebooks/\d\d_\w+\.ipynb", p) for p in lessons)


def test_course_py_help_runs_with_plain_python():
    out = subprocess.run([sys.executable, str(ROOT / "course.py"), "help"], capture_output=True, text=True, check=True)
    assert "python3 course.py lab" in out.stdout and "python3 course.py test" in out.stdout


def test_layers_do_not_import_plotting_or_widgets():
    code = "import sys, flamingo_lite; bad = [m for m in ('matplotlib', 'ipywidgets') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def lesson_times():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import lesson_times
    finally:
        sys.path.pop(0)
    return lesson_times


def test_every_stated_lesson_time_is_the_estimate():
    # a lesson's header, the README's table and the instructor guide's total, all from tools/lesson_times.py
    assert lesson_times().mismatches() == []


def test_lesson_times_count_what_the_learner_reads_writes_and_waits_for():
    times = lesson_times()

    def markdown(text):
        return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}

    def code(text, tags=(), seconds=None):
        metadata = {"tags": list(tags)}
        if seconds is not None:
            metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00.000000Z",
                                     "shell.execute_reply": f"2026-01-01T00:00:{seconds:02d}.000000Z"}
        return {"cell_type": "code", "metadata": metadata, "source": text.splitlines(keepends=True)}

    notebook = {"cells": [
        markdown("# Title\n\none two three"),
        code("x = 1\n# a comment is not read as code\ny = 2\n", seconds=30),
        code("def f():\n    ### BEGIN SOLUTION\n    a = 1\n    return a\n    ### END SOLUTION\n", tags=["solution"]),
        markdown("## Going further: more\n\nfour five"),
        code("z = 3\n"),
        markdown("### Under it\n\nsix"),
        markdown("## Back\n\nseven"),
    ]}
    counts = times.count(notebook)
    assert (counts.words, counts.further_words) == (6, 8)
    assert (counts.given_lines, counts.further_given_lines, counts.written_lines) == (3, 1, 2)
    assert counts.run_seconds == 30
    assert counts.core_minutes() == 6 / 180 + 3 / 20 + 2 * 1.0 + 0.5
    assert [times.rounded(m) for m in (0.4, 7.4, 7.5, 42.49)] == [5, 5, 10, 40]


def test_the_readmes_speed_claims_are_the_benchmarks_record():
    """README's speed line quotes benchmarks/results/cpu_fp32.json: the module row, the sweep and weights only at 32."""
    import json

    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / "benchmarks" / "results" / "cpu_fp32.json").read_text())
    module = record["modules"]["MaskedCrossAttention (t=32)"]["flamingo_lite"]["speedup_vs_seed"]
    sweep = record["sweep"]["32"]["segments"]["speedup_vs_seed"]
    weights = record["weights_only"]["32"]["segments"]["speedup_vs_seed"]
    readme = " ".join((root / "README.md").read_text().split())
    claim = (f"{module:.1f}x faster than flamingo-pytorch with input gradients ({sweep:.1f}x in the media sweep), "
             f"{weights:.1f}x with weight gradients only")
    assert claim in readme, claim
