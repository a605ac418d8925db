"""The workshop environment check, `python -m flamingo_lite.doctor`: each check alone, the report, the exit code."""
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flamingo_lite.teaching import doctor


def test_every_check_passes_in_the_course_environment(capsys):
    checks = doctor.run_checks()
    names = [c.name for c in checks]
    for wanted in ("Python", "torch", "einops", "numpy", "tqdm", "matplotlib", "ipywidgets", "jupyterlab", "ipykernel",
                   "widgets extension", "device"):
        assert wanted in names
    assert sum(n.startswith("forward ") for n in names) == 5  # one forward pass per reference layer
    assert [c for c in checks if not c.ok] == []
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"ok    torch +{re.escape(torch.__version__)}\n", out)
    assert "FAIL" not in out and f"All {len(checks)} checks passed" in out


def test_a_missing_package_fails_with_its_remedy(monkeypatch, capsys):
    real_import = importlib.import_module

    def import_without_einops(name, *args, **kwargs):
        if name == "einops":
            raise ModuleNotFoundError("No module named 'einops'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(doctor.importlib, "import_module", import_without_einops)
    check = doctor.check_package("einops", "einops", "0.7")
    assert not check.ok and "not installed" in check.detail
    assert 'pip install "einops>=0.7"' in check.remedy

    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL  einops" in out and 'fix: pip install "einops>=0.7"' in out
    # without einops the layers cannot run: the report says so instead of crashing
    assert "skipped: torch and einops are needed first" in out
    assert "forward FeedForward" not in out


def test_an_old_version_fails(monkeypatch):
    real_version = importlib.metadata.version
    monkeypatch.setattr(doctor.importlib.metadata, "version", lambda d: "7.6.5" if d == "ipywidgets" else real_version(d))
    check = doctor.check_package("ipywidgets", "ipywidgets", "8.0", "the interactive widgets")
    assert not check.ok
    assert "7.6.5 is older than 8.0" in check.detail and 'pip install "ipywidgets>=8.0"' in check.remedy


@pytest.mark.parametrize("version, expected", [("2.13.0+cpu", (2, 13, 0)), ("4.0.0rc1", (4, 0)), ("8", (8,))])
def test_version_tuple(version, expected):
    assert doctor._version_tuple(version) == expected


def test_python_version():
    assert doctor.check_python((3, 11, 7)).ok
    old = doctor.check_python((3, 8, 10))
    assert not old.ok and "3.8.10 is too old" in old.detail and "3.10" in old.remedy


def test_widgets_extension_missing_from_the_data_path(tmp_path):
    assert not doctor.check_widgets_extension(paths=[tmp_path]).ok
    (tmp_path / doctor.WIDGETS_EXTENSION).mkdir(parents=True)
    (tmp_path / doctor.WIDGETS_EXTENSION / "package.json").write_text("{}")
    assert doctor.check_widgets_extension(paths=[tmp_path]).ok


def test_a_bad_device_setting_fails_and_the_layers_still_run_on_the_cpu(monkeypatch):
    monkeypatch.setenv("FLAMINGO_DEVICE", "tpu")
    checks = {c.name: c for c in doctor.run_checks()}
    assert not checks["device"].ok and "FLAMINGO_DEVICE" in checks["device"].remedy
    assert checks["forward MaskedCrossAttention"].ok and "on cpu" in checks["forward MaskedCrossAttention"].detail


def test_a_broken_layer_fails_with_the_error(monkeypatch):
    name, layer, inputs = doctor.tiny_layers()[3]
    assert doctor.check_forward(name, layer, inputs).ok

    def broken(*args, **kwargs):
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(layer, "forward", broken)
    check = doctor.check_forward(name, layer, inputs)
    assert not check.ok and check.detail == "RuntimeError: shapes do not match" and "reinstall" in check.remedy


def test_a_layer_that_returns_nan_fails():
    nan_layer = torch.nn.Linear(3, 3)
    with torch.no_grad():
        nan_layer.weight.fill_(float("nan"))
    check = doctor.check_forward("Linear", nan_layer, (torch.ones(1, 3),))
    assert not check.ok and "NaN" in check.detail


def test_the_command_line_exits_non_zero_on_a_failure():
    env = {**os.environ, "FLAMINGO_DEVICE": "nonsense"}
    bad = subprocess.run([sys.executable, "-m", "flamingo_lite.doctor"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "FAIL  device" in bad.stdout


def test_the_doctor_starts_and_reports_a_missing_torch():
    """The package loads its layers lazily, so the doctor itself runs without torch and names it with the fix."""
    import subprocess
    import sys

    code = (
        "import sys, runpy; sys.modules['torch'] = None\n"
        "runpy.run_module('flamingo_lite.doctor', run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    torch_line = next(line for line in out.stdout.splitlines() if line.split()[1:2] == ["torch"])
    assert torch_line.split()[0] == "FAIL"
    assert "course.py setup" in out.stdout


@pytest.mark.parametrize("missing", ["numpy", "tqdm"])
def test_a_missing_training_dependency_fails(missing, monkeypatch, capsys):
    """With only torch and einops the layers run, but the training needs numpy and tqdm: the doctor says so."""
    real_import = importlib.import_module

    def import_without(name, *args, **kwargs):
        if name == missing:
            raise ModuleNotFoundError(f"No module named {missing!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(doctor.importlib, "import_module", import_without)
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  {missing}" in out and f'pip install "{missing}>=' in out


def test_the_doctor_checks_every_dependency_with_the_minimum_pyproject_names():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    wanted = {}
    for spec in project["dependencies"] + project["optional-dependencies"]["course"]:
        name, minimum = re.fullmatch(r"([\w-]+)>=([\d.]+)(?:,<[\d.]+)?", spec.replace(" ", "")).groups()
        wanted[name] = minimum
    assert {dist: minimum for _, dist, minimum, _ in doctor.PACKAGES} == wanted


@pytest.mark.parametrize("argv", [["--bogus"], ["extra"], ["--verbose", "--help"]])
def test_an_unknown_argument_is_refused_with_exit_code_2(argv, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "run_checks", lambda: pytest.fail("the checks ran despite the unknown argument"))
    assert doctor.main(argv) == 2
    captured = capsys.readouterr()
    assert f"unknown argument {argv[0]!r}" in captured.err and captured.out == ""
