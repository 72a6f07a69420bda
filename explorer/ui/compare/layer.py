"""The Compare page's view of one layer, base vs tuned: same-seed renders of its most and least changed units,
the dataset images that excite them in each model, and both models' attribution on one colour scale.

Every piece reads its cache first (renders: the featurevis disk cache; examples: the examples cache; attribution:
st.cache_data), so revisiting a layer redraws without computing. Each section returns the files it showed, for
the layer's zip download and the HTML report.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from explorer.attribution import attribute, shared_scale
from explorer.cache import PngMemo, png_bytes
from explorer.data import list_images, load_image
from explorer.exemplars import dataset_examples
from explorer.exemplars.scan import folder_signature
from explorer.featurevis import channel
from explorer.models import LoadedModel
from explorer.ui.errors import show_error
from explorer.ui.i18n import number, t
from explorer.ui.progress import progress_callback
from explorer.ui.session import model_key
from explorer.ui.widgets.gallery import RenderSettings, Tile, render_tiles, safe_filename
from explorer.ui.widgets.images import SERVED_QUALITY, served

K_UNITS = 3  # most changed and least changed units shown
K_EXAMPLES = 4  # dataset examples per unit and model
MAX_ATTR_IMAGES = 8
THUMB_WIDTH = 80  # the examples' width on the page
MEMO_ENTRIES = 256


class _Memo:
    """A small thread-safe LRU shared by every session (its values are never mutated)."""

    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, OrderedDict[Any, Any](), threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_examples_memo = _Memo(32)  # (model, folder signature, layer, k) → LayerExamples
_pictures = _Memo(MEMO_ENTRIES)  # an example's pixels → (its PNG, what st.image serves at THUMB_WIDTH)


def unit_picks(row: Any, k: int = K_UNITS) -> tuple[list[int], list[int], bool]:
    """(most changed units, least changed units, whether the weights changed at all) from per-channel change."""
    n = int(row.channels or 0)
    changes = np.asarray(row.weight_change_channels or [], dtype=np.float64)
    if n <= 0:
        return [], [], False
    if changes.size != n or not np.isfinite(changes).all():
        return [int(u) for u in np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))], [], False
    moved = bool(changes.max() > 0)
    order = np.argsort(-changes, kind="stable")
    top = [int(u) for u in order[: min(k, n)]]
    least = [int(u) for u in order[::-1] if int(u) not in top][: min(k, max(n - len(top), 0))]
    return top, least, moved


def spatial(row: Any) -> bool:
    """Whether a ladder row has a map with more than one position (what the unit views need)."""
    shape = tuple(row.out_shape) if hasattr(row, "out_shape") else ()
    return len(shape) == 3 and shape[1] * shape[2] > 1


def _g3(x: float) -> str:
    """`x` with three significant digits (like '{:.3g}'), in the session's language."""
    text = f"{x:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{number(float(mantissa))}e{exponent}"
    return number(float(text))


def _sizes(base: LoadedModel, tuned: LoadedModel) -> str:
    """A note when the two models see images at different sizes (e.g. a run fine-tuned at 64 px)."""
    b, tu = base.input_size[0], tuned.input_size[0]
    return "" if b == tu else " " + t("compare.layer.sizes", base=b, tuned=tu)


# --------------------------------------------------------------------------- same-seed renders


def units_section(
    base: LoadedModel, tuned: LoadedModel, row: Any, settings: RenderSettings
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Most and least changed units of `row`'s layer rendered in both models from one seed, side by side."""
    layer = row.name
    top, least, moved = unit_picks(row)
    if not top:
        st.info(t("compare.layer.no_channels", layer=layer))
        return {}, {}
    if not moved:
        st.caption(t("compare.layer.unchanged"))
    groups = [(t("compare.layer.most"), top)] + ([(t("compare.layer.least"), least)] if least else [])
    changes = row.weight_change_channels
    status = st.empty()  # render_tiles draws its progress and Stop button here; cleared when both are done
    units: list[int] = []
    tiles_b: list[Tile] = []
    tiles_t: list[Tile] = []
    for title, picked in groups:
        st.markdown(t("compare.layer.group", title=title, settings=settings.describe()))
        cols = st.columns(2 * len(picked))
        for i, u in enumerate(picked):
            tiles_b.append(Tile(cols[2 * i]))
            tiles_t.append(Tile(cols[2 * i + 1]))
            tiles_b[-1].show(None, t("compare.layer.unit_base", unit=u))
            tiles_t[-1].show(None, t("compare.layer.unit_tuned", unit=u))
            units.append(u)
    delta = [f" · Δw {number(float(f'{100 * changes[u]:.2g}'))} %" if len(changes) > u else "" for u in units]
    objs = [channel(layer, u) for u in units]
    rb = render_tiles(
        base,
        objs,
        settings,
        tiles_b,
        [t("compare.layer.unit_base", unit=u) + d for u, d in zip(units, delta, strict=True)],
        key=f"cmp_rb_{layer}",
        status=status,
    )
    if rb.stopped:
        return {}, {}
    rt = render_tiles(
        tuned,
        objs,
        settings,
        tiles_t,
        [t("compare.layer.unit_tuned", unit=u) for u in units],
        key=f"cmp_rt_{layer}",
        status=status,
    )
    status.empty()
    files: dict[str, bytes] = {}
    for u, pb, pt in zip(units, rb.png, rt.png, strict=True):
        if pb is not None:
            files[f"{safe_filename(layer)}-unit{u}-base.png"] = pb
        if pt is not None:
            files[f"{safe_filename(layer)}-unit{u}-tuned.png"] = pt
    renders: dict[str, Any] = {}
    if rb.complete and rt.complete:
        renders = {
            "base": np.stack(rb.images),
            "tuned": np.stack(rt.images),
            "units": units,
            "per_unit": [None] * len(units),
        }
    return files, renders


# --------------------------------------------------------------------------- dataset examples


def examples_section(
    base: LoadedModel, tuned: LoadedModel, folder: Path, layer: str, units: list[int]
) -> dict[str, bytes]:
    """The images (receptive-field crops) of `folder` that excite each unit most, in the base and tuned model."""
    slot = st.empty()
    box = slot.container()
    found = {}
    scanning = {"base": t("compare.layer.scanning_base"), "tuned": t("compare.layer.scanning_tuned")}
    signature = _folder_signature(folder)
    for model, label in ((base, "base"), (tuned, "tuned")):
        key = (_preprocessing(model), signature, layer, K_EXAMPLES)
        ex = _examples_memo.get(key) if signature is not None else None
        if ex is None:  # read from the examples cache (or scanned): decompressing it costs more than the listing
            ex = dataset_examples(
                model,
                folder,
                [layer],
                k=K_EXAMPLES,
                progress=progress_callback(box, text=scanning[label]),
            )[layer]
            if signature is not None:
                _examples_memo.put(key, ex)
        found[label] = ex
    slot.empty()
    files: dict[str, bytes] = {}
    head = st.columns([1, 4, 4])
    head[1].markdown(t("compare.layer.base_model"))
    head[2].markdown(t("compare.layer.tuned_model"))
    for u in units:
        cols = st.columns([1, 4, 4], vertical_alignment="center")
        cols[0].markdown(t("compare.layer.unit", unit=u))
        for col, (label, model) in zip(cols[1:], (("base", base), ("tuned", tuned)), strict=True):
            ex = found[label]
            pictures = [_example_pictures(p) for p in ex.patches(model, u, size=96)]
            values = [e.value for e in ex.examples(u)]
            col.image(  # the bytes st.image made of each PNG at this width, made once: passed on as they are
                [shown for _, (shown, _) in pictures],
                width=THUMB_WIDTH,
                caption=[number(v, 2) for v in values],
                output_format=pictures[0][1][1] if pictures else "auto",
            )
            for i, (png, _) in enumerate(pictures):
                files[f"{safe_filename(layer)}-unit{u}-{label}-example{i}.png"] = png
    used = found["base"].images_used
    st.caption(t("compare.layer.examples_caption", images=number(used)) + _sizes(base, tuned))
    return files


def _preprocessing(model: LoadedModel) -> tuple[Any, ...]:
    """What a model's dataset examples depend on besides the folder (the examples cache's key, less the folder)."""
    return (model.fingerprint, tuple(model.input_size), model.resize_size, tuple(model.mean), tuple(model.std),
            model.interpolation)  # fmt: skip


def _folder_signature(folder: Path) -> tuple[str, str] | None:
    """The folder and a hash of its image files' names, sizes and times (as the examples cache keys them), or None
    when it cannot be listed (then `dataset_examples` says why)."""
    root = Path(folder).expanduser()
    try:
        return str(root), folder_signature(root, list_images(root))
    except Exception:  # noqa: BLE001 - not listable: no memo, dataset_examples reports it
        return None


def _example_pictures(patch: Image.Image) -> tuple[bytes, tuple[bytes, str]]:
    """(PNG bytes of an example crop, what st.image serves for them at THUMB_WIDTH with its output_format), memoized
    by the crop's pixels (see `served`)."""
    pixels = np.ascontiguousarray(np.asarray(patch.convert("RGB")))
    key = PngMemo.key(pixels)
    found = _pictures.get(key)
    if found is None:
        png = png_bytes(pixels)
        found = (png, served(png, THUMB_WIDTH))
        _pictures.put(key, found)
    return found


# --------------------------------------------------------------------------- attribution


@st.cache_data(max_entries=64, show_spinner=False)
def _attribution_pair(
    _base: LoadedModel,
    base_key: tuple[Any, ...],
    _tuned: LoadedModel,
    tuned_key: tuple[Any, ...],
    path: str,
    layer: str,
) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes], tuple[float, float], str, str]:
    """Grad-CAM of `layer` over the image at `path` in both models on one scale: (the two overlays as PNG, the same
    as st.image serves them (its JPEG of the PNG), the scale, each model's predicted class). Bytes: cheap to copy
    out of st.cache_data on every run, and shown without encoding."""
    del base_key, tuned_key
    image = load_image(path)
    rb = attribute(_base, image, [layer], "gradcam")
    rt = attribute(_tuned, image, [layer], "gradcam")
    lo, hi = shared_scale([rb, rt])
    pngs = tuple(r.overlay_bytes(scale=(lo, hi))[layer] for r in (rb, rt))
    shown = tuple(r.overlay_bytes(scale=(lo, hi), fmt="JPEG", quality=SERVED_QUALITY)[layer] for r in (rb, rt))
    return (pngs[0], pngs[1]), (shown[0], shown[1]), (lo, hi), rb.target_name(0), rt.target_name(0)


def attribution_images(folder: Path) -> list[Path]:
    """A few images of `folder` for attribution: the first of each class, then more, up to MAX_ATTR_IMAGES."""
    files = list_images(folder)
    firsts: dict[Path, Path] = {}
    for p in files:
        firsts.setdefault(p.parent, p)
    picked = list(firsts.values())[:MAX_ATTR_IMAGES]
    return picked + [p for p in files if p not in picked][: MAX_ATTR_IMAGES - len(picked)]


def attribution_section(base: LoadedModel, tuned: LoadedModel, folder: Path, layer: str) -> dict[str, bytes]:
    """Grad-CAM of `layer` in both models for one image of the data, on one shared colour scale."""
    images = attribution_images(folder)
    if not images:
        st.info(t("compare.layer.no_images"))
        return {}
    names = [p.relative_to(folder).as_posix() for p in images]
    if st.session_state.get("cmp_attr_image") not in names:
        st.session_state["cmp_attr_image"] = names[0]
    name = st.selectbox(t("compare.layer.image"), names, key="cmp_attr_image", help=t("compare.layer.image.help"))
    try:
        with st.spinner(t("compare.layer.attributing")):
            (ob, ot), (sb, sh), (lo, hi), pb, pt = _attribution_pair(
                base, model_key(base), tuned, model_key(tuned), str(folder / name), layer
            )
    except Exception as exc:
        show_error(exc)
        return {}
    cols = st.columns(4)
    cols[0].image(sb, caption=t("compare.layer.base_predicts", name=pb), width="stretch", output_format="JPEG")
    cols[1].image(sh, caption=t("compare.layer.tuned_predicts", name=pt), width="stretch", output_format="JPEG")
    st.caption(t("compare.layer.gradcam", layer=layer, low=_g3(lo), high=_g3(hi)) + _sizes(base, tuned))
    stem = f"{safe_filename(layer)}-{safe_filename(Path(name).stem)}"
    return {f"{stem}-gradcam-base.png": ob, f"{stem}-gradcam-tuned.png": ot}
