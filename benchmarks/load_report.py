"""The protocol-level load test's report: per-page tables of every phase, the summary (the JSON keys ``sessions``,
``views``, ``errors``, ``warm_p95_s``, ``cold_p95_s``, ``server_cpu_s_per_view``, ``rss_mb``) and the targets."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from appserver import RssSampler, percentile, rss_curve, rss_summary
from stclient import View

WARM_P95_TARGET_S = 2.0
CPU_PER_VIEW_TARGET_S = 0.08
RSS_GROWTH_TARGET_PCT = 10.0
COLD_SHARED_RATIO_TARGET = 3.0


@dataclass
class Record:
    """A view with where it happened."""

    phase: str
    session: int
    view: View

    def row(self) -> dict[str, Any]:
        v = self.view
        return {"phase": self.phase, "session": self.session, **{k: x for k, x in asdict(v).items() if k != "started"}}


def page_table(records: list[Record]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r.view.label for r in records):
        vs = [r.view for r in records if r.view.label == label]
        content = [v.content_s for v in vs if v.content_s is not None]
        warm = [v.content_s for v in vs if v.content_s is not None and not v.computed]
        rows[label] = {
            "n": len(vs),
            "computed": sum(v.computed for v in vs),
            "no_content": len(vs) - len(content),
            "with_errors": sum(1 for v in vs if v.errors),
            "content_p50_s": percentile(content, 50),
            "content_p95_s": percentile(content, 95),
            "content_max_s": max(content) if content else None,
            "warm_p50_s": percentile(warm, 50),
            "warm_p95_s": percentile(warm, 95),
            "images": max((v.images for v in vs), default=0),
            "server_cpu_s_p50": percentile([v.server_cpu_s for v in vs if v.server_cpu_s is not None], 50),
        }
    return rows


def summarize(
    cfg: Any, recs: list[Record], sampler: RssSampler, single_cpu_s: float | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """Everything measured, as the JSON written to ``--out`` (cfg: the load test's Config)."""
    load_recs = [r for r in recs if r.phase == "load"]
    views = [r.view for r in load_recs]
    warm = [v.content_s for v in views if v.content_s is not None and not v.computed]
    cold = [r.view.content_s for r in recs if r.view.computed and r.view.content_s is not None]
    errors = [{"phase": r.phase, "session": r.session, "view": r.view.label, "errors": r.view.errors,
               "note": r.view.note} for r in load_recs if r.view.errors or r.view.content_s is None]  # fmt: skip
    m = sampler.marks
    start, end = m.get("load:start", 0.0), m.get("load:end", sampler.now())
    rss = rss_summary(sampler, start, end)
    info = extra.get("load", {})
    cpu_per_view = round(info["server_cpu_s"] / len(views), 3) if views and "server_cpu_s" in info else None
    single = [r.view for r in recs if r.phase == "single"]
    single_cpu = single_cpu_s
    warm_p95 = percentile(warm, 95)
    growth = rss.get("last_half_growth_pct")
    result = {
        "sessions": cfg.sessions,
        "seconds": info.get("seconds"),
        "views": len(views),
        "views_per_s": round(len(views) / info["seconds"], 2) if info.get("seconds") else None,
        "errors": len(errors),
        "warm_views": len(warm),
        "warm_p50_s": percentile(warm, 50),
        "warm_p95_s": warm_p95,
        "cold_views": len(cold),
        "cold_p95_s": percentile(cold, 95),
        "server_cpu_s_per_view": cpu_per_view,
        "server_cpu_cores": round(info["server_cpu_s"] / info["seconds"], 2) if info.get("seconds") else None,
        "client_cpu_cores": info.get("client_cpu_cores"),
        "single_session": {
            "views": len(single),
            "content_p50_s": percentile([v.content_s for v in single if v.content_s is not None], 50),
            "server_cpu_s_per_view": round(single_cpu / len(single), 3) if single and single_cpu else None,
        },
        "rss_mb": {
            "start": rss.get("start_mb"),
            "peak": rss.get("peak_mb"),
            "end": rss.get("end_mb"),
            "mid_median": rss.get("mid_median_mb"),
            "end_median": rss.get("end_median_mb"),
            "last_half_growth_pct": growth,
            "curve": rss_curve(sampler, start, end, points=20),
        },
        "targets": {
            "warm_p95_s": WARM_P95_TARGET_S,
            "warm_p95_pass": warm_p95 is not None and warm_p95 < WARM_P95_TARGET_S,
            "errors_pass": not errors,
            "rss_growth_pct": RSS_GROWTH_TARGET_PCT,
            "rss_pass": growth is not None and growth < RSS_GROWTH_TARGET_PCT,
            "server_cpu_s_per_view": CPU_PER_VIEW_TARGET_S,
            "cpu_pass": cpu_per_view is not None and cpu_per_view <= CPU_PER_VIEW_TARGET_S,
        },
        "config": asdict(cfg),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            **{k: rss.get(k) for k in ("machine_busy_cores", "loadavg_1min_mean")},
        },  # fmt: skip
        **{k: v for k, v in extra.items() if k != "load"},
        "load": info,
        "pages": {p: page_table([r for r in recs if r.phase == p]) for p in dict.fromkeys(r.phase for r in recs)},
        "error_samples": errors[:50],
        "marks": m,
        "views_list": [r.row() for r in recs],
    }
    return result


def _f(x: float | None, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def print_report(result: dict[str, Any]) -> None:
    print()
    for phase, rows in result["pages"].items():
        print(f"== {phase}")
        print(f"{'view':<32}{'n':>5}{'computed':>9}{'errors':>7}{'p50':>8}{'p95':>8}{'max':>8}{'images':>8}"
              f"{'server CPU-s':>14}")  # fmt: skip
        for label, r in rows.items():
            print(f"{label:<32}{r['n']:>5}{r['computed']:>9}{r['with_errors'] + r['no_content']:>7}"
                  f"{_f(r['content_p50_s']):>8}{_f(r['content_p95_s']):>8}{_f(r['content_max_s']):>8}"
                  f"{r['images']:>8}{_f(r['server_cpu_s_p50'], 3):>14}")  # fmt: skip
        print()
    r, rss, t = result, result["rss_mb"], result["targets"]
    think = result["config"]["think_s"]
    print(f"load: {r['sessions']} sessions × {r['seconds']} s{f' (reading {think} s per view)' if think else ''} · "
          f"{r['views']} views ({r['views_per_s']}/s) · "
          f"errors {r['errors']} · warm {r['warm_views']}: p50 {_f(r['warm_p50_s'])} s, p95 {_f(r['warm_p95_s'])} s · "
          f"cold (computed, any phase) {r['cold_views']}: p95 {_f(r['cold_p95_s'])} s")  # fmt: skip
    print(f"server: {r['server_cpu_s_per_view']} CPU-s per view ({r['server_cpu_cores']} cores); one session alone: "
          f"{r['single_session']['server_cpu_s_per_view']} CPU-s per view · load generator {r['client_cpu_cores']} "
          f"cores · machine {r['machine'].get('machine_busy_cores')} cores busy")  # fmt: skip
    if rss.get("start") is not None:
        curve = "  ".join(f"{t:.0f}s:{mb:.0f}" for t, mb in rss["curve"])
        print(f"server RSS: start {rss['start']:.0f} MB, peak {rss['peak']:.0f} MB, end {rss['end']:.0f} MB; "
              f"last half {rss['mid_median']:.0f} → {rss['end_median']:.0f} MB "
              f"({rss['last_half_growth_pct']:+.1f} %)")  # fmt: skip
        print(f"  curve (s:MB): {curve}")
    for e in r["error_samples"][:8]:
        print("   ", json.dumps(e)[:300])
    if "cold_check" in r:
        c = r["cold_check"]
        one, shared, distinct = c["single"], c["shared"], c["distinct"]
        line = (f"cold Progression: one session {_f(one['max_s'])} s, {one['server_cpu_s']} CPU-s, first image "
                f"{_f(one['first_image_max_s'])} s · {shared['sessions']} sessions, one seed: last "
                f"{_f(shared['max_s'])} s ({c['shared_ratio']}×), server {shared['server_cpu_s']} CPU-s, first image "
                f"of the last {_f(shared['first_image_max_s'])} s")  # fmt: skip
        if distinct:
            line += (f" · {distinct['sessions']} sessions, distinct seeds: last {_f(distinct['max_s'])} s "
                     f"({c['distinct_ratio']}×), server {distinct['server_cpu_s']} CPU-s, first image of the last "
                     f"{_f(distinct['first_image_max_s'])} s")  # fmt: skip
        print(line)
    verdict = {True: "PASS", False: "FAIL"}
    line = (f"targets: warm p95 < {WARM_P95_TARGET_S} s: {verdict[t['warm_p95_pass']]} · errors = 0: "
            f"{verdict[t['errors_pass']]} · RSS last-half growth < {RSS_GROWTH_TARGET_PCT} %: {verdict[t['rss_pass']]} "
            f"· server CPU per view ≤ {CPU_PER_VIEW_TARGET_S} s: {verdict[t['cpu_pass']]}")  # fmt: skip
    if "cold_check" in r:
        line += f" · cold shared ≤ {COLD_SHARED_RATIO_TARGET}× one: {verdict[r['cold_check']['pass']]}"
    print(line)
