"""Every box and link of the app that takes a server path, tried as a curious student would (AppTest).

The server shares one folder (``LAYER_EXPLORER_DATA_ROOTS``) and its cache; next to it sits a secret folder with
class sub-folders of images and a checkpoint, which a working fence never lists, opens or even looks for. Each box
gets the same tricks (``/``, ``/etc``, ``..``, ``~``, a symbolic link that leaves the shared folder,
``/proc/self/environ``, ``/etc/passwd``): no listing, no thumbnails, no opened file, and the very same sentence for
an existing forbidden path and a missing one.
"""

from __future__ import annotations

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest
from uiapp import Renders, app_on

from explorer.data.fence import DATA_ROOTS_VAR, refusal

TRICKS = ["/", "/etc", "..", "~", "{shared}/link-out", "/proc/self/environ", "/etc/passwd", "{secret}"]
PAIRS = [("/etc", "/etc-not-here"), ("{secret}", "{secret}-not-here"), ("{shared}/link-out", "{shared}/gone")]
UNIT = {"layer": "blocks.0.0", "unit": "1", "preset": "fast", "steps": "2", "size": "32"}


@pytest.fixture(scope="module", autouse=True)
def _streamlit_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def server(tmp_path, monkeypatch):
    shared, secret = tmp_path / "shared", tmp_path / "secret"
    shared.mkdir()
    for cls in ("cats", "dogs"):  # a dataset a leaky fence would list, with thumbnails
        (secret / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(secret / cls / f"{cls}{i}.png")
    (secret / "model.pt").write_bytes(b"not a checkpoint")
    (shared / "link-out").symlink_to(secret, target_is_directory=True)
    monkeypatch.setenv(DATA_ROOTS_VAR, str(shared))
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    return shared, secret


def _fill(text: str, server) -> str:
    shared, secret = server
    return text.format(shared=shared, secret=secret)


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in ("error", "warning", "info", "markdown", "caption") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def _no_leak(at: AppTest, frames: int | None = None) -> None:
    """No exception, no new table (a folder's class counts), no file or class name of the secret folder."""
    assert not at.exception, [e.value for e in at.exception]
    if frames is not None:
        assert len(at.get("dataframe")) == frames, "a forbidden folder was listed"
    text = _texts(at)
    for name in ("cats0.png", "dogs", "readable PyTorch", "passwd is", "model.pt is"):
        assert name not in text, f"{name!r} leaked: {text}"


# --------------------------------------------------------------------------- the folder boxes


def _finetune(at: AppTest, text: str) -> AppTest:
    at.radio(key="ft_source").set_value("Folder on the server").run()
    at.text_input(key="ft_folder").input(text).run()
    return at


def _unit(at: AppTest, text: str) -> AppTest:
    at.radio(key="unit_data").set_value("folder").run()
    at.text_input(key="unit_folder").input(text).run()
    return at


def _compare(at: AppTest, text: str) -> AppTest:
    at.selectbox(key="sw_data").set_value("A folder on the server").run()
    at.text_input(key="sw_data_folder").input(text).run()
    return at


BOXES = {
    "finetune": (lambda: app_on("finetune"), _finetune),
    "unit": (lambda: app_on("unit", **UNIT), _unit),
    "compare": (lambda: app_on("compare"), _compare),
}


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


@pytest.mark.parametrize("box", list(BOXES))
def test_folder_boxes_list_nothing_outside_and_answer_missing_and_forbidden_alike(server, monkeypatch, box):
    Renders(monkeypatch, fake=True)
    open_page, type_into = BOXES[box]
    at = type_into(open_page().run(), "")  # the folder box, still empty: what the page shows without a folder
    assert not at.exception and not _errors(at)
    images, frames = len(at.get("image")), len(at.get("dataframe"))
    for trick in TRICKS:
        text = _fill(trick, server)
        at = type_into(at, text)
        _no_leak(at, frames)
        assert _errors(at) == [refusal(text, "The folder")], (trick, _errors(at))
        assert len(at.get("image")) == images  # no thumbnails or examples appeared
    for existing, missing in PAIRS:
        a, b = _fill(existing, server), _fill(missing, server)
        said_a = _errors(type_into(at, a))
        said_b = _errors(type_into(at, b))
        assert [m.replace(repr(a), "P") for m in said_a] == [m.replace(repr(b), "P") for m in said_b]


def test_a_shared_folder_still_works_in_the_fine_tune_box(server):
    shared, secret = server
    (shared / "pets").symlink_to(secret / "cats", target_is_directory=True)  # outside: refused
    at = _finetune(app_on("finetune").run(), "")
    frames = len(at.get("dataframe"))
    at = _finetune(at, str(shared / "pets"))
    assert _errors(at) == [refusal(str(shared / "pets"), "The folder")]
    for cls in ("a", "b"):
        (shared / "data" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16, 3), 90 * i, np.uint8)).save(shared / "data" / cls / f"{i}.png")
    at = _finetune(at, str(shared / "data"))
    assert not at.exception and not _errors(at) and len(at.get("dataframe")) == frames + 1


# --------------------------------------------------------------------------- the model spec box


def _spec(at: AppTest, text: str) -> list[str]:
    at.text_input(key="pick_spec").input(text).run()
    at.button(key="load_spec").click().run()
    assert not at.exception
    return _errors(at)


def test_the_model_spec_box_opens_no_file_outside_and_answers_alike(server):
    shared, secret = server
    at = app_on("model").run()
    for text in ("/etc/passwd", "/proc/self/environ", "~/.bashrc", "../x"):
        said = _spec(at, text)
        _no_leak(at)
        assert len(said) == 1 and "is not a checkpoint file" in said[0], said
        assert at.session_state["model_spec"] == "bundled:efficientnet_lite0"
    for a, b in ((f"{secret}/model.pt", f"{secret}/other.pt"), (f"{shared}/link-out/model.pt", "/etc/x.pt")):
        said_a, said_b = _spec(at, a), _spec(at, b)
        assert said_a == [refusal(a, "The model")] and said_b == [refusal(b, "The model")]
    assert _spec(at, "/etc/passwd")[0].replace("'/etc/passwd'", "P") == _spec(at, "/etc/nowhere")[0].replace(
        "'/etc/nowhere'", "P"
    )


# --------------------------------------------------------------------------- links


def _notice(at: AppTest) -> list[str]:
    return [w.value for w in at.warning]


@pytest.mark.parametrize(("existing", "missing"), [("/etc/passwd", "/etc/nowhere"), ("{secret}/model.pt", "/x.pt")])
def test_a_models_link_opens_nothing_outside_and_answers_alike(server, existing, missing):
    said = []
    for text in (_fill(existing, server), _fill(missing, server)):
        at = app_on("model", model=text).run()
        _no_leak(at)
        assert at.session_state["model_spec"] == "bundled:efficientnet_lite0"
        said.append([w.replace(repr(text), "P") for w in _notice(at)])
    assert said[0] == said[1] and len(said[0]) == 1


@pytest.mark.parametrize(
    ("param", "pair"),
    [("tuned", ("{secret}/model.pt", "/x/other.pt")), ("sw_data", ("/etc", "/etc-not-here"))],
)
def test_compare_links_to_a_tuned_model_or_images_outside_are_refused_alike(server, param, pair):
    answers = []
    for value in (_fill(v, server) for v in pair):
        at = app_on("compare", **{param: value}).run()
        _no_leak(at)
        answers.append([w.replace(repr(value), "V") for w in _notice(at)])
    assert answers[0] == answers[1] and len(answers[0]) == 1, answers
    assert "outside the folders this server shares" in answers[0][0]


def test_the_refusal_reads_in_portuguese_and_is_the_same_for_missing_and_forbidden(server, monkeypatch):
    """In pt-BR the fence's one sentence is Portuguese (the path kept as typed), identical for an existing forbidden
    folder and a missing one."""
    monkeypatch.setattr("explorer.ui.i18n.language", lambda: "pt-BR")
    at = app_on("finetune", lang="pt-BR").run()
    said = {}
    for text in ("/etc", "/etc-not-here"):
        said[text] = _errors(_finetune(at, text))
        _no_leak(at)
    english = refusal("/etc", "The folder")
    assert said["/etc"] and said["/etc"][0] != english
    assert "'/etc'" in said["/etc"][0] and "cannot be opened" not in said["/etc"][0]
    assert said["/etc"][0].startswith("A pasta")
    assert [m.replace("'/etc'", "P") for m in said["/etc"]] == [
        m.replace("'/etc-not-here'", "P") for m in said["/etc-not-here"]
    ]
