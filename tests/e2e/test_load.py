"""A short load test: benchmarks/bench_load.py with 4 users for 60 s (its own server, cache and fine-tuned run).

Asserts no errors (exceptions, st.error boxes, tracebacks, console and page errors, views that never showed their
content), every page reached by every user, warm views under a generous bound (CI's 2 cores may be shared) and a
flat server memory over the last half. The whole result goes to test-artifacts/e2e/load.json. About 3 minutes.
The benchmark runs in its own process: it uses Playwright's async API, which cannot share a thread with the sync
API of the other browser tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_load.py"
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM = Path(os.environ.get("LAYER_EXPLORER_CHROMIUM", "/usr/bin/chromium"))  # as the benchmark reads it
USERS, SECONDS = 4, 60
WARM_P95_BOUND_S = 4.0
RSS_GROWTH_BOUND_PCT = 25.0
JOURNEY = ("Model", "Progression", "Unit", "Attribution", "Compare", "Compare: layer click")


@pytest.mark.timeout(600)
def test_four_users_for_a_minute() -> None:
    pytest.importorskip("playwright.async_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Chromium (apt-get install chromium) to run browser tests")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / "load.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH), "--users", str(USERS), "--seconds", str(SECONDS), "--data-per-class", "5",
           "--out", str(out), "--artifacts", str(ARTIFACTS / "load"), "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)
    print(done.stdout[-6000:])
    assert out.is_file(), f"the benchmark wrote no result (exit {done.returncode}):\n{done.stderr[-4000:]}"
    result = json.loads(out.read_text())
    errors, summary, rss = result["errors"], result["load_summary"], result["rss"]

    shown = ("console_groups", "views_with_errors", "page_error_samples", "content_timeout_samples")
    assert errors["total"] == 0, json.dumps({k: errors[k] for k in shown}, indent=1)[:4000]
    reached = summary["pages_reached_per_user"]
    assert sorted(reached) == [str(u) for u in range(USERS)], reached
    for user, pages in reached.items():
        assert set(JOURNEY) <= set(pages), f"user {user} never saw the content of {set(JOURNEY) - set(pages)}"
    assert summary["warm_content_p95_s"] < WARM_P95_BOUND_S, result["phases"]["load"]
    assert rss["last_half_growth_pct"] < RSS_GROWTH_BOUND_PCT, rss
