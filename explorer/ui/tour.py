"""The guided tour ("Start here"): six steps over the real pages, for a first visit or a class.

Each step opens a real page with settings that show something worth seeing, and the sidebar shows the step's caption
(two or three sentences written for a student) with Back / Next. The step is kept in the URL (``?tour=3``), so a
teacher can share a link to any step, in either language (``&lang=pt-BR``).

The Compare steps open the demo stored on this server (:mod:`explorer.ui.compare.demo`) with its own settings,
whatever this session's defaults, so they show its comparison, recommendation, code and chart. Step 4 quotes the
same parameter counts as the Fine-tune page below it (one function, the demo data's class count) and a training
step's cost measured once per model and kept on disk, so every visit quotes the same measurement.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from explorer.cache import folder as cache_folder
from explorer.cache import make_key
from explorer.data import ImageFolderDataset, resolve_data
from explorer.models import DEFAULT_SPEC, LoadedModel
from explorer.models.freeze import freeze_summary
from explorer.transfer.training import costs
from explorer.transfer.training.checkpoints import write_atomic
from explorer.ui.compare.demo import demo_query, stored_demo
from explorer.ui.i18n import number, t
from explorer.ui.links import page_ref
from explorer.ui.session import current_model, model_key, set_current_model

TOUR_KEY = "tour"  # URL parameter: the step shown (1-based)
FREEZE_POINT = "blocks.3.2"  # the tour's example freeze point on the bundled model (the middle of the network)
DATA = "demo:digits"  # the data of the tour's Fine-tune step: its class count sizes the new head in the counts
COSTS_VERSION = 1


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
    Step("finetune", "Fine-tune", {"data": DATA, "freeze": FREEZE_POINT}),
    Step("compare", "Compare", {}),
    Step("compare", "Compare", {"freeze": FREEZE_POINT}),  # the freeze panel opens at the example point
]


def step_from_url() -> int | None:
    """The tour step named in the URL (1…6), or None when the tour is not running."""
    raw = st.query_params.get(TOUR_KEY)
    if raw is None or not raw.isdigit() or not 1 <= int(raw) <= len(STEPS):
        return None
    return int(raw)


def step_query(step: int, model: LoadedModel) -> dict[str, str]:
    """The URL parameters of `step`'s page: the Compare steps open the demo stored for `model` (its run and its
    settings; step 6 at the demo's recommended freeze point), when there is one."""
    s = STEPS[step - 1]
    query = dict(s.query)
    if s.page == "compare":
        manifest = stored_demo(model)
        if manifest is not None:
            query = {k: v for k, v in query.items() if k != "freeze"}  # the page opens at the recommendation
            query.update(demo_query(manifest))
    return query


def go_to(step: int) -> None:
    """Open the page of `step` with its settings, on the bundled model the captions describe."""
    s = STEPS[step - 1]
    model = set_current_model(DEFAULT_SPEC)
    query = {**step_query(step, model), TOUR_KEY: str(step), "model": DEFAULT_SPEC}
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
    """Step 4's figures for the current model, written for the session's language: the parameters left to train
    after the tour's point (as the Fine-tune page counts them, new head for the demo data included) and this
    machine's measured cost of a training step with everything trainable and with the point frozen (measured once
    per model and kept); None when they cannot be had (another architecture without that block)."""
    model = current_model()
    try:
        raw = step_costs(model)
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


def demo_classes() -> int:
    """How many classes the tour's Fine-tune step trains (the demo data's, counted as the page counts them)."""
    return len(ImageFolderDataset(str(resolve_data(DATA))).classes)


def step_costs(model: LoadedModel) -> dict[str, Any]:
    """Step 4's numbers, unformatted: counts and the measured step times (cached for every session)."""
    return _costs(model, model_key(model))


@st.cache_data(max_entries=8, show_spinner=False)
def _costs(_model: Any, key: tuple[Any, ...]) -> dict[str, Any]:
    """The counts (the Fine-tune page's function, with the demo's new head) and the timings (measured once); the
    cache is shared by sessions in every language."""
    del key
    num_classes = demo_classes()
    counts = freeze_summary(_model, FREEZE_POINT, num_classes=num_classes)
    return {
        "point": FREEZE_POINT,
        "classes": num_classes,
        "trainable": counts.trainable,
        "total": counts.total,
        **measured_step_times(_model),
    }


def times_path(model: LoadedModel) -> Path:
    """Where this machine's measured step times of `model` are kept (weights, architecture, size, device)."""
    key = make_key(
        kind="tour-costs",
        version=COSTS_VERSION,
        base=model.fingerprint,
        arch=model.arch,
        input=list(model.input_size),
        device=str(model.device),
        point=FREEZE_POINT,
    )
    return cache_folder("tour") / f"{key[:32]}.json"


def measured_step_times(model: LoadedModel) -> dict[str, Any]:
    """The seconds of one training step with every layer training and frozen after the tour's point, measured on
    this machine once and read back afterwards (a restart or a second visit quotes the same measurement)."""
    path = times_path(model)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(path.read_text(encoding="utf-8"))
        return {k: saved[k] for k in ("batch", "size", "steps", "t_all", "t_frozen", "measured")}
    steps = 3
    full = costs.training_step_cost(model, None, steps=steps)  # looked up on the module, so a test can stand in
    frozen = costs.training_step_cost(model, FREEZE_POINT, steps=steps)
    times = {
        "batch": full.batch,
        "size": full.size,
        "steps": steps,  # the median of this many steps, after one warm-up
        "t_all": full.seconds,
        "t_frozen": frozen.seconds,
        "measured": time.time(),
    }
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(times).encode())
    return times
