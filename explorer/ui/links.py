"""Links between pages without importing them (pages never import each other)."""

from __future__ import annotations

import streamlit as st


def _registered_elsewhere() -> None:
    """Never runs: st.navigation routes a page reference to the page registered under the same url_path."""


def page_ref(name: str, title: str) -> st.Page:
    """A reference to the app's page at ``/<name>`` for st.page_link / st.switch_page, without importing the page.

    Streamlit identifies a page by the hash of its url_path alone, so this resolves to the page that app.py
    registered there (pages never import each other).
    """
    return st.Page(_registered_elsewhere, title=title, url_path=name)
