"""The journey of DESIGN.md §1 in a real browser: Progression → Fine-tune → Compare → click a layer → freeze panel
→ download the snippet. Screenshots of each step go to test-artifacts/e2e/journey_*.png; the measured times
(layer click → panel updated, page switches with warm caches) to test-artifacts/e2e/journey_timings.json.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # ~3 min on CPU: renders, a tiny fine-tune, a comparison

LAYER = "blocks.3.0"  # the layer clicked on the Compare chart
RENDER = "steps=8&size=64"  # short renders: the journey checks the flow, not picture quality
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"
IDLE = "[data-test-script-state='notRunning']"


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until the app's script has run to the end (and no rerun follows at once)."""
    page.wait_for_selector(IDLE, state="attached", timeout=timeout_ms)
    page.wait_for_timeout(500)
    page.wait_for_selector(IDLE, state="attached", timeout=timeout_ms)


def _no_errors(page) -> None:
    body = page.inner_text("body")
    assert "Traceback" not in body and not page.locator("[data-testid='stException']").count()


def _set(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Tab")


def _nav(page, title: str) -> None:
    """Click the sidebar link of the page titled `title` (the link's text also holds its icon's name)."""
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()


def _click_column(page, names: list[str], layer: str) -> float:
    """Click the middle of `layer`'s column on the Compare chart (scrolled into view); returns the click time."""
    column = page.locator(".st-key-cmp_chart .barlayer .point").nth(names.index(layer))
    column.scroll_into_view_if_needed()
    box = column.bounding_box()
    started = time.perf_counter()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    return started


def _panel_heading(page) -> str:
    """The freeze panel's heading: 'Freeze up to X', or 'Train every layer' when no point is advised (60 images: too
    few held out to decide)."""
    return page.locator("h3", has_text=re.compile("Freeze up to|Train every layer")).first.inner_text().strip()


def _page_switch(page, title: str, ready: str) -> float:
    """Seconds from clicking a sidebar link until the page's title and `ready` element show."""
    started = time.perf_counter()
    _nav(page, title)
    page.get_by_role("heading", name=title, exact=True).wait_for()
    page.locator(ready).first.wait_for()
    return time.perf_counter() - started


def test_journey_progression_finetune_compare_freeze(page, open_app, screenshot, images_loaded):
    timings: dict[str, float] = {}
    main = page.locator("[data-testid='stMain']")

    # 1. Progression shows images.
    open_app(page, f"progression?preset=fast&{RENDER}&per_stage=2")
    images = main.locator("[data-testid='stImage'] img")
    images.nth(9).wait_for()
    wait_idle(page, 300_000)
    images_loaded(page, 10)
    _no_errors(page)
    assert images.count() >= 10
    screenshot(page, "journey_1_progression.png")

    # 2. Fine-tune the bundled model on the digits demo for a tiny budget (from the sidebar, as a user would).
    _nav(page, "Fine-tune")
    main.get_by_text("Non-trainable").first.wait_for()
    wait_idle(page)
    for label, value in [("Epochs", "1"), ("Batch size", "16"), ("Image size (px)", "64"),
                         ("Max images (0 = all)", "60")]:  # fmt: skip
        _set(page, label, value)
    wait_idle(page)
    main.get_by_test_id("stBaseButton-primaryFormSubmit").click()
    main.get_by_text("finished", exact=False).first.wait_for(timeout=300_000)
    wait_idle(page)
    _no_errors(page)
    screenshot(page, "journey_2_finetune.png")

    # 3. Compare shows the chart: open it from the run, then narrow the work through the link (a reopened URL).
    page.locator(".st-key-ft_result_cmp button").click()
    page.wait_for_url("**/compare?**")
    wait_idle(page)
    assert "tuned=" in page.url
    page.goto(f"{page.url}&images=48&probes=1&{RENDER}")
    wait_idle(page)
    page.locator(".st-key-cmp_run button").click()
    page.locator(".st-key-cmp_chart .barlayer .point").nth(19).wait_for(timeout=300_000)
    wait_idle(page, 300_000)
    _no_errors(page)
    assert "digits" in page.inner_text("body")
    screenshot(page, "journey_3_compare.png")

    # 4. Click a layer on the chart (a real click on its column): the freeze panel follows.
    before = _panel_heading(page)
    names = page.locator(".st-key-cmp_chart .xtick text").all_text_contents()
    started = _click_column(page, names, LAYER)
    page.wait_for_function(
        "layer => [...document.querySelectorAll('h3')].some(h => h.innerText.trim() === 'Freeze up to ' + layer)",
        arg=LAYER,
    )
    timings["click_to_panel_heading_s"] = time.perf_counter() - started
    page.locator("[data-testid='stCode']", has_text=f"Freeze everything up to and including '{LAYER}'").wait_for()
    timings["click_to_panel_code_s"] = time.perf_counter() - started
    assert before != _panel_heading(page)
    assert f"freeze={LAYER}" in page.url
    wait_idle(page, 300_000)
    timings["click_to_idle_s"] = time.perf_counter() - started  # renders, examples, attribution of the new layer
    _no_errors(page)
    screenshot(page, "journey_4_layer.png")

    # The same click with everything cached: leave the layer through the list under the chart, then click it again.
    page.locator(".st-key-cmp_freeze").click()
    page.get_by_role("option", name="none: train every layer").click()
    page.wait_for_function("() => location.search.includes('freeze=none')")
    wait_idle(page, 300_000)
    started = _click_column(page, names, LAYER)
    page.locator("[data-testid='stCode']", has_text=f"Freeze everything up to and including '{LAYER}'").wait_for()
    timings["cached_click_to_panel_s"] = time.perf_counter() - started
    wait_idle(page, 300_000)
    timings["cached_click_to_idle_s"] = time.perf_counter() - started

    # 5. The snippet downloads.
    with page.expect_download() as download:
        page.locator(".st-key-fp_code_download button").click()
    path = download.value.path()
    text = Path(path).read_text(encoding="utf-8")
    assert download.value.suggested_filename == f"freeze_{LAYER.replace('.', '_')}.py"
    frozen = text.split("FROZEN = [")[1].split("]")[0]
    assert "requires_grad_(False)" in text and f"'{LAYER}'" in frozen
    assert "'blocks.3.1'" not in frozen and "'blocks.4'" not in frozen
    screenshot(page, "journey_5_download.png")

    # Page switches with warm caches.
    timings["switch_to_model_s"] = _page_switch(page, "Model", "[data-testid='stDataFrame']")
    wait_idle(page)
    timings["switch_to_compare_s"] = _page_switch(page, "Compare", ".st-key-cmp_chart .barlayer .point")
    wait_idle(page, 300_000)
    _no_errors(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "journey_timings.json").write_text(json.dumps({k: round(v, 3) for k, v in timings.items()}, indent=1))
    print("journey timings (s):", timings)
