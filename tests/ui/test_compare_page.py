"""The Compare page driven by AppTest: a real bundled base and a tuned run made in the fixture, then the chart.

The tuned run is the bundled model with its weights perturbed more the deeper they sit (seconds, no training),
saved with `save_checkpoint` and full metadata where the Fine-tune page keeps runs. One comparison (32 images,
64 px, no probes) is computed through the page (fixture `compared`) and then served from the disk cache to every
later test, which is itself what a revisit does. AppTest cannot click a plotly point, so the chart click is
simulated as the browser reports it: the chart's widget state set to a selection event for one point
(`_click_chart`, through AppTest's private `_run(widget_states)`), which runs the page's real on_select callback.
"""

from __future__ import annotations

import copy
import io
import json
import math

import numpy as np
import pytest
import streamlit as st
import torch
import torchvision
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest
from uiapp import app_on, run_metadata

from explorer.transfer import study as compare_store
from explorer.transfer.advice.guide import GuideCell
from explorer.transfer.reporting.report import ComparisonReport, LayerComparison, Recommendation
from explorer.transfer.reporting.report_html import render_html
from explorer.transfer.training.checkpoints import save_checkpoint
from explorer.ui.compare.charts import comparison_figure, selected_layer, zones
from explorer.ui.compare.freeze_panel import guide_markdown, ladder_frame
from explorer.ui.compare.layer import unit_picks

QUERY = {"tuned": "t1", "images": "32", "input": "64", "probes": "0", "steps": "2", "size": "32"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One app cache for the module: the comparison computed by the first test is reused from disk."""
    root = tmp_path_factory.mktemp("compare_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYER_EXPLORER_CACHE", str(root))
        st.cache_data.clear()
        st.cache_resource.clear()
        yield root
        st.cache_data.clear()
        st.cache_resource.clear()


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """A copy whose weights move more with depth: early blocks barely change, the head a lot."""
    out = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(0)
    params = list(out.parameters())
    with torch.no_grad():
        for i, p in enumerate(params):
            scale = 0.002 + 0.6 * (i / len(params)) ** 2
            p.add_(torch.randn(p.shape, generator=gen) * float(p.float().std().nan_to_num(0.01)) * scale)
    return out


@pytest.fixture(scope="module")
def runs(cache_dir, bundled):
    """Two saved runs: t1 (a perturbed bundled model trained "on" demo:shapes) and other (a ResNet-18)."""
    meta = run_metadata(bundled, metrics={"epoch": 1, "val_acc": 0.5}, settings={}, data={"source": "demo:shapes"})
    folder = cache_dir / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(_perturbed(bundled.module), folder / "t1.safetensors", meta)
    other = {
        **meta,
        "arch": "torchvision:resnet18",
        "class_names": ["a", "b", "c"],
        "base_spec": "torchvision:resnet18",
    }
    save_checkpoint(torchvision.models.resnet18(num_classes=3), folder / "other.safetensors", other)
    return folder


def _open(show: list[str] | None = None, **query: str) -> AppTest:
    at = app_on("compare", timeout=300, **{**QUERY, **query})
    at.session_state["cmp_show"] = show or []  # the layer view's sections (renders are tested on their own)
    return at.run()


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _metrics(at: AppTest) -> dict[str, int]:
    return {m.label: int(m.proto.help.replace(",", "")) for m in at.metric if m.label.endswith("params")}


def _chart(at: AppTest):
    return next(c for c in at.get("plotly_chart") if c.key == "cmp_chart")


def _click_chart(at: AppTest, layer: str) -> AppTest:
    """What the browser sends when a point of the chart is clicked: the chart widget's new selection state."""
    chart = _chart(at)
    names = json.loads(chart.proto.spec)["data"][0]["x"]
    i = names.index(layer)
    point = {"curve_number": 0, "point_number": i, "point_index": i, "x": layer, "y": 1.0, "customdata": layer}
    event = {"selection": {"points": [point], "point_indices": [i], "box": [], "lasso": []}}
    # No public AppTest call sets a plotly chart's selection: the widget state goes in as the browser would send it.
    states = at._tree.get_widget_states()
    states.widgets.append(WidgetState(id=chart.proto.id, string_value=json.dumps(event)))
    return at._run(states)


def _code(at: AppTest) -> str:
    return next(c.value for c in at.code if "requires_grad_" in c.value or "Train every layer" in c.value)


# --------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def compared(runs):
    """The page before and after its Compare button: the one comparison this module computes (then cached)."""
    at = _open()
    assert not at.exception and not _errors(at)
    assert any("Not compared yet" in i.value for i in at.info)
    assert not [c for c in at.get("plotly_chart") if c.key == "cmp_chart"]
    at.button(key="cmp_run").click().run()
    assert not at.exception and not _errors(at)
    return at


def test_compare_then_a_chart_click_moves_the_freeze_point_and_the_counts(compared):
    at = compared
    spec = json.loads(_chart(at).proto.spec)
    names = [t.get("name") for t in spec["data"]]
    assert {"CKA base vs tuned", "CKA 95 % interval", "weight change (absolute RMS)"} <= set(names)
    assert {"CKA: tuned weights + base BN statistics", "CKA: base weights + tuned BN statistics"} <= set(names)
    layers = spec["data"][0]["x"]
    assert layers[0] == "conv_stem" and "blocks.6.0" in layers and layers[-1] == "classifier"
    recommended = at.query_params["freeze"]  # 33 images: too few to decide, so "none" is shown
    assert recommended == "none" and at.selectbox(key="cmp_freeze").value == recommended
    assert any("No freeze point from this comparison" in w.value and "Too few images" in w.value for w in at.warning)
    before = _metrics(at)
    assert before["Total params"] == before["Trainable params"] + before["Non-trainable params"]

    at = _click_chart(at, "blocks.2.0")
    assert not at.exception and not _errors(at)
    assert at.query_params["freeze"] == "blocks.2.0"
    assert at.selectbox(key="cmp_freeze").value == "blocks.2.0"
    after = _metrics(at)
    assert after["Total params"] == before["Total params"]
    if recommended not in ("none", "blocks.2.0"):  # freezing less trains more
        assert after["Trainable params"] > before["Trainable params"]
    code = _code(at)
    assert "'blocks.2'" in code or "'blocks.2.0'" in code
    assert "'blocks.3" not in code and "'conv_head'" not in code
    frames = [d.value.data if hasattr(d.value, "data") else d.value for d in at.dataframe]  # Styler → DataFrame
    frame = next(f for f in frames if "state" in f.columns)
    frozen = frame.loc[frame["state"] == "frozen", "layer"].tolist()
    assert frozen == layers[: layers.index("blocks.2.0") + 1]
    shapes = json.loads(_chart(at).proto.spec)["layout"]["shapes"]
    assert any(s.get("type") == "line" and s.get("x0") == layers.index("blocks.2.0") + 0.5 for s in shapes)

    at = _click_chart(at, "classifier")  # the head always trains: refused with a warning, the point stays
    assert not at.exception
    assert at.query_params["freeze"] == "blocks.2.0"
    assert any("classifier" in w.value for w in at.warning)


def test_a_link_reopens_the_view_from_the_disk_cache_without_recomputing(compared, runs):
    compare_store.forget_reports()  # a new process: only the disk copy is left
    at = _open(freeze="blocks.4.0")
    assert not at.exception and not _errors(at)
    assert all(b.key != "cmp_run" for b in at.button)
    assert at.selectbox(key="cmp_freeze").value == "blocks.4.0"
    assert "freeze=blocks.4.0" in next(c.value for c in at.code if c.value.startswith("/compare?"))
    assert at.selectbox(key="cmp_tuned").value == "t1" and at.query_params["tfp"]
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"Comparison CSV", "Comparison JSON", "One-page HTML report", "Download freeze.py"} <= labels

    at = _open(freeze="classifier")  # not a freeze point: one warning, the recommendation instead
    assert not at.exception
    assert any("freeze='classifier'" in w.value for w in at.warning)
    assert at.query_params["freeze"] != "classifier"

    at.selectbox(key="cmp_freeze").set_value("none").run()  # the list under the chart sets the same state
    assert at.query_params["freeze"] == "none"
    m = _metrics(at)
    assert m["Trainable params"] == m["Total params"] and m["Non-trainable params"] == 0
    assert "Train every layer" in _code(at)


def test_the_freeze_point_goes_to_the_fine_tune_page(compared, runs):
    at = _open(freeze="blocks.4.0")
    at.button(key="fp_send").click().run()
    assert not at.exception
    assert at.query_params["freeze"] == "blocks.4.0" and at.query_params["data"] == "demo:shapes"
    assert at.selectbox(key="ft_freeze").value == "blocks.4.0"  # the Fine-tune page opened with it


def test_an_uploaded_checkpoint_is_compared_and_its_path_goes_in_the_link(compared, runs):
    at = _open()
    at.selectbox(key="cmp_tuned").set_value("Upload a checkpoint…").run()
    assert "tuned" not in at.query_params
    at.file_uploader(key="cmp_upload").upload("mine.safetensors", (runs / "t1.safetensors").read_bytes())
    at.run()
    assert not at.exception and not _errors(at)
    assert at.query_params["tuned"].endswith("mine.safetensors") and "uploads" in at.query_params["tuned"]
    assert [c for c in at.get("plotly_chart") if c.key == "cmp_chart"]  # same weights: the stored comparison


def test_comparing_the_current_model_with_itself_switches_to_the_runs_base(compared, runs):
    at = app_on("compare", timeout=300, **QUERY)
    at.session_state["model_spec"] = str(runs / "t1.safetensors")  # "use as current model" made the run the base
    at.session_state["cmp_show"] = []
    at.run()
    assert not at.exception and not _errors(at)
    assert any("compared with its base" in i.value for i in at.info)
    assert at.session_state["model_spec"] == "bundled:efficientnet_lite0" == at.query_params["model"]


def test_a_checkpoint_of_another_architecture_gets_one_clear_error(runs):
    at = _open(tuned="other")
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 1 and "not the same architecture" in errors[0]
    assert not [c for c in at.get("plotly_chart") if c.key == "cmp_chart"]

    buf = io.BytesIO()  # a bare state dict of another network, uploaded: read as the base's architecture, refused
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), buf)
    at.selectbox(key="cmp_tuned").set_value("Upload a checkpoint…").run()
    at.file_uploader(key="cmp_upload").upload("resnet.pt", buf.getvalue())
    at.run()
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 1 and "another architecture" in errors[0]

    at = _open(tuned="../../etc/passwd")  # not a run, not a file of the app: a warning, the newest run instead
    assert not at.exception
    assert any("not a saved fine-tuning run" in w.value for w in at.warning)


def test_layer_view_shows_both_models_side_by_side(compared, runs):
    at = _open(show=["Units", "Examples", "Attribution"], freeze="blocks.3.0")
    assert not at.exception and not _errors(at)
    captions = [c.value for c in at.caption]
    units = [c for c in captions if c.startswith("unit ") and (" base" in c or " tuned" in c)]
    assert sum(" base" in c for c in units) == sum(" tuned" in c for c in units) == 6
    assert any("one colour scale" in c for c in captions)
    zipper = next(b for b in at.get("download_button") if b.proto.label.startswith("Zip of blocks.3.0"))
    assert not zipper.proto.disabled


# --------------------------------------------------------------------------- pieces, on a hand-made report


def _row(i: int, name: str, cka: float, wc: float | None, probe: float | None, head: bool = False) -> LayerComparison:
    return LayerComparison(
        name=name,
        index=i,
        type="Conv2d",
        stage=i,
        channels=4,
        params=100 if name != "pool" else 0,
        cka=cka,
        cka_low=cka - 0.02,
        cka_high=min(cka + 0.02, 1.0),
        weight_change=wc,
        weight_change_channels=[0.3, 0.1, 0.0, 0.2] if wc else [],
        probe_acc=probe,
        new_head=head,
        weight_rms=wc / 10 if wc else None,
        weight_per_step=wc if wc else None,
    )


@pytest.fixture
def report() -> ComparisonReport:
    layers = [
        _row(0, "a", 0.99, 0.01, 0.5),
        _row(1, "b", 0.97, 0.02, 0.7),
        _row(2, "c", 0.6, 0.2, 0.8),
        _row(3, "pool", 0.5, None, 0.8),
        _row(4, "head", float("nan"), None, None, head=True),
    ]
    guide = GuideCell("small", "different", "advice", {"images_per_class": 10})
    rec = Recommendation("b", "because", ["e1"], guide, trainable=10, non_trainable=20, total=30, code="x")
    return ComparisonReport(
        base={"spec": "b"},
        tuned={"spec": "t"},
        data={"classes": ["x", "y"]},
        settings={"similar_cka": 0.9},
        layers=layers,
        recommendation=rec,
        chance=0.5,
    )


def test_zones_split_where_the_cka_interval_leaves_the_threshold(report):
    assert [(z.kind, z.start, z.end) for z in zones(report.layers, 0.9)] == [
        ("generic", 0, 1),
        ("specific", 2, 3),
        ("head", 4, 4),
    ]
    assert [z.kind for z in zones(report.layers, 0.98)] == ["specific", "head"]  # a's lower end is 0.97


def test_figure_marks_the_recommended_and_chosen_points_and_shades_the_band(report):
    fig = comparison_figure(report, "c")
    names = [t.name for t in fig.data]
    assert "CKA 95 % interval" in names and "probe accuracy (base features)" in names
    band = next(t for t in fig.data if t.name == "CKA 95 % interval")
    assert band.fill == "tonexty" and list(band.y[:3]) == pytest.approx([0.97, 0.95, 0.58])
    lines = sorted(s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1)
    assert lines == [1.5, 2.5]  # after b (recommended) and after c (chosen)
    weight = next(t for t in fig.data if (t.name or "").startswith("weight change per step budget"))
    assert list(weight.y[3:]) == [None, None] and list(weight.y[:3]) == pytest.approx([0.01, 0.02, 0.2])
    assert weight.yaxis == "y2"
    assert list(fig.data[0].x) == ["a", "b", "c", "pool", "head"]  # the clickable columns, one per layer


def test_selected_layer_reads_every_shape_of_selection_event():
    layers = ["a", "b", "c"]
    assert selected_layer({"selection": {"points": [{"x": "b"}]}}, layers) == "b"
    assert selected_layer({"selection": {"points": [{"customdata": ["c"]}]}}, layers) == "c"
    assert selected_layer({"selection": {"points": [{"point_index": 0}]}}, layers) == "a"
    assert selected_layer({"selection": {"points": []}}, layers) is None
    assert selected_layer({"selection": {"points": [{"x": "zzz", "point_index": 9}]}}, layers) is None
    assert selected_layer(None, layers) is None


def test_report_round_trips_through_the_stored_json(report):
    back = ComparisonReport.from_dict(json.loads(report.to_json()))
    assert [r.name for r in back.layers] == [r.name for r in report.layers]
    assert math.isnan(back.layers[-1].cka) and back.layers[0].cka == report.layers[0].cka
    assert back.recommendation.guide.size == "small" and back.recommendation.freeze_after == "b"
    assert back.to_json() == report.to_json()


def test_html_report_is_one_offline_file_with_the_layers_pictures(report):
    pics = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    renders = {"base": pics, "tuned": pics + 200, "units": [0, 3], "per_unit": [None, None]}
    html = render_html(compare_store.with_renders(report, "b", renders))
    assert html.count("data:image/png;base64,") == 4 and "<svg" in html and "Predicted (no sweep has run)" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html  # opens offline
    assert "data:image" not in render_html(compare_store.with_renders(report, None, renders))


def test_guide_highlights_exactly_the_users_cell_and_ladder_greys_the_frozen_rows(report):
    text = guide_markdown(report.recommendation.guide)
    assert text.count("your case") == 1
    row = next(line for line in text.splitlines() if "little data" in line)
    assert "your case" in row.split("|")[3]  # little data × different from ImageNet
    df = ladder_frame(report, "b")
    assert df["state"].tolist() == ["frozen", "frozen", "trainable", "—", "new head"]
    assert {"tuned w + base BN", "base w + tuned BN", "Δw RMS", "Δw / step budget", "BN shift"} <= set(df.columns)
    assert "CKA class token" not in df.columns  # no token layer in this report


def test_unit_picks_take_the_most_and_least_changed_channels(report):
    top, least, moved = unit_picks(report.layers[0], k=2)
    assert top == [0, 3] and least == [2, 1] and moved
    frozen = copy.copy(report.layers[0])
    frozen.weight_change_channels = [0.0] * 4
    assert unit_picks(frozen, k=2)[2] is False
    assert np.all(np.diff(unit_picks(report.layers[3], k=3)[0]) > 0)  # no per-channel change: spread over units


def test_the_advice_box_says_how_the_point_was_decided():
    from explorer.ui.compare.freeze_panel import advice

    guide = GuideCell("small", "similar", "advice", {})
    kind, text = advice(
        Recommendation(
            None, "Too few images to decide: 33 images.", [], guide, source="withheld", try_next=["Use more images."]
        )
    )
    assert kind == "withheld" and "No freeze point" in text and "Use more images." in text
    rec = Recommendation(
        "blocks.4.2",
        "r",
        [],
        guide,
        source="prediction",
        stable=False,
        caveats=["Unstable: the halves say blocks.1.1 and blocks.5.2."],
    )
    kind, text = advice(rec)
    assert kind == "prediction" and text.startswith("**Predicted (no sweep has run)") and "Unstable" in text
    kind, text = advice(Recommendation("blocks.4.2", "r", [], guide, source="sweep", route="linear", agreement="a"))
    assert kind == "sweep" and "linear classifier" in text and "*Explanation:* a" in text


def test_the_trust_section_measures_calibrated_cka_and_selectivity_on_a_click(compared):
    at = compared
    assert not [c for c in at.get("plotly_chart") if c.key == "cmp_trust_cka"]  # nothing heavy before the click
    at.button(key="cmp_trust_run").click().run()
    assert not at.exception and not _errors(at)
    charts = {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    heat = charts["cmp_trust_cka"]["data"][0]
    z = np.asarray(heat["z"], dtype=float)
    assert z.shape[0] == z.shape[1] and heat["x"] == heat["y"]  # base layers × tuned layers, the same ladder
    diagonal = np.nanmean(np.diag(z))
    assert diagonal > np.nanmean(z[~np.eye(len(z), dtype=bool)])  # a layer is most like itself after fine-tuning
    names = {t.get("name") for t in charts["cmp_trust_sel"]["data"]}
    assert {"base", "tuned", "base: labels shuffled", "tuned: labels shuffled"} <= names
