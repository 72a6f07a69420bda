"""The demo belongs to everyone, in a real browser: one session runs the real demo on Compare; a *new* session then
walks the guided tour in English and in Portuguese, and step 6 shows the demo's measured recommendation and its code.

Slow (the real demo fine-tunes, compares and sweeps on the digits: minutes on a 2-core CPU), so it runs with the slow
science checks (`python -m pytest -m "slow and not ray and not e2e"`, which CI runs on every stop), not with the
default browser tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]  # the real demo under a shared CPU: up to ~20 min

LOCALES = Path(__file__).resolve().parents[2] / "explorer" / "ui" / "locales"
STEPS = 6


def _texts(lang: str) -> dict[str, str]:
    return json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))


def _tab(browser, width: int = 1440, height: int = 900):
    context = browser.new_context(viewport={"width": width, "height": height})  # a new context: a new session
    tab = context.new_page()
    tab.set_default_timeout(120_000)
    return context, tab


def test_a_new_session_walks_the_tour_to_the_demos_recommendation_in_both_languages(
    browser, open_app, idle, screenshot
):
    en = _texts("en")
    context, runner = _tab(browser)
    try:  # session A: the real demo, started from Compare's first visit
        open_app(runner, "compare")
        runner.get_by_role("button", name=en["compare.demo.run"]).click()
        lead = en["compare.demo.showing"].split("`")[0].split("{")[0].strip()  # "Showing the demo:" (markdown apart)
        showing = re.compile("^" + re.escape(lead))
        runner.locator("[data-testid=stMain]").get_by_text(showing).first.wait_for(timeout=1_200_000)
        idle(runner, 300_000)
    finally:
        context.close()
    for lang in ("en", "pt-BR"):
        texts = _texts(lang)
        context, tab = _tab(browser)
        try:  # session B: never ran anything, with this session's own defaults
            open_app(tab, f"start?lang={lang}")
            main = tab.locator("[data-testid='stMain']")
            side = tab.locator(".st-key-tour_panel")
            main.get_by_role("button", name=texts["start.begin"]).click()
            for step in range(1, STEPS + 1):
                side.get_by_text(texts[f"tour.step{step}.title"], exact=True).wait_for(timeout=300_000)
                idle(tab, 300_000)
                if step < STEPS:
                    side.get_by_role("button", name=texts["tour.next"]).click()
            main.get_by_role("heading", name=texts["compare.title"], exact=True).wait_for()
            idle(tab, 300_000)
            body = tab.inner_text("body")
            assert "Traceback" not in body and not tab.locator("[data-testid='stException']").count()
            assert "tuned=demo-digits" in tab.url and "freeze=" in tab.url  # the demo's run, at its recommendation
            point = re.search(r"freeze=([\w.%]+)", tab.url).group(1).replace("%2E", ".")  # type: ignore[union-attr]
            assert main.locator("[data-testid=stAlertContentSuccess]").count() >= 1  # the measured recommendation
            code = "\n".join(main.locator("[data-testid=stCode]").all_inner_texts())
            assert "requires_grad_(False)" in code or "nn.Linear" in code  # the PyTorch code for it
            assert point == "none" or point in code  # …that freezes (or fits a classifier) where it says
            screenshot(tab, f"tour_{lang}_step6_after_demo.png")
        finally:
            context.close()
