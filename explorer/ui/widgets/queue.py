"""Heavy work started by a page takes its turn in the server's fair queue (`explorer.jobs`), with a visible wait.

`turn(kind, container)` holds one of the queue's slots for this browser session while its block runs. While the job
waits, `container` says how many jobs are ahead of it ("2 jobs ahead of yours · waiting 4 s", in the session's
language), redrawn every second so a click (Stop, another page) still interrupts the wait; the line disappears when
the job starts. Cache hits never come here: only the work that really computes does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from explorer import jobs
from explorer.ui.i18n import number, t

REDRAW_S = 1.0  # how often the waiting line is redrawn (and a pending rerun gets its chance to interrupt)


def session_id() -> str:
    """This browser session's id (Streamlit's), the queue's unit of fairness; a fixed name outside a session."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def waiting_text(ahead: int, waited_s: float) -> str:
    """'2 jobs ahead of yours · waiting 4 s' (or the one-job form) in the session's language."""
    if ahead == 1:
        return t("jobs.ahead_one", s=number(waited_s, 0))
    return t("jobs.ahead", n=number(ahead), s=number(waited_s, 0))


@contextmanager
def turn(
    kind: str, container: Any = None, *, session: str | None = None, on_wait: Callable[[int], None] | None = None
) -> Iterator[None]:
    """Hold a slot of the job queue for `session` (default: this browser session) while the block runs.

    While waiting, an st.info in `container` (an `empty()` slot is made there) says how many jobs are ahead, and
    `on_wait(jobs_ahead)` is told too (e.g. the sessions watching this job's flight)."""
    line = (container if container is not None else st).empty()
    started = time.monotonic()
    shown: dict[str, Any] = {"ahead": 0, "at": 0.0}

    def draw(ahead: int) -> None:
        shown["ahead"], shown["at"] = ahead, time.monotonic()
        if on_wait is not None:
            on_wait(ahead)
        line.info(waiting_text(ahead, shown["at"] - started), icon=":material/hourglass_top:")

    def tick() -> bool:
        if time.monotonic() - shown["at"] >= REDRAW_S:
            draw(shown["ahead"])  # a Streamlit call: a pending rerun (Stop, a click) interrupts the wait here
        return False

    waited = False

    def queued(ahead: int) -> None:
        nonlocal waited
        waited = True
        draw(ahead)

    with jobs.job_queue().slot(session or session_id(), kind, on_wait=queued, should_stop=tick):
        if waited:
            line.empty()
        yield
