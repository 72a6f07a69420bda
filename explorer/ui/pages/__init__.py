"""The app's pages: one module per page, each exposing `render() -> None`.

`app.py` lists them with `page(...)`, so adding a page is one line there. Every page's `render` runs inside
`shows_errors`: a page needs no try/except of its own except where it can go on after a failure.
"""

from __future__ import annotations

import importlib

import streamlit as st

from explorer.ui.errors import shows_errors

HOME = "home"  # the url_path the default page reserves (Streamlit serves it at the root)


def page(name: str, title: str, icon: str | None = None, *, default: bool = False, hidden: bool = False) -> st.Page:
    """An st.Page running `explorer.ui.pages.<name>.render`, at URL path `/<name>` (the default page at the root;
    a `hidden` page is reachable by its URL but not listed in the menu)."""
    module = importlib.import_module(f"{__name__}.{name}")
    return st.Page(
        shows_errors(module.render),
        title=title,
        icon=icon,
        url_path=HOME if default else name,
        default=default,
        visibility="hidden" if hidden else "visible",
    )
