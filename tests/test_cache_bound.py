"""The cache's size bound: the setting, LRU eviction of derived entries only, amortised walks, several writers,
and `python -m explorer cache info|prune|clear`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import explorer.cli as cli
from explorer.cache import (
    ENV_VAR,
    MAX_GB_VAR,
    ORPHAN_GRACE,
    STATE_FILE,
    USER_DATA_DIRS,
    WALK_SLACK,
    Cache,
    CacheError,
    cache_max_bytes,
    cache_summary,
    clear,
    prune,
)
from explorer.errors import ExplorerError

ROOT = Path(__file__).resolve().parent.parent


def payload(key: str, size: int = 1000) -> bytes:
    """Bytes determined by the key, so any reader can tell whether it got the right ones."""
    block = hashlib.sha256(key.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def key_of(i: int, tag: str = "k") -> str:
    return hashlib.sha256(f"{tag}{i}".encode()).hexdigest()


def entry_files(root: Path) -> dict[str, set[str]]:
    """Files of every derived kind, grouped by key (name before the first dot), temporary files left out."""
    groups: dict[str, set[str]] = {}
    for p in root.rglob("*"):
        top = p.parts[len(root.parts)]
        if p.is_file() and top not in (*USER_DATA_DIRS, "subsets") and p.parent != root and p.name[0] != ".":
            groups.setdefault(p.name.split(".", 1)[0], set()).add(p.name)
    return groups


def assert_pairs_whole(root: Path) -> None:
    for key, names in entry_files(root).items():
        assert names == {f"{key}.npy", f"{key}.json"}, f"half entry {names}"


def user_data(root: Path) -> dict[str, bytes]:
    """Files in every user-data folder and a subsets folder, some named like cache entries."""
    files = {}
    for folder in (*USER_DATA_DIRS, "subsets"):
        k = key_of(0, folder)
        for rel in (f"{folder}/a.jpg", f"{folder}/{k[:2]}/{k}.json", f"{folder}/{k[:2]}/{k}.png", f"{folder}/x/y.bin"):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload(rel, 3000))
            os.utime(path, (1, 1))  # the oldest files of all: first in line if eviction ever looked
            files[rel] = path.read_bytes()
    return files


def on_disk(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in files if (root / rel).exists()}


# --------------------------------------------------------------------------- the setting


@pytest.mark.parametrize(
    ("text", "expected"), [("", 5_000_000_000), ("5", 5e9), ("0.25", 2.5e8), (" 2 ", 2e9), ("0", 0)]
)
def test_bound_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv(MAX_GB_VAR, text)
    assert cache_max_bytes() == int(expected)


@pytest.mark.parametrize("text", ["abc", "-1", "nan", "inf", "5GB", "1e999"])
def test_a_bad_bound_is_one_clear_sentence_before_any_work(monkeypatch, tmp_path, text):
    monkeypatch.setenv(MAX_GB_VAR, text)
    with pytest.raises(CacheError, match=MAX_GB_VAR) as e:
        Cache(tmp_path)
    assert isinstance(e.value, ExplorerError) and "\n" not in str(e.value) and repr(text) in str(e.value)


# --------------------------------------------------------------------------- eviction


def test_puts_keep_derived_entries_under_the_bound(tmp_path):
    bound = 30_000
    cache = Cache(tmp_path, max_bytes=bound)
    for i in range(120):
        cache.put("scan", key_of(i), payload(key_of(i)), {"i": i}, suffix=".npy")
        assert cache_summary(tmp_path, bound).derived_bytes <= bound, f"after put {i}"
    s = cache_summary(tmp_path, bound)
    assert s.derived_bytes >= 0.5 * bound  # eviction stops near the low-water mark, it does not empty the cache
    assert_pairs_whole(tmp_path)


def test_least_recently_used_go_first_and_a_hit_counts_as_use(tmp_path):
    cache = Cache(tmp_path, max_bytes=10**9)
    keys = [key_of(i) for i in range(10)]
    for t, k in enumerate(keys):
        cache.put("scan", k, payload(k), {}, suffix=".npy")
        record = cache.paths("scan", k, ".npy")[1]
        os.utime(record, (1_000_000 + t, 1_000_000 + t))  # written in order, long ago
    for k in (keys[0], keys[2]):
        assert cache.get("scan", k, ".npy") is not None  # used now
    per_entry = cache_summary(tmp_path).derived_bytes // 10
    result = prune(tmp_path, max_bytes=5 * per_entry)
    assert result.evicted == 5 and result.remaining_bytes <= 5 * per_entry
    kept = [k for k in keys if cache.get("scan", k, ".npy") is not None]
    assert kept == [keys[0], keys[2], keys[7], keys[8], keys[9]]
    assert_pairs_whole(tmp_path)


def test_user_data_is_never_evicted_or_cleared_without_asking(tmp_path):
    files = user_data(tmp_path)
    cache = Cache(tmp_path, max_bytes=0)  # keep nothing derived
    for i in range(5):
        cache.put("scan", key_of(i), payload(key_of(i)), {}, suffix=".npy")
    assert entry_files(tmp_path) == {}  # each put evicted everything derived, itself included
    assert prune(tmp_path, max_bytes=0).remaining_bytes == 0
    clear(tmp_path)
    assert on_disk(tmp_path, files) == files
    s = cache_summary(tmp_path, 0)
    assert {k.name: k.category for k in s.kinds} == {
        "scan": "derived", "uploads": "user data", "runs": "user data", "datasets": "user data",
        "demo": "user data", "sweeps": "user data", "tour": "user data", "subsets": "other",
    }  # fmt: skip
    assert s.total("user data") == len(USER_DATA_DIRS) * 4 * 3000 and s.derived_bytes == 0
    result = clear(tmp_path, user_data=True)
    assert set(result.user_dirs) == {*USER_DATA_DIRS, "subsets"} and on_disk(tmp_path, files) == {}


def test_a_crashed_writers_leftovers_are_reaped_only_when_old(tmp_path):
    cache = Cache(tmp_path, max_bytes=10**9)
    k = key_of(1)
    cache.put("scan", k, payload(k), {}, suffix=".npy")
    folder = cache.paths("scan", k, ".npy")[0].parent

    def at(key: str, suffix: str) -> Path:
        path = cache.paths("scan", key, suffix)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    young = [folder / f".{k}.npy.abc.tmp", at(key_of(2), ".npy")]  # a write in progress
    old = [folder / f".{k}.json.def.tmp", at(key_of(3), ".npy"), at(key_of(4), ".json")]
    for p in young + old:
        p.write_bytes(b"x" * 100)
    for p in old:
        os.utime(p, (time.time() - ORPHAN_GRACE - 5,) * 2)
    assert cache_summary(tmp_path).kinds[0].incomplete == 5
    result = prune(tmp_path, max_bytes=10**9)
    assert result.evicted == 0 and result.loose_removed == 3
    assert all(p.exists() for p in young) and not any(p.exists() for p in old)
    assert cache.get("scan", k, ".npy") is not None


def test_walks_are_amortised_over_what_is_written(tmp_path):
    bound = 1_000_000
    cache = Cache(tmp_path, max_bytes=bound)
    state = tmp_path / STATE_FILE

    def walked_at() -> float:
        return json.loads(state.read_text())["walked_at"]

    cache.put("scan", key_of(0), payload(key_of(0)), {}, suffix=".npy")
    first = walked_at()  # a new root: the first put walks, to learn the size
    entry = cache_summary(tmp_path).derived_bytes
    due = math.ceil(WALK_SLACK * bound / entry)  # the put whose bytes reach the slack since that walk
    for i in range(1, due):
        cache.put("scan", key_of(i), payload(key_of(i)), {}, suffix=".npy")
        assert walked_at() == first, f"walked again at put {i}"
    cache.put("scan", key_of(due), payload(key_of(due)), {}, suffix=".npy")
    assert walked_at() > first
    on_disk_now = cache_summary(tmp_path).derived_bytes
    assert json.loads(state.read_text())["derived_bytes"] == on_disk_now == (due + 1) * entry


def test_a_new_process_starts_from_the_last_walk_instead_of_walking(tmp_path):
    Cache(tmp_path, max_bytes=10**9).put("scan", key_of(0), payload(key_of(0)), {}, suffix=".npy")
    before = json.loads((tmp_path / STATE_FILE).read_text())
    code = f"""
from explorer.cache import Cache
Cache({str(tmp_path)!r}, max_bytes=10**9).put("scan", {key_of(1)!r}, b"x" * 1000, {{}}, suffix=".npy")
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    assert json.loads((tmp_path / STATE_FILE).read_text()) == before  # it did not walk


WRITER = textwrap.dedent(
    """
    import hashlib, sys, threading
    from explorer.cache import Cache

    root, bound, tag, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

    def payload(key):
        block = hashlib.sha256(key.encode()).digest()
        return (block * 40)[:1000]

    def write(t):
        cache = Cache(root, max_bytes=bound)
        for i in range(n):
            key = hashlib.sha256(f"{tag}{t}-{i}".encode()).hexdigest()
            cache.put("scan", key, payload(key), {"i": i}, suffix=".npy")
            got = cache.get("scan", key, suffix=".npy")
            assert got is None or got.data == payload(key)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    """
)


def test_several_processes_and_threads_writing_and_reading_at_once(tmp_path):
    bound, n = 60_000, 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(bound), tag, str(n)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p", "q")
    ]
    wrong: list[str] = []
    stop = threading.Event()

    def read() -> None:  # a reader in this process, on keys the writers are writing and evicting
        cache = Cache(tmp_path, max_bytes=bound)
        while not stop.is_set():
            for tag in ("p", "q"):
                for i in range(0, n, 7):
                    key = hashlib.sha256(f"{tag}0-{i}".encode()).hexdigest()
                    got = cache.get("scan", key, suffix=".npy")
                    if got is not None and got.data != payload(key):
                        wrong.append(key)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        stop.set()
        reader.join()
    assert [p.returncode for p in procs] == [0, 0], errors
    assert wrong == []
    assert_pairs_whole(tmp_path)  # distinct keys per writer: no half entries, even mid-eviction
    # each process's estimate misses the other's writes since its own last walk, which are under one bound
    assert bound * 0.5 <= cache_summary(tmp_path, bound).derived_bytes <= 2 * bound
    assert prune(tmp_path, max_bytes=bound).remaining_bytes <= bound
    cache = Cache(tmp_path, max_bytes=bound)
    for key in entry_files(tmp_path):
        got = cache.get("scan", key, suffix=".npy")
        assert got is not None and got.data == payload(key)


# --------------------------------------------------------------------------- the command


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    monkeypatch.delenv(MAX_GB_VAR, raising=False)
    return tmp_path


def fill(root: Path, n: int = 6) -> None:
    cache = Cache(root, max_bytes=10**9)
    for i in range(n):
        cache.put("featurevis", key_of(i), payload(key_of(i), 2000), {}, suffix=".npy")
        cache.put("examples", key_of(i, "e"), payload(key_of(i, "e"), 500), {}, suffix=".npz")


def test_cache_info(root, capsys):
    fill(root)
    files = user_data(root)
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(root) in out and "5.00 GB bound" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line and not line.startswith("derived")}
    assert lines["featurevis"][1:3] == ["derived", "6"] and lines["examples"][1:3] == ["derived", "6"]
    assert lines["uploads"][1:4] == ["user", "data", "4"]
    assert cli.main(["cache", "info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["user_data_bytes"] == len(USER_DATA_DIRS) * 4 * 3000 and data["other_bytes"] == 4 * 3000  # subsets
    assert len(files) == (len(USER_DATA_DIRS) + 1) * 4
    assert data["derived_bytes"] == cache_summary(root).derived_bytes > 6 * 2500


def test_cache_prune(root, capsys):
    fill(root)
    files = user_data(root)
    assert cli.main(["cache", "prune", "--max-gb", "0.00001"]) == 0  # 10 kB
    out = capsys.readouterr().out
    assert out.startswith("evicted ") and cache_summary(root).derived_bytes <= 10_000
    assert on_disk(root, files) == files
    assert cli.main(["cache", "prune", "--max-gb", "lots"]) == 2
    assert "--max-gb must be a number of gigabytes" in capsys.readouterr().err


def test_cache_clear_asks_before_touching_user_data(root, capsys):
    fill(root)
    files = user_data(root)
    assert cli.main(["cache", "clear", "--all"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--yes" in err
    assert on_disk(root, files) == files and cache_summary(root).derived_bytes > 0  # refused: nothing touched
    assert cli.main(["cache", "clear"]) == 0
    assert "removed 12 derived entries" in capsys.readouterr().out
    assert cache_summary(root).derived_bytes == 0 and on_disk(root, files) == files
    assert cli.main(["cache", "clear", "--all", "--yes"]) == 0
    assert on_disk(root, files) == {}


def test_a_bad_bound_in_the_environment_is_one_line(root, monkeypatch, capsys):
    monkeypatch.setenv(MAX_GB_VAR, "five")
    assert cli.main(["cache", "info"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and MAX_GB_VAR in err and len(err.splitlines()) == 1


def test_a_sweep_the_app_stored_is_user_work_counted_never_evicted(tmp_path):
    """A sweep takes minutes to hours: its file is counted as user data and survives pruning to any bound."""
    from explorer.cache import cache_summary, prune

    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    kept = sweeps / "0123456789abcdef.json"
    kept.write_text('{"tasks": {}}')
    old = 1_000_000_000
    os.utime(kept, (old, old))  # long past the grace given to half-written entries
    prune(tmp_path, max_bytes=0)
    assert kept.exists()
    usage = {k.name: k for k in cache_summary(tmp_path, 0).kinds}
    assert usage["sweeps"].category == "user data" and usage["sweeps"].bytes == kept.stat().st_size
