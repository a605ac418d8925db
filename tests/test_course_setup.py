"""course.py: a half-made .venv is rebuilt, a failed step says what failed and how to retry, the setup stamp is
written atomically, unknown commands are refused, and `lab` passes SIGTERM/SIGINT on to JupyterLab and waits.

The installs are replaced by a stand-in that records them (no torch is downloaded); the virtual environments are
real ones made without pip (fast), with a stand-in `pip` module where a test needs a working pip.
"""
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_course(path: Path = ROOT / "course.py"):
    """A fresh copy of the course.py module, so what a test changes in it stays in that test."""
    spec = importlib.util.spec_from_file_location("course_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_venv(folder: Path, pip: bool) -> None:
    """A real virtual environment without pip; with `pip=True` a stand-in pip that answers `python -m pip`."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(folder)
    if pip:
        site = next(folder.glob("lib/python3*/site-packages"))
        (site / "pip").mkdir()
        (site / "pip" / "__init__.py").write_text("")
        (site / "pip" / "__main__.py").write_text("print('pip stand-in')\n")


class Course:
    """course.py pointed at a scratch folder, with the venv creation and the installs recorded."""

    def __init__(self, module, monkeypatch):
        self.module = module
        self.created, self.installed = [], []
        self.real_run = module.run
        monkeypatch.setattr(module, "create_venv", self.create_venv)
        monkeypatch.setattr(module, "run", lambda *cmd, env=None: self.installed.append([str(c) for c in cmd]))

    def create_venv(self):
        self.created.append(self.module.VENV)
        make_venv(self.module.VENV, pip=True)

    def wanted_stamp(self) -> str:
        return self.module.setup_fingerprint("")


@pytest.fixture
def course(tmp_path, monkeypatch):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    module = load_course()
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "VENV", tmp_path / ".venv")
    monkeypatch.setattr(module, "STAMP", tmp_path / ".venv" / "flamingo-course-setup.txt")
    monkeypatch.delenv("FLAMINGO_TORCH_INDEX", raising=False)
    return Course(module, monkeypatch)


def assert_set_up(course):
    m = course.module
    assert m.venv_python().exists()
    assert m.STAMP.read_text().strip() == course.wanted_stamp()
    assert [cmd[-1] for cmd in course.installed] == [m.TORCH, ".[dev,book]", *m.NO_DEPS]
    assert course.installed[-1][-1 - len(m.NO_DEPS)] == "--no-deps"  # their declared dependencies pull another torch


def test_a_fresh_setup_creates_installs_and_stamps(course, capsys):
    assert course.module.setup() == course.module.venv_python()
    assert course.created == [course.module.VENV]
    assert_set_up(course)
    assert "half made" not in capsys.readouterr().out


def test_a_venv_without_pip_is_rebuilt(course, capsys):
    make_venv(course.module.VENV, pip=False)
    (course.module.VENV / "left-over").write_text("from the interrupted setup")
    course.module.setup()
    out = capsys.readouterr().out
    assert "half made (it has no working pip): rebuilding it" in out
    assert course.created == [course.module.VENV] and not (course.module.VENV / "left-over").exists()
    assert_set_up(course)


def test_a_venv_without_its_python_is_rebuilt(course, capsys):
    (course.module.VENV / "bin").mkdir(parents=True)  # what venv makes first
    course.module.setup()
    assert "half made (.venv/bin/python is missing): rebuilding it" in capsys.readouterr().out
    assert course.created == [course.module.VENV]
    assert_set_up(course)


def test_a_venv_whose_setup_did_not_finish_is_rebuilt(course, capsys):
    make_venv(course.module.VENV, pip=True)  # python and pip, but the installs were interrupted: no stamp
    course.module.setup()
    assert "half made (the setup that made it did not finish): rebuilding it" in capsys.readouterr().out
    assert course.created == [course.module.VENV]
    assert_set_up(course)


def test_a_finished_setup_is_used_as_it_is(course, capsys):
    make_venv(course.module.VENV, pip=True)
    course.module.STAMP.write_text(course.wanted_stamp() + "\n")
    assert course.module.setup() == course.module.venv_python()
    assert course.created == [] and course.installed == [] and capsys.readouterr().out == ""


def test_a_finished_setup_of_an_older_pyproject_is_updated_in_place(course, capsys):
    make_venv(course.module.VENV, pip=True)
    course.module.STAMP.write_text("a stamp of an older pyproject.toml\n")
    course.module.setup()
    assert course.created == [] and "half made" not in capsys.readouterr().out
    assert_set_up(course)


def test_an_interrupted_update_counts_as_unfinished(course, monkeypatch):
    make_venv(course.module.VENV, pip=True)
    course.module.STAMP.write_text("a stamp of an older pyproject.toml\n")

    def interrupted(*cmd, env=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(course.module, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        course.module.setup()
    assert not course.module.STAMP.exists()  # so the next run rebuilds instead of trusting a half-done update


def test_a_folder_that_is_not_a_venv_is_never_removed(course, capsys):
    course.module.VENV.mkdir()
    (course.module.VENV / "notes.txt").write_text("someone's own file")
    assert course.module.main(["setup"]) == 1
    err = capsys.readouterr().err
    assert ".venv/ exists but is not a virtual environment: move it away" in err
    assert "run again: python3 course.py setup" in err and "Traceback" not in err
    assert (course.module.VENV / "notes.txt").read_text() == "someone's own file"


def test_a_failed_install_says_which_step_and_the_command_to_retry(course, monkeypatch, capsys):
    monkeypatch.setattr(course.module, "run", course.real_run)
    monkeypatch.setattr(course.module, "call", lambda cmd, env=None: 1)  # pip fails (no network, say)
    assert course.module.main(["lab", "--port", "8890"]) == 1
    err = capsys.readouterr().err
    assert "lab failed: `" in err and f"-m pip install --disable-pip-version-check {course.module.TORCH}` exited with code 1" in err
    assert "run again: python3 course.py lab --port 8890" in err and "Traceback" not in err
    assert not course.module.STAMP.exists()


def test_a_failed_venv_creation_says_what_python_needs(course, monkeypatch, capsys):
    def no_ensurepip():
        raise subprocess.CalledProcessError(1, ["python3", "-m", "ensurepip"])

    monkeypatch.setattr(course.module, "create_venv", no_ensurepip)
    assert course.module.main(["setup"]) == 1
    err = capsys.readouterr().err
    assert "creating the virtual environment in .venv/ failed" in err and "python3-venv" in err
    assert "run again: python3 course.py setup" in err and "Traceback" not in err


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_setup_interrupted_while_making_the_venv_is_rebuilt_next_time(tmp_path, monkeypatch, capsys, signum):
    """The interruption of the issue, for real: course.py setup killed (or Ctrl-C) right after .venv/ appears."""
    for name in ("course.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {**os.environ, "PIP_NO_INDEX": "1"}  # should it get as far as pip, it must not download anything
    env.pop("FLAMINGO_TORCH_INDEX", None)
    setup = subprocess.Popen([sys.executable, str(tmp_path / "course.py"), "setup"], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / ".venv").exists() and setup.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert (tmp_path / ".venv").exists(), "course.py setup never began the virtual environment"
        os.killpg(setup.pid, signum)  # to course.py and the ensurepip it may have started, as Ctrl-C does
        _, err = setup.communicate(timeout=60)
    finally:
        try:
            os.killpg(setup.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        setup.wait()
    if signum == signal.SIGINT:
        assert setup.returncode == 130 and "Traceback" not in err
        assert "Interrupted. Run again to continue (a half-made setup is rebuilt): python3 course.py setup" in err
    copy = load_course(tmp_path / "course.py")
    problem = copy.venv_problem()
    assert problem is not None  # the premise: what the kill left cannot be used
    recorded = Course(copy, monkeypatch)
    copy.setup()
    assert f"half made ({problem}): rebuilding it" in capsys.readouterr().out
    assert recorded.created == [tmp_path / ".venv"]
    assert_set_up(recorded)


def test_the_stamp_is_written_atomically(course, monkeypatch):
    folder = course.module.VENV
    folder.mkdir()
    course.module.STAMP.write_text("the finished setup\n")

    def failing_replace(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(course.module.os, "replace", failing_replace)
    with pytest.raises(OSError):
        course.module.write_text_atomic(course.module.STAMP, "a new stamp\n")
    assert course.module.STAMP.read_text() == "the finished setup\n"
    assert [p.name for p in folder.iterdir()] == [course.module.STAMP.name]


def test_an_unknown_command_is_refused_with_exit_code_2():
    out = subprocess.run([sys.executable, str(ROOT / "course.py"), "bogus"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown command 'bogus'" in out.stderr
    out = subprocess.run([sys.executable, str(ROOT / "course.py"), "setup", "--now"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "unknown argument '--now'" in out.stderr


# ------------------------------------------------------------------------------- signals reach JupyterLab
STAND_IN = textwrap.dedent("""
    import os, signal, sys, time
    marker = sys.argv[1]
    def stop(signum, frame):
        time.sleep(0.5)  # a shutdown that takes a while, as JupyterLab's does while it stops its kernels
        with open(marker, "a") as f:
            f.write(f"stopped by {signum}\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(marker, "w") as f:
        f.write(f"{os.getpid()}\\n")
    while True:
        time.sleep(0.05)
""")

DRIVER = textwrap.dedent("""
    import importlib.util, sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("course", sys.argv[1])
    course = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(course)
    course.setup = lambda: Path(sys.argv[2])  # set up already; its "python" starts JupyterLab's stand-in
    sys.exit(course.main(["lab"]))
""")


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_lab_passes_the_signal_on_and_waits_for_jupyterlab(tmp_path, signum):
    marker = tmp_path / "lab.txt"
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    python = tmp_path / "python"  # what `python -m jupyter lab ...` runs: the stand-in, whatever the arguments
    python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'stand_in.py'))} {shlex.quote(str(marker))}\n")
    python.chmod(0o755)
    lab = subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "course.py"), str(python)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = None
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text().endswith("\n")) and time.monotonic() < deadline:
            assert lab.poll() is None, lab.communicate()
            time.sleep(0.02)
        child = int(marker.read_text().split()[0])
        lab.send_signal(signum)  # to course.py only, as `kill` or a service manager sends it
        _, err = lab.communicate(timeout=30)
        assert lab.returncode == 0, err
        assert marker.read_text().splitlines()[1] == f"stopped by {int(signum)}"  # finished before course.py exited
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)  # gone, not left running reparented
    finally:
        lab.kill()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
