"""The Model page driven headlessly by Streamlit's AppTest (real bundled model, caches cleared per test)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import streamlit as st
import torch
import torchvision
from PIL import Image
from safetensors.torch import save as save_safetensors
from streamlit.testing.v1 import AppTest

APP = "../../app.py"  # AppTest resolves it relative to this file


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    """Each test starts with empty Streamlit caches and its own upload folder."""
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def _app(**query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    return at.run()


def _layers(at: AppTest) -> list[str]:
    return at.dataframe[0].value["layer"].tolist()


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _sidebar_spec(at: AppTest) -> str:
    return next(m.value for m in at.sidebar.markdown if m.value.startswith("**`")).strip("*`")


def _top_classes(at: AppTest) -> list[str]:
    """Class names of the top-k chart, most likely first (the bars are drawn bottom-up)."""
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    bars = [c for c in charts if c["data"][0].get("orientation") == "h"]
    return bars[0]["data"][0]["y"][::-1]


def _open_upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.radio(key="pick_source").set_value("Upload checkpoint").run()
    at.file_uploader(key="pick_upload").upload(name, data)
    return at.run()


def test_opens_with_bundled_model_ladder_and_prediction():
    at = _app()
    assert not at.exception
    assert not _errors(at)
    assert _sidebar_spec(at) == "bundled:efficientnet_lite0"
    assert at.query_params["model"] == "bundled:efficientnet_lite0"
    layers = _layers(at)
    assert len(layers) == 20
    assert layers[0] == "conv_stem" and "blocks.6.0" in layers and layers[-1] == "classifier"
    # The default sample is a tabby cat: the bundled ImageNet model must call it a cat.
    assert _top_classes(at)[0] in {"tabby", "tiger cat", "Egyptian cat"}


def test_full_view_lists_every_layer():
    at = _app()
    at.toggle(key="ladder_full").set_value(True).run()
    layers = _layers(at)
    assert not at.exception
    assert len(layers) > 20
    assert "blocks.6.0" in layers and any(name.startswith("blocks.6.0.") for name in layers)


def test_loading_torchvision_model_updates_ladder_sidebar_and_url():
    at = _app()
    at.radio(key="pick_source").set_value("torchvision").run()
    at.selectbox(key="pick_tv").set_value("resnet18")
    at.toggle(key="pick_untrained").set_value(True)
    at.button(key="load").click().run()
    assert not at.exception
    assert not _errors(at)
    layers = _layers(at)
    assert layers[0] == "conv1" and "layer4.1" in layers and "blocks.6.0" not in layers
    assert _sidebar_spec(at) == "torchvision:resnet18:untrained"
    assert at.query_params["model"] == "torchvision:resnet18:untrained"


def test_bad_name_shows_one_error_and_keeps_the_previous_model():
    at = _app()
    at.text_input(key="pick_spec").set_value("torchvision:no_such_net")
    at.button(key="load_spec").click().run()
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 1 and "no_such_net" in errors[0]
    assert _sidebar_spec(at) == "bundled:efficientnet_lite0"
    assert "blocks.6.0" in _layers(at)


class _Evil:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_upload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"weight": _Evil(marker)}, buf)
    at = _open_upload(_app(), "evil.pt", buf.getvalue())
    at.text_input(key="pick_arch").set_value("torchvision:resnet18")
    at.button(key="load").click().run()
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 1 and "Refused" in errors[0]
    assert not marker.exists()
    assert _sidebar_spec(at) == "bundled:efficientnet_lite0"


def _resnet18_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "arch", "expected"),
    [
        ("resnet.pt", _resnet18_bytes, "torchvision:mobilenet_v2", "does not fit"),  # wrong architecture
        ("broken.pt", lambda: b"PK\x03\x04 truncated zip", "torchvision:resnet18", "not a readable"),
        ("plain.pt", _resnet18_bytes, "", "architecture"),  # no metadata, no arch given
    ],
)
def test_bad_checkpoint_upload_shows_one_error(name, make, arch, expected):
    at = _open_upload(_app(), name, make())
    at.text_input(key="pick_arch").set_value(arch)
    at.button(key="load").click().run()
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 1 and expected in errors[0]
    assert _sidebar_spec(at) == "bundled:efficientnet_lite0"


def test_checkpoint_upload_loads_with_resized_head_and_is_stored_once(tmp_path):
    at = _open_upload(_app(), "tuned.pt", _resnet18_bytes())
    at.text_input(key="pick_arch").set_value("torchvision:resnet18")
    at.button(key="load").click().run()
    assert not at.exception and not _errors(at)
    assert "layer4.1" in _layers(at)
    assert any(m.label == "Classes" and m.value == "3" for m in at.metric)
    stored = list((tmp_path / "cache" / "uploads").rglob("*.pt"))
    assert len(stored) == 1 and stored[0].name == "tuned.pt"
    assert at.query_params["model"] == str(stored[0]) and at.query_params["arch"] == "torchvision:resnet18"


def test_safetensors_metadata_prefills_the_architecture_and_names_the_classes():
    state = torchvision.models.resnet18(num_classes=3).state_dict()
    meta = {"layer_explorer": json.dumps({"arch": "torchvision:resnet18", "class_names": ["a", "b", "c"]})}
    at = _open_upload(_app(), "tuned.safetensors", save_safetensors(state, metadata=meta))
    assert not at.exception
    assert at.text_input(key="pick_arch").value == "torchvision:resnet18"
    at.button(key="load").click().run()
    assert not at.exception and not _errors(at)
    assert set(_top_classes(at)) == {"a", "b", "c"}  # the class names come from the metadata too


def test_url_reopens_model_and_refuses_files_outside_the_app_folders():
    at = _app(model="torchvision:resnet18:untrained")
    assert _sidebar_spec(at) == "torchvision:resnet18:untrained"
    assert "layer4.1" in _layers(at)
    at = _app(model="/etc/passwd.pt")
    assert not at.exception
    assert any("outside" in w.value for w in at.warning)
    assert _sidebar_spec(at) == "bundled:efficientnet_lite0"


def _huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buf, format="PNG")  # 48 M pixels, ~50 kB on disk
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "expected"), [(lambda: b"definitely not a png", "not an image"), (_huge_png, "limit")]
)
def test_bad_image_upload_in_try_it_shows_an_error(make, expected):
    at = _app()
    at.radio(key="try_source").set_value("Upload").run()
    at.file_uploader(key="try_upload").upload("photo.png", make())
    at.run()
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 1 and "photo.png" in errors[0] and expected in errors[0]
    assert "blocks.6.0" in _layers(at)  # the rest of the page still works
