"""First visits, as pictures: every page opened by its bare link on a fresh server, at a desktop and a phone width.

    python benchmarks/screenshots.py                        # docs/first-visit/<page>-<width>.png, English
    python benchmarks/screenshots.py --lang pt-BR --pages start,progression --widths 1440

One `streamlit run app.py` with its own empty cache (so every picture is computed, as on a first visit), one
Chromium. Each page is opened in a new tab (a new session) with no parameter but the language, waits until the
script is idle with no progress bar left and every image loaded, and is saved as a full-page PNG. The tour's first
step is taken from the Start page's button, in each language asked for. Requests go to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appserver import start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("LAYER_EXPLORER_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PAGES = ("start", "model", "progression", "layer", "unit", "attribution", "finetune", "compare")
PATHS = {"model": ""}  # the default page lives at the root URL
SETTLED = """() => {
  const idle = document.querySelector("[data-test-script-state='notRunning']");
  const main = document.querySelector('[data-testid=stMain]');
  if (!idle || !main || main.querySelector('[data-testid=stProgress], [data-testid=stSpinner]')) return false;
  return [...main.querySelectorAll('img')].every(im => im.complete && im.naturalWidth > 0);
}"""


def settle(page: Any, timeout_s: float) -> float:
    """Wait until the page is settled for 1 s in a row; seconds it took."""
    t0 = time.monotonic()
    while True:
        page.wait_for_function(SETTLED, polling=200, timeout=timeout_s * 1000)
        page.wait_for_timeout(1000)
        if page.evaluate(SETTLED):
            return time.monotonic() - t0


def shoot(ctx: Any, url: str, path: str, out: Path, timeout_s: float, click: str | None = None) -> float:
    page = ctx.new_page()
    try:
        page.goto(f"{url}/{path}")
        seconds = settle(page, timeout_s)
        if click:
            page.get_by_role("button", name=click).click()
            page.wait_for_timeout(1500)
            seconds += settle(page, timeout_s)
        page.screenshot(path=str(out), full_page=True)
        return seconds
    finally:
        page.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "first-visit")
    ap.add_argument("--pages", default=",".join(PAGES))
    ap.add_argument("--widths", default="1440,390")
    ap.add_argument("--lang", default="en", help="en or pt-BR")
    ap.add_argument("--tour", default="en,pt-BR", help="languages of the tour's first step ('' for none)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a page may take to settle")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.lang == "en" else f"-{args.lang}"
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        proc, url = start_server(Path(tmp) / "cache")
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            for width in (int(w) for w in args.widths.split(",")):
                ctx = browser.new_context(viewport={"width": width, "height": 900 if width > 600 else 844})
                for name in args.pages.split(","):
                    query = "" if args.lang == "en" else f"?lang={args.lang}"
                    target = args.out / f"{name}-{width}{suffix}.png"
                    path = PATHS.get(name, name) + query
                    print(f"{target.name}: {shoot(ctx, url, path, target, args.timeout):.1f} s", flush=True)
                for lang in filter(None, args.tour.split(",")):
                    button = "Start the tour" if lang == "en" else "Começar o tour"
                    target = args.out / f"tour-step1-{width}-{lang}.png"
                    seconds = shoot(ctx, url, f"start?lang={lang}", target, args.timeout, click=button)
                    print(f"{target.name}: {seconds:.1f} s", flush=True)
                ctx.close()
        finally:
            browser.close()
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
