"""The nbval margin plugin (tests/nbval_margins.py): numbers may move by one unit in their last printed digit, or
by a tagged cell's margin; text, integers and anything larger must not."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.nbval_margins import cell_margin, last_digit_unit, numbers_agree, texts_agree

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "number, unit", [("0.1234", 1e-4), ("12.5", 0.1), ("3.", 1.0), ("3.36e+08", 1e6), ("1.5e-11", 1e-12), ("7", None)]
)
def test_the_unit_of_the_last_printed_digit(number, unit):
    got = last_digit_unit(number)
    assert got == unit if unit is None else abs(got - unit) <= 1e-9 * unit


@pytest.mark.parametrize(
    "committed, fresh, agree",
    [
        ("0.1234", "0.1235", True),  # one unit in the last digit: a rounding on another CPU
        ("0.1234", "0.1236", False),  # two units: a real change
        ("-0.0000", "0.0000", True),
        ("0.12", "0.1234", False),  # printed with other digits: the format changed, not the rounding
        ("+0.12", "+0.11", True),
        ("+0.12", "+0.10", False),
        ("48", "49", False),  # integers are counts, shapes, steps: exact
        ("48", "+48", True),
        ("3", "3.0", False),  # an integer that became a decimal is a change of text
        ("0.0e+00", "1.5e-11", False),  # zero against a small number is not a rounding
        ("3.36e+08", "3.37e+08", True),
    ],
)
def test_numbers_agree(committed, fresh, agree):
    assert numbers_agree(committed, fresh) is agree


def test_a_tagged_margin_allows_more():
    assert not numbers_agree("0.30", "0.27")
    assert numbers_agree("0.30", "0.27", margin=0.05)
    assert not numbers_agree("0.30", "0.24", margin=0.05)
    assert not numbers_agree("10", "11", margin=5)  # integers stay exact even with a margin


def test_texts_agree_only_when_the_words_are_the_same():
    assert texts_agree("loss 0.5312 at step 10", "loss 0.5313 at step 10")
    assert not texts_agree("loss 0.5312 at step 10", "loss 0.5312 at step 11")
    assert not texts_agree("loss 0.5312 at step 10", "cost 0.5312 at step 10")
    assert not texts_agree("equal: True", "equal: False")
    assert not texts_agree("tensor([0.1, 0.2])", "tensor([0.1, 0.2, 0.3])")
    assert texts_agree("  9.999 |", " 10.000 |")  # a column that shifts by a space is the same text
    assert not texts_agree("0.1", "nan")


def test_the_margin_tag():
    assert cell_margin({"metadata": {"tags": ["solution", "nbval-margin-0.05"]}}) == 0.05
    assert cell_margin({"metadata": {"tags": ["nbval-margin-1e-3"]}}) == 1e-3
    assert cell_margin({"metadata": {}}) == 0.0


def _notebook(cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, (source, committed, tags) in enumerate(cells, start=1):
        cell = nbformat.v4.new_code_cell(source, execution_count=i, metadata={"tags": tags})
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=committed)]
        nb.cells.append(cell)
    return nb


def test_strict_nbval_with_the_plugin_end_to_end(tmp_path):
    """A real nbval run: pyproject.toml loads the plugin; each cell's committed output is a little off."""
    nb = _notebook(
        [
            ("print(f'{0.1234:.4f}')", "0.1235\n", []),  # one unit off: passes
            ("print(f'{0.1234:.4f}')", "0.1237\n", []),  # three units off: fails
            ("print(f'loss {0.30:.2f}')", "loss 0.27\n", ["nbval-margin-0.05"]),  # within the cell's margin
            ("print('steps', 10)", "steps 11\n", ["nbval-margin-0.05"]),  # an integer: fails
        ]
    )
    path = tmp_path / "margins.ipynb"
    path.write_text(json.dumps(nb))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(path), "--nbval", "--nbval-current-env", "-q", "-rf",
         "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    summary = run.stdout.strip().splitlines()[-1]
    assert "2 failed, 2 passed" in summary, run.stdout[-3000:]
    failed = {line.split("::")[1].split()[0] + " " + line.split("::")[1].split()[1] for line in run.stdout.splitlines()
              if line.startswith("FAILED ")}
    assert failed == {"Cell 1", "Cell 3"}, run.stdout[-3000:]  # nbval counts cells from 0
