"""Atomic writes: a failed or interrupted write leaves the old file as it was, and no temporary file behind.

Also: every file the package and the benchmarks write goes through `flamingo_lite.files`, and `check_output_path`
refuses a target that cannot be written, before any work.
"""
import errno
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flamingo_lite import files

ROOT = Path(__file__).resolve().parents[1]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def old_file(tmp_path):
    path = tmp_path / "history.json"
    path.write_text('{"old": true}')
    return path


def test_writes_replace_the_file_and_keep_its_permissions(old_file):
    os.chmod(old_file, 0o640)
    assert files.write_text_atomic(old_file, '{"new": 1}') == old_file
    assert old_file.read_text() == '{"new": 1}'
    assert stat.S_IMODE(old_file.stat().st_mode) == 0o640
    assert names(old_file.parent) == ["history.json"]


def test_a_new_file_gets_the_permissions_open_would_give(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = files.write_bytes_atomic(tmp_path / "atomic.bin", b"\x00\x01")
    assert atomic.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's private 0o600


@pytest.mark.parametrize("fails", ["os.replace", "os.fsync"])
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_file(old_file, monkeypatch, fails, error):
    def failing(*args):
        raise error

    monkeypatch.setattr(files.os, fails.split(".")[1], failing)
    with pytest.raises(type(error)):
        files.write_text_atomic(old_file, '{"new": 1}' * 1000)
    assert old_file.read_text() == '{"old": true}'
    assert names(old_file.parent) == ["history.json"]


def test_a_full_disk_leaves_the_old_file_where_write_text_empties_it(tmp_path):
    """The failure of the issue, for real: a file-size limit (`ulimit -f`) makes the write fail part-way."""
    code = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from flamingo_lite.files import write_text_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        big = "x" * 100_000
        try:
            write_text_atomic({str(tmp_path / 'atomic.json')!r}, big)
        except OSError as err:
            print("atomic:", err.errno)
        try:
            Path({str(tmp_path / 'plain.json')!r}).write_text(big)
        except OSError as err:
            print("plain:", err.errno)
    """)
    for name in ("atomic.json", "plain.json"):
        (tmp_path / name).write_text('{"old": true}')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["atomic:", str(errno.EFBIG), "plain:", str(errno.EFBIG)]
    assert (tmp_path / "atomic.json").read_text() == '{"old": true}'  # intact
    assert (tmp_path / "plain.json").read_text() != '{"old": true}'  # what Path.write_text did to it
    assert names(tmp_path) == ["atomic.json", "plain.json"]


def test_a_link_is_followed_and_stays_a_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    files.write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_device_is_written_directly():
    before = names(Path("/dev"))
    files.write_text_atomic("/dev/null", "nothing to keep")
    assert names(Path("/dev")) == before  # no temporary file made next to it, nothing renamed over it


@pytest.mark.parametrize(
    "target, message",
    [
        ("", "is empty"),
        ("  ", "is empty"),
        (".", "is a folder"),
        ("a.txt/h.json", "is a file, not a folder"),
        ("a.txt/deeper/h.json", "is a file, not a folder"),
    ],
)
def test_check_output_path_refuses_what_cannot_be_written(tmp_path, monkeypatch, target, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a file")
    with pytest.raises(ValueError, match=message) as refused:
        files.check_output_path(target, "--out")
    assert str(refused.value).startswith("--out")


def test_check_output_path_refuses_a_folder_without_write_permission(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: answer as the kernel answers everyone else
        real_access = os.access
        monkeypatch.setattr(files.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    try:
        with pytest.raises(ValueError, match="no permission to write into"):
            files.check_output_path(locked / "sub" / "h.json", "--out")
    finally:
        locked.chmod(0o755)


def test_check_output_path_accepts_new_folders_and_existing_files_and_creates_nothing(tmp_path, old_file):
    assert files.check_output_path(tmp_path / "new" / "deeper" / "h.json") == tmp_path / "new" / "deeper" / "h.json"
    assert files.check_output_path(old_file) == old_file
    assert files.check_output_path("/dev/null") == Path("/dev/null")
    assert names(tmp_path) == ["history.json"]


# ------------------------------------------------------------------------------------------ who writes files
WRITES = re.compile(r"\.write_text\(|\.write_bytes\(|savefig\(|json\.dump\(|torch\.save\(|open\([^)]*['\"][wax]b?['\"]")
ALLOWED = {  # (file, the line) that write on purpose without flamingo_lite.files, and why
    ("benchmarks/bench.py", 'Path("/proc/self/clear_refs").write_text("5")'),  # a kernel control file, not data
    ("flamingo_lite/teaching/widgets.py", 'fig.savefig(buffer, format="png", dpi=fig.dpi)'),  # into memory
}


def test_every_file_the_package_the_benchmarks_and_the_tools_write_is_written_atomically():
    sources = sorted((ROOT / "flamingo_lite").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    sources += sorted((ROOT / "assets").glob("*.py")) + sorted((ROOT / "tools").glob("*.py"))
    found = set()
    for source in sources:
        relative = source.relative_to(ROOT).as_posix()
        if relative == "flamingo_lite/files.py":
            continue  # the one implementation
        for line in source.read_text().splitlines():
            if WRITES.search(line) and not line.lstrip().startswith("#"):
                found.add((relative, line.strip()))
    assert found == ALLOWED, f"write these through flamingo_lite.files: {sorted(found - ALLOWED)}"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def failing_replace(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_the_benchmark_report_leaves_the_old_readme_when_writing_fails(tmp_path, monkeypatch, capsys):
    report = load_script("report")
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nthe old tables\n")
    monkeypatch.setattr(report, "README", readme)
    monkeypatch.setattr(files.os, "replace", failing_replace)
    assert report.main([str(ROOT / "benchmarks" / "results" / "cpu_fp32.json")]) == files.NOT_WRITTEN
    assert readme.read_text() == "# Benchmarks\n\nthe old tables\n"
    assert names(tmp_path) == ["README.md"]
    captured = capsys.readouterr()
    assert "<!-- results:cpu_fp32 -->" in captured.out  # the new README, printed: not lost
    assert "could not write the README" in captured.err and "not written: the README" in captured.err


def test_the_benchmark_plot_leaves_the_old_picture_when_writing_fails(tmp_path, monkeypatch):
    plot = load_script("plot")
    record = tmp_path / "cpu_fp32.json"
    record.write_text(json.dumps(json.loads((ROOT / "benchmarks" / "results" / "cpu_fp32.json").read_text())))
    picture = plot.plot(record)
    assert picture.read_bytes().startswith(b"\x89PNG")
    old = picture.read_bytes()
    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError):
        plot.plot(record)
    assert picture.read_bytes() == old
    assert names(tmp_path) == ["cpu_fp32.json", "cpu_fp32_media_sweep.png"]


def test_a_figure_is_written_atomically_and_keeps_the_old_picture_when_the_write_fails(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    target = tmp_path / "picture.png"
    files.write_figure_atomic(fig, target, dpi=50)
    first = target.read_bytes()
    assert first.startswith(b"\x89PNG")  # the suffix chose the format
    monkeypatch.setattr(files.os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    ax.plot([0, 1], [1, 0])
    with pytest.raises(OSError):
        files.write_figure_atomic(fig, target, dpi=50)
    plt.close(fig)
    assert target.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]


# ------------------------------------------------------------------ one loader for every model file
def test_no_model_file_is_loaded_or_saved_outside_flamingo_lite_files():
    """`torch.load` (with weights_only=True) and `torch.save` live in one place, so every file gets the same checks."""
    sources = sorted((ROOT / "flamingo_lite").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    found = [(source.relative_to(ROOT).as_posix(), line.strip()) for source in sources
             if source.relative_to(ROOT).as_posix() != "flamingo_lite/files.py"
             for line in source.read_text().splitlines() if re.search(r"torch\.(load|save)\(", line)]
    assert found == []
    assert 'torch.load(path, map_location="cpu", weights_only=True)' in (ROOT / "flamingo_lite" / "files.py").read_text()


class Foreign:  # an object weights_only refuses to unpickle
    pass


def bad_model_files(folder: Path) -> dict:
    """name -> a file that is not a project model file, made the ways the issue names."""
    good = folder / "good.pt"
    import torch

    torch.save({"config": {}, "vision": {}, "text": {}}, good)
    data = good.read_bytes()
    made = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "corrupted": data[:40] + bytes(range(256)) * 4 + data[1064:],
        "text": b'{"loss": [1.0, 0.5]}',
    }
    paths = {}
    for name, content in made.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["foreign"] = folder / "foreign.pt"
    torch.save({"config": Foreign()}, paths["foreign"])  # another program's pickle
    paths["a tensor"] = folder / "tensor.pt"
    torch.save(torch.zeros(3), paths["a tensor"])
    paths["other keys"] = folder / "keys.pt"
    torch.save({"weights": torch.zeros(3)}, paths["other keys"])
    return paths


def test_a_file_that_is_not_a_model_file_is_a_value_error_naming_the_path_and_what_was_expected(tmp_path):
    for name, path in bad_model_files(tmp_path).items():
        with pytest.raises(ValueError) as refused:
            files.load_model_file(path, "a vision-encoder file", keys=("config", "vision", "text"))
        message = str(refused.value)
        assert message.startswith(f"{str(path)!r} is not a vision-encoder file: "), (name, message)
        assert "weights_only" not in message, (name, message)  # never a hint to switch the protection off
    with pytest.raises(FileNotFoundError, match="expected a vision-encoder file"):
        files.load_model_file(tmp_path / "missing.pt", "a vision-encoder file")
    with pytest.raises(ValueError, match="is a folder"):
        files.load_model_file(tmp_path, "a vision-encoder file")


@pytest.mark.parametrize("loader", ["load_encoders", "load_model"])
def test_the_project_loaders_give_that_error_for_every_bad_file(tmp_path, loader):
    from flamingo_lite.tiny import contrastive, fewshot

    load, what = {"load_encoders": (contrastive.load_encoders, "a vision-encoder file"),
                  "load_model": (fewshot.load_model, "a few-shot model file")}[loader]
    paths = bad_model_files(tmp_path)
    import torch

    paths["weights that do not fit"] = tmp_path / "misfit.pt"  # the right keys, contents for another model
    torch.save({"config": {"dim": 8}, "vision": {}, "text": {}, "setup": {"seed": 0}, "lm_config": {}, "state_dict": {}},
               paths["weights that do not fit"])
    for name, path in paths.items():
        with pytest.raises(ValueError, match=f"^{re.escape(repr(str(path)))} is not {what} written by python -m") as refused:
            load(path)
        assert "weights_only" not in str(refused.value), name


def test_the_committed_model_files_still_load(tmp_path):
    from flamingo_lite.tiny import contrastive

    vision, text, state = contrastive.load_encoders()
    assert state["config"]["seed"] == 0 and vision.dim == 64
