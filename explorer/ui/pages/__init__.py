"""The app's pages: one module per page, each exposing `render() -> None`.

`app.py` lists them with `page(...)`, so adding a page is one line there.
"""

from __future__ import annotations

import importlib

import streamlit as st


def page(name: str, title: str, icon: str | None = None, *, default: bool = False) -> st.Page:
    """An st.Page running `explorer.ui.pages.<name>.render`, at URL path `/<name>`."""
    module = importlib.import_module(f"{__name__}.{name}")
    return st.Page(module.render, title=title, icon=icon, url_path=name, default=default)
