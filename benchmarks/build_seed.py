"""The shipped cache seed: the bundled model's default views, rendered once, so a cold server shows them at once.

    python benchmarks/build_seed.py                      # render into a fresh root, replace explorer/assets/seed/
    python benchmarks/build_seed.py --out /tmp/seed      # somewhere else
    python benchmarks/build_seed.py --measure            # first picture on a cold server, without and with the seed

The default views are what the pages show when opened with no parameters on the bundled EfficientNet-Lite0, with the
settings a CNN starts with (``fast`` preset, seed 0): the Progression page (the first 4 units of each stage's
representative block, one render per row), the Layer page (the first 16 units of the middle stage's block, in store
batches of 8) and the Unit page (unit 0 of that block: the page's `unit_objectives`, one render). The pages' constants
and objectives are read from ``explorer.ui`` (this script imports Streamlit). Each view is rendered in the batches
its page uses: the cache keys do not depend on the batch, but on CPU a deep unit's pixels do, a little (float order;
see tests/test_seed.py). Renders go into an empty cache root with the seed disabled; only those entries are copied,
files unchanged, into the seed folder, with a ``manifest.json`` naming each view's keys. ``explorer.cache`` reads the
seed (``$LAYER_EXPLORER_SEED`` overrides its place).

``--measure`` starts one ``streamlit run app.py`` per page and condition, each with its own empty cache, and opens the
page with no parameters in a new browser context (``bench_first_tile.visit``: Chromium at /usr/bin/chromium); then,
on one more server with the seed, the same three pages in new tabs after a first visit to Attribution (the process
has loaded the model). It prints seconds from navigation to the shell, the first tile, the first picture (a render's
preview counts), the first finished picture (its caption carries the objective's value) and idle (the Unit page
also scans its dataset examples).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from explorer.cache import DEFAULT_SEED, SEED_VAR, Cache  # noqa: E402
from explorer.featurevis import Objective, channel, render_cached, stage_map  # noqa: E402
from explorer.featurevis.store import KIND, STORE_BATCH_CPU  # noqa: E402
from explorer.models import LoadedModel, load_model  # noqa: E402

PRESET, SEED = "fast", 0  # `ui.widgets.gallery.suggested_settings` for a CNN, `RenderSettings()`'s seed


def default_views(model: LoadedModel) -> dict[str, list[list[Objective]]]:
    """Each default view's objectives, in the batches its page renders them (a batch's keys depend on its list).

    The pages' own constants and the Unit page's objectives are read from `explorer.ui` (this imports Streamlit), so
    a change there changes the seed's keys, and tests/test_seed.py says the seed must be built again."""
    from explorer.ui.pages.progression import DEFAULT_PER_STAGE
    from explorer.ui.pages.unit import unit_objectives
    from explorer.ui.widgets.layers import PER_PAGE

    stages = stage_map(model).stages
    rows = [
        [channel(s.representative, u) for u in range(min(DEFAULT_PER_STAGE, s.channels.get(s.representative) or 1))]
        for s in stages
    ]
    middle = stages[len(stages) // 2]  # `ui.widgets.layers.default_layer`
    layer = middle.representative
    units = list(range(min(PER_PAGE, middle.channels.get(layer) or 1)))
    page = [units[i : i + STORE_BATCH_CPU] for i in range(0, len(units), STORE_BATCH_CPU)]
    return {
        "progression": rows,
        "layer": [[channel(layer, u) for u in batch] for batch in page],
        "unit": [unit_objectives(layer, 0)],
    }


def build(out: Path) -> dict[str, Any]:
    """Render the default views into a fresh root and copy their entries into `out` (replaced); the manifest."""
    os.environ[SEED_VAR] = ""  # render, never adopt an older seed
    model = load_model()
    manifest: dict[str, Any] = {
        "spec": model.spec,
        "fingerprint": model.fingerprint,
        "preset": PRESET,
        "seed": SEED,
        "kind": KIND,
        "views": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp) / "cache", max_bytes=10**12)
        keys: list[str] = []
        for name, batches in default_views(model).items():
            view = []
            for objs in batches:
                result = render_cached(model, objs, PRESET, seed=SEED, cache=cache)
                view += [{"objective": o.key, "key": k} for o, k in zip(objs, result.keys, strict=True)]
                print(f"{name}: {len(objs)} images, {int((~result.hits).sum())} rendered", flush=True)
            manifest["views"][name] = view
            keys += [v["key"] for v in view]
        staging = Path(tmp) / "seed"
        for key in dict.fromkeys(keys):
            for src in cache.paths(KIND, key):
                dst = staging / src.relative_to(cache.root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staging, out)
    files = [p for p in out.rglob("*") if p.is_file()]
    print(f"{out}: {len(set(keys))} entries, {len(files)} files, {sum(p.stat().st_size for p in files)} bytes")
    return manifest


# The first finished tile (its caption ends with the objective's value, 'unit 3 · 4.20'; a preview's says 'step 12/48'),
# added to bench_first_tile's marks (window.__lx) as `final`.
FINAL = """new MutationObserver(() => {
  const T = window.__lx; if (!T || T.final) return;
  const done = [...document.querySelectorAll('[data-testid=stMain] [data-testid=stCaptionContainer]')]
    .some(e => / · -?[0-9][0-9.,]*( · ⚠.*)?$/.test(e.innerText.trim()) && !e.innerText.includes('step'));
  if (done) T.final = performance.now();
}).observe(document, {subtree: true, childList: true, characterData: true});"""


def measure() -> list[dict[str, Any]]:
    """First picture of each default page on a fresh server with an empty cache, without and with the seed."""
    from appserver import start_server
    from bench_first_tile import ARGS, CHROMIUM, visit
    from playwright.sync_api import sync_playwright

    rows: list[dict[str, Any]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            for label, seed in (("no seed", ""), ("shipped seed", str(DEFAULT_SEED))):
                for page in ("progression", "layer", "unit"):
                    os.environ[SEED_VAR] = seed  # the server inherits it
                    with tempfile.TemporaryDirectory() as tmp:
                        proc, url = start_server(Path(tmp) / "cache")
                        ctx = browser.new_context(viewport={"width": 1440, "height": 900})
                        ctx.add_init_script(FINAL)
                        try:
                            rows.append({"seed": label, **visit(ctx, url, page, "", None, label)})
                        finally:
                            ctx.close()
                            proc.terminate()
                            proc.wait(timeout=20)
                    print(rows[-1], flush=True)
            os.environ[SEED_VAR] = str(DEFAULT_SEED)  # then one running server: its first visit elsewhere
            with tempfile.TemporaryDirectory() as tmp:
                proc, url = start_server(Path(tmp) / "cache")
                ctx = browser.new_context(viewport={"width": 1440, "height": 900})
                ctx.add_init_script(FINAL)
                try:
                    for page in ("attribution", "progression", "layer", "unit"):
                        label = "shipped, server running" if page != "attribution" else "(warm-up visit)"
                        rows.append({"seed": label, **visit(ctx, url, page, "", None, "warm")})
                        print(rows[-1], flush=True)
                finally:
                    ctx.close()
                    proc.terminate()
                    proc.wait(timeout=20)
        finally:
            browser.close()
    print(f"{os.cpu_count()} CPUs; an empty cache per server; seconds from navigation start")
    print("| seed | page (no parameters) | shell | first tile drawn | first picture | first final picture | idle |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = " | ".join(f"{r.get(k, float('nan')):.2f}" for k in ("shell", "tile", "picture", "final", "idle"))
        print(f"| {r['seed']} | {r['page']} | {cells} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_SEED, help="the seed folder (replaced)")
    ap.add_argument("--measure", action="store_true", help="time the first picture without and with the seed")
    a = ap.parse_args(argv)
    if a.measure:
        measure()
    else:
        build(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
