"""What a warm view of the Attribution page (a rerun that computes nothing new) costs the server: no overlay coloured
and no picture encoded again, and the bytes served are those Streamlit served before the pictures were memoized
(its own JPEG of each PNG), so the pixels are the same. Also the overlay memo of `AttributionResult` on its own."""

from __future__ import annotations

import gc
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.elements.lib import image_utils
from streamlit.elements.lib.layout_utils import LayoutConfig
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from uiapp import app_on

from explorer.attribution import AttributionResult, MethodCost, attribute, colour
from explorer.attribution import result as result_module
from explorer.cache import png_bytes
from explorer.data import load_image, sample_images
from explorer.ui.widgets.images import served, shown_bytes

pytestmark = pytest.mark.usefixtures("module_cache")  # one empty disk cache for the module (conftest)


def _streamlit_served(data: bytes, width: int | str = "stretch") -> bytes:
    """The bytes `st.image(data, width=width)` serves with output_format 'auto' (Streamlit's own code)."""
    fmt = image_utils._validate_image_format_string(data, "auto")
    return image_utils._ensure_image_size_and_format(data, LayoutConfig(width=width), fmt)


class _Served:
    """Records the bytes of every picture Streamlit adds to its media files (what the browser fetches)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.data: list[bytes] = []
        original = MemoryMediaFileStorage.load_and_get_id

        def record(storage, path_or_data, mimetype, kind, filename=None):
            if isinstance(path_or_data, bytes) and mimetype.startswith("image/"):
                self.data.append(path_or_data)
            return original(storage, path_or_data, mimetype, kind, filename)

        monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)


def test_a_warm_rerun_colours_and_encodes_nothing_and_serves_the_same_bytes(monkeypatch):
    at = app_on("attribution", timeout=180).run()  # computes Grad-CAM on every block, colours, encodes
    assert not at.exception and not at.error
    served_ = _Served(monkeypatch)
    at.run()  # warm: the memoized pictures
    assert not at.exception and not at.error
    first, served_.data = served_.data, []
    overlays, saves = [], []
    real_overlay, real_save = colour.overlay, Image.Image.save
    monkeypatch.setattr(colour, "overlay", lambda *a, **k: overlays.append(1) or real_overlay(*a, **k))
    monkeypatch.setattr(Image.Image, "save", lambda *a, **k: saves.append(1) or real_save(*a, **k))
    at.run()
    assert not at.exception and not at.error
    assert overlays == [] and saves == []  # nothing coloured, nothing encoded: not by the page, not by Streamlit
    assert served_.data == first  # the very same bytes, in the same order
    # 18 overlays, the photo, 3 channels × 18 layers (the first layer's kernels, placeholders for the others): each
    # as Streamlit's 'auto' made it of an opaque picture, a JPEG
    assert sum(d[:2] == b"\xff\xd8" for d in first) >= 18 + 1 + 3 * 18


def test_memoized_pictures_are_the_bytes_streamlit_served_before(bundled):
    """The page used to give st.image PNG bytes (or the picked PIL image) and let Streamlit encode them on every run;
    the memoized bytes must be exactly what that produced (so the same pixels reach the browser)."""
    image = load_image(sample_images()["chelsea"])
    res = attribute(bundled, image, ["blocks.3.0", "conv_head"], "gradcam")
    for scale in ("shared", "layer"):
        pngs = res.overlay_bytes(scale=scale)
        jpegs = res.overlay_bytes(scale=scale, fmt="JPEG", quality=90)
        for name, pic in res.overlays(scale=scale).items():
            png = png_bytes(np.asarray(pic))
            assert pngs[name] == png
            assert jpegs[name] == _streamlit_served(png)
            assert served(png) == (_streamlit_served(png), "JPEG")
    png = pngs["conv_head"]
    assert served(png, 80) == (_streamlit_served(png, 80), "JPEG")  # scaled down, as st.image(width=80) does
    assert served(png, 400) == (_streamlit_served(png, 400), "JPEG")  # narrower already: only re-encoded
    rgba = io.BytesIO()
    Image.new("RGBA", (32, 32), (10, 20, 30, 128)).save(rgba, format="PNG")
    assert served(rgba.getvalue()) == (rgba.getvalue(), "PNG")  # transparency: Streamlit keeps the PNG
    data, fmt = shown_bytes(image, "digest-of-chelsea")
    assert fmt == "JPEG"
    assert data == image_utils._ensure_image_size_and_format(
        image_utils._pil_to_bytes(image, "JPEG"), LayoutConfig(width="stretch"), "JPEG"
    )  # the picked photo, as st.image(PIL image) served it


def _result(maps: dict[str, torch.Tensor]) -> AttributionResult:
    """A small Grad-CAM result over a random 32 × 32 picture (no model needed)."""
    images = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    cost = MethodCost("gradcam", len(maps), 1, 1, 1, 1)
    return AttributionResult(method="gradcam", layers=list(maps), images=images, cost=cost, maps=dict(maps), target=[0])


def _counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = colour.overlay
    monkeypatch.setattr(colour, "overlay", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_overlays_are_coloured_once_per_result_and_options(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    res = _result({"a": torch.rand(1, 4, 4, generator=gen), "b": torch.rand(1, 8, 8, generator=gen)})
    calls = _counting(monkeypatch)
    first = res.overlays(scale="shared")
    assert len(calls) == 2
    second = res.overlays(scale="shared")
    assert len(calls) == 2  # memoized
    assert all(np.array_equal(np.asarray(first[n]), np.asarray(second[n])) for n in first)
    second["a"].paste((255, 0, 0), (0, 0, 32, 32))  # the caller's own copy: the memo is untouched
    assert np.array_equal(np.asarray(res.overlays(scale="shared")["a"]), np.asarray(first["a"]))
    res.overlays(scale="layer")
    res.overlay_bytes(scale="layer", fmt="JPEG")
    res.overlay_bytes(scale="layer")
    assert len(calls) == 4  # another scale: coloured once more, for both encodings
    assert res.overlay_bytes(scale="layer") == res.overlay_bytes(scale="layer")
    res.maps["a"].mul_(3)  # changed in place: the memo must not serve the old colours
    changed = res.overlays(scale="shared")
    assert len(calls) == 6 and not np.array_equal(np.asarray(changed["a"]), np.asarray(first["a"]))
    res.maps["b"] = torch.zeros(1, 8, 8)  # replaced
    res.overlays(scale="shared")
    assert len(calls) == 8
    other = _result({n: m.clone() for n, m in res.maps.items()})  # another result, equal maps: its own entry
    other.overlays(scale="shared")
    assert len(calls) == 10
    ranges = other.scale("shared")
    ranges["a"] = (5.0, 6.0)  # the caller's own dict: the memoized scale is untouched
    assert other.scale("shared")["a"] == other.scale("shared")["b"] != (5.0, 6.0)
    assert other.peaks() == {n: float(m[0].max()) for n, m in other.maps.items()}


def test_the_overlay_memo_is_bounded_and_forgets_dead_results(monkeypatch):
    memo = result_module.OverlayMemo(max_bytes=3 * (32 * 32 * 3 + 128))  # three 32 × 32 overlays and their scales
    monkeypatch.setattr(result_module, "_OVERLAY_MEMO", memo)
    gen = torch.Generator().manual_seed(2)
    results = [_result({"a": torch.rand(1, 4, 4, generator=gen)}) for _ in range(5)]
    for one in results:
        one.overlays()
    assert sum(k[1] == "rgb" for k in memo._items) == 3 and memo.nbytes <= memo.max_bytes
    calls = _counting(monkeypatch)
    results[-1].overlays()
    assert calls == []  # the most recent is kept
    results[0].overlays()
    assert calls == [1]  # the oldest was dropped
    assert len(memo) > 0
    del results[:], one
    gc.collect()
    assert memo.get(object(), ("anything",)) is None
    assert len(memo) == 0 and memo.nbytes == 0  # the entries of results that are gone were dropped
    replaced = _result({"a": torch.rand(1, 4, 4, generator=gen)})
    for _ in range(20):  # a map replaced again and again: a new tensor never passes for an old one (kept alive)
        replaced.overlays()
        replaced.maps["a"] = torch.rand(1, 4, 4, generator=gen)
        expected = _result({"a": replaced.maps["a"].clone()}).overlays()["a"]
        assert np.array_equal(np.asarray(replaced.overlays()["a"]), np.asarray(expected))


def test_the_overlay_memo_is_safe_across_threads():
    gen = torch.Generator().manual_seed(3)
    res = _result({f"l{i}": torch.rand(1, 6, 6, generator=gen) for i in range(6)})
    expected = {s: {n: np.asarray(p) for n, p in res.overlays(scale=s).items()} for s in ("layer", "shared")}
    result_module._OVERLAY_MEMO.clear()
    out: list[tuple[str, dict[str, bytes]]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for scale in ("layer", "shared", "layer", "shared"):
                out.append((scale, res.overlay_bytes(scale=scale)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(out) == 24
    for scale, pngs in out:  # every thread got the same pictures, whichever coloured them
        assert pngs == res.overlay_bytes(scale=scale)
        for name, png in pngs.items():
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected[scale][name])
