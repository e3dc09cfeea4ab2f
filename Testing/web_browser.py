"""Driving ``acat view`` in a real browser: Debian's chromium through Playwright's Python package.

Used by Testing/test_web_browser.py and Utilities/make_web_viewer_screenshot.py. The browser is the
system's ``/usr/bin/chromium`` (the Makefile's system-deps installs it); Playwright never downloads
one. The server is started as a plain child process on a free loopback port and stopped by its PID;
every wait is bounded.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
GUTTER_PX = 40  # trame-slicer's buttons (left) and slice slider (bottom) inside each view
SHIPPED_BUNDLE = ROOT / "Resources" / "Models" / "brain-stroke-phantom"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_url(url: str) -> tuple[str, int, str]:
    """(``http://host:port``, port, token) from the URL ``acat view`` prints."""
    match = re.fullmatch(r"(http://\S+?:(\d+))/index\.html\?secret=([A-Za-z0-9_-]+)", url)
    assert match, url
    return match.group(1), int(match.group(2)), match.group(3)


@contextmanager
def viewer_server(model: Path, tmp: Path, start_timeout_s: float = 180.0, extra_args=(), host=None):
    """``acat view`` on a free loopback port (``--host HOST`` if given); yields (url with its token,
    process, log path). Its temporary files go under ``tmp/tmp`` (TMPDIR), so a test can check that the
    viewer deleted them when it stopped."""
    port = free_port()
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    log = tmp / "acat-view.log"
    env = dict(os.environ, TMPDIR=str(tmp / "tmp"), PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)  # headless, as in CI: VTK renders through EGL
    command = [sys.executable, "-m", "ACATCli", "view", "--port", str(port), "--model", str(model),
               *(["--host", host] if host else []), *extra_args]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        url = wait_for_url(process, log, start_timeout_s)
        base, printed_port, _ = split_url(url)
        assert printed_port == port, url
        if host is None:
            assert base == f"http://127.0.0.1:{port}", url  # loopback unless --host says otherwise
        yield url, process, log
    finally:
        stop(process)


def wait_for_url(process: subprocess.Popen, log: Path, timeout_s: float, heartbeat=lambda: None) -> str:
    """The URL a started ``acat view`` prints on its stdout (``heartbeat()`` called about once a second while
    waiting); RuntimeError with its log's end if it exits first, TimeoutError after ``timeout_s``."""
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        heartbeat()
        if process.poll() is not None:
            raise RuntimeError(f"acat view exited with {process.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"acat view did not print its URL within {timeout_s:.0f} s")
        try:
            match = re.search(r"ACAT viewer: (http://\S+)", lines.get(timeout=1.0))
        except queue.Empty:
            continue
        if match:
            return match.group(1)


def stop(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM by PID (the viewer cancels its run and deletes its folder), then SIGKILL if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)


@contextmanager
def chromium_page(profile: Path, width: int = 1400, height: int = 900):
    """A page in headless Debian chromium with a fresh profile folder."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height}, accept_downloads=True)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def open_and_explain(page, url: str, ct_path: Path, explain_timeout_s: float = 1800.0) -> None:
    """Load ``ct_path`` by its path, click Explain and wait for the result card."""
    page.goto(url, timeout=120_000)
    page.wait_for_selector("#explain-button", timeout=120_000)
    page.fill("#input-path", str(ct_path))
    page.click("#open-button")
    page.wait_for_function("document.querySelector('#input-info').innerText.includes('voxels')", timeout=180_000)
    page.click("#explain-button")
    page.wait_for_selector("#result-card", timeout=explain_timeout_s * 1000)


def axial_view_pixels(page) -> np.ndarray:
    """(H, W, 3) uint8: a screenshot of the axial (first) view as the page shows it."""
    import io

    from PIL import Image

    png = page.locator(".layout-grid-item").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def heat_mask(rgb: np.ndarray) -> np.ndarray:
    """The heat overlay's pixels: clearly red/orange/yellow, where the CT itself is grey."""
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    return (r - b > 60) & (r > 90)


def head_columns(rgb: np.ndarray) -> tuple[int, int]:
    """First and last image column holding head (grey or white CT, not black air, not overlay colour)."""
    inner = rgb[GUTTER_PX:-GUTTER_PX, GUTTER_PX:]  # leave out the view's buttons and slice slider
    grey = (inner.max(axis=2).astype(int) - inner.min(axis=2) < 25) & (inner.mean(axis=2) > 60)
    columns = np.flatnonzero(grey.sum(axis=0) > 3)
    if columns.size == 0:
        raise AssertionError("no CT visible in the axial view")
    return int(columns[0]) + GUTTER_PX, int(columns[-1]) + GUTTER_PX
