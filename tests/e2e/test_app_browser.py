"""The app in a real browser: the Model page opens with the bundled model and its ladder."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e  # ~12-25 s: a real server, model load and browser


def test_model_page_shows_the_bundled_ladder(page, open_app, screenshot):
    open_app(page)
    page.get_by_role("heading", name="Layer ladder").wait_for()
    page.get_by_text("Top 5").wait_for()
    body = page.inner_text("body")
    assert "bundled:efficientnet_lite0" in body  # the sidebar indicator and the model summary
    assert "Traceback" not in body and not page.locator("[data-testid='stException']").count()
    # Plotly charts mount after the script's deltas (a lazily loaded component): wait until both are in the page,
    # then the first in page order is the ladder (its x axis names the layers), the second the top-5 bars.
    charts = page.locator("[data-testid='stPlotlyChart']")
    expect(charts).to_have_count(2, timeout=60_000)
    expect(charts.first).to_contain_text("conv_stem", timeout=60_000)
    assert "blocks.6.0" in charts.first.inner_text()
    assert "probability" in charts.nth(1).inner_text()
    assert page.locator("[data-testid='stDataFrame']").count() == 1
    path = screenshot(page, "model_page.png")
    assert path.stat().st_size > 50_000
