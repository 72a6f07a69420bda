"""Progress of long work on a page: the shared `Progress` callback drawn as a throttled bar with previews."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import streamlit as st

from explorer.runtime import Progress
from explorer.ui.i18n import number, percent, t


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


def labelled_progress(
    box: Any,
    first: str,
    label: Callable[[int, int, Any], str],
    *,
    every_s: float = 0.25,
    bar: Any = None,
    offset: float = 0.0,
    share: float = 1.0,
) -> Progress:
    """A `Progress` callback whose third argument is information about the step (a dict), not a preview: an
    st.progress bar in `box` (or the given `bar`) that starts with `first` and then reads `label(done, total, info)`,
    throttled to one draw per `every_s` seconds (the last step always draws). With `offset` and `share`, the work is
    one part of a longer one (the bar goes from `offset` to `offset + share`)."""
    bar = box.progress(offset, text=first) if bar is None else bar
    last = [0.0]

    def update(done: int, total: int, info: Any = None) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        bar.progress(min(offset + share * done / max(total, 1), 1.0), text=label(done, total, info))

    return update


def steps_of(done: int, total: int) -> str:
    """ "12 of 40": a count of steps in the session's language."""
    return t("compare.sweep.progress.of", done=number(done), total=number(total))
