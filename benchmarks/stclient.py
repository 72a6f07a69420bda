"""One browser tab of a Streamlit app, spoken over Streamlit's own protocol: a load-test user without a browser.

What the tab does is what Streamlit's frontend does (read from a real Chromium's frames and the installed package,
`streamlit/web/server/starlette/starlette_websocket.py`, `streamlit/runtime/app_session.py`):

* opening a link: GET the page, ``/_stcore/health`` and ``/_stcore/host-config`` (the JavaScript bundle is in the
  browser's cache), then a websocket to ``/_stcore/stream`` with the subprotocol ``streamlit`` (no Origin header, so
  no XSRF token is needed) and a ``BackMsg.rerun_script`` carrying the link's query string and page name;
* the server answers with ``ForwardMsg``s: ``new_session`` at each run's start, ``navigation`` (the pages and their
  script hashes), ``delta``s that build the page as a tree addressed by ``metadata.delta_path``, ``page_info_changed``
  (the URL's query string) and ``script_finished``;
* a sidebar link is a ``rerun_script`` with the page's script hash, an empty query string and the sidebar's widget
  values; a page link the same with its query string; a widget change a ``rerun_script`` with the page's hash, the
  current query string and the widget's new value (``WidgetState``, typed as the widget registered it);
* every image that arrives (``imgs`` elements: ``/media/<hash>.png``) is fetched over HTTP, at most
  `httpget.MEDIA_CONNECTIONS` at a time on kept-alive connections, as a browser does.

A view (`View`) is timed from sending the message to its *content*: the run finished and every image of the page
as the run left it fetched. At the end of a run the tree is pruned the way the frontend prunes it (what this run did
not send again is gone), so replaced previews do not count; a 404 for an image of the final page does.

Only the host of the URL given is ever contacted. No streamlit import outside ``streamlit.proto``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from httpget import Http
from stpage import Node, drop_below, media_urls, prune, widget_id, widget_state, widget_value
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.asyncio.client import ClientConnection, connect

SUCCESS = ForwardMsg.ScriptFinishedStatus.FINISHED_SUCCESSFULLY
COMPILE_ERROR = ForwardMsg.ScriptFinishedStatus.FINISHED_WITH_COMPILE_ERROR
ALERT_ERROR = 1  # streamlit.proto.Alert_pb2.Alert.Format.ERROR
SIDEBAR = 1  # delta_path[0] of the sidebar; 0 is the main area


class ProtocolError(RuntimeError):
    """The server broke the conversation (closed the socket, sent something the frontend would not accept)."""


# --------------------------------------------------------------------------- one tab


@dataclass
class View:
    """One thing a user did and what came of it (seconds since the message was sent)."""

    label: str
    started: float  # time.monotonic() when the message was sent
    finished_s: float | None = None  # the run finished (script_finished)
    first_image_s: float | None = None  # the first image arrived (a render's preview, or a cached picture)
    content_s: float | None = None  # ... and every image of the final page fetched
    images: int = 0  # images on the final page
    fetched: int = 0  # image requests started during the view (previews included)
    computed: bool = False  # a progress bar moved or a cache spinner showed: the run computed (or waited for work)
    busy: list[str] = field(default_factory=list)  # the texts of those bars and spinners
    server_cpu_s: float | None = None  # the server's CPU seconds over the view, where the caller can tell them apart
    errors: list[str] = field(default_factory=list)
    note: str = ""


class Session:
    """A browser tab on the app at `url` (``http://127.0.0.1:PORT``); every request goes to that host only."""

    def __init__(self, url: str, *, name: str = "", timeout_s: float = 180.0) -> None:
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the load test talks to 127.0.0.1 only, not {parts.hostname}")
        self.url, self.name, self.timeout_s = url.rstrip("/"), name, timeout_s
        self.http = Http(parts.hostname, int(parts.port or 80))
        self.ws: ClientConnection | None = None
        self.pages: dict[str, tuple[str, str]] = {}  # title → (script hash, url path)
        self.page_hash = ""
        self.query = ""
        self.tree: dict[tuple[int, ...], Node] = {}
        self.run = 0  # runs started (new_session messages)
        self.run_id = ""
        self.finished: dict[int, tuple[int, float]] = {}  # run → (status, when)
        self.media: dict[str, asyncio.Task[int]] = {}  # URL → its fetch (status)
        self.media_done: dict[str, float] = {}  # URL → when its fetch ended
        self.busy: set[str] = set()  # what this run computed: progress bars that moved, cache spinners shown
        self.bars: dict[tuple[int, ...], int] = {}  # progress bars of this run: updates per path
        self.unexpected: list[str] = []  # protocol problems (a ref to a message we never cached, a page not found)
        self.messages = 0
        self.fetches = 0  # image requests started
        self.first_image = 0.0  # when the current view's first image (a preview, or a cached picture) arrived
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None

    # ---- the conversation
    async def _connect(self) -> None:
        ws_url = self.url.replace("http://", "ws://", 1) + "/_stcore/stream"
        self.ws = await connect(ws_url, subprotocols=["streamlit"], max_size=None, open_timeout=self.timeout_s)  # type: ignore[list-item]
        self._reader = asyncio.create_task(self._read(), name=f"st-reader-{self.name}")

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                msg = ForwardMsg()
                msg.ParseFromString(data if isinstance(data, bytes) else data.encode())
                self.messages += 1
                self._apply(msg)
                self._changed.set()
        except Exception as exc:  # the socket closed under us: every waiting view fails
            self._closed_reason = f"{type(exc).__name__}: {exc}"
        else:
            self._closed_reason = "the server closed the websocket"
        self._changed.set()

    def _apply(self, msg: ForwardMsg) -> None:
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.run += 1
            self.run_id = msg.metadata.run.script_run_id if msg.metadata.HasField("run") else ""
            self.page_hash = msg.new_session.page_script_hash or self.page_hash
            self.busy = set()
            self.bars = {}
        elif kind == "navigation":
            self.pages = {p.page_name: (p.page_script_hash, p.url_pathname) for p in msg.navigation.app_pages}
            if msg.navigation.page_script_hash:
                self.page_hash = msg.navigation.page_script_hash
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
        elif kind == "delta":
            if self.run_id and msg.metadata.HasField("run") and msg.metadata.run.script_run_id != self.run_id:
                return  # a message of a run that was stopped
            self._delta(tuple(msg.metadata.delta_path), msg.delta)
        elif kind == "script_finished":
            status = msg.script_finished
            if status in (SUCCESS, COMPILE_ERROR):
                prune(self.tree, self.run)
                self.finished[self.run] = (status, time.monotonic())
        elif kind == "ref_hash":
            self.unexpected.append(f"a reference to a cached message {msg.ref_hash} (none was announced)")
        elif kind == "page_not_found":
            self.unexpected.append(f"page not found: {msg.page_not_found.page_name}")

    def _delta(self, path: tuple[int, ...], delta: Any) -> None:
        which = delta.WhichOneof("type")
        if which == "new_element":
            element = delta.new_element
            kind = element.WhichOneof("type") or "empty"
            drop_below(self.tree, path)
            self.tree[path] = Node(kind, element, self.run)
            if kind == "progress":  # a bar that moves is work going on; one drawn once (or 0 → 100 %) is not
                self.bars[path] = self.bars.get(path, 0) + 1
                if self.bars[path] > 2:
                    self.busy.add(element.progress.text.split("…")[0][:40])
            if kind == "imgs":
                self.first_image = self.first_image or time.monotonic()
                for im in element.imgs.imgs:
                    self._fetch(im.url)
        elif which == "add_block":
            self.tree[path] = Node("block", delta.add_block, self.run)
        elif which == "new_transient":  # a cache spinner ("Loading the model…"): a cached function is computing
            self.busy.update(
                e.spinner.text[:40] for e in delta.new_transient.elements if e.WhichOneof("type") == "spinner"
            )

    def _fetch(self, url: str) -> None:
        if not url or url in self.media or "://" in url:  # only this server's own files
            return
        self.fetches += 1

        async def get() -> int:
            try:
                return await self.http.get(url, timeout_s=self.timeout_s)
            finally:
                self.media_done[url] = time.monotonic()

        task = asyncio.create_task(get(), name=f"media-{self.name}")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # read here or in _run: never "unretrieved"
        self.media[url] = task

    async def _send(self, state: Any) -> None:
        if self.ws is None:
            raise ProtocolError("not connected")
        msg = BackMsg()
        msg.rerun_script.CopyFrom(state)
        await self.ws.send(msg.SerializeToString())

    def _client_state(self, *, query: str, page_hash: str = "", page_name: str = "") -> Any:
        state = BackMsg().rerun_script
        state.query_string = query
        if page_hash:
            state.page_script_hash = page_hash
        if page_name:
            state.page_name = page_name
        info = state.context_info
        info.timezone, info.timezone_offset, info.locale = "UTC", 0, "en-US"
        info.url, info.is_embedded, info.color_scheme = f"{self.url}/{page_name}", False, "light"
        state.widget_states.widgets.extend(self._sidebar_states())
        return state

    def _sidebar_states(self) -> Iterator[WidgetState]:
        """The sidebar's widgets as they are: what the frontend sends with a page switch."""
        for path, node in sorted(self.tree.items()):
            if path[0] != SIDEBAR or node.kind not in ("button_group", "selectbox", "radio", "checkbox"):
                continue
            wid, value = getattr(node.proto, node.kind).id, widget_value(node)
            if wid and value is not None:
                yield widget_state(wid, node.kind, value)

    # ---- what a user does
    async def open(self, link: str, label: str = "") -> View:
        """A new tab on ``<url>/<link>`` (e.g. ``progression?preset=fast``): the page, then the first run."""
        path, _, query = link.partition("?")
        view = View(label or f"open {path or '/'}", time.monotonic())
        try:
            for probe in (f"/{link}", "/_stcore/health", "/_stcore/host-config"):
                status = await self.http.get(probe, timeout_s=self.timeout_s)
                if status >= 400 and probe != "/_stcore/host-config":
                    view.errors.append(f"HTTP {status} for {probe}")
            await self._connect()
        except Exception as exc:
            view.errors.append(f"could not connect: {type(exc).__name__}: {exc}")
            return view
        return await self._run(view, self._client_state(query=query, page_name=path.strip("/")))

    async def navigate(self, title: str, label: str = "") -> View:
        """A click on the sidebar link of the page titled `title`."""
        page_hash, _ = self.pages[title]
        view = View(label or title, time.monotonic())
        return await self._run(view, self._client_state(query="", page_hash=page_hash))

    async def follow(self, page_hash: str, query: str, label: str) -> View:
        """A click on a page link (``st.page_link``: its page's hash and query string)."""
        return await self._run(View(label, time.monotonic()), self._client_state(query=query, page_hash=page_hash))

    async def set_widget(self, key: str, value: Any, label: str) -> View:
        """Set the widget with user key `key` to `value` (a click for a button: `value` is ignored)."""
        wid, node = widget_id(self.tree, key)
        state = self._client_state(query=self.query, page_hash=self.page_hash)
        state.widget_states.widgets.append(widget_state(wid, node.kind, value))
        return await self._run(View(label, time.monotonic()), state)

    def value(self, key: str) -> Any:
        """The current value of the widget with user key `key`."""
        return widget_value(widget_id(self.tree, key)[1])

    def options(self, key: str) -> list[str]:
        """The option labels of a selectbox, radio or button group."""
        node = widget_id(self.tree, key)[1]
        w = getattr(node.proto, node.kind)
        return [o.content for o in w.options] if node.kind == "button_group" else list(w.options)

    def links(self, page: str) -> list[tuple[str, str, str]]:
        """(label, script hash, query string) of every link on the page to the page at url path `page`."""
        out = []
        for path in sorted(self.tree):
            node = self.tree[path]
            if node.kind == "page_link" and node.proto.page_link.page == page:
                link = node.proto.page_link
                out.append((link.label, link.page_script_hash, link.query_string))
        return out

    def buttons(self) -> list[str]:
        """The labels of the page's buttons."""
        return [node.proto.button.label for node in self.tree.values() if node.kind == "button"]

    def texts(self) -> list[str]:
        """The page's headings and markdown, for checks."""
        out = []
        for path in sorted(self.tree):
            node = self.tree[path]
            if node.kind in ("heading", "markdown"):
                out.append(getattr(node.proto, node.kind).body)
        return out

    async def _run(self, view: View, state: Any) -> View:
        """Send `state`, wait for the run it starts to finish, then for every image of the final page."""
        before, fetches, self.first_image = self.run, self.fetches, 0.0
        deadline = view.started + self.timeout_s
        try:
            await self._send(state)
            done = await self._wait(lambda: next((r for r in self.finished if r > before), None), deadline)
            status, at = self.finished[done]
            view.finished_s = round(at - view.started, 3)
            view.first_image_s = round(self.first_image - view.started, 3) if self.first_image else None
            view.computed, view.busy = bool(self.busy), sorted(self.busy)
            if status == COMPILE_ERROR:
                view.errors.append("the script did not compile")
            urls = media_urls(self.tree)
            view.images = len(urls)
            for url in urls:
                self._fetch(url)
            last = at
            for url in urls:
                remaining = max(deadline - time.monotonic(), 0.01)
                code = await asyncio.wait_for(asyncio.shield(self.media[url]), remaining)
                if code >= 400:
                    view.errors.append(f"HTTP {code} for an image of the page ({url})")
                last = max(last, self.media_done.get(url, last))
            view.content_s = round(last - view.started, 3)
            view.errors += self.page_errors()
        except TimeoutError:
            view.note = (
                f"no content after {self.timeout_s:.0f} s (run {self.run}, finished {sorted(self.finished)[-3:]})"
            )
        except Exception as exc:
            view.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        view.fetched = self.fetches - fetches
        view.errors += self.unexpected
        self.unexpected = []
        self._forget_media()
        return view

    async def _wait(self, ready: Any, deadline: float) -> Any:
        while (got := ready()) is None:
            if self._closed_reason:
                raise ProtocolError(self._closed_reason)
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return got

    def page_errors(self) -> list[str]:
        """Exceptions and st.error boxes on the page as the run left it."""
        out = []
        for node in self.tree.values():
            if node.kind == "exception":
                e = node.proto.exception
                out.append(f"exception: {e.type}: {e.message[:200]}")
            elif node.kind == "alert" and node.proto.alert.format == ALERT_ERROR:
                out.append(f"st.error: {node.proto.alert.body[:200]}")
        return out

    def _forget_media(self) -> None:
        """Drop finished fetches of images no longer on the page (a browser would fetch a new one again)."""
        keep = set(media_urls(self.tree))
        for url in [u for u, t in self.media.items() if t.done() and u not in keep]:
            del self.media[url]
            self.media_done.pop(url, None)

    async def close(self) -> None:
        for task in self.media.values():
            task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        self.http.close()
