"""The Progression, Layer and Unit pages driven by AppTest on the bundled model.

The Unit page test renders for real (tiny steps and size), as does the browser test of the Progression page; the
others swap the optimisation loop for a fast fake, so they check the pages' logic (URL state, batching, caching,
errors) and not the engine's pictures.
"""

from __future__ import annotations

import re
import zipfile
from io import BytesIO

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from uiapp import Renders, app_on

import explorer.featurevis.store as store
from explorer.featurevis import channel
from explorer.featurevis.stages import STAGES

TINY = {"preset": "fast", "steps": "2", "size": "32"}
VALUE = re.compile(r"^unit (\d+) · (-?\d+\.\d\d)$")


@pytest.fixture(scope="module", autouse=True)
def _streamlit_caches():
    """Fresh Streamlit caches for this module; kept between its tests (the ladders take seconds to trace)."""
    st.cache_data.clear()
    yield
    st.cache_data.clear()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Each test has its own empty disk cache (renders, dataset examples)."""
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _open(name: str, /, **query: str) -> AppTest:
    return app_on(name, timeout=180, **query).run()


def _images(at: AppTest) -> int:
    return sum(len(el.proto.imgs) for el in at.get("image"))


def _values(at: AppTest) -> dict[str, float]:
    """Tile captions 'unit 3 · 4.20' → {'unit 3': 4.2} (only final images carry a value)."""
    found = [VALUE.match(c.value) for c in at.caption]
    return {f"unit {m.group(1)}": float(m.group(2)) for m in found if m}


def _links(at: AppTest, page: str) -> list[dict[str, str]]:
    out = []
    for link in at.get("page_link"):
        if link.proto.page == page:
            out.append(dict(p.split("=", 1) for p in link.proto.query_string.replace("%3A", ":").split("&")))
    return out


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _captions(at: AppTest, prefix: str) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith(prefix)]


def _placeholders(at: AppTest) -> int:
    """Tiles still waiting: grey squares drawn in HTML (no media file)."""
    return sum(m.value.count("lx-tile-empty") for m in at.markdown)


def _cached_pngs(cache_dir) -> int:
    return len(list((cache_dir / "featurevis").rglob("*.png")))


# --------------------------------------------------------------------------- Progression


def test_progression_renders_each_stage_then_serves_a_second_visit_from_the_cache(monkeypatch):
    renders = Renders(monkeypatch, fake=True)  # the browser test renders this page for real
    at = _open("progression", per_stage="2", **TINY)
    _ok(at)
    assert [m.value for m in at.markdown if m.value.startswith("#### ")] == [
        f"#### {i + 1}. {s.capitalize()}" for i, s in enumerate(STAGES)
    ]
    layer_links = [link["layer"] for link in _links(at, "layer")]
    assert layer_links.count("conv_stem") == 1  # the edges row links to the first layer's kernels
    stage_layers = [name for name in layer_links if name != "conv_stem"]
    captions = [c.value for c in at.caption if re.match(r"^\d blocks?: ", c.value)]
    assert len(stage_layers) == 5 and len(captions) == 5
    for layer, caption in zip(stage_layers, captions, strict=True):  # each caption names the blocks it shows
        assert f"Shown: **{layer}**" in caption and "relative depth" in caption and "blocks." in caption
    assert _images(at) == 10 and not at.get("progress")  # all final: no progress bar (and no Stop) left
    assert len(renders.calls) == 5 and renders.images == 10  # one batch per stage, two units each
    assert renders.calls[0] == [f"channel({stage_layers[0]}:0)", f"channel({stage_layers[0]}:1)"]
    first = _values(at)
    assert first == {"unit 0": 2.0, "unit 1": 2.0}  # the fake's last value is its step count
    units = _links(at, "unit")
    assert len(units) == 10 and {u["unit"] for u in units} == {"0", "1"}
    assert all(u["preset"] == "fast" and u["steps"] == "2" for u in units)
    assert all(u["model"] == "bundled:efficientnet_lite0" for u in units)
    again = _open("progression", per_stage="2", **TINY)
    _ok(again)
    assert len(renders.calls) == 5  # nothing rendered: every image came from the disk cache
    assert _images(again) == 10 and _values(again) == first


def test_settings_form_applies_on_submit_and_lands_in_the_url(monkeypatch):
    renders = Renders(monkeypatch, fake=True)
    at = _open("progression", per_stage="2", **TINY)
    _ok(at)
    assert renders.images == 10
    at.number_input(key="prog_seed").set_value(7)
    at.number_input(key="prog_steps").set_value(3)
    at.button(key="prog_apply").click().run()
    _ok(at)
    assert at.query_params["seed"] == "7" and at.query_params["steps"] == "3"
    assert renders.images == 20  # the new settings are new images
    assert all(link["seed"] == "7" for link in _links(at, "unit"))
    at.button(key="prog_classic").click().run()  # one click to the quality preset, the preset's own steps
    assert at.query_params["preset"] == "classic" and "steps" not in at.query_params
    assert at.query_params["seed"] == "7"


# --------------------------------------------------------------------------- Layer


def test_layer_page_reopens_layer_and_page_from_the_url(monkeypatch):
    renders = Renders(monkeypatch, fake=True)
    at = _open("layer", layer="blocks.1.0", page="2", **TINY)  # 24 channels: page 2 holds units 16-23
    _ok(at)
    assert at.selectbox(key="layer_pick").value == "blocks.1.0"
    assert at.number_input(key="layer_page").value == 2
    assert _images(at) == 8 and renders.calls == [[f"channel(blocks.1.0:{u})" for u in range(16, 24)]]
    assert sorted(_values(at)) == sorted(f"unit {u}" for u in range(16, 24))
    links = _links(at, "unit")
    assert [int(link["unit"]) for link in links] == list(range(16, 24))
    assert all(link["layer"] == "blocks.1.0" for link in links)
    pngs = [b for b in at.get("download_button") if b.proto.label == "PNG"]
    assert len(pngs) == 8
    at.selectbox(key="layer_pick").set_value("blocks.2.0").run()  # a new layer starts on its first page
    _ok(at)
    assert at.query_params["layer"] == "blocks.2.0" and at.query_params["page"] == "1"
    assert _images(at) == 16


def test_layer_page_keeps_finished_batches_and_offers_stop_and_resume(monkeypatch, cache_dir, bundled):
    from explorer.ui.widgets.gallery import RenderSettings, render_signature, stopped_key

    renders = Renders(monkeypatch, fake=True, fail_on=2)  # 16 units = two batches of 8; the second fails
    at = _open("layer", layer="blocks.0.0", **TINY)
    assert not at.exception
    assert len(at.error) == 1 and "render failed half-way" in at.error[0].value
    assert _cached_pngs(cache_dir) == 8  # the finished batch is kept, nothing of the failed one
    key = "layer_blocks.0.0_1"
    objs = [channel("blocks.0.0", u) for u in range(16)]
    at.session_state[stopped_key(key)] = render_signature(bundled, objs, RenderSettings("fast", 0, 2, 32))
    at.run()  # as after a click on Stop: the cached half shows, nothing renders
    _ok(at)
    assert len(renders.calls) == 2 and len(_values(at)) == 8
    assert any("Stopped: 8 of 16" in i.value for i in at.info)
    assert _images(at) == 8 and _placeholders(at) == 8  # the other half waits as grey squares, not images
    at.button(key=f"{key}_resume").click().run()
    _ok(at)
    assert renders.calls[-1] == [f"channel(blocks.0.0:{u})" for u in range(8, 16)]  # only the missing half
    assert len(_values(at)) == 16 and _cached_pngs(cache_dir) == 16 and _placeholders(at) == 0


def test_layer_and_unit_pages_open_on_the_middle_stage_unless_the_link_names_a_layer(monkeypatch):
    Renders(monkeypatch, fake=True)
    at = _open("layer", **TINY)
    _ok(at)
    middle = STAGES[len(STAGES) // 2]
    assert at.query_params["layer"] == "blocks.4.1" and at.selectbox(key="layer_pick").value == "blocks.4.1"
    assert any(f"**{middle}** stage" in c.value for c in at.caption)
    at = _open("unit", data="samples", **TINY)  # the 5 photos: no scan of the digits subset at blocks.4.1
    _ok(at)
    assert at.query_params["layer"] == "blocks.4.1" and at.query_params["unit"] == "0"
    at = _open("layer", layer="blocks.1.0", **TINY)
    assert at.query_params["layer"] == "blocks.1.0"


def test_the_stem_is_shown_as_its_kernels_next_to_the_layer_after_its_nonlinearity(monkeypatch):
    renders = Renders(monkeypatch, fake=True)
    at = _open("layer", layer="conv_stem", **TINY)
    _ok(at)
    assert any("linear in the pixels" in i.value and "weights are the picture" in i.value for i in at.info)
    assert _captions(at, "kernel ") == [f"kernel {u}" for u in range(16)]
    # no picture of conv_stem itself: the units of bn1 (its channels after ReLU6) in two batches of 8
    assert renders.calls == [[f"channel(bn1:{u})" for u in range(8)], [f"channel(bn1:{u})" for u in range(8, 16)]]
    assert _images(at) == 16 + 16  # kernels and pictures, in pairs
    assert [link["layer"] for link in _links(at, "unit")] == ["bn1"] * 16  # the unit pages of what is shown
    assert any("Kernels 11, 16, 28, 31 are zero" in c.value for c in at.caption)
    assert [b for b in at.get("download_button") if "kernels of conv_stem" in b.proto.label]
    at.number_input(key="layer_page").set_value(2).run()  # units 16–31 on page 2
    _ok(at)
    assert _captions(at, "kernel ") == [f"kernel {u}" for u in range(16, 32)]


def test_the_unit_page_of_a_stem_channel_shows_its_kernel_and_links_past_the_nonlinearity(monkeypatch):
    renders = Renders(monkeypatch, fake=True)
    at = _open("unit", layer="conv_stem", unit="3", data="samples", **TINY)
    _ok(at)
    assert renders.calls == []  # no activation maximization of a layer that is linear in the pixels
    assert any("weights are the picture" in i.value for i in at.info)
    assert _captions(at, "kernel ") == ["kernel 3"]
    assert [(link["layer"], link["unit"]) for link in _links(at, "unit")] == [("bn1", "3")]


def test_a_unit_that_cannot_be_raised_is_marked_inactive_not_drawn(monkeypatch):
    Renders(monkeypatch, fake=True, dead=("channel(blocks.0.0:3)",))
    judged = {**TINY, "steps": "16"}  # a render shorter than MIN_STEPS is not judged
    at = _open("layer", layer="blocks.0.0", **judged)
    _ok(at)
    assert "unit 3" not in _values(at) and len(_values(at)) == 15
    assert [c.value for c in at.caption if "inactive" in c.value] == ["unit 3 · inactive · 0.00"]
    marks = [m.value for m in at.markdown if "lx-tile-inactive" in m.value]
    assert len(marks) == 1 and "objective stayed at 0" in marks[0] and "final 0.00" in marks[0]
    assert _images(at) == 15  # no grey square pretends to be its picture
    again = _open("layer", layer="blocks.0.0", **judged)  # from the cache: the same verdict
    assert [c.value for c in again.caption if "inactive" in c.value] == ["unit 3 · inactive · 0.00"]


def test_renders_take_a_turn_in_the_job_queue_and_cache_hits_do_not(monkeypatch):
    import explorer.jobs as jobs

    class Recording(jobs.JobQueue):
        def __init__(self) -> None:
            super().__init__(workers=1, per_session=1)
            self.asked: list[tuple[str, str]] = []

        def slot(self, session, kind="job", **kw):
            self.asked.append((session, kind))
            return super().slot(session, kind, **kw)

    queue = Recording()
    monkeypatch.setattr(jobs, "job_queue", lambda: queue)
    renders = Renders(monkeypatch, fake=True)
    at = _open("layer", layer="blocks.1.0", **TINY)
    _ok(at)
    assert len(renders.calls) == 2 and [kind for _, kind in queue.asked] == ["render"]  # once around both batches
    session = queue.asked[0][0]
    assert session and session != "no-session"  # Streamlit's session id
    again = _open("layer", layer="blocks.1.0", **TINY)  # another session; every image is a cache hit
    _ok(again)
    assert len(queue.asked) == 1 and len(renders.calls) == 2


def test_layer_zip_holds_every_rendered_unit_and_a_sheet(monkeypatch, bundled):
    from explorer.ui.pages.layer import cached_units, layer_zip
    from explorer.ui.widgets.gallery import RenderSettings

    Renders(monkeypatch, fake=True)
    settings = RenderSettings("fast", 0, 2, 32)
    store.render_cached(bundled, [channel("blocks.0.0", u) for u in (1, 4, 5)], settings.resolved(), seed=0)
    assert cached_units(bundled, "blocks.0.0", 16, settings) == [1, 4, 5]
    assert cached_units(bundled, "blocks.0.0", 16, RenderSettings("fast", 1, 2, 32)) == []  # another seed
    with zipfile.ZipFile(BytesIO(layer_zip(bundled, "blocks.0.0", 16, settings))) as zf:
        names = zf.namelist()
        assert sorted(names) == ["blocks.0.0-1.png", "blocks.0.0-4.png", "blocks.0.0-5.png", "blocks.0.0-sheet.png"]
        assert zf.read("blocks.0.0-4.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_layer_or_unit_in_the_url_is_one_error_and_the_page_works(monkeypatch):
    Renders(monkeypatch, fake=True)
    at = _open("layer", layer="blocks.99.0", page="3", **TINY)
    assert not at.exception
    assert len(at.error) == 1 and "blocks.99.0" in at.error[0].value and not at.warning
    assert at.query_params["layer"] == "blocks.4.1" and _images(at) == 16  # the page's default instead
    at = _open("unit", layer="blocks.1.0", unit="999", data="samples", **TINY)
    assert not at.exception
    assert len(at.error) == 1 and "999" in at.error[0].value
    assert at.query_params["unit"] == "0" and at.number_input(key="unit_pick").value == 0
    at = _open("progression", preset="nope", seed="x", **{"steps": "2", "size": "32", "per_stage": "2"})
    assert not at.exception and len(at.warning) == 1
    assert "preset='nope'" in at.warning[0].value and "seed" in at.warning[0].value
    assert at.query_params["preset"] == "fast" and at.query_params["seed"] == "0"


# --------------------------------------------------------------------------- Unit


@pytest.mark.slow  # ~10-20 s: real renders of 7 images, dataset examples and attribution on the sample photos
def test_unit_page_shows_four_kinds_of_image_examples_and_attribution(monkeypatch):
    renders = Renders(monkeypatch, fake=False)
    at = _open("unit", layer="blocks.0.0", unit="3", data="samples", **TINY)
    _ok(at)
    assert at.selectbox(key="unit_layer").value == "blocks.0.0" and at.number_input(key="unit_pick").value == 3
    assert len(renders.calls) == 1 and len(renders.calls[0]) == 7  # channel, neuron, negative, 4 diversity
    keys = renders.calls[0]
    assert keys[:3] == ["channel(blocks.0.0:3)", "neuron(blocks.0.0:3)", "-1.0*(channel(blocks.0.0:3))"]
    assert len(set(keys[3:])) == 1 and "diversity(blocks.0.0)" in keys[3]
    assert keys[3] == "channel(blocks.0.0:3) + 10.0*(diversity(blocks.0.0))"  # added: it pushes the images apart
    assert len(_captions(at, "Mean pairwise feature distance of the four diversity images")) == 1
    assert [i.value for i in at.info if "Only 5 images were scanned" in i.value]  # 5 photos: too few to mean much
    # A picture's caption: its kind, the activation it reached, and its quality flag when it has one.
    kinds = [m.group(1) for c in at.caption if (m := re.match(r"^(.+?) · -?\d+\.\d\d( · ⚠ .+)?$", c.value))]
    for kind in ("channel", "neuron (centre)", "negative", "diversity 1", "diversity 4"):
        assert kind in kinds
    samples = 5  # assets/*.jpg
    assert _images(at) == 7 + samples + samples  # visualizations, receptive-field patches, attribution overlays
    assert not at.get("progress") and not [b for b in at.button if b.label == "Stop"]
    examples = [c.value for c in at.caption if re.match(r"^-?\d+\.\d\d · \w+\.jpg$", c.value)]
    assert len(examples) == 2 * samples
    values = [float(v.split(" · ")[0]) for v in examples[:samples]]
    assert values == sorted(values, reverse=True)  # strongest first
    assert any("receptive field" in c.value for c in at.caption)
    assert at.query_params["layer"] == "blocks.0.0" and at.query_params["unit"] == "3"
    back = _links(at, "layer")
    assert back and back[0]["layer"] == "blocks.0.0" and back[0]["page"] == "1"


def test_unit_page_explains_bad_folders_and_keeps_working(monkeypatch, tmp_path):
    Renders(monkeypatch, fake=True)
    monkeypatch.setenv("LAYER_EXPLORER_DATA_ROOTS", str(tmp_path))  # the folders below are shared
    empty, junk = tmp_path / "empty", tmp_path / "junk"
    empty.mkdir()
    junk.mkdir()
    (junk / "notes.png").write_bytes(b"this is not a png")
    (junk / "readme.txt").write_text("hello")
    at = _open("unit", layer="blocks.0.0", unit="1", data="samples", **TINY)
    _ok(at)
    at.radio(key="unit_data").set_value("folder").run()
    assert any("Type the path" in i.value for i in at.info)
    assert "data" not in at.query_params  # server paths never go into a shared link
    for folder, expected in ((empty, "contains no images"), (junk, "could be used"), (tmp_path / "nope", "not")):
        at.text_input(key="unit_folder").set_value(str(folder)).run()
        assert not at.exception
        assert len(at.error) == 1 and expected in at.error[0].value, [e.value for e in at.error]
        assert _images(at) == 7  # the visualizations are still there


def test_grey_renders_carry_their_flag_on_the_tile_in_the_pages_language(monkeypatch):
    """A real render stopped after one step is still its grey start: every final tile says so, in Portuguese on a
    pt-BR page, with the flags' meaning in the tooltip; a full-length fake texture raises no flag."""
    renders = Renders(monkeypatch, fake=False)
    at = _open("progression", per_stage="1", lang="pt-BR", preset="fast", steps="1", size="64")
    _ok(at)
    finals = [c for c in at.caption if re.match(r"^unidade \d+ · ", c.value)]
    assert len(finals) == renders.images >= 5  # one tile per render, every one final
    assert all("⚠ cinza" in c.value for c in finals), [c.value for c in finals]
    assert all("renderização ficou cinza" in c.proto.help for c in finals)
    Renders(monkeypatch, fake=True)  # textures: their pixels raise no flag, and neither do their tiles
    clean = _open("progression", per_stage="1", **TINY)
    _ok(clean)
    shown = [c.value for c in clean.caption if re.match(r"^unit \d+ · ", c.value)]
    assert shown and not [c for c in shown if "⚠" in c]


def _distance_caption(at: AppTest) -> tuple[float, str]:
    found = _captions(at, "Mean pairwise feature distance of the four diversity images")
    assert len(found) == 1, found
    m = re.search(r"\*\*(\d+\.\d\d)\*\*", found[0])
    assert m and "(0 = identical, 1 = orthogonal)" in found[0] and "blocks.0.0" in found[0]
    return float(m.group(1)), found[0]


def test_unit_page_measures_how_different_the_diversity_images_are(monkeypatch, bundled):
    from explorer.featurevis.distance import NEAR_IDENTICAL, feature_distance

    fake = Renders(monkeypatch, fake=True)
    renders: list = []

    def keep(*args, **kw):
        out = fake(*args, **kw)
        renders.append(out)
        return out

    monkeypatch.setattr(store, "render", keep)
    at = _open("unit", layer="blocks.0.0", unit="3", data="samples", **TINY)
    _ok(at)
    shown, _ = _distance_caption(at)
    images = renders[0].images[3:7]
    assert shown == pytest.approx(feature_distance(bundled, list(images), "blocks.0.0").mean, abs=0.006)
    warned = [w for w in at.warning if "near-identical" in w.value]
    assert shown > 0.0 and bool(warned) == (shown < NEAR_IDENTICAL)  # noise textures look alike to blocks.0.0


def test_unit_page_warns_when_the_diversity_images_are_near_identical(monkeypatch):
    fake = Renders(monkeypatch, fake=True)

    def same(*args, **kw):  # the four diversity images come out as one picture
        out = fake(*args, **kw)
        if len(out.images) == 7:
            out.images[4:7] = out.images[3]
        return out

    monkeypatch.setattr(store, "render", same)
    at = _open("unit", layer="blocks.0.0", unit="3", data="samples", **TINY)
    _ok(at)
    assert _distance_caption(at)[0] == 0.0
    warned = [w.value for w in at.warning if "near-identical" in w.value]
    assert len(warned) == 1 and "more steps" in warned[0]


@pytest.mark.slow  # ~15 s: the digits subset is written and scanned at blocks.0.0, then attributed
def test_unit_page_takes_its_examples_from_a_stratified_digits_subset_by_default(monkeypatch, cache_dir):
    Renders(monkeypatch, fake=True)
    at = _open("unit", layer="blocks.0.0", unit="3", **TINY)
    _ok(at)
    assert at.radio(key="unit_data").value == "demo:digits"
    caption = [c.value for c in at.caption if c.value.startswith("The 8 of ")]
    assert len(caption) == 1, [c.value for c in at.caption]
    assert "*Demo: digits*" in caption[0] and "The 8 of 199 images" in caption[0]
    assert "class-stratified subset of 199 of the set's 1,797 images" in caption[0]
    assert not [i for i in at.info if "images were scanned" in i.value]  # enough images: no note
    assert (cache_dir / "subsets").is_dir()  # the links live where the cache keeps link folders
    examples = [c.value for c in at.caption if re.match(r"^-?\d+\.\d\d · .+\.png$", c.value)]
    assert len(examples) == 2 * 8  # receptive-field patches and attribution overlays
    at.radio(key="unit_data").set_value("samples").run()  # the photos stay a choice, with their warning
    _ok(at)
    assert [i.value for i in at.info if "Only 5 images were scanned" in i.value]
