"""The guided tour in a real browser: Start here → six steps over the real pages with Next, in Portuguese too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # every step opens a real page (renders start on several)

LOCALES = Path(__file__).resolve().parents[2] / "explorer" / "ui" / "locales"
PAGES = ["progression", "unit", "attribution", "finetune", "compare", "compare"]  # the page each step opens


def _texts(lang: str) -> dict[str, str]:
    return json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("lang", ["en", "pt-BR"])
def test_the_tour_walks_six_steps_over_the_real_pages(page, open_app, screenshot, idle, lang):
    texts = _texts(lang)
    open_app(page, f"start?lang={lang}")
    main = page.locator("[data-testid='stMain']")
    side = page.locator(".st-key-tour_panel")  # the tour's box, above the page (visible on a phone too)
    main.get_by_role("heading", name=texts["start.title"]).wait_for()
    main.get_by_role("button", name=texts["start.begin"]).click()
    for step, title in enumerate((texts[f"{p}.title"] for p in PAGES), 1):
        side.get_by_text(texts[f"tour.step{step}.title"], exact=True).wait_for(timeout=120_000)
        main.get_by_role("heading", name=title, exact=True).wait_for(timeout=120_000)
        idle(page, 300_000)  # elements of the previous step are only removed when the run ends
        assert f"tour={step}" in page.url and (lang == "en" or f"lang={lang}" in page.url)
        assert side.get_by_text(texts["tour.progress"].format(step=step, steps=len(PAGES))).count() == 1
        body = page.inner_text("body")
        assert "Traceback" not in body and not page.locator("[data-testid='stException']").count()
        if step == 1:
            screenshot(page, f"tour_{lang}_step1.png")
        if step < len(PAGES):
            side.get_by_role("button", name=texts["tour.next"]).click()
    assert not side.get_by_role("button", name=texts["tour.next"]).count()  # the last step has no Next
    screenshot(page, f"tour_{lang}_step6.png")
