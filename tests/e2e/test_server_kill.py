"""`kill -9` of the app's server during a fine-tune started in the browser, then a new server resumes the run.

Issue 13, crash safety: the killed server leaves every visible file complete (the last finished epoch's checkpoint
loads), the run is listed as interrupted with a Resume button on the restarted server, and Resume finishes the
missing epochs only, on the same held-out split. About a minute: two server starts and a small fine-tune on CPU.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import CHROMIUM, save_screenshot, start_app, stop_app, wait_idle

from explorer.models import load_model
from explorer.transfer.training.checkpoints import resume_path
from explorer.transfer.training.runs import list_runs

pytestmark = pytest.mark.e2e

EPOCHS = 6


def _set(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Tab")


def _tab(browser, url: str):
    """A new 1440×900 tab (its own context) at `url`; closed with the browser if a test fails before closing it."""
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    return page


def _checkpoint(runs: Path, deadline: float) -> Path:
    """The run's checkpoint, once the server has written its first epoch's resume state."""
    while True:
        found = [p for p in runs.glob("*/*.safetensors") if resume_path(p).exists()] if runs.is_dir() else []
        if found:
            return found[0]
        assert time.monotonic() < deadline, "no epoch of the fine-tune completed in time"
        time.sleep(0.02)


@pytest.mark.timeout(600)
def test_kill_9_of_the_server_mid_fine_tune_then_resume_in_a_new_server(browser, tmp_path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing")
    cache, log = tmp_path / "cache", tmp_path / "server.log"
    proc, url = start_app(cache, log)
    try:
        page = _tab(browser, f"{url}/finetune?data=demo:shapes&freeze=blocks.3.2")
        main = page.locator("[data-testid='stMain']")
        main.get_by_text("Non-trainable").first.wait_for()
        for label, value in [("Epochs", str(EPOCHS)), ("Batch size", "16"), ("Image size (px)", "64"),
                             ("Max images (0 = all)", "30")]:  # fmt: skip
            _set(page, label, value)
        main.get_by_test_id("stBaseButton-primaryFormSubmit").click()
        ckpt = _checkpoint(cache / "runs", time.monotonic() + 240)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        page.context.close()
    finally:
        stop_app(proc)
    assert proc.returncode == -signal.SIGKILL

    # What the kill left: complete files only (at most a hidden temporary file of a write in progress).
    folder = ckpt.parent
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == sorted([ckpt.name, ckpt.with_suffix(".json").name, resume_path(ckpt).name])
    assert all(p.name.endswith(".tmp") or p.name == ".run.json" for p in folder.iterdir() if p.name.startswith("."))
    done_before = load_model(str(ckpt), device="cpu").metadata["metrics"]["epoch"]
    assert 1 <= done_before < EPOCHS
    split = json.loads(ckpt.with_suffix(".json").read_text())["split"]
    (run,) = list_runs(cache / "runs")
    assert run.status == "interrupted" and run.name == folder.name

    # A new server on the same cache lists the run as interrupted and resumes it.
    proc, url = start_app(cache, log)
    try:
        page = _tab(browser, f"{url}/finetune")
        main = page.locator("[data-testid='stMain']")
        line = main.get_by_text(f"{folder.name} is interrupted after epoch", exact=False)
        line.first.wait_for()
        wait_idle(page)
        notice = main.locator("[data-testid=stAlertContentWarning]").first  # at the top, pointing at the runs
        assert f"{folder.name} was interrupted" in notice.inner_text()
        assert notice.get_by_role("link", name="Previous runs").get_attribute("href") == "#previous-runs"
        assert page.locator("#previous-runs").count() == 1  # the anchor it points at
        assert save_screenshot(page, "finetune_after_server_kill.png").stat().st_size > 30_000
        main.get_by_role("button", name="Resume").first.click()
        done = main.locator("[data-testid=stAlertContentSuccess]", has_text=f"Run {folder.name} finished")
        done.first.wait_for(timeout=300_000)  # not any "finished": the notice at the top says it too
        wait_idle(page)
        assert not page.locator("[data-testid='stException']").count()
        assert "Traceback" not in page.inner_text("body")
        page.context.close()
    finally:
        stop_app(proc)
    meta = load_model(str(ckpt), device="cpu").metadata
    assert [e["epoch"] for e in meta["metrics"]["history"]] == list(range(1, EPOCHS + 1))  # none lost or repeated
    assert meta["split"] == split  # the same held-out images
    assert not resume_path(ckpt).exists()
    (run,) = list_runs(cache / "runs")
    assert run.status == "done"
