#!/usr/bin/env python3
"""Set up the course and run it, on a machine that has nothing but python3.

    python3 course.py lab        set everything up, then open the course in JupyterLab
    python3 course.py test       set everything up, then run every test (unit, property, parity, notebooks)
    python3 course.py test-gpu   the same on a CUDA GPU: tests on CUDA, notebooks with --nbval-lax
    python3 course.py test-lessons   only the lesson notebooks against their committed outputs (strict nbval)
    python3 course.py setup      only set up (a virtual environment in .venv with everything installed)

Extra arguments after `test` go to pytest (`python3 course.py test -k parity`), after `lab` to JupyterLab
(`python3 course.py lab --no-browser --port 8890`).

PyTorch: the setup installs torch==2.13.0 first. On a machine without an NVIDIA GPU, get the small CPU build by
pointing pip at PyTorch's CPU index: `FLAMINGO_TORCH_INDEX=https://download.pytorch.org/whl/cpu python3 course.py lab`.

An interrupted setup heals itself: a .venv without its Python, without pip, or without the stamp that a finished
setup writes last is made again from scratch on the next run. A step that fails says which, and the command to run
again. Ctrl-C or a SIGTERM to `lab` or `test` is passed on to JupyterLab or pytest, and course.py waits for it to stop.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"
# Test oracles whose declared dependencies would pull another torch: installed without them (what the tests use of
# open-flamingo, its helpers module, needs only torch, einops and einops-exts, all in the dev extra).
NO_DEPS = ["open-flamingo==2.0.1"]
STAMP = VENV / "flamingo-course-setup.txt"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


class StepFailed(Exception):
    """A setup step that did not succeed; its message says which."""


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, then rename: an interrupted write leaves the old file.

    (The package's flamingo_lite.files does the same; this file runs before the package is installed.)
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def call(cmd: list, env=None) -> int:
    """Run `cmd` and wait for it; SIGINT and SIGTERM sent to course.py are passed on to it, and it is waited for."""
    cmd = [str(c) for c in cmd]
    print("+", " ".join(cmd), flush=True)
    children = []

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}  # before the child starts
    try:
        children.append(subprocess.Popen(cmd, cwd=ROOT, env=env))
        code = children[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention, 128 + its number


def run(*cmd, env=None) -> None:
    code = call(list(cmd), env=env)
    if code != 0:
        raise StepFailed(f"`{' '.join(str(c) for c in cmd)}` exited with code {code}")


def create_venv() -> None:
    venv.EnvBuilder(with_pip=True).create(VENV)


def venv_problem() -> str | None:
    """Why the existing .venv cannot be used as it is (it is half made), or None when it can."""
    python = venv_python()
    if not python.exists():
        return f"{VENV.name}/{python.relative_to(VENV).as_posix()} is missing"
    try:
        pip = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True).returncode
    except OSError as err:  # e.g. the Python it links to was moved or removed
        return f"its Python does not start ({err})"
    if pip != 0:
        return "it has no working pip"
    if not STAMP.exists():
        return "the setup that made it did not finish"
    return None


def looks_like_a_venv(folder: Path) -> bool:
    """Only a virtual environment (or the start of one) is removed, never a folder of someone's files."""
    made_by_venv = {"bin", "Scripts", "include", "Include", "lib", "Lib", "lib64", "pyvenv.cfg"}
    return folder.is_dir() and ((folder / "pyvenv.cfg").exists() or {p.name for p in folder.iterdir()} <= made_by_venv)


def setup_fingerprint(torch_index: str) -> str:
    """What a finished setup installed, as a hash: a change to any of it makes the next setup install again."""
    wanted = (ROOT / "pyproject.toml").read_bytes() + TORCH.encode() + " ".join(NO_DEPS).encode() + torch_index.encode()
    return hashlib.sha256(wanted).hexdigest()


def setup() -> Path:
    """Create .venv and install torch, then the package with its course and test extras (skipped if current)."""
    if sys.version_info < (3, 10):
        sys.exit(f"Python 3.10 or newer is needed, this is {sys.version.split()[0]}")
    torch_index = os.environ.get("FLAMINGO_TORCH_INDEX", "")
    wanted = setup_fingerprint(torch_index)
    python = venv_python()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return python
    problem = venv_problem() if VENV.exists() else None
    if problem:
        if not looks_like_a_venv(VENV):
            raise StepFailed(f"{VENV.name}/ exists but is not a virtual environment: move it away")
        print(f"The virtual environment in {VENV.name}/ is half made ({problem}): rebuilding it", flush=True)
        shutil.rmtree(VENV)
    if not VENV.exists():
        print(f"Creating a virtual environment in {VENV.name}/", flush=True)
        try:
            create_venv()
        except (OSError, subprocess.CalledProcessError) as err:
            raise StepFailed(f"creating the virtual environment in {VENV.name}/ failed ({err}); on Debian or Ubuntu, "
                             "`apt install python3-venv` gives Python what it needs") from None
    STAMP.unlink(missing_ok=True)  # written again only when every step below has succeeded
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    run(*pip, TORCH, *(["--extra-index-url", torch_index] if torch_index else []))
    run(*pip, "-e", ".[dev]")
    run(*pip, "--no-deps", *NO_DEPS)
    write_text_atomic(STAMP, wanted + "\n")
    return python


def lessons() -> list[str]:
    """The lesson notebooks (not the student versions), in order."""
    return sorted(glob.glob("notebooks/[0-9][0-9]_*.ipynb", root_dir=ROOT))


def test(args: list[str], gpu: bool = False, lessons_only: bool = False) -> int:
    python = setup()
    env = dict(os.environ)
    if gpu:
        env["FLAMINGO_DEVICE"] = "cuda"
        nb = ["--nbval-lax", "--nbval-current-env"]
    else:
        env["FLAMINGO_DEVICE"] = "cpu"  # the committed outputs were made on the CPU
        nb = ["--nbval", "--nbval-current-env", "--nbval-sanitize-with", "tests/sanitize.cfg"]
    targets = lessons() if lessons_only else ["tests", *lessons()]
    return call([python, "-m", "pytest", *targets, *nb, *args], env=env)


def lab_command(python: Path, args: list[str]) -> list:
    cmd = [python, "-m", "jupyter", "lab", "--notebook-dir", str(ROOT), str(ROOT / "notebooks" / "00_welcome.ipynb")]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and workshop VMs often run as root
    return cmd + args  # e.g. --no-browser --port 8890


def lab(args: list[str]) -> int:
    return call(lab_command(setup(), args))


def setup_only(args: list[str]) -> int:
    if args:
        print(f"unknown argument {args[0]!r}: setup takes none", file=sys.stderr)
        return 2
    setup()
    return 0


COMMANDS = {
    "setup": setup_only,
    "lab": lab,
    "test": test,
    "test-gpu": lambda rest: test(rest, gpu=True),
    "test-lessons": lambda rest: test(rest, lessons_only=True),
}


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if command in ("help", "-h", "--help"):
        print(__doc__)
        return 0
    if command not in COMMANDS:
        print(f"unknown command {command!r}: use one of {', '.join(COMMANDS)} (python3 course.py help)", file=sys.stderr)
        return 2
    again = shlex.join(["python3", "course.py", *argv])
    try:
        return COMMANDS[command](rest)
    except (StepFailed, OSError) as err:
        print(f"\n{command} failed: {err}.\nFix what the lines above say, then run again: {again}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Run again to continue (a half-made setup is rebuilt): {again}", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
