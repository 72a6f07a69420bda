"""Fixtures for the in-process page tests (Streamlit's AppTest)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from streamlit.testing.v1 import AppTest
from uiapp import app_on


@pytest.fixture(name="app_on")
def app_on_fixture() -> Callable[..., AppTest]:
    """`app_on(page, timeout=…, **query)`: the app opened on one page, as its URL would open it (not yet run)."""
    return app_on


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One empty disk cache for a module; Streamlit caches start empty and are cleared at the end (a module asks
    for it with `pytestmark = pytest.mark.usefixtures("module_cache")`)."""
    import streamlit as st

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYER_EXPLORER_CACHE", str(tmp_path_factory.mktemp("cache")))
        st.cache_data.clear()
        st.cache_resource.clear()
        yield
        st.cache_data.clear()
        st.cache_resource.clear()
