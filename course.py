#!/usr/bin/env python3
"""Set up the course and run it, on a machine that has nothing but python3.

    python3 course.py lab        set everything up, then open the course in JupyterLab
    python3 course.py test       set everything up, then run every test (unit, property, parity, notebooks)
    python3 course.py test-gpu   the same on a CUDA GPU: tests on CUDA, notebooks with --nbval-lax
    python3 course.py setup      only set up (a virtual environment in .venv with everything installed)

Extra arguments after `test` go to pytest (`python3 course.py test -k parity`), after `lab` to JupyterLab
(`python3 course.py lab --no-browser --port 8890`).

PyTorch: the setup installs torch==2.13.0 first. On a machine without an NVIDIA GPU, get the small CPU build by
pointing pip at PyTorch's CPU index: `FLAMINGO_TORCH_INDEX=https://download.pytorch.org/whl/cpu python3 course.py lab`.
"""
from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"
STAMP = VENV / "flamingo-course-setup.txt"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*cmd, env=None) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, env=env)


def setup() -> Path:
    """Create .venv and install torch, then the package with its course and test extras (skipped if current)."""
    if sys.version_info < (3, 10):
        sys.exit(f"Python 3.10 or newer is needed, this is {sys.version.split()[0]}")
    torch_index = os.environ.get("FLAMINGO_TORCH_INDEX", "")
    wanted = hashlib.sha256(((ROOT / "pyproject.toml").read_bytes() + TORCH.encode() + torch_index.encode())).hexdigest()
    python = venv_python()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return python
    if not python.exists():
        print(f"Creating a virtual environment in {VENV.name}/", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    run(*pip, TORCH, *(["--extra-index-url", torch_index] if torch_index else []))
    run(*pip, "-e", ".[dev]")
    STAMP.write_text(wanted + "\n")
    return python


def lessons() -> list[str]:
    """The lesson notebooks (not the student versions), in order."""
    return sorted(glob.glob("notebooks/[0-9][0-9]_*.ipynb", root_dir=ROOT))


def test(args: list[str], gpu: bool = False) -> int:
    python = setup()
    env = dict(os.environ)
    if gpu:
        env["FLAMINGO_DEVICE"] = "cuda"
        nb = ["--nbval-lax", "--nbval-current-env"]
    else:
        env["FLAMINGO_DEVICE"] = "cpu"  # the committed outputs were made on the CPU
        nb = ["--nbval", "--nbval-current-env", "--nbval-sanitize-with", "tests/sanitize.cfg"]
    cmd = [python, "-m", "pytest", "tests", *lessons(), *nb, *args]
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env).returncode


def lab(args: list[str]) -> int:
    python = setup()
    cmd = [python, "-m", "jupyter", "lab", "--notebook-dir", str(ROOT), str(ROOT / "notebooks" / "00_welcome.ipynb")]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and workshop VMs often run as root
    cmd += args  # e.g. --no-browser --port 8890
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if command == "setup":
        setup()
        return 0
    if command == "lab":
        return lab(rest)
    if command == "test":
        return test(rest)
    if command == "test-gpu":
        return test(rest, gpu=True)
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
