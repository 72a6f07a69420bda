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
LANG_KEY = "lang"  # session_state and URL parameter
LOCALES = Path(__file__).resolve().parent / "locales"


@cache
def catalogue(lang: str) -> dict[str, str]:
    """The key → text table of one language (read once per process)."""
    path = LOCALES / f"{lang}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}


def language() -> str:
    """The session's language: the sidebar's choice (bound to ``?lang=`` in the URL), else English."""
    for value in (st.session_state.get(LANG_KEY), st.query_params.get(LANG_KEY)):
        if value in LANGUAGES:
            return str(value)
    return DEFAULT


def t(key: str, **fields: Any) -> str:
    """The text for `key` in the session's language, with `fields` filled in."""
    text = catalogue(language()).get(key) or catalogue(DEFAULT).get(key) or key
    return text.format(**fields) if fields else text


def language_switch() -> None:
    """The sidebar's language choice, bound to the URL's ``?lang=`` so a shared link keeps it."""
    if st.session_state.get(LANG_KEY) not in LANGUAGES:  # a session's first run: the link's language
        st.session_state[LANG_KEY] = language()
    st.segmented_control(
        "Language",
        list(LANGUAGES),
        required=True,
        format_func=lambda code: LANGUAGES[code],
        key=LANG_KEY,
        bind="query-params",
        label_visibility="collapsed",
    )
