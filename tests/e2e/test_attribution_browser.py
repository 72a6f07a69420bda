"""The Attribution page in a real browser: the sample cat, Grad-CAM maps of every block on one colour scale."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e  # ~15-30 s: a real server, model load, one attribution pass


def test_attribution_page_shows_every_block_on_a_shared_scale(page, open_app, screenshot, images_loaded):
    open_app(page, "attribution?method=gradcam&sample=chelsea&scale=shared")
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("every block from early to late").wait_for()
    body = page.inner_text("body")
    assert "Traceback" not in body and not page.locator("[data-testid='stException']").count()
    assert "Shared colour scale" in body and "tiger cat" in body
    grid = main.locator("[data-testid='stImage']").filter(has_text="peak")
    assert grid.count() == 18  # the bundled model's blocks with a spatial map, each captioned with its peak
    images_loaded(page, 18)  # the 18 maps (and the input image)
    first, last = grid.first.locator("img"), grid.last.locator("img")
    for img in (first, last):
        assert img.evaluate("im => im.complete && im.naturalWidth > 0")
    assert "conv_stem" in grid.first.inner_text() and "conv_head" in grid.last.inner_text()
    links = main.locator("a[href*='unit?']")
    assert links.count() == 54  # 3 channels per block, each a link to the Unit page
    href = links.first.get_attribute("href")
    assert "layer=conv_stem" in href and "unit=" in href and "preset=fast" in href
    path = screenshot(page, "attribution.png")
    assert path.stat().st_size > 100_000
    assert "scale=shared" in page.url and "method=gradcam" in page.url
