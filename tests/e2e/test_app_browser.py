"""The app in a real browser: the Model page opens with the bundled model and its ladder."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e  # ~12-25 s: a real server, model load and browser


def test_model_page_shows_the_bundled_ladder(page, open_app, screenshot):
    open_app(page)
    page.get_by_role("heading", name="Layer ladder").wait_for()
    page.get_by_text("Top 5").wait_for()
    body = page.inner_text("body")
    assert "bundled:efficientnet_lite0" in body  # the sidebar indicator and the model summary
    assert "Traceback" not in body and not page.locator("[data-testid='stException']").count()
    chart_text = page.locator("[data-testid='stPlotlyChart']").first.inner_text()
    assert "conv_stem" in chart_text and "blocks.6.0" in chart_text  # x axis of the ladder chart
    assert page.locator("[data-testid='stDataFrame']").count() == 1
    path = screenshot(page, "model_page.png")
    assert path.stat().st_size > 50_000
