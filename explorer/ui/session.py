"""The model every page shows: loaded once per process and shared by every session (never mutate it), the session's
current model kept in the URL, and what is derived from a model (its ladder), cached by its fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from explorer.data.fence import MAX_PATH_CHARS
from explorer.errors import ExplorerError, msg
from explorer.layers import LayerInfo, ladder
from explorer.models import DEFAULT_SPEC, LoadedModel, ModelError, load_model, parse_spec
from explorer.ui.errors import error_message
from explorer.ui.i18n import t
from explorer.ui.messages import localize
from explorer.ui.paths import fenced_spec
from explorer.ui.uploads import upload_dir

SPEC_KEY = "model_spec"  # session_state: the spec of the session's current model
ARCH_KEY = "model_arch"  # session_state: its architecture (checkpoints without metadata)
NOTICE_KEY = "model_notice"  # session_state: a message about the model to show once (e.g. a URL that failed)


def _content_key(spec: str) -> str:
    """What identifies a checkpoint file's content: the hash folder of an upload, else size and mtime."""
    try:
        kind, name, _ = parse_spec(spec)
    except ModelError:
        return ""
    if kind != "file":
        return ""
    path = Path(name).resolve()
    if path.parent.parent == upload_dir().resolve():
        return path.parent.name  # uploads live under uploads/<sha256>/
    try:
        st_ = path.stat()
    except OSError:
        return ""
    return f"{st_.st_size}:{st_.st_mtime_ns}"


@st.cache_resource(max_entries=6, show_spinner="Loading the model…")
def _load(spec: str, arch: str | None, device: str | None, content_key: str) -> LoadedModel:
    del content_key  # part of the cache key only
    return load_model(spec, arch=arch, device=device)


def get_model(spec: str, arch: str | None = None, device: str | None = None) -> LoadedModel:
    """The model a spec names, loaded once per process and shared by every session (never mutate it).

    Every spec the app loads passes :func:`fenced_spec` first: a checkpoint outside the shared folders is refused
    before anything looks for it."""
    spec = fenced_spec(spec)
    return _load(spec, (arch or "").strip() or None, str(device) if device else None, _content_key(spec))


def _spec_from_url() -> tuple[str, str | None]:
    """The model a link names: any bundled/torchvision/timm spec, or a checkpoint file the fence lets through."""
    spec = st.query_params.get("model") or DEFAULT_SPEC
    arch = st.query_params.get("arch") or None
    try:
        for value in (spec, arch or ""):
            if len(value) > MAX_PATH_CHARS:
                raise ModelError(f"The link's model is {len(value):,} characters long; it was not opened.")
        spec = fenced_spec(spec, msg("The link's model"))
    except ExplorerError as exc:
        st.session_state[NOTICE_KEY] = t("common.showing_default", error=error_message(exc), spec=DEFAULT_SPEC)
        return DEFAULT_SPEC, None
    return spec, arch


def _sync_url(spec: str, arch: str | None) -> None:
    if st.query_params.get("model") != spec:
        st.query_params["model"] = spec
    if arch and st.query_params.get("arch") != arch:
        st.query_params["arch"] = arch
    elif not arch and "arch" in st.query_params:
        del st.query_params["arch"]


def current_model() -> LoadedModel:
    """The session's chosen model: from the URL on the first run, else the default bundled EfficientNet-Lite0.

    If the chosen model cannot be loaded the session falls back to the default and leaves a notice.
    """
    state = st.session_state
    if SPEC_KEY not in state:
        state[SPEC_KEY], state[ARCH_KEY] = _spec_from_url()
    spec, arch = state[SPEC_KEY], state.get(ARCH_KEY)
    try:
        model = get_model(spec, arch)
    except Exception as exc:
        if spec == DEFAULT_SPEC and not arch:
            raise
        state[NOTICE_KEY] = t("common.could_not_open", spec=spec, error=error_message(exc), default=DEFAULT_SPEC)
        state[SPEC_KEY], state[ARCH_KEY] = DEFAULT_SPEC, None
        spec, arch = DEFAULT_SPEC, None
        model = get_model(spec)
    _sync_url(spec, arch)
    return model


def set_current_model(spec: str, arch: str | None = None) -> LoadedModel:
    """Load a model and make it the session's current one; on any error the previous model stays selected."""
    model = get_model(spec, arch)
    st.session_state[SPEC_KEY], st.session_state[ARCH_KEY] = model.spec, (arch or "").strip() or None
    _sync_url(model.spec, st.session_state[ARCH_KEY])
    return model


def show_notice() -> None:
    """Show (once) a message left by current_model, e.g. a link whose model could not be opened."""
    msg = st.session_state.pop(NOTICE_KEY, None)
    if msg:
        st.warning(msg, icon=":material/warning:")


def model_indicator(model: LoadedModel) -> None:
    """A compact summary of the current model (for the sidebar): spec, description, fingerprint, device."""
    st.caption(t("common.current_model"))
    st.markdown(f"**`{model.spec if len(model.spec) < 60 else Path(model.spec).name}`**")
    st.caption(localize(model.description))
    st.caption(t("common.fingerprint_device", fingerprint=model.short_fingerprint, device=model.device))


@st.cache_data(max_entries=64, show_spinner="Tracing the layers…")
def _ladder(_model: LoadedModel, key: tuple[Any, ...], view: str) -> list[LayerInfo]:
    del key
    return ladder(_model, view)


def model_key(model: LoadedModel) -> tuple[Any, ...]:
    """A hashable key for caching anything computed from a model: weights, architecture and input size."""
    return (model.fingerprint, model.arch, tuple(model.input_size))


def get_ladder(model: LoadedModel, view: str = "blocks") -> list[LayerInfo]:
    """The model's ladder, cached by fingerprint (a LoadedModel itself is not hashable)."""
    return _ladder(model, model_key(model), view)
