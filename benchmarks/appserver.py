"""One `streamlit run app.py` on a free port of 127.0.0.1, with its own cache: what the browser benchmarks start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(cache: Path, cpus: set[int] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The server (pinned to `cpus` when given) and its URL, once its health check answers (2 minutes at most)."""
    port = free_port()
    env = {**os.environ, "LAYER_EXPLORER_CACHE": str(cache)}
    pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    cmd = [*pin, sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
           str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("streamlit did not start")
