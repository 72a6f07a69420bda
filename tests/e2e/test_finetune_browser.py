"""The Fine-tune page in a real browser: a tiny run on the shapes demo trains with live progress and is listed."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.e2e  # ~20-40 s: a real server, model load, a tiny fine-tune on CPU


def _set(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Tab")


def test_tiny_finetune_run_in_the_browser(page, open_app, screenshot):
    open_app(page, "finetune?data=demo:shapes&freeze=blocks.3.2")
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("Non-trainable").first.wait_for()  # data summary and freeze panel drawn
    for label, value in [("Epochs", "2"), ("Batch size", "16"), ("Image size (px)", "64"),
                         ("Max images (0 = all)", "30")]:  # fmt: skip
        _set(page, label, value)
    main.get_by_test_id("stBaseButton-primaryFormSubmit").click()
    main.get_by_text("finished", exact=False).first.wait_for(timeout=240_000)
    page.wait_for_selector("[data-test-script-state='notRunning']", state="attached")
    body = page.inner_text("body")
    assert "Traceback" not in body and not page.locator("[data-testid='stException']").count()
    assert "Previous runs" in body and "shapes-blocks.3.2-" in body
    assert page.get_by_role("button", name=re.compile("Download .safetensors")).count() >= 1
    chart = main.locator("[data-testid='stPlotlyChart']").first.inner_text()
    assert "training step" in chart and "accuracy" in chart
    path = screenshot(page, "finetune_page.png")
    assert path.stat().st_size > 50_000
