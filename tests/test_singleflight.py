"""Work shared by the sessions of one server: the same work asked for by several sessions at once is done once
(`explorer.jobs.SingleFlight`), and a warm image is read from the disk cache once, not on every run of every session
(`explorer.featurevis.store.HitMemo`).

Every wait is on a threading.Event (with a timeout only as a safety net): no test relies on a sleep winning a race.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import pytest

from explorer.cache import Cache
from explorer.featurevis.store import KIND, HitMemo
from explorer.jobs import Flight, QueueError, SingleFlight

TIMEOUT_S = 10


class Rerun(BaseException):
    """Stands in for Streamlit's StopException / RerunException (BaseException subclasses): a page rerun mid-work."""


class Work:
    """Work that signals when it starts, then blocks until released; counts its runs."""

    def __init__(self, result: Any = "pixels", fail_first: bool = False) -> None:
        self.result, self.fail_first = result, fail_first
        self.runs = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, flight: Flight[Any]) -> Any:
        self.runs += 1
        flight.report(1, 2, preview="preview")
        self.started.set()
        assert self.release.wait(TIMEOUT_S), "never released"
        if self.fail_first and self.runs == 1:
            raise Rerun("the leader's page was rerun")
        return self.result


def call(sf: SingleFlight, key: str, work: Work, out: dict[str, Any], name: str, **kw: Any) -> threading.Thread:
    def run() -> None:
        try:
            out[name] = sf.run(key, work, **kw)
        except BaseException as exc:  # Rerun, like Streamlit's own, is no Exception
            out[name] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def watcher_seen() -> tuple[threading.Event, list[tuple[int, int, Any]], Any]:
    """An on_wait callback that records what the watcher saw and sets an event the first time it is called."""
    seen, log = threading.Event(), []

    def on_wait(flight: Flight[Any]) -> None:
        log.append((flight.done_steps, flight.total_steps, flight.preview))
        seen.set()

    return seen, log, on_wait


def test_two_callers_of_the_same_key_run_the_work_once_and_both_get_the_result():
    sf, work, out = SingleFlight(), Work(), {}
    leader = call(sf, "row-1", work, out, "leader")
    assert work.started.wait(TIMEOUT_S)
    seen, log, on_wait = watcher_seen()
    watcher = call(sf, "row-1", work, out, "watcher", on_wait=on_wait)
    assert seen.wait(TIMEOUT_S)  # the second caller is watching the first one's flight
    assert sf.watching("row-1") is not None and sf.watching("row-1").watchers == 1
    assert sf.snapshot() == {"row-1": 1}
    work.release.set()
    leader.join(TIMEOUT_S)
    watcher.join(TIMEOUT_S)
    assert work.runs == 1
    assert out == {"leader": ("pixels", True), "watcher": ("pixels", False)}
    assert log[0] == (1, 2, "preview")  # the watcher saw the leader's progress and preview
    assert len(sf) == 0 and sf.watching("row-1") is None and sf.snapshot() == {}  # nothing kept once it ended


def test_different_keys_run_twice():
    sf, out = SingleFlight(), {}
    first, second = Work("a"), Work("b")
    t1 = call(sf, "row-1", first, out, "first")
    assert first.started.wait(TIMEOUT_S)
    t2 = call(sf, "row-2", second, out, "second")
    assert second.started.wait(TIMEOUT_S)  # not blocked by the first key's flight
    assert len(sf) == 2
    first.release.set()
    second.release.set()
    t1.join(TIMEOUT_S)
    t2.join(TIMEOUT_S)
    assert (first.runs, second.runs) == (1, 1)
    assert out == {"first": ("a", True), "second": ("b", True)}


def test_a_key_asked_again_after_its_flight_ended_runs_again():
    sf, work = SingleFlight(), Work()
    work.release.set()
    assert sf.run("row-1", work) == ("pixels", True)
    assert sf.run("row-1", work) == ("pixels", True)  # results live in the caller's cache, not here
    assert work.runs == 2


def test_a_leader_whose_page_is_rerun_hands_the_key_to_its_watcher():
    sf, work, out = SingleFlight(), Work(fail_first=True), {}
    leader = call(sf, "row-1", work, out, "leader")
    assert work.started.wait(TIMEOUT_S)
    seen, _, on_wait = watcher_seen()
    watcher = call(sf, "row-1", work, out, "watcher", on_wait=on_wait)
    assert seen.wait(TIMEOUT_S)
    work.release.set()  # the leader raises; the watcher runs the work itself (released already: it finishes)
    leader.join(TIMEOUT_S)
    watcher.join(TIMEOUT_S)
    assert isinstance(out["leader"], Rerun)
    assert out["watcher"] == ("pixels", True)
    assert work.runs == 2 and len(sf) == 0


def test_a_watcher_that_stops_gives_up_and_the_flight_goes_on():
    sf, work, out = SingleFlight(), Work(), {}
    leader = call(sf, "row-1", work, out, "leader")
    assert work.started.wait(TIMEOUT_S)
    stop = threading.Event()
    seen, _, on_wait = watcher_seen()
    watcher = call(sf, "row-1", work, out, "watcher", on_wait=on_wait, should_stop=stop.is_set, poll_s=0.01)
    assert seen.wait(TIMEOUT_S)
    stop.set()
    watcher.join(TIMEOUT_S)
    assert isinstance(out["watcher"], QueueError)
    assert sf.watching("row-1").watchers == 0
    work.release.set()
    leader.join(TIMEOUT_S)
    assert out["leader"] == ("pixels", True) and work.runs == 1


def test_the_leaders_own_error_is_raised_to_it():
    sf = SingleFlight()

    def broken(flight: Flight[Any]) -> Any:
        raise ValueError("no such layer")

    with pytest.raises(ValueError, match="no such layer"):
        sf.run("row-1", broken)
    assert len(sf) == 0


# --------------------------------------------------------------------------- warm hits served from memory


class CountingCache(Cache):
    """A disk cache that counts its reads."""

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.reads = 0

    def get(self, kind: str, key: str, suffix: str = ".png") -> Any:
        self.reads += 1
        return super().get(kind, key, suffix)


def picture(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_a_warm_hit_is_read_once_and_its_pixels_are_shared_read_only(tmp_path):
    cache, memo = CountingCache(tmp_path), HitMemo()
    cache.put_image(KIND, "k1", picture(1))
    first = memo.get(cache, "k1")
    second = memo.get(cache, "k1")
    assert first is not None and second is not None
    assert cache.reads == 1 and (memo.misses, memo.hits) == (1, 1)
    assert second[1] is first[1] and np.array_equal(second[1], picture(1))
    assert not second[1].flags.writeable  # one array for every session: nobody may draw into it
    with pytest.raises(ValueError):
        second[1][0, 0, 0] = 0


def test_a_replaced_or_removed_entry_is_read_again(tmp_path):
    cache, memo = CountingCache(tmp_path), HitMemo()
    cache.put_image(KIND, "k1", picture(1))
    assert memo.get(cache, "k1") is not None
    path = cache.paths(KIND, "k1")[0]
    cache.put_image(KIND, "k1", picture(2, size=12))  # another payload: another size (and modification time)
    got = memo.get(cache, "k1")
    assert got is not None and np.array_equal(got[1], picture(2, size=12)) and cache.reads == 2
    os.remove(path)
    assert memo.get(cache, "k1") is None and len(memo) == 0  # a miss: no stale picture


def test_hits_are_verified_again_after_reverify_s_and_the_memo_keeps_its_bound(tmp_path):
    cache = CountingCache(tmp_path)
    for i in range(4):
        cache.put_image(KIND, f"k{i}", picture(i))
    again = HitMemo(reverify_s=0.0)
    again.get(cache, "k0")
    again.get(cache, "k0")
    assert cache.reads == 2  # read through Cache.get each time (checksum verified, marked used)
    png = max(len(cache.paths(KIND, f"k{i}")[0].read_bytes()) for i in range(4))
    small = HitMemo(max_bytes=2 * (8 * 8 * 3 + png))  # two pictures: their pixels and their PNG bytes
    for i in range(4):
        assert small.get(cache, f"k{i}") is not None
    assert len(small) == 2  # the least recently used dropped
    reads = cache.reads
    small.get(cache, "k3")
    assert cache.reads == reads  # the newest is still held
    small.get(cache, "k0")
    assert cache.reads == reads + 1  # the oldest was dropped
