"""A real `streamlit run app.py` and a real Chromium (Playwright) for browser tests.

Fixtures: `app_url` (session: the server's base URL), `browser` (session), `page` (a fresh tab per test),
`open_app(page, path="")` (go to a page of the app and wait until its script has finished).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("LAYER_EXPLORER_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
IDLE = "[data-test-script-state='notRunning']"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_app(cache: Path, log: Path, timeout_s: float = 90) -> tuple[subprocess.Popen[bytes], str]:
    """`streamlit run app.py` on a free port of 127.0.0.1 with `cache` as LAYER_EXPLORER_CACHE, once healthy:
    (the process, its base URL). Its output goes to `log`."""
    port = _free_port()
    env = {**os.environ, "LAYER_EXPLORER_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port)]
    cmd += ["--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_app(proc)
            pytest.fail(f"streamlit did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, url


def stop_app(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started by `start_app` (terminate, then kill after 15 s)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start the app on a free port (own upload cache), wait for its health endpoint, stop it at the end."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Chromium (apt-get install chromium) to run browser tests")
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    proc, url = start_app(tmp_path_factory.mktemp("cache"), log)
    try:
        yield url
    finally:
        stop_app(proc)


@pytest.fixture(scope="session")
def browser(app_url: str) -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    """A fresh 1440×900 tab; closed after the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})  # type: ignore[attr-defined]
    tab = context.new_page()
    tab.set_default_timeout(90_000)
    try:
        yield tab
    finally:
        context.close()


def wait_idle(page: object, timeout_ms: int = 120_000) -> None:
    """Wait until the app's script has run to the end (and no rerun is pending)."""
    page.wait_for_selector(IDLE, state="attached", timeout=timeout_ms)  # type: ignore[attr-defined]
    page.wait_for_timeout(500)  # type: ignore[attr-defined]  # let the last deltas paint
    page.wait_for_selector(IDLE, state="attached", timeout=timeout_ms)  # type: ignore[attr-defined]


IMAGES_LOADED = (
    "([sel, n]) => { const ims = [...document.querySelectorAll(sel)];"
    " return ims.length >= n && ims.every(im => im.complete && im.naturalWidth > 0); }"
)


def wait_images(
    page: object, n: int, selector: str = "[data-testid=stMain] [data-testid=stImage] img", timeout_ms: int = 120_000
) -> None:
    """Wait until at least `n` images match `selector` and every one of them has loaded.

    Streamlit sends an image as a media URL that the browser fetches after the script's delta arrives: a caption
    written in the same run can be on screen, and the script idle, while the `<img>` is still missing or loading.
    """
    page.wait_for_function(IMAGES_LOADED, arg=[selector, n], timeout=timeout_ms)  # type: ignore[attr-defined]


@pytest.fixture
def idle() -> Callable[..., None]:
    """`idle(page, timeout_ms=…)`: wait until the app's script has run to the end (and no rerun follows at once)."""
    return wait_idle


@pytest.fixture
def images_loaded() -> Callable[..., None]:
    """`images_loaded(page, n)`: wait until `n` images of the main area are in the page and fully loaded."""
    return wait_images


@pytest.fixture
def open_app(app_url: str) -> Callable[..., None]:
    """`open_app(page, "model?model=…")`: load a URL of the app and wait until it has finished running."""

    def go(page: object, path: str = "") -> None:
        page.goto(f"{app_url}/{path.lstrip('/')}")  # type: ignore[attr-defined]
        page.wait_for_selector("[data-testid='stApp']", state="attached")  # type: ignore[attr-defined]
        wait_idle(page)

    return go


def save_screenshot(page: object, name: str) -> Path:
    """Save a screenshot of the whole app under test-artifacts/e2e/ and return its path.

    Streamlit scrolls inside its main container, not the document, so the viewport is first grown to the
    content's height (a plain full_page screenshot would stop at the window's bottom edge).
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    size = page.viewport_size  # type: ignore[attr-defined]
    height = page.evaluate(  # type: ignore[attr-defined]
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stSidebarContent]')]"
        ".map(e => e.scrollHeight), document.body.scrollHeight)"
    )
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 12_000)})  # type: ignore[attr-defined]
    page.wait_for_timeout(800)  # type: ignore[attr-defined]  # charts re-layout to the new size
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    page.set_viewport_size(size)  # type: ignore[attr-defined]
    return path


@pytest.fixture
def screenshot() -> Callable[[object, str], Path]:
    """`screenshot(page, "name.png")` → path under test-artifacts/e2e/ (the whole app, not just the window)."""
    return save_screenshot
