"""Fair sharing: heavy jobs take turns in arrival order, at most `workers` at once and one per session."""

from __future__ import annotations

import threading
import time

import pytest

from explorer.jobs import JobQueue, QueueError


def _hold(queue: JobQueue, session: str, log: list[str], name: str, release: threading.Event,
          positions: list[int] | None = None) -> threading.Thread:  # fmt: skip
    def run() -> None:
        with queue.slot(session, on_wait=positions.append if positions is not None else None):
            log.append(f"start {name}")
            release.wait(5)
            log.append(f"end {name}")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_one_slot_serves_jobs_in_arrival_order_and_tells_each_its_place():
    q, log = JobQueue(workers=1, per_session=1), []
    gates = [threading.Event() for _ in range(3)]
    positions: list[list[int]] = [[], [], []]
    threads = []
    for i in range(3):
        threads.append(_hold(q, f"s{i}", log, f"job{i}", gates[i], positions[i]))
        _wait_for(lambda i=i: q.snapshot()["running"] + q.snapshot()["waiting"] == i + 1)
    assert log == ["start job0"] and q.snapshot() == {"running": 1, "waiting": 2, "workers": 1}
    assert positions[1] == [1] and positions[2] == [2]  # "1 job ahead", "2 jobs ahead"
    gates[0].set()
    _wait_for(lambda: "start job1" in log)
    _wait_for(lambda: positions[2][-1] == 1)  # job2 moved up one place
    assert "start job2" not in log
    gates[1].set()
    gates[2].set()
    for t in threads:
        t.join(5)
    assert log == ["start job0", "end job0", "start job1", "end job1", "start job2", "end job2"]
    assert q.snapshot() == {"running": 0, "waiting": 0, "workers": 1}


def test_a_session_holds_one_slot_and_its_second_job_does_not_block_others():
    q, log = JobQueue(workers=2, per_session=1), []
    a1, a2, b1 = threading.Event(), threading.Event(), threading.Event()
    ta1 = _hold(q, "A", log, "A1", a1)
    _wait_for(lambda: "start A1" in log)
    ta2 = _hold(q, "A", log, "A2", a2)  # a free slot exists, but A already holds its one
    _wait_for(lambda: q.snapshot()["waiting"] == 1)
    tb1 = _hold(q, "B", log, "B1", b1)  # arrives later, goes first: its session holds nothing
    _wait_for(lambda: "start B1" in log)
    assert "start A2" not in log
    a1.set()
    _wait_for(lambda: "start A2" in log)
    a2.set()
    b1.set()
    for t in (ta1, ta2, tb1):
        t.join(5)
    assert q.snapshot()["running"] == 0


def test_giving_up_while_waiting_leaves_the_line_and_raises_one_clear_error():
    q, log = JobQueue(workers=1), []
    gate = threading.Event()
    t = _hold(q, "A", log, "A", gate)
    _wait_for(lambda: "start A" in log)
    stop = threading.Event()
    stop.set()
    with pytest.raises(QueueError, match="Cancelled"), q.slot("B", should_stop=stop.is_set):
        pass
    with pytest.raises(QueueError, match="stayed busy"), q.slot("C", timeout_s=0.05, poll_s=0.01):
        pass
    assert q.snapshot() == {"running": 1, "waiting": 0, "workers": 1}
    gate.set()
    t.join(5)
    with q.slot("B"):  # the line is free again
        assert q.snapshot()["running"] == 1


def test_an_error_inside_the_job_releases_its_slot():
    q = JobQueue(workers=1)
    with pytest.raises(RuntimeError), q.slot("A"):
        raise RuntimeError("boom")
    assert q.snapshot()["running"] == 0
    with q.slot("A"):
        pass
