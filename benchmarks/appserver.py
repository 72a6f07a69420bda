"""One `streamlit run app.py` on a free port of 127.0.0.1 with its own cache, and what the load benchmarks measure
around it: its memory and CPU over time, the fine-tuned run the Compare page opens, percentiles.

Shared by `bench_load.py` (browsers and protocol clients), `load_protocol.py`, `bench_first_tile.py` and
`screenshots.py`. Every request goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN_NAME = "loadtest"  # the fine-tuned run the load tests' Compare page opens (the only run in their cache)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(url: str) -> bool:
    """Whether the server at `url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class Server:
    """`python -m streamlit run app.py` on 127.0.0.1 with its own cache (pinned to `cpus` when given); its output
    goes to `log` (else nowhere); stopped by `stop()`."""

    def __init__(
        self, cache: Path, *, port: int = 0, log: Path | None = None, cpus: set[int] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.port, self.cache, self.log_path = port or free_port(), cache, log
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "LAYER_EXPLORER_CACHE": str(cache), "PYTHONUNBUFFERED": "1", **(env or {})}
        pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
        cmd = [*pin, sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
               str(self.port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]  # fmt: skip
        self._out = open(log, "wb") if log is not None else None  # noqa: SIM115  (closed in stop)
        out = self._out if self._out is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not healthy(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start (exit {self.proc.poll()}):\n{self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._out is not None:
            self._out.close()


def start_server(cache: Path, cpus: set[int] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The server (pinned to `cpus` when given) and its URL, once its health check answers (2 minutes at most)."""
    server = Server(cache, cpus=cpus)
    try:
        server.wait_healthy()
    except RuntimeError:
        server.stop()
        raise SystemExit("streamlit did not start") from None
    return server.proc, server.url


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (q in 0..100); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --------------------------------------------------------------------------- the server's memory and CPU


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name: state is fields[0], utime fields[11]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """VmRSS (MB) and CPU seconds of one process, every `every_s`, on a thread; `mark(name)` notes a phase boundary."""

    def __init__(self, pid: int, every_s: float = 1.0) -> None:
        self.pid, self.every_s = pid, every_s
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float, float]] = []  # (seconds since start, RSS MB, CPU seconds)
        self.machine: list[tuple[float, float, float, float]] = []  # (seconds, busy CPU s, all CPU s, load average)
        self.marks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, name: str) -> None:
        self.marks[name] = round(self.now(), 2)

    def read(self) -> tuple[float, float] | None:
        """(RSS MB, CPU seconds) of the process now; None once it is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        cpu = process_cpu_s(self.pid)
        if cpu is None:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return (int(match.group(1)) / 1024 if match else float("nan")), cpu

    @staticmethod
    def machine_cpu() -> tuple[float, float]:
        """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        total = sum(values[:8]) / os.sysconf("SC_CLK_TCK")
        return total - (values[3] + values[4]) / os.sysconf("SC_CLK_TCK"), total

    def _run(self) -> None:
        while not self._stop.is_set():
            got = self.read()
            if got is not None:
                self.samples.append((round(self.now(), 2), round(got[0], 1), round(got[1], 2)))
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self.machine.append((round(self.now(), 2), *self.machine_cpu(), os.getloadavg()[0]))
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def window(self, start: float, end: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if start <= s[0] <= end]


def rss_summary(sampler: RssSampler, start: float, end: float) -> dict[str, Any]:
    """RSS over [start, end]: start/peak/end, and growth over its last half (median of 10 s around the middle vs
    median of the last 10 s), plus the server's CPU use."""
    xs = sampler.window(start, end)
    if len(xs) < 4:
        return {"samples": len(xs)}
    mid = (start + end) / 2
    around_mid = [r for t, r, _ in xs if abs(t - mid) <= 5] or [xs[len(xs) // 2][1]]
    last = [r for t, r, _ in xs if t >= end - 10] or [xs[-1][1]]
    mid_mb, end_mb = percentile(around_mid, 50), percentile(last, 50)
    second_half = [r for t, r, _ in xs if t >= mid]
    return {
        "samples": len(xs),
        "start_mb": xs[0][1],
        "peak_mb": max(r for _, r, _ in xs),
        "end_mb": xs[-1][1],
        "mid_median_mb": mid_mb,
        "end_median_mb": end_mb,
        "last_half_growth_pct": round(100 * (end_mb - mid_mb) / mid_mb, 2) if mid_mb and end_mb else None,
        "last_half_peak_over_mid_pct": round(100 * (max(second_half) - mid_mb) / mid_mb, 2) if mid_mb else None,
        "server_cpu_s": round(xs[-1][2] - xs[0][2], 1),
        "server_cpu_cores": round((xs[-1][2] - xs[0][2]) / max(xs[-1][0] - xs[0][0], 1e-9), 2),
        **machine_summary(sampler, start, end),
    }


def machine_summary(sampler: RssSampler, start: float, end: float) -> dict[str, Any]:
    """How busy the whole machine was over [start, end]: the server, the load generator and anything else."""
    ms = [m for m in sampler.machine if start <= m[0] <= end]
    if len(ms) < 2:
        return {}
    seconds = ms[-1][0] - ms[0][0]
    busy, total = ms[-1][1] - ms[0][1], ms[-1][2] - ms[0][2]
    return {
        "machine_cpus": os.cpu_count(),
        "machine_busy_pct": round(100 * busy / total, 1) if total else None,
        "machine_busy_cores": round(busy / seconds, 2) if seconds else None,
        "loadavg_1min_mean": round(sum(m[3] for m in ms) / len(ms), 2),
    }


def rss_curve(sampler: RssSampler, start: float, end: float, points: int = 12) -> list[tuple[float, float]]:
    """About `points` (seconds since `start`, RSS MB) samples spread over [start, end], the last one included."""
    xs = sampler.window(start, end)
    if not xs:
        return []
    step = max(1, len(xs) // points)
    picks = xs[::step] + ([xs[-1]] if (len(xs) - 1) % step else [])
    return [(round(t - start, 1), r) for t, r, _ in picks]


# --------------------------------------------------------------------------- setup: data and the fine-tuned run


def small_digits(cache: Path, per_class: int) -> Path:
    """A copy of demo:digits with `per_class` images per class, under the cache (so the comparison is cheap)."""
    env = {**os.environ, "LAYER_EXPLORER_CACHE": str(cache)}
    code = "from explorer.data import resolve_data; print(resolve_data('demo:digits'))"
    src = Path(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1])  # fmt: skip
    dest = cache / "data" / f"digits-{per_class}"
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        (dest / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.glob("*.png"))[:per_class]:
            shutil.copyfile(image, dest / folder.name / image.name)
    return dest


def make_run(cache: Path, data: str, name: str = RUN_NAME) -> dict[str, Any]:
    """Fine-tune the bundled model for one tiny epoch with the CLI, where the app's run list finds it."""
    out = cache / "runs" / name / f"{name}.safetensors"
    cmd = [sys.executable, "-m", "explorer", "finetune", "--data", data, "--freeze-after", "none", "--epochs", "1",
           "--max-images", "120", "--input-size", "64", "--out", str(out), "--json"]  # fmt: skip
    started = time.perf_counter()
    env = {**os.environ, "LAYER_EXPLORER_CACHE": str(cache)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"fine-tuning failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"name": name, "data": data, "checkpoint": str(out), "seconds": round(time.perf_counter() - started, 1)}


def prepare_run(cache: Path, data_per_class: int, log: Any = print) -> dict[str, Any]:
    """The fine-tuned run the Compare page opens, made in `cache` unless it is there already (a reused cache)."""
    if (cache / "runs" / RUN_NAME / f"{RUN_NAME}.safetensors").is_file():
        return {"name": RUN_NAME, "reused": True}
    data = str(small_digits(cache, data_per_class)) if data_per_class > 0 else "demo:digits"
    log(f"fine-tuning the run {RUN_NAME} on {data} (one small epoch)…")
    return make_run(cache, data)


@contextlib.contextmanager
def load_server(
    cache: str | None, *, data_per_class: int | None, keep_cache: bool = False, port: int = 0,
    log: Callable[..., None] = print,
) -> Iterator[tuple[Server, RssSampler, dict[str, Any]]]:  # fmt: skip
    """What a load test runs against: a temporary cache (or the folder `cache`, kept), the fine-tuned run there
    (`data_per_class` None: none), one server on it and a sampler of its memory and CPU from its start. Yields
    (server, sampler, setup facts); afterwards both are stopped and a temporary cache is removed (`keep_cache`:
    kept, with the server's log)."""
    folder = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="layer-explorer-load-"))
    folder.mkdir(parents=True, exist_ok=True)
    server: Server | None = None
    sampler: RssSampler | None = None
    setup: dict[str, Any] = {"cache": str(folder)}
    try:
        if data_per_class is not None:
            setup["run"] = prepare_run(folder, data_per_class, log=log)
        started = time.perf_counter()
        server = Server(folder, port=port, log=folder / "server.log")
        sampler = RssSampler(server.pid)
        server.wait_healthy()
        setup["server_start_s"] = round(time.perf_counter() - started, 1)
        setup["server"] = {"url": server.url, "pid": server.pid, "cwd": str(ROOT)}
        log(f"server {server.url} (pid {server.pid}) up in {setup['server_start_s']} s")
        yield server, sampler, setup
    finally:
        if sampler is not None:
            sampler.stop()
        if server is not None:
            server.stop()
        if not keep_cache and not cache:
            shutil.rmtree(folder, ignore_errors=True)
