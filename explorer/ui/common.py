"""What every page shares: the cached model, the session's current model (kept in the URL), errors, progress.

Models are cached once per process (`st.cache_resource`) and shared by all sessions, so nothing here or in a page
may mutate one; everything derived from a model is cached by its fingerprint (`st.cache_data`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from explorer.cache import folder as cache_folder
from explorer.data.fence import MAX_PATH_CHARS, Kind, allowed, fence, shown
from explorer.errors import ExplorerError
from explorer.layers import LayerInfo, ladder
from explorer.models import CHECKPOINT_SUFFIXES, DEFAULT_SPEC, LoadedModel, ModelError, parse_spec, read_metadata
from explorer.runtime import Progress
from explorer.ui.i18n import number, percent, t

SPEC_KEY = "model_spec"  # session_state: the spec of the session's current model
ARCH_KEY = "model_arch"  # session_state: its architecture (checkpoints without metadata)
NOTICE_KEY = "model_notice"  # session_state: a message about the model to show once (e.g. a URL that failed)


# --------------------------------------------------------------------------- errors


def error_message(exc: BaseException) -> str:
    """The one sentence a user sees for `exc`; a generic one for bugs."""
    if isinstance(exc, ExplorerError):
        return str(exc)
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


# --------------------------------------------------------------------------- model cache


def fenced_path(text: str | Path, what: str = "The path", kind: Kind = "any") -> Path:
    """A path a user typed or a link named, through the server's fence (:func:`explorer.data.fence.fence`) before
    any file-system call: the resolved path, or one sentence that is the same for missing and forbidden paths."""
    return fence(text, what, kind)


def allowed_path(path: str | Path, kind: Kind = "any") -> bool:
    """Whether the app may read `path` (see `fenced_path`)."""
    return allowed(path, kind)


def fenced_spec(spec: str, what: str = "The model") -> str:
    """A model spec a user typed or a link named, safe to load: a name (bundled:, torchvision:, timm:) as it is; a
    checkpoint path through the fence, resolved. A path without a checkpoint suffix is refused from its text alone,
    so no file outside the shared folders is ever opened or even looked for."""
    kind, name, _ = parse_spec(spec)
    if kind != "file":
        return spec.strip()
    if Path(name).suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelError(
            f"{what} {shown(name)!r} is not a checkpoint file: a checkpoint ends in {', '.join(CHECKPOINT_SUFFIXES)}."
        )
    return str(fence(name, what, "file"))


def upload_dir() -> Path:
    return cache_folder("uploads")


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
    from explorer.models import load_model

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
        spec = fenced_spec(spec, "The link's model")
    except ExplorerError as exc:
        st.session_state[NOTICE_KEY] = t("common.showing_default", error=str(exc), spec=DEFAULT_SPEC)
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
    st.caption(model.description)
    st.caption(t("common.fingerprint_device", fingerprint=model.short_fingerprint, device=model.device))


# --------------------------------------------------------------------------- derived data


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


# --------------------------------------------------------------------------- uploads


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "checkpoint"
    return stem[-100:]


def save_upload(name: str, data: bytes) -> Path:
    """Store an uploaded checkpoint under uploads/<sha256>/ and return its path; never overwrites a file.

    The same content uploaded twice (under any name) maps to the same file, so it is loaded once.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ModelError(f"{name} is not a checkpoint: use one of {', '.join(CHECKPOINT_SUFFIXES)}.")
    if not data:
        raise ModelError(f"{name} is empty (0 bytes).")
    folder = upload_dir() / hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    for existing in sorted(folder.iterdir()):
        if existing.suffix.lower() == suffix and existing.is_file() and existing.stat().st_size == len(data):
            return existing
    target = folder / _safe_name(name)
    tmp = folder / f".{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_bytes(data)
        with contextlib.suppress(FileExistsError):  # a concurrent upload of the same file won
            os.link(tmp, target)  # atomic, and fails instead of overwriting
    finally:
        tmp.unlink(missing_ok=True)
    return target


def checkpoint_arch_hint(path: str | Path) -> str | None:
    """The architecture a checkpoint's own metadata names (safetensors header or JSON sidecar), if any."""
    meta = read_metadata(path)
    hint = meta.get("arch") or meta.get("base_spec")
    return str(hint) if hint else None


# --------------------------------------------------------------------------- progress


def preview_images(preview: Any) -> list[np.ndarray]:
    """Turn a preview (PIL, array or tensor; one image or a batch, CHW or HWC, [0,1] or uint8) into uint8 HWC."""
    if preview is None:
        return []
    if isinstance(preview, (list, tuple)):
        return [im for p in preview for im in preview_images(p)]
    if hasattr(preview, "detach"):
        preview = preview.detach().float().cpu().numpy()
    arr = np.asarray(preview)
    if arr.ndim == 2:
        arr = arr[None, ..., None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        return []
    if arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return list(arr)


def progress_callback(
    container: Any = None,
    *,
    text: str | None = None,
    every_s: float = 0.2,
    bar: Any = None,
    offset: int = 0,
    grand_total: int | None = None,
    started: float | None = None,
    on_preview: Callable[[Any], None] | None = None,
) -> Progress:
    """A `Progress` callback drawing an st.progress bar (+ preview images) in `container`.

    Updates are throttled to one per `every_s` seconds (the last step and every preview always draw). For work done
    in parts, pass the part's `offset` and the `grand_total` of all parts and one shared `bar`; with `started` (a
    time.monotonic()) the bar shows the elapsed seconds. Previews go to `on_preview` when given, else they are drawn
    as small images under the bar. Call it from the script thread.
    """
    text = t("common.working") if text is None else text
    if bar is None:
        box = container if container is not None else st.container()
        bar = box.progress(0.0, text=text)
        slot = box.empty()
    else:
        slot = None
    last = [0.0]

    def update(done: int, total: int, preview: Any = None) -> None:
        now = time.monotonic()
        if preview is not None and on_preview is not None:
            on_preview(preview)
        whole = grand_total if grand_total is not None else total
        at = offset + done
        if at < whole and preview is None and now - last[0] < every_s:
            return
        last[0] = now
        frac = min(max(at / whole, 0.0), 1.0) if whole else 0.0
        if started is not None:
            label = f"{text} {percent(frac)} · {number(now - started, 0)} s"
        else:
            label = f"{text} {number(at)}/{number(whole)}"
        bar.progress(frac, text=label)
        images = preview_images(preview) if on_preview is None else []
        if images and slot is not None:
            slot.image(images[:8], width=96)

    return update


# --------------------------------------------------------------------------- links between pages


def _registered_elsewhere() -> None:
    """Never runs: st.navigation routes a page reference to the page registered under the same url_path."""


def page_ref(name: str, title: str) -> st.Page:
    """A reference to the app's page at ``/<name>`` for st.page_link / st.switch_page, without importing the page.

    Streamlit identifies a page by the hash of its url_path alone, so this resolves to the page that app.py
    registered there (pages never import each other).
    """
    return st.Page(_registered_elsewhere, title=title, url_path=name)
