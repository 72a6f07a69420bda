"""Image grids, downloads and progressive feature-visualization renders, shared by the Progression, Layer and
Unit pages (and reusable by Compare).

- `Tile` / `tile_grid`: a fixed slot per image (image, caption, actions) that previews can overwrite in place.
- `zip_bytes`, `png_download`: files for the download buttons.
- `RenderSettings`: preset, seed, steps, size, kept in the URL (`?preset=…&seed=…&steps=…&size=…`) and edited
  in `settings_form`; `link_params` carries them (and the model) into links to other pages.
- `render_tiles`: cached images appear at once; the misses are rendered in bounded batches, each stored in the
  disk cache only when complete, with a progress bar, previews in the tiles and a Stop button. The renders take
  their turn in the server's job queue (`widgets.queue.turn`); a batch another session is rendering already (the
  same cache keys: a class opening the same link) is watched, its progress and previews shown, not queued and
  rendered again (`explorer.jobs.SingleFlight`). A unit whose objective could not be raised is shown
  as *inactive* with its final value (`featurevis.activity`), not as a grey square.

A tile's placeholder is a square drawn in HTML, not an image: an image element replaced in the same run leaves a
media file that Streamlit deletes before the browser fetches it (a 404 and an "Image source error" in the console).
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from explorer.cache import Cache, make_key
from explorer.errors import ExplorerError
from explorer.featurevis import PRESETS, CachedRender, Objective, Preset, get_preset, render_cached
from explorer.featurevis.activity import Activity, activity
from explorer.featurevis.store import plan_render, render_key
from explorer.jobs import Flight, job_queue, shared_work
from explorer.layers import is_transformer
from explorer.models import LoadedModel
from explorer.trust.fvquality import image_quality
from explorer.ui.errors import error_message
from explorer.ui.i18n import number, percent, seconds, t
from explorer.ui.progress import progress_callback
from explorer.ui.session import ARCH_KEY, SPEC_KEY
from explorer.ui.widgets.images import as_png
from explorer.ui.widgets.queue import turn, waiting_text

# A square as wide as its column; the bottom margin undoes markdown's -1rem, so it takes the height of an st.image and
# the caption under it does not move when the picture arrives.
BUSY_PREVIEW_S = 1.5  # seconds between previews while other sessions wait in the queue (else the preset's own)
WATCH_REDRAW_S = 0.5  # how often a session watching another's render of the same images redraws its progress
SQUARE = "width:100%;aspect-ratio:1/1;border-radius:4px;box-sizing:border-box;margin-bottom:1rem;"
PLACEHOLDER_HTML = f'<div class="lx-tile-empty" style="{SQUARE}background:#ececec"></div>'
INACTIVE_HTML = (
    f'<div class="lx-tile-inactive" style="{SQUARE}border:1px dashed #b0b0b0;background:#f6f6f6;color:#666;'
    "display:flex;flex-direction:column;align-items:center;justify-content:center;text-align:center;"
    'font-size:0.8rem;line-height:1.3;padding:4px"><b>{label}</b><span>{why}</span></div>'
)

FLAG_KEYS = {  # a picture's quality flag (`explorer.trust.fvquality`) → its word in the catalogue
    "grey": "tiles.flag.grey",
    "saturated": "tiles.flag.saturated",
    "collapsed": "tiles.flag.collapsed",
    "weak": "tiles.flag.weak",
    "inactive": "tiles.flag.inactive",
}

# --------------------------------------------------------------------------- files


def safe_filename(text: str) -> str:
    """A file name from a layer or unit label: dots and dashes kept, anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


ZIP_DATE = (2000, 1, 1, 0, 0, 0)  # every member's date: the same files give the same bytes on every run


def zip_bytes(files: Mapping[str, bytes]) -> bytes:
    """A zip archive of name → bytes (PNGs are stored, not recompressed), byte-identical for the same files.

    Dated by the clock, the archive changed on every run of a page, so Streamlit registered a new download file each
    time and deleted the last one two runs later, before a busy browser had fetched it (a 404 under load)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            kind = zipfile.ZIP_STORED if name.lower().endswith(".png") else zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compress_type=kind)
    return buf.getvalue()


def png_download(container: Any, data: bytes, file_name: str, *, key: str, label: str = "PNG") -> None:
    """A small download button for one PNG that does not rerun the page."""
    container.download_button(
        label, data, file_name=file_name, mime="image/png", key=key, icon=":material/download:", on_click="ignore"
    )


def zip_download(
    container: Any,
    label: str,
    files: Mapping[str, bytes] | Callable[[], bytes],
    file_name: str,
    *,
    key: str | None = None,
    disabled: bool = False,
) -> None:
    """A download button for a zip of name → bytes (or of what `files()` returns), built only on click: no page
    run zips anything, and there is no download file for Streamlit to delete before a slow browser fetches it."""
    data = files if callable(files) else lambda: zip_bytes(files)
    container.download_button(
        label, data, file_name=file_name, mime="application/zip", key=key, icon=":material/folder_zip:",
        on_click="ignore", disabled=disabled,
    )  # fmt: skip


# --------------------------------------------------------------------------- tiles


class Tile:
    """One image slot: the picture, a caption under it, and a container for links and buttons."""

    def __init__(self, container: Any) -> None:
        self.box = container.container()
        self._image = self.box.empty()
        self._caption = self.box.empty()
        self.actions = self.box.container()

    def show(self, image: np.ndarray | bytes | None, caption: str | None = None, flags: Sequence[str] = ()) -> None:
        """Draw (or redraw) the image (an array, or its PNG bytes); None draws a grey square (HTML: no media file to
        go missing). `flags`: the picture's quality flags (`explorer.trust.image_quality`: grey, saturated,
        collapsed, …), appended to the caption as '⚠ grey, saturated' in the page's language, with the flags'
        meaning in the caption's tooltip."""
        if image is None:
            self._image.markdown(PLACEHOLDER_HTML, unsafe_allow_html=True)
        else:
            self._image.image(as_png(image), width="stretch", output_format="PNG")
        if caption is None:
            return
        if flags:
            words = ", ".join(t(FLAG_KEYS[f]) if f in FLAG_KEYS else f for f in flags)
            self._caption.caption(f"{caption} · ⚠ {words}", help=t("tiles.flag.help"))
        else:
            self._caption.caption(caption)

    def show_inactive(self, state: Activity, caption: str | None = None) -> None:
        """Mark the unit as inactive, with the value its objective ended at, instead of drawing a picture."""
        why = {"never left zero": t("gallery.inactive.zero"), "constant": t("gallery.inactive.constant")}.get(
            state.reason, t("gallery.inactive.flat")
        )
        why += "<br>" + t("gallery.inactive.final", value=number(state.final, 2)) if np.isfinite(state.final) else ""
        html = INACTIVE_HTML.format(label=t("tiles.flag.inactive"), why=why)
        self._image.markdown(html, unsafe_allow_html=True)
        if caption is not None:
            self._caption.caption(caption)


def tile_grid(n: int, cols: int, container: Any = None, caption: str = "") -> list[Tile]:
    """`n` tiles in rows of `cols` columns, each showing a placeholder and `caption` until it is filled."""
    box = container if container is not None else st.container()
    tiles: list[Tile] = []
    for start in range(0, n, cols):
        columns = box.columns(cols)
        for j in range(min(cols, n - start)):
            tile = Tile(columns[j])
            tile.show(None, caption)
            tiles.append(tile)
    return tiles


# --------------------------------------------------------------------------- settings in the URL

SETTINGS_KEY = "fv_settings"  # session_state: the last settings, for pages opened without them in the URL
SETTING_PARAMS = ("preset", "seed", "steps", "size")
LIMITS = {"seed": (0, 2**31 - 1), "steps": (1, 4096), "size": (16, 1024)}


@dataclass(frozen=True)
class RenderSettings:
    """What the pages render with; steps/size None mean the preset's own."""

    preset: str = "fast"
    seed: int = 0
    steps: int | None = None
    size: int | None = None

    def resolved(self) -> Preset:
        return get_preset(self.preset, steps=self.steps, size=self.size)

    def query(self) -> dict[str, str]:
        """The URL parameters for these settings (steps and size only when they override the preset)."""
        q = {"preset": self.preset, "seed": str(self.seed)}
        q.update({k: str(v) for k, v in (("steps", self.steps), ("size", self.size)) if v is not None})
        return q

    def describe(self) -> str:
        """'fast · 2 steps · 32 px · seed 0' in the session's language."""
        p = self.resolved()
        return t("gallery.settings", preset=p.name, steps=number(p.steps), size=number(p.size), seed=self.seed)


def suggested_settings(model: LoadedModel) -> RenderSettings:
    """The settings a page starts with when neither the link nor the session chose any: maco for transformers
    (ViT, DeiT, Swin, MaxViT), fast otherwise."""
    return RenderSettings(preset="maco" if is_transformer(model) else "fast")


def _parse_int(name: str, text: str) -> int:
    lo, hi = LIMITS[name]
    try:
        value = int(text)
    except ValueError:
        raise ExplorerError(t("gallery.link.not_whole", name=name, value=repr(text))) from None
    if not lo <= value <= hi:
        raise ExplorerError(t("gallery.link.outside", name=name, value=value, low=number(lo), high=number(hi)))
    return value


def settings_from_url(default: RenderSettings | None = None) -> RenderSettings:
    """The render settings named in the URL (else the session's last, else `default`), written back to the URL.

    A bad value is reported in one warning and replaced by the fallback; the page keeps working.
    """
    base = st.session_state.get(SETTINGS_KEY) or default or RenderSettings()
    qp = st.query_params
    changes: dict[str, Any] = {}
    problems = []
    if "preset" in qp:
        if qp["preset"] in PRESETS:
            changes["preset"] = qp["preset"]
        else:
            problems.append(t("gallery.link.bad_preset", value=repr(qp["preset"]), presets=", ".join(PRESETS)))
    for name in ("seed", "steps", "size"):
        if name in qp:
            try:
                changes[name] = _parse_int(name, qp[name])
            except ExplorerError as exc:
                problems.append(error_message(exc).rstrip("."))
    if "preset" in changes and changes["preset"] != base.preset:  # another preset: its own steps and size
        base = replace(base, steps=None, size=None)
    settings = replace(base, **changes)
    if problems:
        st.warning(
            t("gallery.link.ignored", problems="; ".join(problems), settings=settings.describe()),
            icon=":material/link_off:",
        )
    use_settings(settings)
    return settings


def use_settings(settings: RenderSettings) -> None:
    """Make `settings` the session's and the URL's."""
    st.session_state[SETTINGS_KEY] = settings
    wanted = settings.query()
    for name in SETTING_PARAMS:
        if name in wanted and st.query_params.get(name) != wanted[name]:
            st.query_params[name] = wanted[name]
        elif name not in wanted and name in st.query_params:
            del st.query_params[name]


def _submit_settings(key: str) -> None:
    s = st.session_state
    preset = s[f"{key}_preset"]
    use_settings(RenderSettings(preset, int(s[f"{key}_seed"]), s[f"{key}_steps"], s[f"{key}_size"]))


def _set_preset(preset: str) -> None:
    current = st.session_state.get(SETTINGS_KEY) or RenderSettings()
    use_settings(RenderSettings(preset, current.seed))


def settings_form(settings: RenderSettings, key: str, model: LoadedModel | None = None) -> None:
    """The render settings in a form (applied on submit), plus one-click quality presets; for a transformer, a
    line saying that maco is the suggested preset."""
    p = settings.resolved()
    state = st.session_state
    if model is not None and suggested_settings(model).preset == "maco":
        st.caption(t("gallery.maco_note"))
    if state.get(f"{key}_shown") != settings:  # new settings (a link, a button): show them; else keep edits
        state[f"{key}_preset"], state[f"{key}_seed"] = settings.preset, settings.seed
        state[f"{key}_steps"], state[f"{key}_size"] = settings.steps, settings.size
        state[f"{key}_shown"] = settings
    with st.form(f"{key}_form", border=True):
        c = st.columns([1.2, 1, 1, 1, 1], vertical_alignment="bottom")
        c[0].selectbox(t("gallery.form.preset"), list(PRESETS), key=f"{key}_preset", help=t("gallery.form.preset.help"))
        c[1].number_input(
            t("gallery.form.steps"), *LIMITS["steps"], step=16, key=f"{key}_steps", placeholder=f"{p.steps}"
        )
        c[2].number_input(t("gallery.form.size"), *LIMITS["size"], step=16, key=f"{key}_size", placeholder=f"{p.size}")
        c[3].number_input(t("gallery.form.seed"), *LIMITS["seed"], step=1, key=f"{key}_seed")
        c[4].form_submit_button(
            t("gallery.form.apply"), on_click=_submit_settings, args=(key,), icon=":material/tune:", key=f"{key}_apply"
        )
    c = st.columns([3, 1, 1], vertical_alignment="center")
    c[0].caption(t("gallery.form.caption", settings=settings.describe()))
    for col, name in zip(c[1:], ("classic", "maco"), strict=True):
        col.button(
            t("gallery.form.render_with", preset=name),
            key=f"{key}_{name}",
            on_click=_set_preset,
            args=(name,),
            disabled=settings.preset == name and settings.steps is None and settings.size is None,
            width="stretch",
        )


def link_params(settings: RenderSettings, **extra: Any) -> dict[str, str]:
    """Query parameters for a link to another page: the session's model, the settings, and `extra`."""
    q: dict[str, str] = {}
    if st.session_state.get(SPEC_KEY):
        q["model"] = st.session_state[SPEC_KEY]
    if st.session_state.get(ARCH_KEY):
        q["arch"] = st.session_state[ARCH_KEY]
    return {**q, **settings.query(), **{k: str(v) for k, v in extra.items()}}


# --------------------------------------------------------------------------- progressive render


@dataclass
class Rendered:
    """What `render_tiles` produced: per objective its image, PNG and final objective value (None if missing)."""

    images: list[np.ndarray | None]
    png: list[bytes | None]
    values: list[float | None]
    inactive: list[bool] = field(default_factory=list)
    cached: int = 0
    rendered: int = 0
    shared: int = 0  # rendered by another session asking for the same images at the same time
    stopped: bool = False

    @property
    def complete(self) -> bool:
        return all(im is not None for im in self.images)


def render_signature(model: LoadedModel, objectives: Sequence[Objective], settings: RenderSettings) -> str:
    """What a Stop refers to: this model, these objectives, these settings (other work is not stopped)."""
    preset = settings.resolved()
    return make_key(
        model=model.fingerprint,
        objectives=[o.key for o in objectives],
        preset=preset.cache_params(),
        seed=settings.seed,
    )


def stopped_key(key: str) -> str:
    """The session_state entry holding the signature of the stopped work of a render area."""
    return f"{key}_stopped"


def _stop(key: str, signature: str) -> None:
    st.session_state[stopped_key(key)] = signature


def _resume(key: str) -> None:
    st.session_state.pop(stopped_key(key), None)


def stop_control(container: Any, key: str, signature: str) -> bool:
    """Whether the work named by `signature` was stopped (then offer Resume); else draw a Stop button."""
    if st.session_state.get(stopped_key(key)) == signature:
        return True
    container.button(
        t("gallery.stop"), key=f"{key}_stop", on_click=_stop, args=(key, signature), icon=":material/stop:"
    )
    return False


def preview_pace(preset: Preset) -> tuple[Preset, float]:
    """The preset to render with and the progress bar's interval: the preset's own previews (and a bar redrawn
    every 0.15 s), or, while other sessions wait in the job queue, a preview every BUSY_PREVIEW_S at most (the
    pixels and the cache key do not change) so that the shared CPU renders instead of drawing."""
    if job_queue().snapshot()["waiting"] > 0:
        return replace(preset, preview_every_s=max(preset.preview_every_s, BUSY_PREVIEW_S)), BUSY_PREVIEW_S / 3
    return preset, 0.15


def render_tiles(
    model: LoadedModel,
    objectives: Sequence[Objective],
    settings: RenderSettings,
    tiles: Sequence[Tile],
    captions: Sequence[str],
    *,
    key: str,
    status: Any = None,
    batches: Sequence[Sequence[int]] | None = None,
    cache: Cache | None = None,
) -> Rendered:
    """Fill `tiles[i]` with objective i's image: hits from the disk cache at once, misses rendered batch by batch.

    Each batch goes through `render_cached`, which stores its images only after the whole batch finished, so an
    interrupted render (Stop, or any widget interaction that reruns the page) never leaves partial images in the
    cache. Progress and the Stop button go in `status` (a container above the tiles).
    """
    cache = cache or Cache()
    preset = settings.resolved()
    n = len(objectives)
    out = Rendered([None] * n, [None] * n, [None] * n, [False] * n)
    plan = plan_render(model, objectives, preset, settings.seed, batches=batches, cache=cache)
    for i, entry in plan.hits.items():
        _fill(out, tiles, captions, i, plan.pixels[i], entry.data, entry.meta.get("curve") or [float("nan")])
    out.cached = len(plan.hits)
    todo = plan.todo
    if not todo:
        return out
    slot = (status if status is not None else st).empty()
    box = slot.container()
    signature = render_signature(model, objectives, settings)
    left, right = box.columns([6, 1], vertical_alignment="center")
    if stop_control(right, key, signature):
        waiting = plan.renders
        left.info(t("gallery.stopped", waiting=number(waiting), n=number(n)), icon=":material/pause_circle:")
        right.button(
            t("gallery.resume"), key=f"{key}_resume", on_click=_resume, args=(key,), icon=":material/play_arrow:"
        )
        out.stopped = True
        return out
    progress = _Progress(left.empty(), plan.renders * preset.steps, settings)
    flights = shared_work()
    try:
        with contextlib.ExitStack() as held:  # this session's turn in the queue, taken at its first render

            def give_back() -> None:  # no session waits for another's render while it holds a slot
                held.close()
                progress.holding = False

            for batch, n_missing in todo:
                objs = [objectives[i] for i in batch]
                show = _preview_into(tiles, captions, batch)

                def work(flight: Flight[CachedRender], objs: list[Objective] = objs, show: Any = show) -> CachedRender:
                    if not progress.holding:
                        held.enter_context(turn("render", progress.line, on_wait=flight.queued))
                        progress.holding = True
                    flight.ahead = None  # it runs: its watchers show its progress, not a place in the queue
                    return _render_batch(model, objs, preset, settings.seed, cache, flight, progress, show)

                # Another session rendering these very images (the same cache keys): watch its render, not queue
                result, led = flights.run(
                    render_key(model, objs, preset, settings.seed), work, on_wait=progress.watch(show, give_back)
                )
                for j, i in enumerate(batch):
                    _fill(out, tiles, captions, i, result.images[j], result.png[j], result.curves[j])
                if led:
                    out.rendered += int((~result.hits).sum())
                else:
                    out.shared += len(batch)
                progress.done_before += n_missing * preset.steps
    except Exception:
        slot.empty()  # no Stop button left behind; the caller shows the error
        raise
    slot.empty()
    return out


def _render_batch(
    model: LoadedModel,
    objs: list[Objective],
    preset: Preset,
    seed: int,
    cache: Cache,
    flight: Flight[CachedRender],
    progress: _Progress,
    show: Callable[[Any], None],
) -> CachedRender:
    """Render one batch, holding this session's turn in the server's fair queue, for this session and every session
    watching its flight: progress and previews drawn here and reported to the flight."""
    paced, every_s = preview_pace(preset)
    on_step = progress_callback(
        bar=progress.bar(),
        text=t("gallery.rendering"),
        every_s=every_s,
        offset=progress.done_before,
        grand_total=progress.total,
        started=progress.started,
        on_preview=show,
    )

    def step(done: int, total: int, preview: Any = None) -> None:
        flight.report(done, total, preview)
        on_step(done, total, preview)

    return render_cached(model, objs, paced, seed=seed, progress=step, cache=cache)


class _Progress:
    """The progress line of one `render_tiles` call: the bar of this session's renders, or, while it watches
    another session render the same images, that render's progress, waiting place and previews."""

    def __init__(self, line: Any, total: int, settings: RenderSettings) -> None:
        self.line, self.total, self.settings = line, total, settings
        self.started = time.monotonic()
        self.done_before = 0  # image-steps of the batches finished so far
        self.holding = False  # this session holds its turn in the job queue

    def bar(self) -> Any:
        """Draw the bar (where the queue's waiting line was) and return it."""
        at = self.done_before / self.total if self.total else 0.0
        images = self.total // max(self.settings.resolved().steps, 1)
        text = t("gallery.rendering_images", images=number(images), settings=self.settings.describe())
        return self.line.progress(min(at, 1.0), text=text)

    def watch(
        self, show: Callable[[Any], None], give_back: Callable[[], None]
    ) -> Callable[[Flight[CachedRender]], None]:
        """What a watcher does while the flight runs: first give back its own turn in the queue, if it holds one;
        then draw the leader's place in the queue or its progress (every WATCH_REDRAW_S), and its newest preview in
        this session's tiles (every BUSY_PREVIEW_S at most)."""
        drawn = {"bar": 0.0, "preview": 0.0}
        last: list[Any] = [None]

        def on_wait(flight: Flight[CachedRender]) -> None:
            if self.holding:
                give_back()
            now = time.monotonic()
            fresh = flight.preview is not None and flight.preview is not last[0]
            if fresh and now - drawn["preview"] >= BUSY_PREVIEW_S:
                last[0], drawn["preview"] = flight.preview, now
                show(flight.preview)
            if now - drawn["bar"] < WATCH_REDRAW_S:
                return
            drawn["bar"] = now
            if flight.ahead is not None and not flight.done_steps:
                self.line.info(waiting_text(flight.ahead, now - self.started), icon=":material/hourglass_top:")
                return
            frac = min((self.done_before + flight.done_steps) / self.total, 1.0) if self.total else 0.0
            text = t("gallery.rendering_shared", done=percent(frac), time=seconds(now - self.started, 0))
            self.line.progress(frac, text=text)

        return on_wait


def _fill(
    out: Rendered, tiles: Sequence[Tile], captions: Sequence[str], i: int, image: np.ndarray, data: bytes, curve: Any
) -> None:
    state = activity(curve, image)
    out.images[i], out.png[i], out.values[i], out.inactive[i] = image, data, state.final, state.inactive
    if state.inactive:
        tiles[i].show_inactive(state, f"{captions[i]} · {t('tiles.flag.inactive')} · {number(state.final, 2)}")
    else:  # the finished picture's quality flags (grey, saturated, collapsed), from its pixels: about 1 ms
        tiles[i].show(data or image, f"{captions[i]} · {number(state.final, 2)}", flags=_flags(data, image))


@functools.lru_cache(maxsize=4096)
def _flags_of_png(data: bytes) -> tuple[str, ...]:
    return image_quality(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).flags


def _flags(data: bytes | None, image: np.ndarray) -> tuple[str, ...]:
    """A finished picture's quality flags, once per picture per process (keyed by its PNG bytes): a warm rerun
    does not measure every cached tile again."""
    return _flags_of_png(data) if data else image_quality(image).flags


def _preview_into(tiles: Sequence[Tile], captions: Sequence[str], batch: list[int]) -> Any:
    """Draw a render preview's images into the tiles of their objectives, captioned with the step reached."""

    def show(preview: Any) -> None:
        for im, j in zip(preview.images, preview.indices, strict=True):
            step = t("gallery.preview_step", step=number(preview.step), steps=number(preview.steps))
            tiles[batch[j]].show(im, f"{captions[batch[j]]} · {step}")

    return show
