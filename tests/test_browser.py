"""The lessons' widgets, driven in a real browser: JupyterLab in headless Chromium, as a learner would use them.

nbval compares text outputs and never runs widget callbacks, so this test does what a learner does: it starts
JupyterLab on 127.0.0.1 (no token; all of Jupyter's state, and a copy of the lessons, in a temporary folder, so
nothing is written into the checkout), opens a lesson in Debian's Chromium through Playwright (no browser
download), runs all cells, then

* lesson 04: clicks the `only_attend_immediate_media` toggle and checks that the mask picture and the text readout
  change, clicks again and checks that both come back, then edits the sequence and checks that both change;
* lesson 06: moves the `gate` slider with the keyboard and checks that the picture and the readout change, then
  moves it back.

It needs /usr/bin/chromium (Debian packages `chromium` and `chromium-driver`; `.ci/run` installs them). Where
Chromium is missing, the test tries to install it (as root, with apt-get) and skips, saying why, only if that fails.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MASK_LESSON = "notebooks/04_media_locations_and_masks.ipynb"
GATE_LESSON = "notebooks/06_gated_cross_attention.ipynb"
READOUT = ".flamingo-readout"
PICTURE = ".widget-output img"
SERVER_START_S = 120
KERNEL_S = 120  # to start a kernel, and to run all cells of one lesson (each runs well under a minute)
CHANGE_S = 30  # for a widget to redraw after a click


# ----------------------------------------------------------------------------------------------------------------
# Chromium


def ensure_chromium() -> str | None:
    """None when /usr/bin/chromium is there (installing it with apt-get if we can); else why it is not."""
    if os.access(CHROMIUM, os.X_OK):
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return f"{CHROMIUM} is missing and cannot be installed here (needs apt-get as root): apt-get install chromium chromium-driver"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"{CHROMIUM} is missing and `{' '.join(cmd)}` failed: {err}"
        if done.returncode != 0:
            return f"{CHROMIUM} is missing and `{' '.join(cmd)}` failed: {(done.stderr or done.stdout)[-300:]}"
    return None if os.access(CHROMIUM, os.X_OK) else f"{CHROMIUM} is still missing after apt-get install chromium"


# ----------------------------------------------------------------------------------------------------------------
# JupyterLab


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_environment(state: Path) -> dict:
    """Environment variables that keep all of Jupyter's state under `state`, plus the lab settings the test needs."""
    dirs = {
        "HOME": "home",
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_DATA_DIR": "data",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTERLAB_SETTINGS_DIR": "settings",
        "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
        "IPYTHONDIR": "ipython",
        "MPLCONFIGDIR": "matplotlib",
    }
    env = {**os.environ, "FLAMINGO_DEVICE": "cpu", "JUPYTER_PLATFORM_DIRS": "1", "PYTHONUNBUFFERED": "1"}
    for var, name in dirs.items():
        (state / name).mkdir(parents=True, exist_ok=True)
        env[var] = str(state / name)
    settings = {
        # no news or update toast over the page
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        # every cell in the DOM, so outputs far down a long lesson can be found
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        # never write the executed notebook back
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    }
    for plugin, values in settings.items():
        path = state / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return env


@dataclass
class Lab:
    process: subprocess.Popen
    url: str
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def start_lab(root: Path, state: Path) -> Lab:
    """JupyterLab serving `root` on a free loopback port, without a token; returns once it answers."""
    port = free_port()
    env = lab_environment(state)
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    log = state / "jupyterlab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lab = Lab(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{lab.log_tail()}")
        try:
            with urllib.request.urlopen(f"{lab.url}/api/status", timeout=5) as reply:
                if reply.status == 200:
                    return lab
        except OSError:
            time.sleep(0.5)
    stop_lab(lab)
    raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s:\n{lab.log_tail()}")


def stop_lab(lab: Lab) -> None:
    """Stop the server; on SIGTERM it shuts its kernels down first. Kill it if it does not stop in time."""
    if lab.process.poll() is None:
        lab.process.send_signal(signal.SIGTERM)
        try:
            lab.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lab.process.kill()
            lab.process.wait(timeout=10)


# ----------------------------------------------------------------------------------------------------------------
# fixtures


def course_copy(where: Path) -> Path:
    """A copy of the lessons and their pictures, so nothing the browser does can touch the checkout."""
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")
    for folder in ("notebooks", "assets"):
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, where / folder, ignore=ignore)
    return where


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = ensure_chromium()
    if reason:
        pytest.skip(reason)
    root = course_copy(tmp_path_factory.mktemp("course"))
    server = start_lab(root, tmp_path_factory.mktemp("jupyter-state"))
    try:
        yield server
    finally:
        stop_lab(server)
    assert server.process.returncode is not None


@pytest.fixture(scope="module")
def browser(lab, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    home = tmp_path_factory.mktemp("browser-home")  # Chromium's own files (crash reports, caches) go here
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, env={**os.environ, "HOME": str(home)}
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(KERNEL_S * 1000)
    try:
        yield page
    finally:
        context.close()


# ----------------------------------------------------------------------------------------------------------------
# driving a notebook

# Each snippet finds the notebook panel by its path (not "the current widget"), so nothing else that JupyterLab
# might have open can be mistaken for it.
PANEL = """const panel = Array.from(window.jupyterapp ? window.jupyterapp.shell.widgets('main') : [])
    .find(w => w.context && w.context.path === path);"""

KERNEL_IDLE = f"""(path) => {{
    {PANEL}
    const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!(panel && panel.context.isReady && kernel && kernel.status === 'idle');
}}"""

# Commands act on the active notebook: activate ours, and do not wait for the command's promise here (evaluate has
# no timeout); the wait_for_function calls after it have one.
EXECUTE = f"""([path, command]) => {{
    {PANEL}
    window.jupyterapp.shell.activateById(panel.id);
    if (window.jupyterapp.shell.currentWidget !== panel) throw new Error('could not activate ' + path);
    window.jupyterapp.commands.execute(command);
    return panel.id;
}}"""

NO_OUTPUTS = f"""(path) => {{
    {PANEL}
    return panel.content.widgets.every(c => c.model.type !== 'code' || (c.model.outputs.length === 0 && c.model.executionCount === null));
}}"""

ALL_CELLS_RUN = f"""(path) => {{
    {PANEL}
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const code = panel.content.widgets.filter(c => c.model.type === 'code' && c.model.sharedModel.getSource().trim());
    return kernel && kernel.status === 'idle' && code.every(c => typeof c.model.executionCount === 'number');
}}"""

ERRORS = f"""(path) => {{
    {PANEL}
    const errors = [];
    panel.content.widgets.forEach((c, i) => {{
        if (c.model.type !== 'code') return;
        const tags = c.model.getMetadata('tags') || [];
        for (let k = 0; k < c.model.outputs.length; k++) {{
            const o = c.model.outputs.get(k);
            if (o.type === 'error' && !tags.includes('raises-exception')) errors.push(i + ': ' + o.toJSON().ename);
        }}
    }});
    return errors;
}}"""


def open_and_run_all(lab: Lab, page, notebook: str):
    """Open `notebook` (a path under the server's root), run all its cells in a fresh kernel, wait until done.

    Returns a locator for the notebook's panel, to look for its widgets in.
    """
    assert (ROOT / notebook).is_file(), f"{notebook} is not in the repository"
    page.goto(f"{lab.url}/lab/tree/{notebook}?reset")  # ?reset: a fresh workspace, only this notebook open
    page.wait_for_function(KERNEL_IDLE, arg=notebook, timeout=KERNEL_S * 1000)
    # clear the committed outputs first (this also clears the execution counts), so that what is waited for
    # below, and every widget found afterwards, comes from this run
    panel_id = page.evaluate(EXECUTE, [notebook, "notebook:clear-all-cell-outputs"])
    page.wait_for_function(NO_OUTPUTS, arg=notebook, timeout=KERNEL_S * 1000)
    page.evaluate(EXECUTE, [notebook, "notebook:run-all-cells"])
    page.wait_for_function(ALL_CELLS_RUN, arg=notebook, timeout=KERNEL_S * 1000, polling=500)
    errors = page.evaluate(ERRORS, notebook)
    assert errors == [], f"{notebook}: cells ended in an error when run in the browser: {errors}"
    return page.locator(f"#{panel_id}")


def widget_cell(panel, control):
    """The cell of `panel` whose output holds `control` (a page-level locator); there must be exactly one."""
    cell = panel.locator(".jp-Cell", has=control)
    cell.first.wait_for(state="attached", timeout=CHANGE_S * 1000)  # widget views render after the kernel is idle
    assert cell.count() == 1, f"expected one cell with this control, found {cell.count()}"
    cell.scroll_into_view_if_needed()
    return cell


def picture_and_readout(cell) -> tuple[str, str]:
    """The mask/gate picture (a PNG data URL) and the readout text that `cell` shows now."""
    picture, readout = cell.locator(PICTURE), cell.locator(READOUT)
    picture.first.wait_for(state="visible", timeout=CHANGE_S * 1000)
    readout.first.wait_for(state="visible", timeout=CHANGE_S * 1000)
    assert picture.count() == 1 and readout.count() == 1, (picture.count(), readout.count())
    src = picture.get_attribute("src")
    assert src.startswith("data:image/png;base64,"), src[:60]
    return src, readout.inner_text()


def wait_for_state(cell, check, what: str) -> tuple[str, str]:
    """Poll the cell's picture and readout until `check(state)` holds; fail saying `what` did not happen."""
    deadline = time.monotonic() + CHANGE_S
    state = picture_and_readout(cell)
    while not check(state) and time.monotonic() < deadline:
        time.sleep(0.25)
        state = picture_and_readout(cell)
    assert check(state), f"{what} within {CHANGE_S} s; the readout says:\n{state[1]}"
    return state


def changed(before):
    """A check that both the picture and the readout differ from `before`."""
    return lambda state: state[0] != before[0] and state[1] != before[1]


# ----------------------------------------------------------------------------------------------------------------
# the tests


def test_mask_toggle_redraws_the_mask_and_the_readout(lab, page):
    panel = open_and_run_all(lab, page, MASK_LESSON)
    toggle = page.locator("button.widget-toggle-button", has_text="only_attend_immediate_media")
    cell = widget_cell(panel, toggle)
    toggle = cell.locator("button.widget-toggle-button", has_text="only_attend_immediate_media")
    first = picture_and_readout(cell)
    was_on = "mod-active" in (toggle.get_attribute("class") or "")

    toggle.click()
    second = wait_for_state(cell, changed(first), "the mask picture and the readout did not both change after a click")
    assert ("mod-active" in (toggle.get_attribute("class") or "")) != was_on  # the button shows its new state

    toggle.click()
    third = wait_for_state(cell, lambda s: s == first, "the mask and the readout did not come back after a second click")
    assert ("mod-active" in (toggle.get_attribute("class") or "")) == was_on
    assert third == first and second != first

    # the sequence box redraws too: text before the first image is the case the lesson is about
    box = cell.locator(".widget-text input")
    assert box.count() == 1, f"expected one sequence box, found {box.count()}"
    box.fill("a photo of <image> a cat")
    wait_for_state(cell, changed(first), "the mask and the readout did not change after editing the sequence")


def test_gate_slider_redraws_the_picture_and_the_readout(lab, page):
    panel = open_and_run_all(lab, page, GATE_LESSON)
    label = page.locator(".widget-label", has_text=re.compile(r"^\s*gate\s*$"))
    cell = widget_cell(panel, page.locator(".widget-slider", has=label))
    slider = cell.locator(".widget-slider", has=label)
    assert slider.count() == 1, f"expected one slider labelled 'gate', found {slider.count()}"
    handle = slider.locator(".noUi-handle")
    value = slider.locator(".widget-readout")
    first, first_value = picture_and_readout(cell), value.inner_text()

    # the keyboard moves the handle by one step, as a learner would with the arrow keys
    handle.focus()
    handle.press("ArrowRight")
    second = wait_for_state(cell, changed(first), "the gate picture and the readout did not both change after moving the slider")
    assert value.inner_text() != first_value

    handle.focus()
    handle.press("ArrowLeft")
    third = wait_for_state(cell, lambda s: s == first, "the gate picture and the readout did not come back with the slider")
    assert value.inner_text() == first_value
    assert third == first and second != first


def test_without_chromium_and_without_root_the_skip_says_why(monkeypatch, tmp_path):
    monkeypatch.setitem(globals(), "CHROMIUM", str(tmp_path / "chromium"))  # a path with no browser
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: apt-get cannot install it
    reason = ensure_chromium()
    assert reason is not None and "is missing and cannot be installed here" in reason and "chromium-driver" in reason
