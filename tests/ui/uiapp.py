"""The app opened on one page for Streamlit's AppTest, through its public API (no private page hash)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _app(page: str) -> None:
    """The whole app opened on one page (AppTest runs this function's source as the app's script)."""
    from explorer.ui.shell import run_app

    run_app(default=page)


def app_on(page: str, /, *, timeout: float = 180, **query: str) -> AppTest:
    """An AppTest of the app opened on `page` (its url_path), with `query` in the URL, not yet run."""
    at = AppTest.from_function(_app, args=(page,), default_timeout=timeout)
    at.query_params.update(query)
    return at
