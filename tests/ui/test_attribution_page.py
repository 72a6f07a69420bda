"""The Attribution page driven headlessly by Streamlit's AppTest on the real bundled model.

Streamlit caches (the model, predictions, attribution results) are kept between the tests of this module so the
model loads and each attribution runs once; the featurevis disk cache is an empty folder of this module's own.
"""

from __future__ import annotations

import csv
import io
import json
from urllib.parse import parse_qs

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from uiapp import app_on

import explorer.featurevis as fv
from explorer.attribution import attribute, channel_attribution, method_cost, method_problem, resolve_layers
from explorer.attribution.export import grid_png, magnitudes_csv, magnitudes_json
from explorer.cache import Cache, png_bytes
from explorer.data import load_image, sample_images
from explorer.featurevis.presets import get_preset
from explorer.featurevis.store import KIND, cache_keys

CATS = {"tabby", "tiger cat", "Egyptian cat"}


pytestmark = pytest.mark.usefixtures("module_cache")  # one empty disk cache for the module (conftest)


def _open(**query: str) -> AppTest:
    """Run the app on its Attribution page, as the URL /attribution?… would open it."""
    at = app_on("attribution", timeout=180, **query).run()
    assert [t.value for t in at.title] == ["Attribution"]
    assert not at.exception
    return at


def _overlays(at: AppTest) -> list[str]:
    """Captions of the overlay grid's images, in page order."""
    caps = [c for im in at.get("image") for c in im.captions]
    return [c for c in caps if " · " in c and "×" in c.split(" · ")[1] and not c.split(" · ")[0].endswith(".jpg")]


def _scale_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if "colour scale" in c.value or "normalisation" in c.value)


def _top_classes(at: AppTest) -> list[str]:
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return next(c for c in charts if c["data"][0].get("orientation") == "h")["data"][0]["y"][::-1]


def _links(at: AppTest) -> list[tuple[str, int]]:
    out = []
    for link in at.get("page_link"):
        q = parse_qs(link.proto.query_string)
        out.append((q["layer"][0], int(q["unit"][0])))
    return out


def _method_captions(at: AppTest) -> dict[str, str]:
    radio = at.radio(key="att_method")
    return dict(zip(radio.options, radio.proto.captions, strict=True))


def _chelsea():
    return load_image(sample_images()["chelsea"])


def test_default_view_explains_the_cat_with_gradcam_on_every_block(bundled):
    at = _open()
    assert not at.error
    top = _top_classes(at)
    assert top[0] in CATS
    assert at.selectbox(key="att_target").value == -1  # the predicted class
    blocks = [r.name for r in resolve_layers(bundled, "all")]
    overlays = _overlays(at)
    assert [c.split(" · ")[0] for c in overlays] == blocks  # one map per block with a spatial map, early to late
    caption = _scale_caption(at)
    assert caption.startswith("**Shared colour scale**") and f"all {len(blocks)} layers" in caption
    peaks = [float(c.rsplit("peak ", 1)[1]) for c in overlays]
    assert peaks[-1] > 10 * peaks[0]  # raw magnitudes: attribution grows with depth
    assert f"to {max(peaks):.3g}" in caption  # the shared range is the largest peak
    assert dict(at.query_params) == {
        "model": "bundled:efficientnet_lite0", "method": "gradcam", "sample": "chelsea", "scale": "shared",
    }  # fmt: skip
    # The channels linked to the Unit page are the top gradient × activation channels, computed independently.
    target = bundled.class_names.index(top[0])
    scores = channel_attribution(bundled, _chelsea(), ["blocks.5.3", "conv_head"], target)
    links = _links(at)
    for layer in ("blocks.5.3", "conv_head"):
        expected = scores[layer][0].argsort(descending=True)[:3].tolist()
        assert [u for n, u in links if n == layer] == expected
    assert len(links) == 3 * len(blocks)


def test_costs_are_shown_before_running_and_unavailable_methods_say_why(bundled):
    at = _open()
    target = bundled.class_names.index(_top_classes(at)[0])
    captions = _method_captions(at)
    ig = method_cost(bundled, 1, "all", "ig", target)
    assert f"{ig.forward_calls} forward + {ig.backward_calls} backward" in captions["Integrated Gradients"]
    reason = method_problem(bundled, "deeplift")
    assert reason and reason in captions["DeepLift — unavailable"]

    at.radio(key="att_method").set_value("ig").run()
    assert not at.exception
    assert [i.value for i in at.info] == [ig.describe()]  # the exact cost, before anything runs
    assert any(b.label == "Run Integrated Gradients" for b in at.button)
    assert _overlays(at) == []  # nothing ran
    assert at.query_params["method"] == "ig"

    at.radio(key="att_method").set_value("deeplift").run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and reason in warnings[0]
    assert _overlays(at) == []


def test_per_layer_toggle_changes_scale_caption_and_url():
    at = _open()
    shared = _scale_caption(at)
    at.segmented_control(key="att_scale").set_value("layer").run()
    assert not at.exception
    per_layer = _scale_caption(at)
    assert per_layer != shared and per_layer.startswith("**Per-layer normalisation**")
    overlays = _overlays(at)
    assert len(overlays) == 18 and all(" · scale 0 … " in c for c in overlays)
    assert at.query_params["scale"] == "layer"


def test_slow_method_runs_on_click_with_its_own_cost(bundled):
    at = _open()
    at.radio(key="att_method").set_value("ablation")
    at.multiselect(key="att_layers").set_value(["blocks.5.3"])
    at.slider(key="att_grid").set_value(2).run()
    target = bundled.class_names.index(_top_classes(at)[0])
    cost = method_cost(bundled, 1, ["blocks.5.3"], "ablation", target, grid=2)
    assert [i.value for i in at.info] == [cost.describe()]
    assert _overlays(at) == []
    next(b for b in at.button if b.label == "Run Feature ablation").click().run()
    assert not at.exception and not at.error
    assert [c.split(" · ")[0] for c in _overlays(at)] == ["blocks.5.3"]
    assert [n for n, _ in _links(at)] == ["blocks.5.3"] * 3  # channels still ranked by gradient × activation


def test_link_restores_method_target_sample_and_scale():
    at = _open(method="gradxact", target="967", sample="coffee", scale="layer")
    assert not at.error and not at.warning
    assert at.radio(key="att_method").value == "gradxact"
    assert at.selectbox(key="att_sample").value == "coffee"
    assert at.selectbox(key="att_target").value == 967
    assert _scale_caption(at).startswith("**Per-layer normalisation**")
    assert any("“espresso”" in h.value for h in at.subheader)
    assert at.query_params["target"] == "967"

    at = _open(method="no_such_method", sample="chelsea")
    assert len(at.warning) == 1 and "no_such_method" in at.warning[0].value
    assert at.radio(key="att_method").value == "gradcam"
    assert at.query_params["method"] == "gradcam"


def _huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buf, format="PNG")  # 48 M pixels, ~50 kB on disk
    return buf.getvalue()


@pytest.mark.parametrize(("make", "expected"), [(lambda: b"just some text", "not an image"), (_huge_png, "limit")])
def test_bad_upload_shows_one_error_and_no_maps(make, expected):
    at = _open()
    at.radio(key="att_source").set_value("Upload").run()
    at.file_uploader(key="att_upload").upload("photo.png", make())
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "photo.png" in errors[0] and expected in errors[0]
    assert _overlays(at) == [] and "sample" not in at.query_params


def test_visualizations_come_from_the_cache_and_the_button_renders_only_the_missing(bundled, monkeypatch):
    at = _open()
    links = _links(at)
    cached = [(n, u) for n, u in links if n == "conv_head"]
    keys = cache_keys(bundled, [fv.channel(n, u) for n, u in cached], get_preset("fast"), 0)
    for key in keys:  # as if rendered before (the page must find them under the fast preset, seed 0)
        Cache().put(KIND, key, png_bytes(np.full((96, 96, 3), 200, np.uint8)), {})
    calls = []

    def fake_render(model, objectives, preset="classic", **kw):
        calls.append(([o.key for o in objectives], preset))
        return type("R", (), {"images": np.zeros((len(objectives), 96, 96, 3), np.uint8)})()

    monkeypatch.setattr(fv, "render_cached", fake_render)
    at.run()
    stem = [(n, u) for n, u in links if n == "conv_stem"]  # the first convolution: its kernels, never rendered
    assert len(stem) == 3
    shown = len(links) - len(stem)
    assert any(c.value == f"{len(cached)} of {shown} visualizations are in the cache." for c in at.caption)
    missing = shown - len(cached)
    button = next(b for b in at.button if b.label.startswith(f"Render the {missing} missing"))
    button.click().run()
    assert not at.exception and not at.error
    assert len(calls) == 1
    keys_rendered, preset = calls[0]
    assert preset == "fast" and len(keys_rendered) == missing
    assert not {fv.channel(n, u).key for n, u in cached + stem} & set(keys_rendered)


def test_exports_hold_the_overlays_raw_magnitudes_and_colour_ranges(bundled):
    layers = ["blocks.3.0", "blocks.5.3", "conv_head"]
    res = attribute(bundled, _chelsea(), layers, "gradcam")
    grid = np.asarray(Image.open(io.BytesIO(grid_png(res, "shared", columns=2, title="cat"))).convert("RGB"))
    assert grid.shape[1] == 8 + 2 * (224 + 8)
    first = np.asarray(res.overlays(scale="shared")["blocks.3.0"])
    assert np.array_equal(grid[30 : 30 + 224, 8 : 8 + 224], first)  # the first cell is the first layer's overlay

    shared = json.loads(magnitudes_json(res, "shared", res.channels, 3))
    per_layer = json.loads(magnitudes_json(res, "layer", res.channels, 3))
    assert list(shared["layers"]) == layers and shared["method"] == "gradcam"
    top = max(float(res.maps[n].max()) for n in layers)
    for name in layers:
        rec = shared["layers"][name]
        assert np.allclose(rec["map"], res.maps[name][0].numpy())
        assert rec["colour_range"] == pytest.approx([0.0, top])  # one range for every layer
        assert per_layer["layers"][name]["colour_range"] == pytest.approx([0.0, float(res.maps[name].max())])
        assert [t["channel"] for t in rec["top_channels"]] == [c for c, _ in res.top_channels(name, 3)]

    rows = list(csv.DictReader(io.StringIO(magnitudes_csv(res))))
    assert len(rows) == sum(res.maps[n][0].numel() for n in layers)
    row = next(r for r in rows if r["layer"] == "conv_head" and r["row"] == "3" and r["col"] == "4")
    assert float(row["value"]) == pytest.approx(float(res.maps["conv_head"][0, 3, 4]))


def test_another_network_gets_its_own_blocks_and_reasons_and_stale_choices_are_dropped():
    at = _open()
    at.multiselect(key="att_layers").set_value(["blocks.5.3"]).run()
    assert [c.split(" · ")[0] for c in _overlays(at)] == ["blocks.5.3"]
    at.session_state["model_spec"] = "torchvision:resnet18:untrained"  # as the Model page's Load button does
    at.run()
    assert not at.exception and not at.error
    names = [c.split(" · ")[0] for c in _overlays(at)]
    assert names[0] == "conv1" and names[-1] == "layer4.1" and "blocks.5.3" not in names
    assert "run several times" in _method_captions(at)["DeepLift — unavailable"]  # ResNet's reused ReLUs
    assert at.query_params["model"] == "torchvision:resnet18:untrained"
