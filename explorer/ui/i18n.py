"""The app's words in English and Brazilian Portuguese: one catalogue file per language, chosen in the sidebar and
kept in the URL (``?lang=pt-BR``), so a shared link opens in the reader's language.

`t("tour.step1.title")` returns the current language's text (English when a key is missing there — and a test
checks that no key is missing in either catalogue). Texts may hold ``{name}`` fields filled from keyword arguments.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import streamlit as st

LANGUAGES = {"en": "English", "pt-BR": "Português (Brasil)"}
DEFAULT = "en"
LANG_KEY = "lang"  # the widget's session_state key, and the URL parameter
CHOICE_KEY = "lang_choice"  # the session's language, kept across page switches
LOCALES = Path(__file__).resolve().parent / "locales"


@cache
def catalogue(lang: str) -> dict[str, str]:
    """The key → text table of one language (read once per process)."""
    path = LOCALES / f"{lang}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}


def language() -> str:
    """The session's language: its choice (kept across pages), else the link's ``?lang=``, else English."""
    for value in (st.session_state.get(CHOICE_KEY), st.query_params.get(LANG_KEY)):
        if value in LANGUAGES:
            return str(value)
    return DEFAULT


def t(key: str, **fields: Any) -> str:
    """The text for `key` in the session's language, with `fields` filled in."""
    text = catalogue(language()).get(key) or catalogue(DEFAULT).get(key) or key
    return text.format(**fields) if fields else text


def _keep_in_url() -> None:
    lang = language()
    if lang == DEFAULT:
        st.query_params.pop(LANG_KEY, None)
    elif st.query_params.get(LANG_KEY) != lang:
        st.query_params[LANG_KEY] = lang


def _chosen() -> None:
    st.session_state[CHOICE_KEY] = st.session_state[LANG_KEY]
    _keep_in_url()


def language_switch() -> None:
    """The sidebar's language choice. Streamlit forgets a widget's value on a page switch, so the choice is kept in
    its own session key and given back to the widget on every run; it is also written into the URL on every run (a
    page switch drops the other pages' parameters), so a copied link opens in the same language."""
    st.session_state[CHOICE_KEY] = language()
    st.session_state[LANG_KEY] = st.session_state[CHOICE_KEY]
    st.segmented_control(
        "Language",
        list(LANGUAGES),
        required=True,
        format_func=lambda code: LANGUAGES[code],
        key=LANG_KEY,
        on_change=_chosen,
        label_visibility="collapsed",
    )
    _keep_in_url()


def page_intro(name: str) -> None:
    """A page's one-line lead and its help ("What am I looking at?"), in the session's language."""
    st.caption(t(f"page.{name}.lead"))
    with st.expander(t("help.title"), icon=":material/help:"):
        st.markdown(t(f"page.{name}.help"))
