"""`course_file`: the lessons' data files found from any folder, and a clear error where they are not."""
import json
import re
from pathlib import Path

import pytest

from flamingo_lite.teaching.course_files import course_file

ROOT = Path(__file__).resolve().parents[1]


def test_found_from_the_lessons_folders_and_from_elsewhere(monkeypatch, tmp_path):
    want = (ROOT / "assets" / "fewshot_model.pt").resolve()
    for folder in (ROOT / "notebooks", ROOT / "notebooks" / "student", tmp_path):  # tmp_path: a notebook copied out
        monkeypatch.chdir(folder)
        assert course_file("assets/fewshot_model.pt").resolve() == want


def test_the_current_folder_comes_first(monkeypatch, tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "fewshot_model.pt").write_bytes(b"another checkout's")
    monkeypatch.chdir(tmp_path)
    assert course_file("assets/fewshot_model.pt") == tmp_path.resolve() / "assets" / "fewshot_model.pt"


def test_a_missing_file_or_a_bad_name_says_so(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="'assets/no_such_model.pt' is in neither this folder"):
        course_file("assets/no_such_model.pt")
    for bad in ("", "/etc/passwd", None):
        with pytest.raises(ValueError, match="relative must be a path inside the course's repository"):
            course_file(bad)


def test_no_lesson_reads_a_course_file_by_a_path_relative_to_the_notebook():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert not re.search(r"""["']\.\./(assets|benchmarks)/""", code), f"{path.name}: use course_file(...)"
