"""A warm visit of Progression (every image from the cache) in a real browser: no console error, no failed request.

The bug it guards: a tile drew its grey placeholder with st.image, and when the cached picture replaced it in the same
run, Streamlit's media manager deleted the placeholder's file before the browser fetched it: a 404 on /media/… and
"Client Error: Image source error" in the console on almost every warm visit. It showed under load, where the browser
is slow to fetch; here every media request is held back a moment, as a busy browser would send it.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e]

IDLE = "[data-test-script-state='notRunning']"
FINAL = r"^unit \d · (inactive · )?-?\d+\.\d\d( · ⚠ .+)?$"
COUNT_FINAL = (
    "re => [...document.querySelectorAll('[data-testid=stMain] [data-testid=stCaptionContainer]')]"
    ".filter(e => new RegExp(re).test(e.innerText.trim())).length"
)
TILES = 10  # 5 stages × 2 units
MEDIA_DELAY_MS = 1500


def _settled(page, images_loaded) -> None:
    page.wait_for_function(f"() => ({COUNT_FINAL})({FINAL!r}) >= {TILES}", timeout=400_000)
    page.wait_for_selector(IDLE, state="attached", timeout=60_000)
    images_loaded(page, TILES)
    page.wait_for_timeout(500)
    page.wait_for_selector(IDLE, state="attached", timeout=60_000)


def _go(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    page.get_by_role("heading", name=title, exact=True).wait_for()


def test_a_warm_progression_visit_has_no_console_error_and_no_failed_request(page, app_url, images_loaded):
    page.goto(f"{app_url}/progression?preset=fast&steps=2&size=32&per_stage=2")  # cold: renders and caches
    _settled(page, images_loaded)
    console: list[str] = []
    failed: list[tuple[int, str]] = []
    page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: console.append(str(exc)))
    page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)

    def late(route) -> None:  # a busy browser: the image is fetched after the script run has ended
        page.wait_for_timeout(MEDIA_DELAY_MS)
        route.continue_()

    page.route("**/media/**", late)
    for _ in range(3):  # warm visits, as a user comes back: Model → Progression (the session keeps the settings)
        _go(page, "Model")
        page.wait_for_selector(IDLE, state="attached", timeout=60_000)
        page.wait_for_timeout(500)
        images_loaded(page, 0)  # its own pictures (the sample photo) loaded before we leave, as a reader would
        _go(page, "Progression")
        _settled(page, images_loaded)
        assert not page.locator("[data-testid='stMain'] [data-testid='stProgress']").count()  # nothing rendered
    page.wait_for_timeout(1000)  # a late media request would fail now
    assert console == [] and failed == [], (console, failed)
