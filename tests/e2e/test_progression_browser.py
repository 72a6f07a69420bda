"""The Progression page in a real browser: every stage row fills with rendered images, then a unit link opens."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.e2e  # ~25 s on an idle 2-core CPU: a real server, model load, renders

STAGES = ("Edges", "Textures", "Patterns", "Parts", "Objects")
IDLE = "[data-test-script-state='notRunning']"
# A tile's caption once its image is final: the activation it reached, and its quality flag if it has one.
FINAL = r"^unit \d · (inactive · )?-?\d+\.\d\d( · ⚠ .+)?$"
COUNT_FINAL = (
    "re => [...document.querySelectorAll('[data-testid=stMain] [data-testid=stCaptionContainer]')]"
    ".filter(e => new RegExp(re).test(e.innerText.trim())).length"
)


def test_progression_fills_every_stage_and_links_to_units(page, app_url, screenshot, images_loaded):
    page.goto(f"{app_url}/progression?preset=fast&steps=2&size=64&per_stage=2")
    page.wait_for_selector("[data-testid='stApp']", state="attached")
    main = page.locator("[data-testid='stMain']")
    for name in STAGES:  # the rows are laid out before anything renders
        main.get_by_role("heading", name=name, exact=False).first.wait_for()  # not the help text
    # Real renders on a CPU that may be shared: wait for all 10 images, however long the machine needs.
    page.wait_for_function(f"() => ({COUNT_FINAL})({FINAL!r}) >= 10", timeout=400_000)
    page.wait_for_selector(IDLE, state="attached", timeout=60_000)
    images_loaded(page, 10)  # the captions come with the script's deltas, the pictures after their own fetch
    body = page.inner_text("body")
    assert "Traceback" not in body and not page.locator("[data-testid='stException']").count()
    assert not main.locator("[data-testid='stProgress']").count()  # the progress bar is gone
    images = main.locator("[data-testid='stImage'] img")
    assert images.count() == 10  # 5 stages × 2 units
    assert all(images.nth(i).evaluate("im => im.complete && im.naturalWidth > 0") for i in range(images.count()))
    assert "relative depth" in body and len(re.findall(r"Shown: blocks\.\d\.\d|Shown: conv_\w+", body)) == 5
    path = screenshot(page, "progression.png")
    assert path.stat().st_size > 50_000
    main.get_by_role("link", name="Unit 1").first.click()
    page.wait_for_url("**/unit?**")
    page.get_by_role("heading", name="Unit", exact=True).wait_for()
    assert "unit=1" in page.url and "layer=" in page.url and "steps=2" in page.url
