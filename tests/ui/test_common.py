"""The UI helpers that need no running app: uploads, metadata hints, previews, figures, error messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from explorer.data.fence import DATA_ROOTS_VAR
from explorer.errors import ExplorerError
from explorer.layers import ladder
from explorer.models import ModelError
from explorer.ui.errors import error_message
from explorer.ui.pages.model import ladder_figure, ladder_frame
from explorer.ui.paths import allowed_path, fenced_path
from explorer.ui.progress import preview_images
from explorer.ui.uploads import checkpoint_arch_hint, save_upload
from explorer.ui.widgets.figures import top_figure


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))


def test_save_upload_is_content_addressed_and_never_overwrites(tmp_path):
    a = save_upload("first.pt", b"AAAA")
    same = save_upload("renamed.pt", b"AAAA")  # same content under another name: the same file
    b = save_upload("first.pt", b"BBBB")  # same name, other content: another folder
    assert same == a and a.read_bytes() == b"AAAA"
    assert b != a and b.read_bytes() == b"BBBB" and a.read_bytes() == b"AAAA"
    assert a.parent.parent == tmp_path / "cache" / "uploads" and a.parent.name != b.parent.name
    assert not list(a.parent.glob(".*.tmp"))


def test_save_upload_sanitises_names_and_refuses_other_files():
    path = save_upload("../../etc/ev il;.pth", b"x")
    assert path.name == "ev_il_.pth" and "uploads" in path.parts
    with pytest.raises(ModelError, match="not a checkpoint"):
        save_upload("notes.txt", b"x")
    with pytest.raises(ModelError, match="empty"):
        save_upload("empty.pt", b"")


def test_arch_hint_reads_safetensors_metadata_only_when_present(tmp_path):
    with_meta, without = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.zeros(2)}, str(with_meta), metadata={"layer_explorer": json.dumps({"arch": "timm:resnet18"})})
    save_file({"w": torch.zeros(2)}, str(without))
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(b"\x00" * 5)
    assert checkpoint_arch_hint(with_meta) == "timm:resnet18"
    assert checkpoint_arch_hint(without) is None
    assert checkpoint_arch_hint(corrupt) is None


@pytest.mark.parametrize(
    ("preview", "count", "shape"),
    [
        (torch.rand(2, 3, 8, 6), 2, (8, 6, 3)),  # NCHW floats in [0, 1]
        (np.zeros((8, 6, 3), np.uint8), 1, (8, 6, 3)),  # one HWC image
        (np.ones((8, 6)), 1, (8, 6, 3)),  # grey
        ([torch.rand(3, 4, 4), torch.rand(3, 4, 4)], 2, (4, 4, 3)),
        (None, 0, None),
    ],
)
def testpreview_images_become_uint8_hwc(preview, count, shape):
    images = preview_images(preview)
    assert len(images) == count
    for im in images:
        assert im.dtype == np.uint8 and im.shape == shape


def test_preview_floats_are_clipped_to_the_byte_range():
    (im,) = preview_images(np.array([[[-1.0, 0.5, 2.0]]]))
    assert im.tolist() == [[[0, 128, 255]]]


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def test_ladder_frame_and_figure_follow_the_ladder():
    rows = ladder(_tiny(), "full", x=torch.zeros(1, 3, 16, 16))
    df = ladder_frame(rows)
    assert df["layer"].tolist() == [r.name for r in rows]
    assert (df["params"] == df["trainable"] + df["frozen"]).all()
    assert df.loc[df["layer"] == "0", "params"].item() == 3 * 4 * 9 + 4
    fig = ladder_figure(rows)
    bars, line = fig.data
    assert list(bars.x) == [r.name for r in rows] and list(line.y) == [r.channels for r in rows]
    assert bars.y[1] is None  # a ReLU has no parameters: no bar on a log axis
    stages = {r.stage for r in rows}
    assert len(fig.layout.shapes) == len(stages)  # one shaded band per stage (stages are contiguous)


def test_top_figure_puts_the_most_likely_class_on_top():
    fig = top_figure([("cat", 0.7), ("dog", 0.2), ("fox", 0.1)])
    assert list(fig.data[0].y) == ["fox", "dog", "cat"]  # plotly draws horizontal bars bottom-up


def test_error_message_keeps_user_errors_and_wraps_bugs():
    assert error_message(ModelError("No such model.")) == "No such model."
    msg = error_message(KeyError("x"))
    assert "KeyError" in msg and "still running" in msg


# --------------------------------------------------------------------------- paths the app may read


@pytest.fixture
def fenced(tmp_path, monkeypatch):
    """A server whose operator shares only tmp/shared; a secret folder sits next to it."""
    shared, secret = tmp_path / "shared", tmp_path / "secret"
    (shared / "cats").mkdir(parents=True)
    secret.mkdir()
    (secret / "model.pt").write_bytes(b"x")
    monkeypatch.setenv(DATA_ROOTS_VAR, str(shared))
    return shared, secret


def test_paths_inside_the_shared_folders_are_allowed(fenced):
    shared, _ = fenced
    assert fenced_path(shared / "cats") == (shared / "cats").resolve()
    assert fenced_path(f"{shared}/cats/../cats") == (shared / "cats").resolve()
    assert allowed_path(shared / "not-there-yet.pt")  # a missing file inside is the page's to report


@pytest.mark.parametrize(
    "trick",
    [
        "{shared}/../secret/model.pt",  # climbing out with ..
        "{secret}/model.pt",  # an absolute path elsewhere
        "/",  # the whole file system
        "/etc/passwd",
        "{shared}/cats/../../secret",
        "~/.ssh/id_rsa",  # the server user's home
        "{shared}/link-out/model.pt",  # a symbolic link inside that points outside
    ],
)
def test_paths_outside_the_shared_folders_are_refused_in_one_line(fenced, trick):
    shared, secret = fenced
    (shared / "link-out").symlink_to(secret, target_is_directory=True)
    path = trick.format(shared=shared, secret=secret)
    with pytest.raises(ExplorerError) as info:
        fenced_path(path, "The folder")
    message = str(info.value)
    assert "outside the folders this server shares" in message and "\n" not in message
    assert not allowed_path(path)


def test_absurd_paths_are_refused_without_touching_the_disk(fenced):
    shared, _ = fenced
    with pytest.raises(ExplorerError, match="characters long"):
        fenced_path(str(shared / ("a" * 5000)))
    with pytest.raises(ExplorerError, match="not a valid path"):
        fenced_path(f"{shared}/x\x00y")
    with pytest.raises(ExplorerError, match="not a valid path"):
        fenced_path("   ")


def test_default_roots_are_the_working_folder_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOTS_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert allowed_path(tmp_path / "data") and allowed_path(Path(os.environ["LAYER_EXPLORER_CACHE"]) / "runs")
    assert not allowed_path(tmp_path.parent / "elsewhere")


def test_zip_bytes_are_the_same_for_the_same_files_at_any_time(monkeypatch):
    import io
    import time
    import zipfile

    from explorer.ui.widgets.gallery import zip_bytes

    files = {"a.png": b"\x89PNG fake", "b.json": b'{"x": 1}' * 50}
    first = zip_bytes(files)
    later = time.time() + 3 * 86400
    monkeypatch.setattr(time, "time", lambda: later)  # days later: a clock-dated archive would differ
    assert zip_bytes(files) == first
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == files
        assert zf.getinfo("a.png").compress_type == zipfile.ZIP_STORED
