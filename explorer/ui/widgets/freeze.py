"""The freeze point's counts and code, computed once per model (and class count, and point) for every page that shows
them: the Fine-tune page's chooser and the Compare page's freeze panel read the same cached table and snippet, so
both pages say the same numbers.

Counts come from :func:`explorer.models.freeze.freeze_table` (one trace for every candidate) and each point's code
from :func:`~explorer.models.freeze.freeze_code`; both are cached by the model's fingerprint (`model_key`)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.models import LoadedModel
from explorer.models.freeze import FreezeSummary, freeze_code, freeze_table
from explorer.ui.session import model_key

NONE = "none"  # the freeze point "train everything"


@st.cache_data(max_entries=16, show_spinner=False)  # the callers show the spinner, in the session's language
def _table(_model: LoadedModel, key: tuple[Any, ...], num_classes: int | None) -> dict[str, FreezeSummary]:
    del key
    return {(s.freeze_after or NONE): s for s in freeze_table(_model, num_classes=num_classes)}


@st.cache_data(max_entries=256, show_spinner=False)
def _code(_model: LoadedModel, key: tuple[Any, ...], point: str, num_classes: int | None) -> str:
    del key
    return freeze_code(_model, None if point == NONE else point, num_classes=num_classes)


def freeze_summaries(model: LoadedModel, num_classes: int | None) -> dict[str, FreezeSummary]:
    """Freeze point ('none' or a ladder layer before the head) → its parameter counts, in depth order (cached)."""
    return _table(model, model_key(model), num_classes)


def freeze_snippet(model: LoadedModel, point: str, num_classes: int | None = None) -> str:
    """The PyTorch snippet that freezes `model` after `point` ('none': nothing), with a new head for `num_classes`
    (cached per model and point)."""
    return _code(model, model_key(model), point, num_classes)
