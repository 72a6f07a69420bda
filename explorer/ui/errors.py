"""Errors in the app: the one sentence a user sees, and the page wrapper that shows it (a bug gets its traceback in a
closed expander)."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable

import streamlit as st

from explorer.errors import ExplorerError
from explorer.ui.i18n import t
from explorer.ui.messages import localize


def error_message(exc: BaseException) -> str:
    """The one sentence a user sees for `exc`, in the session's language; a generic one for bugs."""
    if isinstance(exc, ExplorerError):
        return localize(str(exc))
    return t("common.error_generic", error=f"{type(exc).__name__}: {str(exc)[:200]}")


def shows_errors(fn: Callable[[], None]) -> Callable[[], None]:
    """Wrap a page's `render`: whatever it raises is shown as one st.error (and the rest of the app keeps running).

    Streamlit's own control flow (st.rerun, st.stop, st.switch_page) raises BaseException subclasses, which pass.
    """

    @functools.wraps(fn)
    def run() -> None:
        try:
            fn()
        except Exception as exc:
            show_error(exc)

    return run


def show_error(exc: BaseException) -> None:
    """Show a user error as one st.error; an unexpected one also gets its traceback in a closed expander."""
    st.error(error_message(exc), icon=":material/error:")
    if not isinstance(exc, ExplorerError):
        with st.expander(t("common.details")):
            st.code("".join(traceback.format_exception(exc)), language="text")
