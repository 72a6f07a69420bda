"""The app's words in English and Brazilian Portuguese: one catalogue file per language, chosen in the sidebar and
kept in the URL (``?lang=pt-BR``), so a shared link opens in the reader's language.

`t("tour.step1.title")` returns the current language's text (English when a key is missing there — and a test
checks that no key is missing in either catalogue). Texts may hold ``{name}`` fields filled from keyword arguments.
Keys are grouped by page (``model.*``, ``finetune.*``, …); ``nav.*`` are the sidebar's page titles.

Numbers go through Babel, for the session's language (or the `lang` given): `number(1234567)` is "1,234,567" in
English and "1.234.567" in Portuguese, `percent(0.925, 1)` "92.5 %" / "92,5 %", `seconds(0.131)` "0.13 s" /
"0,13 s", `short_number(4_398_024)` "4.40 M" / "4,40 M"; `plotly_separators()` gives a Plotly figure the same
decimal and thousands marks.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import streamlit as st
from babel.numbers import format_decimal, get_decimal_symbol, get_group_symbol

LANGUAGES = {"en": "English", "pt-BR": "Português (Brasil)"}
DEFAULT = "en"
LANG_KEY = "lang"  # the widget's session_state key, and the URL parameter
CHOICE_KEY = "lang_choice"  # the session's language, kept across page switches
LOCALES = Path(__file__).resolve().parent / "locales"
BABEL_LOCALES = {"en": "en_US", "pt-BR": "pt_BR"}  # the Babel locale of each language


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


def babel_locale(lang: str | None = None) -> str:
    """The Babel locale of `lang` (default: the session's language)."""
    return BABEL_LOCALES.get(lang or language(), BABEL_LOCALES[DEFAULT])


def number(x: float, digits: int | None = None, *, lang: str | None = None) -> str:
    """`x` written for the language, thousands grouped: with `digits`, exactly that many decimals
    (`number(0.1314, 2)` → "0.13" / "0,13"); without, an integer as it is and a fraction with up to three decimals.
    NaN is "—" (nothing measured)."""
    if not math.isfinite(float(x)):
        return "—" if math.isnan(float(x)) else ("∞" if x > 0 else "-∞")
    if digits is None:
        pattern = "#,##0" if float(x).is_integer() else "#,##0.###"
    else:
        pattern = "#,##0" + ("." + "0" * digits if digits > 0 else "")
    text = format_decimal(x, format=pattern, locale=babel_locale(lang))
    return text[1:] if text.startswith("-") and not any(c in "123456789" for c in text) else text  # no "-0.00"


def percent(fraction: float, digits: int = 0, *, lang: str | None = None) -> str:
    """A fraction as a percentage: `percent(0.925, 1)` → "92.5 %" / "92,5 %"."""
    return f"{number(100 * fraction, digits, lang=lang)} %"


def seconds(x: float, digits: int = 2, *, lang: str | None = None) -> str:
    """A duration in seconds: `seconds(0.1314)` → "0.13 s" / "0,13 s"."""
    return f"{number(x, digits, lang=lang)} s"


def short_number(n: float, *, lang: str | None = None) -> str:
    """A count in a few characters: "4.40 M" / "4,40 M", "12.3 k" / "12,3 k", "512"."""
    if abs(n) >= 1e6:
        return f"{number(n / 1e6, 2, lang=lang)} M"
    if abs(n) >= 1e3:
        return f"{number(n / 1e3, 1, lang=lang)} k"
    return number(n, lang=lang)


def plotly_separators(lang: str | None = None) -> str:
    """Plotly's `separators` (decimal mark, then thousands mark) for the language: ".," or ",."."""
    locale = babel_locale(lang)
    return get_decimal_symbol(locale) + get_group_symbol(locale)


def stage_name(name: str) -> str:
    """A stage of the progression (`explorer.featurevis.stages.STAGES`) in the session's language, lower case."""
    names = {
        "edges": t("stage.edges"),
        "textures": t("stage.textures"),
        "patterns": t("stage.patterns"),
        "parts": t("stage.parts"),
        "objects": t("stage.objects"),
    }
    return names.get(name, name)


def layer_option(row: Any, n_units: int, stage: str | None) -> str:
    """A layer as the pickers list it: 'blocks.3.2 · 80 units · 14×14 · patterns' (`row` a LayerInfo)."""
    grid = "×".join(str(s) for s in row.spatial) if row.spatial else t("layer.no_grid")
    if row.grid_layout.tokens:
        grid = t("layer.patch_tokens", grid=grid)
    text = t("layer.option", layer=row.name, units=number(n_units), grid=grid)
    return text + (f" · {stage_name(stage)}" if stage else "")


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
        t("app.language"),
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
