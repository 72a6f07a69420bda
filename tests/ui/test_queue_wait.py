"""A page's heavy work waits its turn in the job queue and says so: "2 jobs ahead of yours", then starts."""

from __future__ import annotations

import threading
import time

import pytest

import explorer.jobs as jobs
from explorer.ui.i18n import catalogue
from explorer.ui.widgets import queue as waiting


class Line:
    """Stands in for an st.empty() slot: records what is drawn in it."""

    def __init__(self) -> None:
        self.shown: list[str | None] = []

    def empty(self) -> Line:
        if self.shown:  # the slot itself: clearing it
            self.shown.append(None)
        return self

    def info(self, text: str, icon: str | None = None) -> None:
        self.shown.append(text)


def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _holder(queue: jobs.JobQueue, session: str, release: threading.Event, started: list[str]) -> threading.Thread:
    def run() -> None:
        with queue.slot(session, "render"):
            started.append(session)
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_second_session_waits_while_a_slot_is_held_and_is_told_how_many_jobs_are_ahead(monkeypatch):
    queue = jobs.JobQueue(workers=1, per_session=1)
    monkeypatch.setattr(jobs, "job_queue", lambda: queue)
    monkeypatch.setattr(waiting, "REDRAW_S", 0.2)
    started: list[str] = []
    release_a, release_c = threading.Event(), threading.Event()
    _holder(queue, "A", release_a, started)
    _until(lambda: started == ["A"])
    _holder(queue, "C", release_c, started)  # waits behind A
    _until(lambda: queue.snapshot()["waiting"] == 1)
    line, ran, told = Line(), threading.Event(), []

    def session_b() -> None:  # on_wait: the sessions watching B's work are told its place too
        with waiting.turn("render", line, session="B", on_wait=told.append):
            ran.set()

    b = threading.Thread(target=session_b, daemon=True)
    b.start()
    _until(lambda: any(s and "2 jobs ahead of yours" in s for s in line.shown))
    time.sleep(0.5)
    assert not ran.is_set()  # B really waits
    assert len([s for s in line.shown if s]) >= 2  # redrawn while waiting (the seconds count up)
    release_a.set()  # A done: C runs, B is next
    _until(lambda: any(s and s.startswith("1 job ahead of yours") for s in line.shown))
    assert not ran.is_set()
    release_c.set()
    b.join(5)
    assert ran.is_set() and line.shown[-1] is None  # the waiting line is gone once B runs
    assert told[0] == 2 and told[-1] == 1 and set(told) == {2, 1}
    assert queue.snapshot() == {"running": 0, "waiting": 0, "workers": 1}


def test_no_line_when_a_slot_is_free_and_both_languages_say_it(monkeypatch):
    queue = jobs.JobQueue(workers=1, per_session=1)
    monkeypatch.setattr(jobs, "job_queue", lambda: queue)
    line = Line()
    with waiting.turn("render", line, session="alone"):
        assert queue.snapshot()["running"] == 1
    assert line.shown == []  # nothing drawn: the job started at once
    assert catalogue("en")["jobs.ahead"].format(n=2, s=4) == "2 jobs ahead of yours · waiting 4 s"
    assert catalogue("pt-BR")["jobs.ahead"].format(n=2, s=4) == "2 tarefas à frente da sua · esperando há 4 s"
    assert waiting.waiting_text(1, 3.2) == "1 job ahead of yours · waiting 3 s"


def test_renders_preview_less_often_while_others_wait_and_their_images_do_not_change(monkeypatch):
    from explorer.featurevis import get_preset
    from explorer.ui.widgets import gallery

    queue = jobs.JobQueue(workers=1, per_session=1)
    monkeypatch.setattr(gallery, "job_queue", lambda: queue)
    fast = get_preset("fast")
    assert gallery.preview_pace(fast) == (fast, 0.15)  # nobody waits: the preset's own previews
    release, started = threading.Event(), []
    _holder(queue, "A", release, started)
    _until(lambda: started == ["A"])
    _holder(queue, "B", threading.Event(), started)
    _until(lambda: queue.snapshot()["waiting"] == 1)
    paced, every_s = gallery.preview_pace(fast)
    assert paced.preview_every_s == gallery.BUSY_PREVIEW_S > fast.preview_every_s and every_s > 0.15
    assert paced.cache_params() == fast.cache_params()  # the same pixels, the same cache entries
    release.set()


@pytest.mark.slow  # about 7 s: the Layer page's model and ladder
def test_two_sessions_opening_the_same_cold_page_at_once_share_one_render(monkeypatch, tmp_path):
    """A class opening the same link: the second session watches the first one's render (the same cache keys) and
    shows its images; nothing is rendered twice, and the watcher takes no slot in the queue."""
    import streamlit as st
    from uiapp import Renders, app_on

    import explorer.featurevis.store as store

    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()
    queue = jobs.JobQueue(workers=1, per_session=1)
    monkeypatch.setattr(jobs, "job_queue", lambda: queue)
    flights = jobs.shared_work()
    renders = Renders(monkeypatch, fake=True)
    fake = store.render
    rendering, release = threading.Event(), threading.Event()

    def gated(*args, **kwargs):  # the first session's render holds until the second one watches it
        rendering.set()
        assert release.wait(60), "never released"
        return fake(*args, **kwargs)

    monkeypatch.setattr(store, "render", gated)
    query = {"layer": "blocks.1.0", "preset": "fast", "steps": "2", "size": "32"}
    pages = {"first": app_on("layer", timeout=120, **query), "second": app_on("layer", timeout=120, **query)}
    failures: list[BaseException] = []

    def run(name: str) -> threading.Thread:
        def go() -> None:
            try:
                pages[name].run()
            except BaseException as exc:  # reported by the assertions below
                failures.append(exc)

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        return thread

    first = run("first")
    assert rendering.wait(120)  # the first session renders its first batch, holding the render slot
    second = run("second")
    _until(lambda: any(flights.snapshot().values()), timeout=30)  # the second watches that batch
    assert queue.snapshot()["waiting"] == 0  # ...without queueing for a slot of its own
    release.set()
    first.join(120)
    second.join(120)
    assert not failures and not first.is_alive() and not second.is_alive()
    for at in pages.values():
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert len(renders.calls) == 2  # the page's two batches, rendered once for both sessions
    images = [[im.url for el in at.get("image") for im in el.proto.imgs] for at in pages.values()]
    assert len(images[0]) == len(images[1]) == renders.images  # every unit's picture on both pages
    assert flights.snapshot() == {}  # nothing left in flight
