"""First impressions: how long a new visitor waits before a page shows its first tile, in a real browser.

    python benchmarks/bench_first_tile.py                          # the table in docs/benchmarks.md
    python benchmarks/bench_first_tile.py --screenshots /tmp/shots # and a screenshot of each settled page

One `streamlit run app.py` (its own empty cache) and Chromium. Each visit is a new tab (a new Streamlit session; the
tabs share one browser profile, so after the first visit the app's JavaScript comes from the browser's cache, as for a
student opening a second link) opening a page by its link with the page's defaults (the fast preset, no layer named).
Seconds from navigation start, on the page's own clock:

- *shell*: the page's title is in the DOM (the frontend has loaded and the page's script has started);
- *first tile sent*: the first websocket message carrying a tile reaches the page (a tile's grey square, drawn
  before anything renders or computes, or on Attribution a map);
- *first tile drawn*: that tile (or any tile picture) is in the DOM;
- *first picture*: the first real picture in a tile has loaded (a render's first preview counts);
- *idle*: the script has finished (`notRunning`) with no progress bar left.

Server and browser share this machine's CPUs here, so while a render runs the browser draws what it was sent late
(compare *sent* with *drawn*); a student's browser runs on their own machine.
Rows: the very first visit after the server starts (it loads the model and traces its layers), then each page with
the process warm and the render cache cold (a seed nobody rendered, so every picture is rendered), then the same links
again (every picture from the cache). The machine may be shared: read the numbers as indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appserver import start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("LAYER_EXPLORER_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IDLE = "[data-test-script-state='notRunning']"
MAIN = "[data-testid=stMain]"
# Timestamps on the page's own clock (performance.now(), from navigation start), kept in window.__lx:
#  shell: the page's h1; tile_sent: the first websocket message carrying a tile (its HTML square, or on Attribution
#  a map's caption); tile: a tile in the DOM; picture: the first tile picture loaded.
WATCH = """(() => {
  const T = window.__lx = {}; const marker = MARKER;
  const seen = s => { if (!T.tile_sent && marker.some(m => s.includes(m))) T.tile_sent = performance.now(); };
  const Orig = window.WebSocket;
  const Wrapped = function (...a) {
    const ws = new Orig(...a);
    ws.addEventListener('message', ev => {
      const d = ev.data;
      if (typeof d === 'string') seen(d);
      else if (d instanceof ArrayBuffer) seen(new TextDecoder('latin1').decode(d));
      else if (d instanceof Blob) d.arrayBuffer().then(b => seen(new TextDecoder('latin1').decode(b)));
    });
    return ws;
  };
  Wrapped.prototype = Orig.prototype; Object.assign(Wrapped, Orig); window.WebSocket = Wrapped;
  const tiles = () => [...document.querySelectorAll(TILE_SELECTOR)]
    .filter(e => !TEXT || e.classList.contains('lx-tile-empty') || e.innerText.includes(TEXT));
  new MutationObserver(() => {
    if (!T.shell && document.querySelector('[data-testid=stMain] h1')) T.shell = performance.now();
    if (!T.tile && tiles().length) T.tile = performance.now();
  }).observe(document, {subtree: true, childList: true});
  document.addEventListener('load', ev => {
    const im = ev.target;
    if (T.picture || im.tagName !== 'IMG' || im.naturalWidth <= 16) return;
    const box = im.closest('[data-testid=stImage]');
    const inTile = box && box.closest('[data-testid=stMain]') && (!TEXT || box.innerText.includes(TEXT));
    if (inTile) T.picture = performance.now();
  }, true);
})()"""
TILES = "[data-testid=stMain] .lx-tile-empty, [data-testid=stMain] [data-testid=stImage]"
KINDS = {  # markers of a tile in a websocket message, tile selector, text a tile picture must contain ('' = any)
    "default": (["lx-tile-empty"], TILES, ""),
    "attribution": (["lx-tile-empty", "· peak"], TILES, "peak"),  # a map's place, or a map (its caption: peak)
}
PAGES = ("layer", "unit", "progression", "attribution")


def visit(ctx: Any, url: str, page_name: str, query: str, shots: Path | None, label: str) -> dict[str, Any]:
    """Open one link in a new tab (a new session); seconds from navigation to each mark, and to idle."""
    page = ctx.new_page()
    page.set_default_timeout(600_000)
    marker, selector, text = KINDS.get(page_name, KINDS["default"])
    page.add_init_script(
        WATCH.replace("MARKER", json.dumps(marker)).replace("TILE_SELECTOR", json.dumps(selector))
        .replace("TEXT", json.dumps(text))
    )  # fmt: skip
    page.goto(f"{url}/{page_name}?{query}")
    page.wait_for_function("() => window.__lx && window.__lx.picture && window.__lx.tile", polling=100)
    while True:
        page.wait_for_selector(IDLE, state="attached")
        page.wait_for_timeout(300)
        if page.locator(IDLE).count() and not page.locator(f"{MAIN} [data-testid=stProgress]").count():
            break
    marks = page.evaluate("() => ({...window.__lx, idle: performance.now() - 300})")
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"{label}-{page_name}.png"), full_page=True)
    page.close()
    secs = {k: round(v / 1000, 2) for k, v in marks.items()}
    return {"page": page_name, "query": query, **secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    ap.add_argument("--screenshots", type=Path, default=None)
    ap.add_argument(
        "--pin", action="store_true", help="server on CPU 0, browser on the others (as if it ran on its own machine)"
    )
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        cpus = sorted(os.sched_getaffinity(0))
        proc, url = start_server(Path(tmp) / "cache", {cpus[0]} if args.pin else None)
        if args.pin and len(cpus) > 1:
            os.sched_setaffinity(0, set(cpus[1:]))  # Chromium, started below, inherits it
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        ctx = browser.new_context(viewport={"width": 1440, "height": 900})
        try:
            rows.append({"visit": "first after start", **visit(ctx, url, "layer", "", args.screenshots, "first")})
            for n, name in enumerate(PAGES):
                query = f"seed={101 + n}" if name != "attribution" else ""
                rows.append({"visit": "new tab, cold cache", **visit(ctx, url, name, query, None, "cold")})
            for n, name in enumerate(PAGES):
                query = f"seed={101 + n}" if name != "attribution" else ""
                rows.append({"visit": "new tab, warm cache", **visit(ctx, url, name, query, args.screenshots, "warm")})
        finally:
            browser.close()
            proc.terminate()
            proc.wait(timeout=20)
    where = "server on CPU 0, browser on the rest" if args.pin else "server and browser share them"
    print(f"{os.cpu_count()} CPUs ({where}); seconds from navigation start (the page's clock)")
    print("| visit | page | shell | first tile sent | first tile drawn | first picture | idle |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        page = r["page"] + (f" ?{r['query']}" if r["query"] else "")
        cells = " | ".join(f"{r.get(k, float('nan')):.2f}" for k in ("shell", "tile_sent", "tile", "picture", "idle"))
        print(f"| {r['visit']} | {page} | {cells} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
