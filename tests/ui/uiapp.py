"""Helpers of the page tests: the app opened on one page for Streamlit's AppTest through its public API (no private
page hash), and the metadata of a fine-tuned run of a model."""

from __future__ import annotations

from typing import Any

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


def run_metadata(base: Any, **fields: Any) -> dict[str, Any]:
    """Checkpoint metadata of a run fine-tuned from `base` (as the fine-tuner writes it), with `fields` on top."""
    return {
        "arch": base.arch,
        "base_spec": base.spec,
        "base_fingerprint": base.fingerprint,
        "class_names": list(base.class_names),
        "input_size": list(base.input_size),
        "mean": list(base.mean),
        "std": list(base.std),
        "resize_size": base.resize_size,
        "freeze_after": None,
        **fields,
    }
