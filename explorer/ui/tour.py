"""The guided tour ("Start here"): six steps over the real pages, for a first visit or a class.

Each step opens a real page with settings that show something worth seeing, and the sidebar shows the step's caption
(two or three sentences written for a student) with Back / Next. The step is kept in the URL (``?tour=3``), so a
teacher can share a link to any step, in either language (``&lang=pt-BR``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from explorer.models import DEFAULT_SPEC
from explorer.ui.common import current_model, page_ref, set_current_model
from explorer.ui.i18n import number, t

TOUR_KEY = "tour"  # URL parameter: the step shown (1-based)
FREEZE_POINT = "blocks.3.2"  # the tour's example freeze point on the bundled model (the middle of the network)


@dataclass(frozen=True)
class Step:
    """One step: the page it opens (url_path and title) and the settings in that page's URL."""

    page: str
    title: str
    query: dict[str, str] = field(default_factory=dict)


STEPS = [
    Step("progression", "Progression", {"preset": "fast", "per_stage": "4"}),
    Step("unit", "Unit", {"layer": "blocks.5.3", "unit": "3", "preset": "fast"}),
    Step("attribution", "Attribution", {"sample": "chelsea", "method": "gradcam", "scale": "shared"}),
    Step("finetune", "Fine-tune", {"data": "demo:digits", "freeze": FREEZE_POINT}),
    Step("compare", "Compare", {}),
    Step("compare", "Compare", {"freeze": FREEZE_POINT}),  # the freeze panel opens at the example point
]


def step_from_url() -> int | None:
    """The tour step named in the URL (1…6), or None when the tour is not running."""
    raw = st.query_params.get(TOUR_KEY)
    if raw is None or not raw.isdigit() or not 1 <= int(raw) <= len(STEPS):
        return None
    return int(raw)


def go_to(step: int) -> None:
    """Open the page of `step` with its settings, on the bundled model the captions describe."""
    s = STEPS[step - 1]
    set_current_model(DEFAULT_SPEC)
    query = {**s.query, TOUR_KEY: str(step), "model": DEFAULT_SPEC}
    st.switch_page(page_ref(s.page, s.title), query_params=query)


def _end() -> None:
    st.query_params.pop(TOUR_KEY, None)


def step_texts(step: int, measures: dict[str, Any] | None = None) -> tuple[str, str]:
    """(title, caption) of a step in the session's language; step 4 quotes this machine's training costs."""
    body = t(f"tour.step{step}.body")
    if step == 4 and measures:
        body += " " + t("tour.step4.costs", **measures)
    return t(f"tour.step{step}.title"), body


def tour_panel(step: int) -> None:
    """The running tour's box above the page (a phone keeps the sidebar closed): where we are, what to look at,
    Back / Next / End."""
    title, body = step_texts(step, training_costs() if step == 4 else None)
    with st.container(border=True, key="tour_panel"):
        text, buttons = st.columns([4, 1], vertical_alignment="center")
        with text:
            st.caption(t("tour.progress", step=step, steps=len(STEPS)))
            st.markdown(f"**{title}**")
            st.markdown(body)
        with buttons:
            last = step == len(STEPS)
            if not last and st.button(
                t("tour.next"), key="tour_next", type="primary", icon=":material/arrow_forward:", width="stretch"
            ):
                go_to(step + 1)
            if step > 1 and st.button(t("tour.back"), key="tour_back", icon=":material/arrow_back:", width="stretch"):
                go_to(step - 1)
            st.button(t("tour.end"), key="tour_end", on_click=_end, type="tertiary", width="stretch")


def training_costs() -> dict[str, Any] | None:
    """This machine's measured cost of a training step with everything trainable and frozen after the tour's point
    (measured once per model), written for the session's language; None when it cannot be measured (another
    architecture without that block)."""
    from explorer.ui.common import model_key

    model = current_model()
    try:
        raw = _costs(model, model_key(model))
    except Exception:  # the tour still runs without the figures
        return None
    t_all, t_frozen = raw["t_all"], raw["t_frozen"]
    return {
        "point": raw["point"],
        "trainable": number(raw["trainable"]),
        "total": number(raw["total"]),
        "share": number(100 * raw["trainable"] / max(raw["total"], 1), 0),
        "batch": number(raw["batch"]),
        "size": raw["size"],
        "t_all": number(t_all, 2),  # the sentence writes the unit
        "t_frozen": number(t_frozen, 2),
        "speedup": number(t_all / max(t_frozen, 1e-9), 1),
    }


@st.cache_data(max_entries=8, show_spinner=False)
def _costs(_model: Any, key: tuple[Any, ...]) -> dict[str, Any]:
    """The measured numbers, unformatted (the cache is shared by sessions in every language)."""
    from explorer.transfer.costs import training_step_cost

    del key
    full = training_step_cost(_model, None)
    frozen = training_step_cost(_model, FREEZE_POINT)
    return {
        "point": FREEZE_POINT,
        "trainable": frozen.trainable,
        "total": frozen.total,
        "batch": full.batch,
        "size": full.size,
        "t_all": full.seconds,
        "t_frozen": frozen.seconds,
    }
