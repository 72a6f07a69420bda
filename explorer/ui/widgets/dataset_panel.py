"""The Fine-tune page's data section: a demo dataset, a folder on the server or an uploaded zip, summarised.

Shows the classes with their counts, the files skipped and why, and thumbnails; a zip is extracted once per
content under the app's cache (never over anything).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from explorer.cache import folder as cache_folder
from explorer.data import DEMO_DATASETS, DataError, ImageFolderDataset, load_image, resolve_data, safe_extract_zip
from explorer.errors import ExplorerError
from explorer.ui.errors import show_error
from explorer.ui.i18n import number, t
from explorer.ui.messages import localize
from explorer.ui.paths import fenced_path

SOURCES = ["Demo dataset", "Folder on the server", "Upload a zip"]  # the radio's values (its labels: source_name)
THUMBS = 12


def source_name(source: str) -> str:
    names = {SOURCES[0]: t("data.source.demo"), SOURCES[1]: t("data.source.folder"), SOURCES[2]: t("data.source.zip")}
    return names.get(source, source)


def demo_description(name: str) -> str:
    """What a demo dataset holds, in the session's language (`DEMO_DATASETS` says it in English)."""
    known = {"digits": t("data.demo.digits"), "shapes": t("data.demo.shapes")}
    return known.get(name, DEMO_DATASETS.get(name, name))


@dataclass
class DataSummary:
    """What an image folder holds: classes with their counts, files skipped with why, a few sample paths."""

    root: str
    classes: list[str]
    counts: list[int]
    skipped: list[tuple[str, str]]
    samples: list[tuple[str, str]]  # (path, class), round-robin over the classes


def _signature(root: Path) -> tuple[Any, ...]:
    """Changes when class folders or their files are added or removed (folder modification times)."""
    dirs = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    return tuple((p.name, p.stat().st_mtime_ns) for p in dirs)


@st.cache_data(max_entries=16, show_spinner=False)  # the caller shows the spinner, in the session's language
def _summarize(root: str, signature: tuple[Any, ...]) -> DataSummary:
    del signature  # part of the cache key only
    ds = ImageFolderDataset(root)  # raises DataError for one class, empty classes, no folders
    counts = [0] * len(ds.classes)
    per_class: list[list[str]] = [[] for _ in ds.classes]
    for path, label in ds.samples:
        counts[label] += 1
        if len(per_class[label]) < THUMBS:
            per_class[label].append(str(path))
    samples = []
    for i in range(THUMBS):
        samples += [(paths[i], ds.classes[c]) for c, paths in enumerate(per_class) if i < len(paths)]
    return DataSummary(root, list(ds.classes), counts, [(str(p), r) for p, r in ds.skipped], samples[:THUMBS])


@st.cache_data(max_entries=64, show_spinner=False)
def _thumb(path: str) -> np.ndarray:
    image = load_image(path)
    image.thumbnail((96, 96))
    return np.asarray(image)


def _extract_zip(up: Any) -> str:
    """Extract an uploaded zip once per content into ``<cache>/datasets/<hash>/`` (never over anything)."""
    data = up.getvalue()
    target = cache_folder("datasets") / hashlib.sha256(data).hexdigest()[:20]
    marker = target / ".extracted.json"
    try:
        known = target / json.loads(marker.read_text())["path"]
        if known.is_dir():
            return str(known)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    folder = safe_extract_zip(up, target)
    marker.write_text(json.dumps({"path": str(folder.relative_to(target)), "name": up.name}))
    return str(folder)


def _choose_data() -> tuple[str | None, str]:
    """The data spec ('demo:NAME' or a folder) the user picked, and a short label for run names."""
    state = st.session_state
    wanted = st.query_params.get("data", "")
    if "ft_source" not in state and wanted.removeprefix("demo:") in DEMO_DATASETS:
        state["ft_source"], state["ft_demo"] = SOURCES[0], wanted.removeprefix("demo:")
    labels = {s: source_name(s) for s in SOURCES}  # made now: a format_func may be called after the run
    source = st.radio(t("data.images"), SOURCES, key="ft_source", horizontal=True, format_func=labels.get)
    if source == SOURCES[0]:
        name = st.selectbox(t("data.demo"), list(DEMO_DATASETS), key="ft_demo")
        st.caption(f"**{name}**: {demo_description(name)}.")
        return f"demo:{name}", name
    if source == SOURCES[1]:
        text = st.text_input(t("data.folder"), key="ft_folder", placeholder=t("data.folder.placeholder"))
        if not text.strip():
            return None, "folder"
        try:
            folder = fenced_path(text, "The folder", "dir")  # before anything looks at it
        except ExplorerError as exc:
            show_error(exc)
            return None, "folder"
        return str(folder), folder.name or "folder"
    up = st.file_uploader(t("data.zip"), type=["zip"], key="ft_zip")
    if up is None:
        return None, "zip"
    cached = state.get("_ft_zip")
    if not cached or cached[0] != up.file_id:
        try:
            cached = (up.file_id, _extract_zip(up))
        except Exception as exc:
            show_error(exc)
            return None, "zip"
        state["_ft_zip"] = cached
    return cached[1], Path(up.name).stem


def data_section() -> tuple[str | None, str, DataSummary | None]:
    st.subheader(t("data.title"))
    st.caption(t("data.intro"))
    spec, label = _choose_data()
    if spec is None:
        return None, label, None
    try:
        root = resolve_data(spec)
        with st.spinner(t("data.reading")):
            summary = _summarize(str(root), _signature(root))
    except Exception as exc:
        show_error(exc)
        return None, label, None
    c = st.columns(3)
    c[0].metric(t("data.classes"), number(len(summary.classes)))
    c[1].metric(t("data.images_count"), number(sum(summary.counts)))
    c[2].metric(t("data.skipped"), number(len(summary.skipped)), help=t("data.skipped.help"))
    counts = pd.DataFrame({"class": summary.classes, "images": summary.counts})
    bar = st.column_config.ProgressColumn(t("data.col.images"), format="%d", min_value=0, max_value=max(summary.counts))
    st.dataframe(counts, hide_index=True, key="ft_counts", height=min(35 * len(counts) + 38, 300),
                 column_config={"class": st.column_config.TextColumn(t("data.col.class")), "images": bar})  # fmt: skip
    if summary.skipped:
        st.warning(t("data.skipped_warning", n=number(len(summary.skipped))), icon=":material/warning:")
        with st.expander(t("data.skipped_files"), key="ft_skip_box"):
            skipped = pd.DataFrame([(f, localize(why)) for f, why in summary.skipped], columns=["file", "reason"])
            labels = {"file": st.column_config.TextColumn(t("data.col.file")),
                      "reason": st.column_config.TextColumn(t("data.col.reason"))}  # fmt: skip
            st.dataframe(skipped, hide_index=True, key="ft_skip", column_config=labels)
    try:
        st.image([_thumb(p) for p, _ in summary.samples], caption=[c for _, c in summary.samples], width=72)
    except DataError as exc:  # a file changed since the scan
        st.caption(t("data.no_preview", error=exc))
    return spec, label, summary
