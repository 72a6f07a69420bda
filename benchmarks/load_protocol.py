"""Many users at the protocol level: N sessions over Streamlit's own websocket protocol against one server.

    python benchmarks/bench_load.py --protocol --sessions 30 --seconds 300 --out load.json
    python benchmarks/bench_load.py --protocol --sessions 4 --seconds 60 --data-per-class 5   # while developing
    python benchmarks/bench_load.py --protocol --sessions 1 --seconds 5 --cold-check 8 --out cold.json
    python benchmarks/bench_load.py --protocol --sessions 2 --rounds 1 --warmup-rounds 0 --skip-compare   # smoke test

Why not browsers: on a 2-core machine eight Chromium instances take most of the CPU, so a browser load test
measures the browsers. In a class each student's browser runs on the student's laptop; here each user is a
`stclient.Session` (the frontend's messages and the image fetches, no drawing: 30 sessions took 0.07 cores), so the
server gets the cores.

Phases (every request goes to 127.0.0.1 only; everything stops by itself):

1. setup: a temporary ``LAYER_EXPLORER_CACHE`` (``--cache`` reuses a folder), the fine-tuned run the Compare page
   opens (as the browser test makes it; ``--data-per-class K`` fine-tunes on K digits per class), one
   ``streamlit run app.py``;
2. warm-up: one session walks the journey (below) until a whole round computed nothing (at most
   ``--warmup-rounds``), pressing Compare's "Compare" button the first time: every view the users will see is then
   in the caches. The server's CPU is measured around each of its views;
3. single: the same session, two more rounds (one user, warm): time and server CPU per view of each page;
4. ``--cold-check N``: a Progression link with a seed nobody rendered, opened by one session (its time T1); then by
   N sessions at once with one shared new seed (the same renders: the cache keys are equal); then by N sessions at
   once with N distinct new seeds (N times the renders; left out with ``--cold-shared-only``). Ratios max / T1 and
   the server's CPU seconds for each;
5. load: N sessions, each opening its entry link (``--entry``, default the Start here page), then walking rounds
   until ``--seconds`` have passed (each finishes the view it is in; a hard bound stops a stuck one), or exactly
   ``--rounds`` rounds (the smoke test: every page of the journey seen by every session). By default a
   session asks for its next view the moment the last one has its content (a closed loop: the most load N users can
   make); ``--think S`` lets each user read each view for S × U(0.5, 1.5) seconds first, as students do.

The journey, one round (each line a view; "→" a widget change on the page):
Start here → Begin the tour (Progression, 4 units per stage) → units per stage 2/4 → Layer → page 1/2 → Unit →
unit 0/1 → Attribution → Grad-CAM / Gradient × Activation → Compare → freeze point (two layers in turn).
A widget is set to the other of its two values, so every round repeats views the warm-up rendered.
``--skip-compare`` leaves Compare out (and makes no run); ``--warmup-rounds 0`` starts the load on cold caches.

Measured per view: time to content (the run finished and every image of the final page fetched), whether it
computed (a progress bar moved or a cache spinner showed: "cold"), errors (exceptions and st.error on the page,
HTTP >= 400 for its images, protocol errors, no content within ``--step-timeout``). Server: CPU seconds
(/proc/<pid>/stat) and RSS (/proc/<pid>/status) every second. The load generator's own CPU is reported too.
JSON (``--out``): ``sessions``, ``views``, ``errors``, ``warm_p95_s``, ``cold_p95_s``, ``server_cpu_s_per_view``,
``rss_mb``, then the per-page tables of every phase (``pages``), the cold check and every view (``views_list``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from appserver import RssSampler, Server, load_server, percentile, process_cpu_s  # noqa: E402
from load_report import COLD_SHARED_RATIO_TARGET, Record, print_report, summarize  # noqa: E402
from stclient import Session, View  # noqa: E402

COLD_LINK = "progression?preset=fast&per_stage=2&seed={}"
METHODS = ("Grad-CAM", "Gradient × Activation")  # the Attribution page's radio labels of two one-pass methods
ALONE = ("warmup", "single")  # phases with one session: each view's server CPU is measured
SINGLE_ROUNDS = 2  # warm rounds of the single session (server CPU per view of each page)
JOURNEY_VIEWS = 12  # views in one round of the journey, at most (the hard time bound of a --rounds load)


@dataclass
class Config:
    sessions: int = 30
    seconds: float = 300.0
    cold_check: int = 0  # > 0: the cold check with this many sessions
    cold_distinct: bool = True  # the cold check's third group: n sessions on n distinct seeds (n times the work)
    out: str | None = None
    data_per_class: int = 0  # 0: the run is fine-tuned on demo:digits; K: on K images per class of it
    warmup_rounds: int = 4  # 0: no warm-up (and no single-session round): the load starts on cold caches
    entry: str = "start"  # the link each session opens first (its query sets the session's render settings)
    skip_compare: bool = False  # no fine-tuned run is made and the journey leaves out Compare
    step_timeout_s: float = 180.0
    cold_timeout_s: float = 600.0
    stagger_s: float = 0.2  # session k starts k × stagger_s after the first
    think_s: float = 0.0  # > 0: a session reads each view for think_s × U(0.5, 1.5) seconds before the next
    rounds: int = 0  # > 0: each session walks exactly this many rounds (then --seconds does not bound the load)
    max_views_per_session: int = 5000
    cache: str | None = None  # reuse this cache folder (kept): for development
    keep_cache: bool = False
    quiet: bool = False


class Bench:
    def __init__(self, cfg: Config, server: Server, sampler: RssSampler) -> None:
        self.cfg, self.server, self.sampler = cfg, server, sampler
        self.records: list[Record] = []
        self.compare_pair: tuple[str, str] | None = None  # the two freeze points the users switch between
        self.phase = "setup"
        self.single_cpu_s: float | None = None  # the server's CPU seconds over the single session's warm round

    def log(self, *parts: Any) -> None:
        if not self.cfg.quiet:
            print(*parts, flush=True)

    def start(self, phase: str) -> None:
        self.phase = phase
        self.sampler.mark(f"{phase}:start")
        self.log(f"[{time.strftime('%H:%M:%S')}] phase {phase}")

    def end(self) -> None:
        self.sampler.mark(f"{self.phase}:end")

    def add(self, session: int, view: View) -> View:
        self.records.append(Record(self.phase, session, view))
        content = f"{view.content_s:6.2f}" if view.content_s is not None else "     —"
        busy = f"  computed: {', '.join(view.busy)}" if view.computed else ""
        self.log(f"  s{session:<3} {view.label:<32} content {content} s  images {view.images:>3}{busy}"
                 f"{'  ' + view.note if view.note else ''}"
                 f"{'  ERRORS ' + '; '.join(view.errors)[:300] if view.errors else ''}")  # fmt: skip
        return view


def other(current: Any, pair: tuple[Any, Any]) -> Any:
    """The value of `pair` that `current` is not (the first when it is neither)."""
    return pair[1] if current == pair[0] else pair[0]


class Student:
    """One session walking the journey."""

    def __init__(self, bench: Bench, index: int, timeout_s: float) -> None:
        self.b, self.i = bench, index
        self.s = Session(bench.server.url, name=f"s{index}", timeout_s=timeout_s)
        self.views = 0

    async def record(self, make: Callable[[], Awaitable[View]], label: str) -> View:
        alone = self.b.phase in ALONE  # one session at a time: the server's CPU over the view is the view's
        cpu0 = process_cpu_s(self.b.server.pid) if alone else None
        try:
            view = await make()
        except Exception as exc:  # a widget or link the page did not have: recorded, the walk goes on
            view = View(label, time.monotonic(), errors=[f"{type(exc).__name__}: {str(exc)[:200]}"])
        if cpu0 is not None:
            cpu1 = process_cpu_s(self.b.server.pid)
            view.server_cpu_s = round(cpu1 - cpu0, 3) if cpu1 is not None else None
        self.views += 1
        return self.b.add(self.i, view)

    def set(self, key: str, pair: tuple[Any, Any], label: str) -> Callable[[], Awaitable[View]]:
        async def go() -> View:
            return await self.s.set_widget(key, other(self.s.value(key), pair), label)

        return go

    def steps(self, first: bool, learn: bool = False) -> list[tuple[str, Callable[[], Awaitable[View]]]]:
        """One round of the journey; a session's first round opens its entry link (a new tab) first."""
        s, entry = self.s, self.b.cfg.entry
        opened = entry.partition("?")[0] == "start"
        page = "Start here" if opened else entry.partition("?")[0].capitalize()
        out: list[tuple[str, Callable[[], Awaitable[View]]]] = []
        if first:
            out.append((f"{page} (open link)", lambda: s.open(entry, f"{page} (open link)")))
        if not (first and opened):
            out.append(("Start here", lambda: s.navigate("Start here")))
        out += [
            ("Progression (tour)", lambda: s.set_widget("start_tour", True, "Progression (tour)")),
            ("Progression: per stage", self.set("prog_per_stage", (["2"], ["4"]), "Progression: per stage")),
            ("Layer", lambda: s.navigate("Layer")),
            ("Layer: page", self.set("layer_page", (1.0, 2.0), "Layer: page")),
            ("Unit", lambda: s.navigate("Unit")),
            ("Unit: unit", self.set("unit_pick", (0.0, 1.0), "Unit: unit")),
            ("Attribution", lambda: s.navigate("Attribution")),
            ("Attribution: method", self.set("att_method", METHODS, "Attribution: method")),
        ]
        if not self.b.cfg.skip_compare:
            out += [("Compare", lambda: self.compare(learn)), ("Compare: freeze point", self.freeze)]
        return out

    async def compare(self, learn: bool) -> View:
        view = await self.s.navigate("Compare")
        if learn and "Compare" in self.s.buttons():
            self.b.add(self.i, view)
            view = await self.s.set_widget("cmp_run", True, "Compare (computing)")
        return view

    async def freeze(self) -> View:
        current = self.s.value("cmp_freeze")
        if self.b.compare_pair is None:
            blocks = [o for o in self.s.options("cmp_freeze") if o.startswith("blocks.")]
            first = current if current in blocks else blocks[len(blocks) // 2]
            i = blocks.index(first)
            self.b.compare_pair = (first, blocks[i - 2] if i >= 2 else blocks[i + 2])
        return await self.s.set_widget("cmp_freeze", other(current, self.b.compare_pair), "Compare: freeze point")

    async def round(
        self, first: bool, learn: bool = False, until: float | None = None, think: Callable[[], float] | None = None
    ) -> list[View]:
        """One round of the journey; `think()` seconds of reading between views (none by default)."""
        out = []
        for label, make in self.steps(first, learn):
            if until is not None and time.monotonic() >= until:
                break
            if self.views >= self.b.cfg.max_views_per_session:
                break
            out.append(await self.record(make, label))
            if think is not None:
                pause = think()
                await asyncio.sleep(pause if until is None else min(pause, max(until - time.monotonic(), 0.0)))
        return out

    async def close(self) -> None:
        await self.s.close()


# --------------------------------------------------------------------------- phases


async def warm_up(bench: Bench) -> Student:
    """One session, rounds until one computed nothing: every view of the journey is then warm."""
    bench.start("warmup")
    student = Student(bench, 0, bench.cfg.cold_timeout_s)
    for k in range(bench.cfg.warmup_rounds):
        views = await student.round(first=k == 0, learn=True)
        if not any(v.computed for v in views):
            break
    bench.end()
    bench.start("single")
    cpu0 = process_cpu_s(bench.server.pid) or 0.0
    for _ in range(SINGLE_ROUNDS):
        await student.round(first=False)
    bench.single_cpu_s = (process_cpu_s(bench.server.pid) or 0.0) - cpu0
    bench.end()
    return student


async def cold_check(bench: Bench, n: int) -> dict[str, Any]:
    """Cold Progressions: 1 session; n sessions on one shared new seed; n sessions on n distinct new seeds (unless
    `--cold-shared-only`)."""
    base = 1_000_000 + (int(time.time()) % 100_000) * 64  # seeds nobody rendered, even in a reused cache
    pid = bench.server.pid

    async def group(phase: str, seeds: list[int]) -> dict[str, Any]:
        bench.start(phase)
        students = [Student(bench, k, bench.cfg.cold_timeout_s) for k in range(len(seeds))]
        cpu0, t0 = process_cpu_s(pid) or 0.0, time.monotonic()
        try:
            views = await asyncio.gather(*(
                st.record(lambda st=st, seed=seed: st.s.open(COLD_LINK.format(seed), "Progression (cold)"),
                          "Progression (cold)")
                for st, seed in zip(students, seeds, strict=True)
            ))  # fmt: skip
        finally:
            for st in students:
                await st.close()
        wall, cpu = time.monotonic() - t0, (process_cpu_s(pid) or 0.0) - cpu0
        bench.end()
        times = [v.content_s for v in views if v.content_s is not None]
        complete = len(times) == len(views) and not any(v.errors for v in views)
        firsts = [v.first_image_s for v in views if v.first_image_s is not None]
        return {
            "sessions": len(seeds),
            "seeds": sorted(set(seeds)),
            "content_s": [v.content_s for v in views],
            "first_image_s": [v.first_image_s for v in views],
            "first_image_max_s": max(firsts) if firsts else None,
            "max_s": max(times) if complete else None,
            "p50_s": percentile(times, 50),
            "wall_s": round(wall, 2),
            "server_cpu_s": round(cpu, 2),
            "errors": [e for v in views for e in v.errors],
        }

    single = await group("cold_single", [base])
    shared = await group("cold_shared", [base + 1] * n)
    distinct = await group("cold_distinct", [base + 2 + k for k in range(n)]) if bench.cfg.cold_distinct else None
    one = single["max_s"]

    def ratio(x: float | None) -> float | None:
        return round(x / one, 2) if x is not None and one else None

    out = {
        "link": COLD_LINK,
        "single": single,
        "shared": shared,
        "distinct": distinct,
        "shared_ratio": ratio(shared["max_s"]),
        "distinct_ratio": ratio(distinct["max_s"]) if distinct else None,
        "target_shared_ratio": COLD_SHARED_RATIO_TARGET,
    }
    if distinct and shared["max_s"] and distinct["max_s"]:
        out["time_saved_pct"] = round(100 * (1 - shared["max_s"] / distinct["max_s"]), 1)
    if distinct and distinct["server_cpu_s"]:
        out["cpu_saved_pct"] = round(100 * (1 - shared["server_cpu_s"] / distinct["server_cpu_s"]), 1)
    out["pass"] = out["shared_ratio"] is not None and out["shared_ratio"] <= COLD_SHARED_RATIO_TARGET
    return out


async def load(bench: Bench) -> dict[str, Any]:
    """N sessions walk rounds until the time is up (each finishes the view it is in), or `cfg.rounds` rounds."""
    cfg = bench.cfg
    bench.start("load")
    pid = bench.server.pid
    started = time.monotonic()
    until = None if cfg.rounds > 0 else started + cfg.seconds
    cpu0, own0 = process_cpu_s(pid) or 0.0, time.process_time()

    async def one(k: int) -> None:
        await asyncio.sleep(k * cfg.stagger_s)
        student = Student(bench, k, cfg.step_timeout_s)
        rng = random.Random(k)  # each session reads for its own, repeatable, times
        think = (lambda: cfg.think_s * rng.uniform(0.5, 1.5)) if cfg.think_s > 0 else None
        try:
            rounds = 0
            while student.views < cfg.max_views_per_session:
                if (cfg.rounds and rounds >= cfg.rounds) or (until is not None and time.monotonic() >= until):
                    break
                await student.round(first=rounds == 0, until=until, think=think)
                rounds += 1
        finally:
            await student.close()

    walk = cfg.rounds * JOURNEY_VIEWS * cfg.step_timeout_s if cfg.rounds else cfg.seconds + cfg.step_timeout_s
    hard = walk + cfg.sessions * cfg.stagger_s + 60  # a stuck view cannot hang the test
    await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(cfg.sessions))), timeout=hard)
    seconds = time.monotonic() - started
    bench.end()
    return {
        "seconds": round(seconds, 1),
        "server_cpu_s": round((process_cpu_s(pid) or 0.0) - cpu0, 1),
        "client_cpu_cores": round((time.process_time() - own0) / seconds, 2),
    }


# --------------------------------------------------------------------------- main


async def phases(bench: Bench) -> dict[str, Any]:
    extra: dict[str, Any] = {"bench": bench}
    if bench.cfg.warmup_rounds > 0:
        student = await warm_up(bench)
        await student.close()
    if bench.cfg.cold_check > 0:
        extra["cold_check"] = await cold_check(bench, bench.cfg.cold_check)
    extra["load"] = await load(bench)
    return extra


def run(cfg: Config) -> dict[str, Any]:
    """The whole benchmark; returns the result (also written to `cfg.out` when set)."""
    log = print if not cfg.quiet else (lambda *a: None)
    data = None if cfg.skip_compare else cfg.data_per_class
    with load_server(cfg.cache, data_per_class=data, keep_cache=cfg.keep_cache, log=log) as (server, sampler, setup):
        extra = asyncio.run(phases(Bench(cfg, server, sampler)))
        bench = extra.pop("bench")
        result = summarize(cfg, bench.records, sampler, bench.single_cpu_s, {"setup": setup, **extra})
        result["server_log_tail"] = server.log_tail(3000)
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(result, indent=1, default=str))
    return result


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=30, help="concurrent protocol sessions (default 30)")
    p.add_argument("--seconds", type=float, default=300, help="length of the load phase (default 300)")
    p.add_argument("--cold-check", type=int, default=0, metavar="N",
                   help="time cold Progressions: 1 session, N on one seed, N on N seeds")  # fmt: skip
    p.add_argument("--cold-shared-only", action="store_true",
                   help="the cold check without its N-distinct-seeds group (N times the renders)")  # fmt: skip
    p.add_argument("--out", help="write every measurement to this JSON file")
    p.add_argument("--data-per-class", type=int, default=0, help="fine-tune on K digits per class (cheaper setup)")
    p.add_argument(
        "--warmup-rounds",
        type=int,
        default=4,
        help="at most this many warm-up rounds (default 4; 0: the load starts on cold caches)",
    )
    p.add_argument(
        "--entry",
        default="start",
        help="the link each session opens first (default start); e.g. "
        "'progression?preset=fast&per_stage=2&steps=8&size=32' makes every render of the session cheap",
    )
    p.add_argument("--skip-compare", action="store_true", help="no fine-tuned run; the journey leaves out Compare")
    p.add_argument("--think", type=float, default=0.0, metavar="S",
                   help="seconds a user reads a view before the next, on average (uniform 0.5 S to 1.5 S); default 0: "
                   "each session asks for its next view as soon as the last one has its content")  # fmt: skip
    p.add_argument("--rounds", type=int, default=0,
                   help="each session walks exactly this many rounds (then --seconds is no bound)")  # fmt: skip
    p.add_argument("--step-timeout", type=float, default=180, help="seconds a view may take under load (default 180)")
    p.add_argument("--cache", help="reuse this cache folder instead of a temporary one (kept; for development)")
    p.add_argument("--keep-cache", action="store_true", help="keep the temporary cache (with the server log)")
    p.add_argument("--quiet", action="store_true", help="no line per view")
    a = p.parse_args(argv)
    if a.sessions < 1 or a.seconds <= 0 or a.cold_check < 0 or a.warmup_rounds < 0 or a.think < 0 or a.rounds < 0:
        p.error("--sessions must be >= 1, --seconds > 0, --cold-check, --warmup-rounds, --think and --rounds >= 0")
    return Config(sessions=a.sessions, seconds=a.seconds, cold_check=a.cold_check,
                  cold_distinct=not a.cold_shared_only, out=a.out,
                  data_per_class=a.data_per_class, warmup_rounds=a.warmup_rounds, step_timeout_s=a.step_timeout,
                  entry=a.entry, skip_compare=a.skip_compare, think_s=a.think, rounds=a.rounds, cache=a.cache,
                  keep_cache=a.keep_cache, quiet=a.quiet)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    result = run(cfg)
    print_report(result)
    if cfg.out:
        print(f"\nwrote {cfg.out}")
    t = result["targets"]
    return 0 if t["errors_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
