"""Load test: one `streamlit run app.py` server, N concurrent Chromium users clicking through the app's journey.

    python benchmarks/bench_load.py                       # 8 users × 150 s, prints a table per page
    python benchmarks/bench_load.py --users 8 --seconds 150 --cold-check --out results.json
    python benchmarks/bench_load.py --users 8 --soak 600 --out soak.json   # 10-minute soak (RSS must plateau)
    python benchmarks/bench_load.py --users 2 --seconds 30 --data-per-class 5   # a small run while developing
    python benchmarks/bench_load.py --protocol --sessions 30 --seconds 300 --out load.json   # no browser

With ``--protocol`` the users are protocol-level sessions, not browsers (load_protocol.py: the server measured alone,
as on a class server whose users' browsers run on their own laptops); this browser test stays the UI regression check.

What happens, in order (every request goes to 127.0.0.1 only; everything stops by itself):

1. setup: a temporary ``LAYER_EXPLORER_CACHE``; a fine-tuned run made with the CLI (``python -m explorer finetune``,
   written to ``<cache>/runs/loadtest/loadtest.safetensors``, the layout `explorer.transfer.training.runs.list_runs`
   reads), on
   ``demo:digits`` or, with ``--data-per-class K``, on a K-images-per-class copy of it (a cheaper comparison); then
   one ``python -m streamlit run app.py`` on a free port of 127.0.0.1 (cwd = this checkout, so its code is used).
2. warm-up (one user, cold caches): the journey once, rendering every view the users will ask for, and learning what
   each settled view holds (how many images, charts, progress bars), which defines "content" below.
3. single user, warm: the journey once more, measured.
4. ``--cold-check``: one user opens Progression with a seed never rendered (single-user cold time), then N users at
   once, each with its own new seed (no cache can help); the ratio max(N-user time) / single-user time is reported.
5. load: N browser contexts (one Chromium), each opens the app by a link (``progression?preset=fast&per_stage=2``),
   then loops Model → Progression → Unit (a unit link on Progression) → Attribution → Compare → a click on a layer
   of the Compare chart, through the sidebar links, until ``--seconds`` (or ``--soak``) has passed.

Measured per page view (browser clock, ``performance.now()`` read just before the click):

* time to content: the page's title is the ``h1`` of ``[data-testid=stMain]``; it holds at least as many images and
  plotly charts as the settled view of the warm-up; every ``[data-testid=stImage] img`` there is loaded
  (``complete && naturalWidth > 8``: the 8×8 grey placeholder of a tile that is still rendering does not count);
  every ``[data-testid=stPlotlyChart]`` has its ``.main-svg``; and nothing is pending: no stale element
  (``[data-stale=true]``), spinner, skeleton, preview caption (``step k/n``, ``waiting…``) or extra progress bar.
  For a click on the Compare chart, also the heading "Freeze up to <layer>".
* time to idle: ``[data-test-script-state]`` is sampled every 25 ms in the page; the view is idle at the last switch
  to ``notRunning`` after the click once it has stayed so for 500 ms (a rerun that starts within that moment counts).
* errors: ``[data-testid=stException]``, ``[data-testid=stAlertContentError]`` (st.error), "Traceback" in the page
  text, browser console errors and page errors (requests the test blocks, to hosts other than 127.0.0.1, are
  counted apart), plus every HTTP response >= 400 from the server, for diagnosis.
* server: VmRSS of the streamlit process from ``/proc/<pid>/status`` and its CPU time, every second.

Results: a table per page and phase, errors, RSS start/peak/end and growth over the last half of the load phase,
throughput (page views per second), the targets, and everything in ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from appserver import ROOT, RUN_NAME, RssSampler, load_server, percentile, rss_summary  # noqa: E402

CHROMIUM = Path(os.environ.get("LAYER_EXPLORER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ENTRY = "progression?preset=fast&per_stage=2"  # the link each user opens the app with
COLD_SEED = 1000  # cold-check seeds: COLD_SEED (single user), COLD_SEED + 1 … + N (the N users)
JOURNEY_PAGES = ("Model", "Progression", "Unit", "Attribution", "Compare", "Compare: layer click")
ENTRY_PAGE = "Progression (open link)"
WARM_P95_TARGET_S = 2.0
COLD_RATIO_TARGET = 4.0
RSS_GROWTH_TARGET_PCT = 10.0
IDLE_STABLE_MS = 500
# Opening a link to a page (e.g. /progression?…), Streamlit's frontend first asks /progression/_stcore/health and
# …/host-config (404) before the root's: https://github.com/streamlit/streamlit/issues/7074 (open). Counted apart.
KNOWN_404 = re.compile(r"^/[A-Za-z0-9_-]+/_stcore/(health|host-config)$")
MAX_SCREENSHOTS = 12
CONTENT_POLL_MS = 100  # how often a user's page checks for its content: at most 0.1 s late, and light on the CPU

# In every page: the script state over time, sampled every 25 ms (page switches keep the document, so it persists).
STATE_LOG_JS = """
(() => {
  if (window.__leStates) return;
  const log = []; window.__leStates = log; let last;
  setInterval(() => {
    const el = document.querySelector('[data-test-script-state]');
    const s = el ? el.getAttribute('data-test-script-state') : null;
    if (s !== last) { last = s; log.push([performance.now(), s]); if (log.length > 4000) log.splice(0, 2000); }
  }, 25);
})();
"""

# The view's content as counts (want.report), or, given what the view must hold, performance.now() once it does.
CONTENT_JS = """
(want) => {
  const text = el => el.textContent.replace(/\\s+/g, ' ').trim();  // not innerText: that forces a layout per poll
  const main = document.querySelector('[data-testid=stMain]');
  if (!main) return null;
  const h1 = main.querySelector('h1');
  const imgs = [...main.querySelectorAll('[data-testid=stImage] img')];
  const charts = [...main.querySelectorAll('[data-testid=stPlotlyChart]')];
  const c = {
    title: h1 ? text(h1) : null,
    images: imgs.length,
    charts: charts.length,
    loaded: imgs.every(im => im.complete && im.naturalWidth > 8),
    drawn: charts.every(ch => !!ch.querySelector('.main-svg')),
    bars: main.querySelectorAll('[data-testid=stProgress]').length,
    busy: !!main.querySelector('[data-stale="true"], [data-testid=stSpinner], [data-testid=stSkeleton]')
      || [...main.querySelectorAll('[data-testid=stCaptionContainer]')]
           .some(el => /step \\d+\\/\\d+|waiting…/.test(el.textContent)),
    heading: !want.heading
      || [...main.querySelectorAll('h1, h2, h3, h4')].some(h => text(h) === want.heading),
  };
  if (want.report) return c;
  const ok = c.title === want.title && c.heading && c.loaded && c.drawn && !c.busy
    && c.images >= want.images && c.charts >= want.charts && c.bars <= want.bars;
  return ok ? performance.now() : null;
}
"""

ERRORS_JS = """
() => {
  const main = document.querySelector('[data-testid=stMain]') || document.body;
  const text = el => el.innerText.trim().slice(0, 300);
  return {
    exceptions: [...document.querySelectorAll('[data-testid=stException]')].map(text),
    error_boxes: [...document.querySelectorAll('[data-testid=stAlertContentError]')].map(text),
    traceback: document.body.innerText.includes('Traceback'),
    url: location.href,
  };
}
"""


# --------------------------------------------------------------------------- configuration and records


@dataclass
class Config:
    users: int = 8
    seconds: float = 150.0
    soak: float = 0.0  # > 0: the load phase lasts this long instead of `seconds` (RSS must plateau)
    cold_check: bool = False
    port: int = 0  # 0: a free port
    out: str | None = None
    data_per_class: int = 0  # 0: fine-tune and compare on demo:digits; K: on K images per class of it
    unit_links: int = 2  # the users open the first `unit_links` unit links of Progression, in turn
    step_timeout_s: float = 180.0  # a warm view that shows no content by then is recorded as a timeout
    cold_timeout_s: float = 600.0  # the warm-up and the cold check
    max_views_per_user: int = 5000
    max_requests_per_user: int = 200_000
    stagger_s: float = 0.5  # user k starts k × stagger_s after the first
    artifacts: str = str(ROOT / "test-artifacts" / "load")
    keep_cache: bool = False
    cache: str | None = None  # reuse this cache folder (kept; the run is made only if missing): warm, for development
    quiet: bool = False
    nice_browsers: int = 0  # > 0: Chromium runs at this niceness (the users' browsers yield the CPU to the server)

    @property
    def load_seconds(self) -> float:
        return self.soak if self.soak > 0 else self.seconds


@dataclass
class View:
    """One page view: what was asked, and when its content, its idle state and its errors came (seconds)."""

    phase: str
    user: int
    page: str
    key: str
    start_s: float  # since the phase started
    content_s: float | None = None
    idle_s: float | None = None
    url: str = ""
    errors: list[str] = field(default_factory=list)
    note: str = ""


def _log(cfg: Config, *parts: Any) -> None:
    if not cfg.quiet:
        print(*parts, flush=True)


# --------------------------------------------------------------------------- server and its memory


class BrowserCpu:
    """CPU seconds of the Chromium processes (the simulated users' browsers) over a phase, sampled every second so
    that renderers which exit before the end (a user closing its context) still count (all but their last second)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.start = browser_cpu_s()
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.seen.update(browser_cpu_s())

    def stop(self) -> float:
        """The CPU seconds used since the start."""
        self._stop.set()
        self._thread.join(5)
        self.seen.update(browser_cpu_s())
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self.seen.items())


def browser_cpu_s() -> dict[int, float]:
    """CPU seconds used so far by each Chromium process on this machine (the simulated users' browsers)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if "chrom" not in stat[stat.index("(") + 1 : stat.rindex(")")]:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(pid)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


# --------------------------------------------------------------------------- one browser user


class Bench:
    """Shared state: the server, the learned view expectations, every view, every error."""

    def __init__(self, cfg: Config, url: str, sampler: RssSampler) -> None:
        self.cfg, self.url, self.sampler = cfg, url, sampler
        self.local = re.compile(rf"^{re.escape(url)}(/|$)")
        self.expect: dict[str, dict[str, Any]] = {}  # view key → counts of its settled view (warm-up)
        self.views: list[View] = []
        self.console_errors: list[dict[str, Any]] = []
        self.page_errors: list[dict[str, Any]] = []
        self.http_errors: list[dict[str, Any]] = []
        self.blocked: dict[str, int] = defaultdict(int)  # non-local URL → times blocked
        self.failed_requests: dict[str, int] = defaultdict(int)  # local requests the browser gave up (e.g. aborted)
        self.compare: dict[str, Any] = {}  # what the Compare step found: layers, recommended point
        self.screenshots: list[str] = []
        self.phase = "setup"
        self.phase_t0 = time.monotonic()

    def start_phase(self, name: str) -> None:
        self.phase, self.phase_t0 = name, time.monotonic()
        self.sampler.mark(f"{name}:start")
        _log(self.cfg, f"[{time.strftime('%H:%M:%S')}] phase {name}")

    def end_phase(self) -> None:
        self.sampler.mark(f"{self.phase}:end")


def sidebar_link(page: Any, title: str) -> Any:
    """The sidebar link of the page titled `title` (its text content is the icon's name, then the title)."""
    return page.locator("[data-testid='stSidebarNav'] a", has_text=re.compile(rf"{re.escape(title)}\s*$")).first


class User:
    def __init__(self, bench: Bench, index: int, context: Any, page: Any) -> None:
        self.b, self.i, self.ctx, self.page = bench, index, context, page
        self.step = ""  # the view being measured, for errors reported by events
        self.iteration = 0
        self.compare_layer: str | None = None  # the layer last clicked on the Compare chart
        self.views = 0
        self.requests = 0
        page.on("console", self._on_console)
        page.on("pageerror", self._on_pageerror)
        page.on("response", self._on_response)
        page.on("request", self._on_request)
        page.on("requestfailed", self._on_requestfailed)

    @classmethod
    async def open(cls, bench: Bench, browser: Any, index: int) -> User:
        context = await browser.new_context(viewport={"width": 1440, "height": 900})
        await context.add_init_script(STATE_LOG_JS)

        async def block(route: Any) -> None:
            bench.blocked[route.request.url.split("?")[0]] += 1
            await route.abort("blockedbyclient")

        await context.route(re.compile(rf"^(?!{re.escape(bench.url)}(/|$))"), block)  # only 127.0.0.1:<port>
        page = await context.new_page()
        page.set_default_timeout(bench.cfg.step_timeout_s * 1000)
        return cls(bench, index, context, page)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ctx.close()

    # ---- events
    def _where(self) -> dict[str, Any]:
        return {"phase": self.b.phase, "user": self.i, "view": self.step, "t": round(time.monotonic() -
                self.b.phase_t0, 2)}  # fmt: skip

    def _on_console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        entry = {**self._where(), "text": msg.text[:500], "url": url}
        if url and not self.b.local.match(url) and not url.startswith(("data:", "blob:")):
            entry["kind"] = "external"  # a request to another host, blocked here (not an error of the app's server)
        elif KNOWN_404.match(url[len(self.b.url) :]) and "404" in msg.text:
            entry["kind"] = "streamlit#7074"  # a deep link's first load probes <page>/_stcore/… before /_stcore/…
        self.b.console_errors.append(entry)

    def _on_pageerror(self, exc: Any) -> None:
        self.b.page_errors.append({**self._where(), "text": str(exc)[:500]})

    def _on_response(self, response: Any) -> None:
        if response.status >= 400:
            self.b.http_errors.append({**self._where(), "status": response.status, "url": response.url})

    def _on_request(self, request: Any) -> None:
        self.requests += 1

    def _on_requestfailed(self, request: Any) -> None:
        if self.b.local.match(request.url):
            self.b.failed_requests[f"{request.failure} {re.sub(r'/media/[0-9a-f]+', '/media/*', request.url)}"] += 1

    # ---- measuring one view
    async def now(self) -> float:
        return float(await self.page.evaluate("performance.now()"))

    def _want(self, title: str, key: str, heading: str | None) -> dict[str, Any]:
        if key in self.b.expect:
            e = self.b.expect[key]
        else:  # a key the warm-up did not see (e.g. another layer): the smallest view of the same page
            same = [v for k, v in self.b.expect.items() if v["title"] == title]
            e = {"images": min((v["images"] for v in same), default=0),
                 "charts": min((v["charts"] for v in same), default=0),
                 "bars": max((v["bars"] for v in same), default=0)}  # fmt: skip
        return {"title": title, "images": e["images"], "charts": e["charts"], "bars": e["bars"], "heading": heading}

    async def measure(
        self, page: str, key: str, title: str, action: Callable[[], Awaitable[Any]], *, heading: str | None = None,
        learn: bool = False, timeout_s: float | None = None, new_document: bool = False,
    ) -> View:  # fmt: skip
        """Run `action` (a click or a page load) and time the view it leads to.

        learn=True (warm-up): wait until the script is idle and the view settled, then remember its counts as what
        this view's content is (`Bench.expect`); its content time is then when it settled. new_document: `action`
        loads a new document, whose clock starts at its navigation (so t0 = 0).
        """
        cfg = self.b.cfg
        timeout_s = timeout_s or cfg.step_timeout_s
        self.step = page
        view = View(self.b.phase, self.i, page, key, round(time.monotonic() - self.b.phase_t0, 2))
        deadline = time.monotonic() + timeout_s
        try:
            t0 = 0.0 if new_document else await self.now()
            await action()
            if learn:
                idle_at = await self._idle(t0, deadline)
                settled = await self._settled(title, heading, deadline)
                self.b.expect[key] = {k: settled[k] for k in ("title", "images", "charts", "bars")}
                view.idle_s = round((idle_at - t0) / 1000, 3)
                view.content_s = round((max(await self.now(), idle_at) - t0) / 1000, 3)
                view.note = f"settled: {settled['images']} images, {settled['charts']} charts"
            else:
                want = self._want(title, key, heading)
                handle = await self.page.wait_for_function(
                    CONTENT_JS, arg=want, polling=CONTENT_POLL_MS, timeout=max(deadline - time.monotonic(), 1) * 1000
                )
                view.content_s = round((float(await handle.json_value()) - t0) / 1000, 3)
                idle_at = await self._idle(t0, deadline)
                view.idle_s = round((idle_at - t0) / 1000, 3)
        except Exception as exc:  # a timeout, or the page went away: recorded, the user goes on
            view.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            if "Timeout" in type(exc).__name__:
                with contextlib.suppress(Exception):
                    counts = await self.page.evaluate(CONTENT_JS, {"report": True})
                    view.note += f" · seen: {counts}"
            await self._screenshot(f"{self.b.phase}-u{self.i}-{key}")
        view.url = self.page.url
        view.errors = await self._errors()
        if view.errors:
            await self._screenshot(f"{self.b.phase}-u{self.i}-{key}-error")
        self.b.views.append(view)
        self.views += 1
        self.step = ""
        tag = f"{view.content_s:.2f}" if view.content_s is not None else "—"
        idle = f"{view.idle_s:.2f}" if view.idle_s is not None else "—"
        _log(cfg, f"  u{self.i} {page:<24} content {tag:>6} s  idle {idle:>6} s  {view.note[:90]}"
             f"{'  ERRORS ' + '; '.join(view.errors)[:200] if view.errors else ''}")  # fmt: skip
        return view

    async def _idle(self, t0: float, deadline: float, start_grace_ms: float = 3000) -> float:
        """The browser time of the last switch to notRunning after t0, once it has lasted IDLE_STABLE_MS.

        A run must have started after t0 (the click's rerun), unless none shows within `start_grace_ms`.
        """
        while True:
            now, log = await self.page.evaluate("() => [performance.now(), (window.__leStates || []).slice(-400)]")
            started = any(t >= t0 and s == "running" for t, s in log) or now - t0 >= start_grace_ms
            if started and log and log[-1][1] == "notRunning" and now - log[-1][0] >= IDLE_STABLE_MS:
                return max(log[-1][0], t0)
            if time.monotonic() > deadline:
                raise TimeoutError(f"script still {log[-1][1] if log else 'unknown'} at the step's timeout")
            await asyncio.sleep(0.1)

    async def _settled(self, title: str, heading: str | None, deadline: float) -> dict[str, Any]:
        """Counts of the view once it has its title, every image loaded, every chart drawn and nothing pending."""
        while True:
            c = await self.page.evaluate(CONTENT_JS, {"report": True, "heading": heading})
            if c and c["title"] == title and c["heading"] and c["loaded"] and c["drawn"] and not c["busy"]:
                return c
            if time.monotonic() > deadline:
                raise TimeoutError(f"view never settled: {c}")
            await asyncio.sleep(0.2)

    async def _errors(self) -> list[str]:
        try:
            e = await self.page.evaluate(ERRORS_JS)
        except Exception as exc:
            return [f"could not read the page: {str(exc)[:100]}"]
        out = [f"stException: {t}" for t in e["exceptions"]] + [f"st.error: {t}" for t in e["error_boxes"]]
        if e["traceback"] and not e["exceptions"]:
            out.append("'Traceback' in the page text")
        return out

    async def _screenshot(self, name: str) -> None:
        if len(self.b.screenshots) >= MAX_SCREENSHOTS:
            return
        folder = Path(self.b.cfg.artifacts)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        self.b.screenshots.append(str(path))
        with contextlib.suppress(Exception):
            await self.page.screenshot(path=str(path), full_page=True, timeout=20_000)

    # ---- the journey's steps
    async def open_link(self, path: str, page: str = ENTRY_PAGE, title: str = "Progression", key: str = "Progression",
                        **kw: Any) -> View:  # fmt: skip
        """A full page load of a link to the app (a new session), e.g. a shared link."""
        return await self.measure(page, key, title, lambda: self.page.goto(f"{self.b.url}/{path}"),
                                  new_document=True, **kw)  # fmt: skip

    async def nav(self, title: str, key: str | None = None, **kw: Any) -> View:
        """Click the sidebar link of the page titled `title` (its text also holds its icon's name)."""
        return await self.measure(title, key or title, title, sidebar_link(self.page, title).click, **kw)

    async def unit(self, k: int, **kw: Any) -> View:
        """Follow the k-th unit link of the Progression page (it carries the render settings)."""
        link = self.page.locator("[data-testid=stMain] a[href*='unit?']").nth(k)
        return await self.measure("Unit", f"Unit#{k}", "Unit", link.click, **kw)

    def steps(self, learn: bool = False) -> list[Callable[[], Awaitable[Any]]]:
        """One round: Model → Progression → Unit → Attribution → Compare (+ a click on a layer of its chart).

        The unit link taken is the round's number modulo `unit_links`; the warm-up (learn) takes every one of them,
        going back to Progression in between.
        """
        kw: dict[str, Any] = {"learn": learn}
        if learn:
            kw["timeout_s"] = self.b.cfg.cold_timeout_s
        n = self.b.cfg.unit_links
        out: list[Callable[[], Awaitable[Any]]] = [
            lambda: self.nav("Model", **kw),
            lambda: self.nav("Progression", **kw),
        ]
        for k in range(n) if learn else [self.iteration % n]:
            if k and learn:
                out.append(lambda: self.nav("Progression", **kw))
            out.append(lambda k=k: self.unit(k, **kw))
        out += [lambda: self.nav("Attribution", **kw), lambda: compare_step(self, learn=learn)]
        return out

    async def journey(self, learn: bool = False) -> None:
        for step in self.steps(learn):
            await step()
        self.iteration += 1


# --------------------------------------------------------------------------- the Compare step (one function)


CHART_POINTS = ".st-key-cmp_chart .barlayer .point"  # the chart's first trace: one column per layer, in order
CHART_NAMES = ".st-key-cmp_chart .xtick text"  # the layer names under the columns
COMPARE_BUTTON = ".st-key-cmp_run button"  # shown while the comparison for these settings is not computed yet


async def compare_step(user: User, learn: bool = False) -> None:
    """Open Compare from the sidebar and click a layer on its chart.

    Relies on the Compare page as of this writing: opened without settings in the URL, it picks the newest run
    (the only one here, `RUN_NAME`) on its own training data with the default settings and writes them to the URL
    (`compare?tuned=loadtest&…`); until that comparison is computed it shows a "Compare" button
    (`.st-key-cmp_run`); once computed, the chart (`.st-key-cmp_chart`, columns `.barlayer .point`, names
    `.xtick text`) and, for the freeze point (`?freeze=`, by default the recommended layer), the heading
    "Freeze up to <layer>" and that layer's view. The users alternate between two layers: the recommended one and
    another block, both rendered by the warm-up (`learn=True`, which also clicks the Compare button).
    """
    b, page = user.b, user.page
    kw: dict[str, Any] = {"learn": learn}
    if learn:
        kw["timeout_s"] = b.cfg.cold_timeout_s
        link = sidebar_link(page, "Compare")
        opened = await user.measure("Compare (not computed)", "Compare-first", "Compare", link.click, **kw)
        if f"tuned={RUN_NAME}" not in opened.url:
            raise RuntimeError(f"Compare did not pick the run {RUN_NAME}: {opened.url}")
        if await page.locator(COMPARE_BUTTON).count():
            await user.measure("Compare (computing)", "Compare", "Compare", page.locator(COMPARE_BUTTON).click, **kw)
        else:  # computed already: the first view is the computed one
            b.expect["Compare"] = b.expect["Compare-first"]
        names = await page.locator(CHART_NAMES).all_text_contents()
        point = re.search(r"[?&]freeze=([^&]+)", page.url)
        recommended = point.group(1) if point else "none"
        blocks = [n for n in names if n.startswith("blocks.")]
        first = recommended if recommended in blocks else blocks[len(blocks) // 2]
        i = blocks.index(first)
        other = blocks[i - 2] if i >= 2 else blocks[i + 2]
        b.compare = {"layers": names, "recommended": recommended, "click": [first, other], "url": page.url}
    else:  # the view this session left: its last layer (None: the page's own freeze point, the recommended one)
        layer = user.compare_layer
        key, heading = (f"Compare@{layer}", f"Freeze up to {layer}") if layer else ("Compare", None)
        await user.nav("Compare", key=key, heading=heading)
        if f"tuned={RUN_NAME}" not in page.url:
            user.b.views[-1].errors.append(f"Compare did not open the run {RUN_NAME}: {page.url}")
    names = b.compare["layers"]
    for _ in range(2 if learn else 1):  # the warm-up renders both layers
        current = re.search(r"[?&]freeze=([^&]+)", page.url)
        layer = next(x for x in b.compare["click"] if not current or x != current.group(1))
        column = page.locator(CHART_POINTS).nth(names.index(layer))

        async def click(column: Any = column) -> None:
            await column.scroll_into_view_if_needed()
            box = await column.bounding_box()
            await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

        view = await user.measure("Compare: layer click", f"Compare@{layer}", "Compare", click,
                                  heading=f"Freeze up to {layer}", **kw)  # fmt: skip
        user.compare_layer = layer if view.content_s is not None else None


# --------------------------------------------------------------------------- phases


async def warm_up(bench: Bench, browser: Any) -> None:
    """One user, cold caches: the journey once, rendering everything the users will see, learning each view."""
    bench.start_phase("warmup")
    user = await User.open(bench, browser, 0)
    try:
        await user.open_link(ENTRY, learn=True, timeout_s=bench.cfg.cold_timeout_s)
        await user.journey(learn=True)
        bench.end_phase()
        bench.start_phase("single_warm")
        await user.journey()
    finally:
        bench.end_phase()
        await user.close()


async def cold_check(bench: Bench, browser: Any) -> dict[str, Any]:
    """Progression with a seed nobody rendered: one user alone, then N users at once with N other new seeds."""
    cfg = bench.cfg
    link = ENTRY + "&seed={}"
    bench.start_phase("cold_single")
    user = await User.open(bench, browser, 0)
    try:
        single = await user.open_link(link.format(COLD_SEED), page="Progression (cold)", timeout_s=cfg.cold_timeout_s)
    finally:
        await user.close()
    bench.end_phase()
    bench.start_phase("cold_users")
    users = [await User.open(bench, browser, i) for i in range(cfg.users)]
    try:
        views = await asyncio.gather(*(
            u.open_link(link.format(COLD_SEED + 1 + u.i), page="Progression (cold)", timeout_s=cfg.cold_timeout_s)
            for u in users
        ))  # fmt: skip
    finally:
        for u in users:
            await u.close()
    bench.end_phase()
    times = [v.content_s for v in views if v.content_s is not None]
    worst = max(times) if len(times) == len(views) else None
    ratio = worst / single.content_s if worst is not None and single.content_s else None
    return {
        "single_user_s": single.content_s,
        "users_s": [v.content_s for v in views],
        "users_p50_s": percentile(times, 50),
        "users_max_s": worst,
        "ratio_max_to_single": round(ratio, 2) if ratio is not None else None,
        "target_ratio": COLD_RATIO_TARGET,
        "pass": ratio is not None and ratio <= COLD_RATIO_TARGET,
    }


async def load(bench: Bench, browser: Any) -> dict[str, Any]:
    """N users loop the journey until the load time is over (each finishes the view it is in)."""
    cfg = bench.cfg
    bench.start_phase("load")
    started = time.monotonic()
    end = started + cfg.load_seconds
    browsers = BrowserCpu()

    async def one(k: int) -> User:
        await asyncio.sleep(k * cfg.stagger_s)
        user = await User.open(bench, browser, k)
        try:
            await user.open_link(ENTRY)
            while time.monotonic() < end:
                for step in user.steps():
                    if time.monotonic() >= end or user.views >= cfg.max_views_per_user:
                        break
                    if user.requests >= cfg.max_requests_per_user:
                        raise RuntimeError(f"user {k} made {user.requests} requests, the cap")
                    await step()
                else:
                    user.iteration += 1
                    continue
                break
        finally:
            await user.close()
        return user

    # A hard bound on top: the load time plus one step's timeout (a stuck view cannot keep the test going).
    hard = cfg.load_seconds + cfg.users * cfg.stagger_s + cfg.step_timeout_s + 60
    await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(cfg.users))), timeout=hard)
    bench.end_phase()
    seconds = time.monotonic() - started
    return {
        "seconds": round(seconds, 1),
        "planned_seconds": cfg.load_seconds,
        "browser_cpu_cores": round(browsers.stop() / seconds, 2),  # every Chromium process
    }


# --------------------------------------------------------------------------- the report


def page_table(views: list[View]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    order = [ENTRY_PAGE, *JOURNEY_PAGES]
    for page in sorted({v.page for v in views}, key=lambda p: (order.index(p) if p in order else 99, p)):
        vs = [v for v in views if v.page == page]
        content = [v.content_s for v in vs if v.content_s is not None]
        idle = [v.idle_s for v in vs if v.idle_s is not None]
        rows[page] = {
            "n": len(vs),
            "no_content": len(vs) - len(content),
            "content_p50_s": percentile(content, 50),
            "content_p95_s": percentile(content, 95),
            "content_max_s": max(content) if content else None,
            "idle_p50_s": percentile(idle, 50),
            "idle_p95_s": percentile(idle, 95),
            "with_errors": sum(1 for v in vs if v.errors),
        }
    return rows


def _f(x: float | None, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def format_table(title: str, rows: dict[str, dict[str, Any]]) -> str:
    head = f"{'page':<26}{'n':>5}{'no content':>11}{'p50':>8}{'p95':>8}{'max':>8}{'idle p50':>10}{'idle p95':>10}"
    lines = [title, "  time to content (s)".rjust(len(head) - 20), head]
    for page, r in rows.items():
        lines.append(
            f"{page:<26}{r['n']:>5}{r['no_content']:>11}{_f(r['content_p50_s']):>8}{_f(r['content_p95_s']):>8}"
            f"{_f(r['content_max_s']):>8}{_f(r['idle_p50_s']):>10}{_f(r['idle_p95_s']):>10}"
        )
    return "\n".join(lines)


def _whole_run(sampler: RssSampler) -> dict[str, Any]:
    """RSS from the server's start to the end: first sample after it answered, peak, and each phase's end."""
    xs = [s for s in sampler.samples if s[1] > 0]
    if not xs:
        return {}
    at = lambda t: min(xs, key=lambda s: abs(s[0] - t))[1]  # noqa: E731
    peak = max(xs, key=lambda s: s[1])
    return {
        "first_mb": at(sampler.marks.get("warmup:start", 0)),
        "peak_mb": peak[1],
        "peak_t": peak[0],
        "at_marks_mb": {name: at(t) for name, t in sampler.marks.items()},
    }


def _groups(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Console errors counted by text and page, media file names folded (``/media/*.png``)."""
    fold = re.compile(r"/media/[0-9a-f]{16,}")
    counts: dict[str, int] = defaultdict(int)
    for e in entries:
        counts[f"{e['view'] or '-'}: {fold.sub('/media/*', e['text'])[:160]} @ {fold.sub('/media/*', e['url'])}"] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def summarize(bench: Bench, extra: dict[str, Any]) -> dict[str, Any]:
    cfg, views = bench.cfg, bench.views
    phases = {p: page_table([v for v in views if v.phase == p]) for p in dict.fromkeys(v.phase for v in views)}
    load_views = [v for v in views if v.phase == "load"]
    warm = [v for v in load_views if v.page in JOURNEY_PAGES]  # every view of the load phase was rendered before
    warm_content = [v.content_s for v in warm if v.content_s is not None]
    seen: set[tuple[int, str]] = set()
    repeat = []  # the views of a page a user had already seen in this session (its JavaScript chunks loaded)
    for v in warm:
        if (v.user, v.page) in seen and v.content_s is not None:
            repeat.append(v.content_s)
        seen.add((v.user, v.page))
    navigations = [v for v in load_views if v.page != "Compare: layer click" and v.content_s is not None]
    load_s = extra.get("load", {}).get("seconds") or cfg.load_seconds
    m = bench.sampler.marks
    rss = rss_summary(bench.sampler, m.get("load:start", 0), m.get("load:end", bench.sampler.now()))
    app_console = [e for e in bench.console_errors if not e.get("kind")]
    timeouts = [asdict(v) for v in views if v.content_s is None]
    view_errors = [{"phase": v.phase, "user": v.user, "view": v.page, "url": v.url, "errors": v.errors}
                   for v in views if v.errors]  # fmt: skip
    errors = {
        "total": len(app_console) + len(bench.page_errors) + sum(len(v.errors) for v in views) + len(timeouts),
        "in_page": sum(len(v.errors) for v in views),
        "console": len(app_console),
        "page_errors": len(bench.page_errors),
        "content_timeouts": len(timeouts),
        "console_not_counted": {
            k: sum(1 for e in bench.console_errors if e.get("kind") == k) for k in ("external", "streamlit#7074")
        },  # fmt: skip
        "views_with_errors": view_errors[:50],
        "console_groups": _groups(app_console),
        "console_samples": app_console[:50],
        "page_error_samples": bench.page_errors[:50],
        "http_errors": bench.http_errors[:100],
        "http_error_count": len(bench.http_errors),
        "content_timeout_samples": timeouts[:50],
    }
    reached = defaultdict(set)
    for v in load_views:
        if v.content_s is not None:
            reached[v.user].add(v.page)
    p95 = percentile(warm_content, 95)
    targets = {
        "warm_p95_content_s": p95,
        "warm_p95_target_s": WARM_P95_TARGET_S,
        "warm_p95_pass": p95 is not None and p95 < WARM_P95_TARGET_S,
        "errors_pass": errors["total"] == 0,
        "rss_last_half_growth_pct": rss.get("last_half_growth_pct"),
        "rss_growth_target_pct": RSS_GROWTH_TARGET_PCT,
        "rss_pass": rss.get("last_half_growth_pct") is not None and rss["last_half_growth_pct"] < RSS_GROWTH_TARGET_PCT,
        "rss_target_applies": cfg.load_seconds >= 600,
    }
    if "cold_check" in extra:
        targets["cold_ratio"] = extra["cold_check"]["ratio_max_to_single"]
        targets["cold_pass"] = extra["cold_check"]["pass"]
    return {
        "config": asdict(cfg),
        "machine": {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        **extra,
        "phases": phases,
        "load_summary": {
            "users": cfg.users,
            "seconds": load_s,
            "page_views": len(navigations),
            "layer_clicks": sum(1 for v in load_views if v.page == "Compare: layer click"),
            "page_views_per_s": round(len(navigations) / load_s, 3) if load_s else None,
            "server_cpu_s_per_view": (
                round(rss["server_cpu_cores"] * load_s / len(load_views), 3)
                if load_views and load_s and rss.get("server_cpu_cores") is not None
                else None
            ),  # page views and chart clicks: the server's CPU seconds for each thing a user did
            "warm_views": len(warm),
            "warm_content_p50_s": percentile(warm_content, 50),
            "warm_content_p95_s": p95,
            "repeat_views": len(repeat),
            "repeat_content_p50_s": percentile(repeat, 50),
            "repeat_content_p95_s": percentile(repeat, 95),
            "pages_reached_per_user": {str(u): sorted(p) for u, p in sorted(reached.items())},
        },
        "errors": errors,
        "blocked_external_requests": dict(bench.blocked),
        "failed_local_requests": dict(sorted(bench.failed_requests.items(), key=lambda kv: -kv[1])[:30]),
        "rss": rss,
        "rss_whole_run": _whole_run(bench.sampler),
        "rss_curve": [{"t": t, "rss_mb": r, "cpu_s": c} for t, r, c in bench.sampler.samples],
        "marks": m,
        "compare": bench.compare,
        "expect": bench.expect,
        "targets": targets,
        "screenshots": bench.screenshots,
        "views": [asdict(v) for v in views],
    }


def rss_curve_text(result: dict[str, Any], points: int = 12) -> str:
    m = result["marks"]
    start, end = m.get("load:start", 0), m.get("load:end", 0)
    xs = [s for s in result["rss_curve"] if start <= s["t"] <= end]
    if not xs:
        return ""
    step = max(1, len(xs) // points)
    picks = xs[::step] + ([xs[-1]] if (len(xs) - 1) % step else [])
    return "  ".join(f"{s['t'] - start:.0f}s:{s['rss_mb']:.0f}" for s in picks)


def print_report(result: dict[str, Any]) -> None:
    print()
    if result["config"].get("nice_browsers"):
        print(f"(the users' Chromium ran at niceness {result['config']['nice_browsers']})")
    for phase, rows in result["phases"].items():
        print(format_table(f"== {phase}", rows))
        print()
    ls, e, r, t = result["load_summary"], result["errors"], result["rss"], result["targets"]
    print(f"load: {ls['users']} users × {ls['seconds']} s · {ls['page_views']} page views "
          f"({ls['page_views_per_s']}/s) + {ls['layer_clicks']} layer clicks · warm views p50 "
          f"{_f(ls['warm_content_p50_s'])} s, p95 {_f(ls['warm_content_p95_s'])} s to content; repeat visits "
          f"(not a session's first of a page) p50 {_f(ls['repeat_content_p50_s'])} s, p95 "
          f"{_f(ls['repeat_content_p95_s'])} s")  # fmt: skip
    nc = e["console_not_counted"]
    print(f"errors: {e['total']} (in page {e['in_page']}, console {e['console']}, page errors {e['page_errors']}, "
          f"views without content {e['content_timeouts']}) · HTTP >= 400: {e['http_error_count']} · not counted: "
          f"{nc['streamlit#7074']} console 404s of streamlit#7074, {nc['external']} console errors of "
          f"{sum(result['blocked_external_requests'].values())} blocked requests to other hosts "
          f"({', '.join(result['blocked_external_requests']) or 'none'})")  # fmt: skip
    for text, n in list(e["console_groups"].items())[:8]:
        print(f"    console ×{n}: {text[:260]}")
    samples = e["views_with_errors"][:5] + e["page_error_samples"][:5]
    for sample in samples + e["content_timeout_samples"][:5]:
        print("   ", json.dumps(sample)[:300])
    if r.get("samples", 0) >= 4:
        print(f"server RSS (load phase): start {r['start_mb']:.0f} MB, peak {r['peak_mb']:.0f} MB, end "
              f"{r['end_mb']:.0f} MB · last half {r['mid_median_mb']:.0f} → {r['end_median_mb']:.0f} MB "
              f"({r['last_half_growth_pct']:+.1f} %) · server CPU {r['server_cpu_cores']} cores")  # fmt: skip
        if "machine_busy_cores" in r:
            browsers = result.get("load", {}).get("browser_cpu_cores")
            print(f"machine (load phase): {r['machine_busy_cores']} of {r['machine_cpus']} cores busy "
                  f"({r['machine_busy_pct']} %): server {r['server_cpu_cores']} ({ls['server_cpu_s_per_view']} CPU-s "
                  f"per view or click), the users' Chromium {browsers}, "
                  f"1-min load average {r['loadavg_1min_mean']}")  # fmt: skip
        print(f"  curve (s:MB): {rss_curve_text(result)}")
        w = result["rss_whole_run"]
        if w:
            ends = ", ".join(f"{k.split(':')[0]} {v:.0f}" for k, v in w["at_marks_mb"].items() if k.endswith(":end"))
            print(f"  whole run: {w['first_mb']:.0f} MB before the warm-up, peak {w['peak_mb']:.0f} MB at "
                  f"{w['peak_t']:.0f} s; MB at each phase's end: {ends}")  # fmt: skip
    if "cold_check" in result:
        c = result["cold_check"]
        print(f"cold Progression: single user {_f(c['single_user_s'])} s · {len(c['users_s'])} users p50 "
              f"{_f(c['users_p50_s'])} s, max {_f(c['users_max_s'])} s · ratio {c['ratio_max_to_single']} "
              f"(target ≤ {COLD_RATIO_TARGET})")  # fmt: skip
    verdict = {True: "PASS", False: "FAIL"}
    soak_only = "" if t["rss_target_applies"] else " (its target is for --soak 600)"
    line = (f"targets: warm p95 < {WARM_P95_TARGET_S} s: {verdict[t['warm_p95_pass']]} · errors = 0: "
            f"{verdict[t['errors_pass']]} · RSS last-half growth < {RSS_GROWTH_TARGET_PCT} %: "
            f"{verdict[t['rss_pass']]}{soak_only}")  # fmt: skip
    if "cold_pass" in t:
        line += f" · cold ≤ {COLD_RATIO_TARGET}× single: {verdict[t['cold_pass']]}"
    print(line)


# --------------------------------------------------------------------------- main


async def _browser_phases(cfg: Config, bench: Bench) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    extra: dict[str, Any] = {}
    executable = CHROMIUM
    if cfg.nice_browsers > 0:  # a wrapper: every Chromium process (renderers included) inherits the niceness
        executable = Path(tempfile.mkdtemp(prefix="layer-explorer-nice-")) / "chromium"
        executable.write_text(f'#!/bin/sh\nexec nice -n {cfg.nice_browsers} "{CHROMIUM}" "$@"\n')
        executable.chmod(0o755)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            await warm_up(bench, browser)
            if cfg.cold_check:
                extra["cold_check"] = await cold_check(bench, browser)
            extra["load"] = await load(bench, browser)
        finally:
            await browser.close()
    return extra


def run(cfg: Config) -> dict[str, Any]:
    """The whole benchmark; returns the result dict (also written to `cfg.out` when set)."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium, or set LAYER_EXPLORER_CHROMIUM)")
    log = lambda *a: _log(cfg, *a)  # noqa: E731
    with load_server(cfg.cache, data_per_class=cfg.data_per_class, keep_cache=cfg.keep_cache, port=cfg.port,
                     log=log) as (server, sampler, setup):  # fmt: skip
        bench = Bench(cfg, server.url, sampler)
        extra = asyncio.run(_browser_phases(cfg, bench))
        sampler.mark("end")
        result = summarize(bench, {"setup": setup, **extra})
        result["server_log_tail"] = server.log_tail(4000)
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(result, indent=1, default=str))
    return result


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--protocol", action="store_true",
                   help="protocol-level sessions instead of browsers (options: --protocol --help)")  # fmt: skip
    p.add_argument("--users", type=int, default=8, help="concurrent browser users (default 8)")
    p.add_argument("--seconds", type=float, default=150, help="length of the load phase (default 150)")
    p.add_argument("--soak", type=float, default=0, help="a soak of this many seconds instead (e.g. 600)")
    p.add_argument("--cold-check", action="store_true", help="also time cold Progressions: 1 user, then N users")
    p.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument("--out", help="write every measurement to this JSON file")
    p.add_argument(
        "--data-per-class",
        type=int,
        default=0,
        help="fine-tune and compare on K digits per class instead of demo:digits (cheaper warm-up)",
    )
    p.add_argument("--unit-links", type=int, default=2, help="unit links of Progression the users open in turn")
    p.add_argument("--step-timeout", type=float, default=180, help="seconds a warm view may take (default 180)")
    p.add_argument("--artifacts", default=Config.artifacts, help="screenshots of views that failed")
    p.add_argument("--keep-cache", action="store_true", help="keep the temporary cache (with the server log)")
    p.add_argument("--cache", help="reuse this cache folder instead of a temporary one (warm; for development)")
    p.add_argument("--quiet", action="store_true", help="no line per view")
    p.add_argument(
        "--nice-browsers",
        type=int,
        default=0,
        help="run Chromium at this niceness (e.g. 19): the simulated users' browsers then yield the 2 cores to the "
        "server, as browsers on the users' own machines would; the default (0) shares the CPU evenly",
    )
    a = p.parse_args(argv)
    if a.users < 1 or a.seconds <= 0 or a.soak < 0 or a.unit_links < 1:
        p.error("--users and --unit-links must be >= 1, --seconds > 0, --soak >= 0")
    return Config(users=a.users, seconds=a.seconds, soak=a.soak, cold_check=a.cold_check, port=a.port, out=a.out,
                  data_per_class=a.data_per_class, unit_links=a.unit_links, step_timeout_s=a.step_timeout,
                  artifacts=a.artifacts, keep_cache=a.keep_cache, cache=a.cache, quiet=a.quiet,
                  nice_browsers=a.nice_browsers)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--protocol" in args:  # the server measured alone: protocol-level sessions instead of browsers
        from load_protocol import main as protocol_main

        return protocol_main([a for a in args if a != "--protocol"])
    cfg = parse_args(argv)
    result = run(cfg)
    print_report(result)
    if cfg.out:
        print(f"\nwrote {cfg.out}")
    t = result["targets"]
    return 0 if t["errors_pass"] and t["warm_p95_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
