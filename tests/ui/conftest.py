"""Fixtures for the in-process page tests (Streamlit's AppTest)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest
from uiapp import app_on


@pytest.fixture(name="app_on")
def app_on_fixture() -> Callable[..., AppTest]:
    """`app_on(page, timeout=…, **query)`: the app opened on one page, as its URL would open it (not yet run)."""
    return app_on
