"""The course as a learner meets it: JupyterLab in a real browser runs a notebook and its widget renders.

JupyterLab is started on localhost with a copy of one course notebook (so the repository's file is never
saved over), Debian's Chromium (``apt-get install chromium``) is driven by Playwright from PyPI (no browser
download), the notebook is run with JupyterLab's own "run all cells" command, and the test waits for the last
cell's output and for an ipywidgets control to be drawn. A screenshot goes to ``runs/browser-test/``.

Run it alone with ``pytest -m browser``. Without Chromium or Playwright it is skipped with the install
command, except where ``LDM_REQUIRE_BROWSER=1`` (CI sets it): there a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = Path(os.environ.get("LDM_BROWSER_NOTEBOOK", REPO / "solutions" / "00_orientation.ipynb"))
SCREENSHOTS = REPO / "runs" / "browser-test"
CHROMIUM_NAMES = ("chromium", "chromium-browser")

pytestmark = pytest.mark.browser


def _missing(reason: str) -> None:
    if os.environ.get("LDM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (LDM_REQUIRE_BROWSER=1 makes this a failure)")
    pytest.skip(reason)


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout} s")


@pytest.fixture()
def jupyterlab(tmp_path):
    """A JupyterLab server on localhost serving a temporary copy of the notebook; yields (base URL, token)."""
    if not NOTEBOOK.exists():
        pytest.fail(f"{NOTEBOOK} is missing")
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = _free_port(), "ldm-minimal-browser-test"
    env = dict(os.environ, LDM_COURSE_MODE="FAST", JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    # no "would you like news?" pop-up over the screenshot
    labconfig = tmp_path / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    log = (tmp_path / "jupyterlab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.disable_check_xsrf=True"] + (["--allow-root"] if os.geteuid() == 0 else []),
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_for_server(f"{base}/api/status?token={token}", proc)
        except (RuntimeError, TimeoutError) as err:
            log.flush()
            tail = "\n".join((tmp_path / "jupyterlab.log").read_text().splitlines()[-15:])
            pytest.fail(f"{err}; the end of its log:\n{tail}")
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_notebook_runs_in_jupyterlab_and_its_widget_renders(jupyterlab):
    chromium = _chromium()
    if chromium is None:
        _missing("Chromium is not installed: `apt-get install chromium` (Debian) provides it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed: `pip install -e '.[dev]'` installs it")
    base, token = jupyterlab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            # the notebook is open and its kernel is ready
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " return !!(w && w.sessionContext && w.sessionContext.session &&"
                " w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'); }",
                timeout=60_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            # the last cell, L.finish(), prints "... ran in N s wall time ..." when everything above has run
            page.wait_for_selector(".jp-OutputArea-output:has-text('s wall time')", timeout=150_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                                  ":has-text('Traceback')").count()
            widget = page.locator(".jupyter-widgets.widget-slider, .jupyter-widgets.widget-dropdown,"
                                  " .jupyter-widgets.widget-toggle-buttons, .jupyter-widgets.widget-select")
            widget.first.wait_for(state="visible", timeout=30_000)
            widget.first.scroll_into_view_if_needed()
            # the control is live: its output (a figure drawn by the kernel through the widget) is on the page
            drawn = page.locator(".widget-interact .jp-OutputArea-output img")
            drawn.first.wait_for(state="visible", timeout=30_000)
            # and it answers: picking another option makes the kernel draw a different figure
            select = page.locator(".widget-interact select").first
            if select.count():
                before = drawn.first.get_attribute("src")
                options = select.locator("option").all_inner_texts()
                select.select_option(label=options[-1])
                page.wait_for_function(
                    "(before) => { const img = document.querySelector('.widget-interact .jp-OutputArea-output img');"
                    " return img && img.getAttribute('src') !== before; }", arg=before, timeout=30_000)
            shot = SCREENSHOTS / f"{NOTEBOOK.stem}.png"
            page.screenshot(path=str(shot))
            assert errors == 0, f"{errors} cell(s) showed a traceback in the browser; see {shot}"
            assert widget.count() >= 1 and drawn.count() >= 1
            assert shot.stat().st_size > 10_000, "the screenshot is suspiciously small (blank page?)"
        finally:
            browser.close()
