"""The shared server's fence in a real browser: every box and link that takes a server path, tried by a student.

A server of its own shares one folder (``LAYER_EXPLORER_DATA_ROOTS``); a secret folder beside it holds class
folders of images and a checkpoint, and a symbolic link inside the shared folder points at it. Typed into the
Fine-tune, Unit and Compare folder boxes and the Model page's spec box, and written into links, ``/``, ``/etc``,
``..``, ``~``, the link and ``/proc/self/environ`` show no listing, no thumbnail, no opened file, and an existing
forbidden path gets the very same answer as a missing one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import CHROMIUM, start_app, stop_app, wait_idle
from PIL import Image

pytestmark = pytest.mark.e2e  # ~60-90 s: its own server, four pages, about forty script runs

TRICKS = ["/", "/etc", "..", "~", "{shared}/link-out", "/proc/self/environ"]
PAIRS = [("/etc", "/etc-not-here"), ("{secret}", "{secret}-not-here")]
LEAKS = ("cats0.png", "dogs", "passwd", "readable PyTorch", "HOME=", "PATH=")


@pytest.fixture(scope="module")
def fenced_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Chromium to run browser tests")
    base = tmp_path_factory.mktemp("fence")
    shared, secret = base / "shared", base / "secret"
    shared.mkdir()
    for cls in ("cats", "dogs"):
        (secret / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(secret / cls / f"{cls}{i}.png")
    (secret / "model.pt").write_bytes(b"not a checkpoint")
    (shared / "link-out").symlink_to(secret, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYER_EXPLORER_DATA_ROOTS", str(shared))
        proc, url = start_app(base / "cache", base / "server.log")
    try:
        yield url, {"shared": str(shared), "secret": str(secret)}
    finally:
        stop_app(proc)


@pytest.fixture(scope="module")
def tab(fenced_app, browser):
    """A tab of the session's one browser (a second sync Playwright in the same thread is refused)."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(90_000)
    try:
        yield page
    finally:
        context.close()


def _go(tab, url: str) -> None:
    tab.goto(url)
    tab.wait_for_selector("[data-testid='stApp']", state="attached")
    wait_idle(tab)


def _alerts(tab) -> list[str]:
    """The texts of the main area's error and warning boxes."""
    boxes = tab.locator("[data-testid=stMain] [data-testid=stAlertContainer]")
    return [boxes.nth(i).inner_text().strip() for i in range(boxes.count())]


def _type(tab, label: str, text: str) -> None:
    box = tab.locator("[data-testid=stMain]").get_by_role("textbox", name=label, exact=True)
    box.fill(text)
    box.press("Enter")
    tab.wait_for_timeout(300)
    wait_idle(tab)


def _check(tab, text: str) -> list[str]:
    main = tab.locator("[data-testid=stMain]").inner_text()
    for leak in LEAKS:
        assert leak not in main.replace(text, ""), f"{leak!r} leaked after typing {text!r}"
    assert not tab.locator("[data-testid=stException]").count(), main[-2000:]
    return [a.replace(text, "PATH") for a in _alerts(tab)]


def _images(tab) -> int:
    return tab.locator("[data-testid=stMain] [data-testid=stImage] img").count()


def _box_checks(tab, fill, label: str) -> None:
    images = _images(tab)
    frames = tab.locator("[data-testid=stMain] [data-testid=stDataFrame]").count()
    for trick in TRICKS:
        text = trick.format(**fill)
        _type(tab, label, text)
        said = _check(tab, text)
        assert any("cannot be opened" in s and "outside the folders this server shares" in s for s in said), said
        assert _images(tab) == images, f"images appeared after {text!r}"
        assert tab.locator("[data-testid=stMain] [data-testid=stDataFrame]").count() == frames
    for existing, missing in PAIRS:
        answers = []
        for text in (existing.format(**fill), missing.format(**fill)):
            _type(tab, label, text)
            answers.append(_check(tab, text))
        assert answers[0] == answers[1], answers


def test_the_fine_tune_folder_box(tab, fenced_app):
    url, fill = fenced_app
    _go(tab, f"{url}/finetune")
    tab.locator("[data-testid=stMain]").get_by_text("Folder on the server", exact=True).click()
    wait_idle(tab)
    _box_checks(tab, fill, "Folder on the server")


def test_the_unit_page_folder_box(tab, fenced_app):
    url, fill = fenced_app
    _go(tab, f"{url}/unit?layer=blocks.0.0&unit=1&preset=fast&steps=2&size=32")
    tab.locator("[data-testid=stMain]").get_by_text("A folder on the server", exact=True).click()
    wait_idle(tab)
    _box_checks(tab, fill, "Folder on the server")


def test_the_compare_folder_box(tab, fenced_app):
    url, fill = fenced_app
    _go(tab, f"{url}/compare")
    tab.locator(".st-key-sw_data").click()
    tab.get_by_role("option", name="A folder on the server").click()
    wait_idle(tab)
    _box_checks(tab, fill, "Folder on the server")


def test_the_model_spec_box(tab, fenced_app):
    url, fill = fenced_app
    _go(tab, f"{url}/model")  # the default page, by its own name
    main = tab.locator("[data-testid=stMain]")
    main.get_by_text("Or type a model spec").click()
    answers = {}
    for text in ["/etc/passwd", "/etc/nowhere", "/proc/self/environ", "~/.bashrc", f"{fill['secret']}/model.pt",
                 f"{fill['secret']}/other.pt", f"{fill['shared']}/link-out/model.pt"]:  # fmt: skip
        box = main.get_by_role("textbox", name="Model spec", exact=True)
        box.fill(text)
        main.get_by_role("button", name="Load spec").click()
        tab.wait_for_timeout(300)
        wait_idle(tab)
        answers[text] = _check(tab, text)
        assert answers[text], f"no answer to {text!r}"
        assert "model=bundled%3Aefficientnet_lite0" in tab.url  # still the bundled model
    assert answers["/etc/passwd"] == answers["/etc/nowhere"]
    assert answers[f"{fill['secret']}/model.pt"] == answers[f"{fill['secret']}/other.pt"]
    assert answers[f"{fill['shared']}/link-out/model.pt"] == answers[f"{fill['secret']}/other.pt"]


@pytest.mark.parametrize(
    ("path", "existing", "missing"),
    [
        ("model?model={v}", "/etc/passwd", "/etc/nowhere"),
        ("model?model={v}", "{secret}/model.pt", "/x/model.pt"),
        ("compare?tuned={v}", "{secret}/model.pt", "{secret}/gone.pt"),
        ("compare?sw_data={v}", "/etc", "/etc-not-here"),
        ("compare?sw_data={v}", "{shared}/link-out", "{shared}/nothing"),
    ],
)
def test_links_answer_existing_and_missing_forbidden_paths_alike(tab, fenced_app, path, existing, missing):
    url, fill = fenced_app
    answers = []
    for value in (existing.format(**fill), missing.format(**fill)):
        _go(tab, f"{url}/{path.format(v=value)}")
        said = _check(tab, value)
        assert said and not re.search(r"not a readable|Unknown model spec", " ".join(said)), said
        answers.append(said)
    assert answers[0] == answers[1], answers
