"""The protocol-level load test, small: 2 sessions walk one round of the journey over Streamlit's websocket protocol.

`python benchmarks/bench_load.py --protocol` against its own server and cache, both sessions on cheap render settings
(8 steps at 32 px, set by the link they open) and without Compare (no fine-tuned run to make), starting on cold
caches, so the two sessions ask for the same renders at the same time. Asserts that every view of the journey ran
to its end for both sessions with no error (exceptions, st.error boxes, HTTP errors, protocol errors), that every
image of each final page was fetched, and that the server was measured. The whole result goes to
test-artifacts/e2e/protocol_load.json. About 40 s on 2 cores. The benchmark runs in its own process (its own event
loop, and the server's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_load.py"
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
SESSIONS = 2
ENTRY = "progression?preset=fast&per_stage=2&steps=8&size=32"
JOURNEY = (
    "Progression (open link)",
    "Start here",
    "Progression (tour)",
    "Progression: per stage",
    "Layer",
    "Layer: page",
    "Unit",
    "Unit: unit",
    "Attribution",
    "Attribution: method",
)
WITH_IMAGES = ("Progression (open link)", "Progression (tour)", "Layer", "Layer: page", "Unit", "Attribution")


@pytest.mark.timeout(300)
def test_two_protocol_sessions_walk_the_journey_and_fetch_every_image() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / "protocol_load.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH), "--protocol", "--sessions", str(SESSIONS), "--rounds", "1",
           "--warmup-rounds", "0", "--skip-compare", "--entry", ENTRY, "--step-timeout", "60", "--out", str(out),
           "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    print(done.stdout[-4000:])
    assert out.is_file(), f"the benchmark wrote no result (exit {done.returncode}):\n{done.stderr[-4000:]}"
    result = json.loads(out.read_text())

    assert result["errors"] == 0, json.dumps(result["error_samples"], indent=1)[:4000]
    views = [v for v in result["views_list"] if v["phase"] == "load"]
    assert len(views) == result["views"] == SESSIONS * len(JOURNEY)
    for session in range(SESSIONS):
        walked = [v["label"] for v in views if v["session"] == session]
        assert walked == list(JOURNEY), walked  # every page and widget change, in order
    for v in views:
        # content: the run finished, and every image of the page as the run left it was fetched (HTTP < 400)
        assert v["finished_s"] is not None and v["content_s"] is not None and not v["errors"], v
        assert v["content_s"] >= v["finished_s"]
        if v["label"] in WITH_IMAGES:
            assert v["images"] > 0, v
    assert any(v["computed"] for v in views)  # it started cold: the renders and attributions happened here
    assert result["rss_mb"]["peak"] and result["server_cpu_s_per_view"] is not None
