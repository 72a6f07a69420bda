"""Dataset examples: agreement with brute force, bad files, the cache, receptive-field boxes, patches."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import explorer.exemplars.scan as scan_module
from explorer.cache import Cache
from explorer.data import ASSETS_DIR, list_images, load_image
from explorer.exemplars import ExamplesError, dataset_examples, patch_image, receptive_field
from explorer.layers import forward_until, hook_count
from explorer.models import LoadedModel


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv2(self.act1(self.conv1(x)))).flatten(1))


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    torch.manual_seed(0)
    module = Tiny().eval()
    return LoadedModel.wrap(
        module,
        spec="test:tiny",
        input_size=(16, 16),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=["a", "b", "c"],
        resize_size=16,
    )


@pytest.fixture
def folder(tmp_path):
    """11 random images in two subfolders, plus a text file, a truncated JPEG and an oversized PNG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(11):
        sub = root / ("one" if i % 2 else "two")
        sub.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(16, 30)), int(rng.integers(16, 30)))
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(sub / f"img{i:02d}.png")
    (root / "notes.png").write_text("not an image at all")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "cut.jpg")
    (root / "cut.jpg").write_bytes((root / "cut.jpg").read_bytes()[:200])
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(root / "huge.png")  # 6,400 px > the limit below
    return root


def _brute(model, files, layer):
    """Per image: each channel's spatial max/min and where, computed one image at a time."""
    maxima, minima, argmax, argmin, used = [], [], [], [], []
    for i, path in enumerate(files):
        try:
            im = load_image(path, max_pixels=5000)
        except ValueError:
            continue
        with torch.no_grad():
            a = forward_until(model.module, layer, model.normalize(model.to_tensor01(im)[None]))[0]
        flat = a.reshape(a.shape[0], -1)
        maxima.append(flat.max(1).values)
        argmax.append(flat.argmax(1))
        minima.append(flat.min(1).values)
        argmin.append(flat.argmin(1))
        used.append(i)
    return (torch.stack(maxima), torch.stack(argmax), torch.stack(minima), torch.stack(argmin),
            torch.tensor(used), a.shape[-1])  # fmt: skip


def test_top_and_bottom_k_agree_with_brute_force_and_bad_files_are_counted(tiny, folder):
    seen = []
    res = dataset_examples(
        tiny, folder, ["conv1", "conv2"], k=4, batch_size=3, cache=False, max_pixels=5000,
        progress=lambda d, t, p: seen.append((d, t)),
    )  # fmt: skip
    files = list_images(folder)
    assert seen[-1] == (len(files), len(files)) and len(seen) == 5
    assert hook_count(tiny.module) == 0
    for layer in ("conv1", "conv2"):
        ex = res[layer]
        assert ex.images_used == 11 and ex.files == [p.relative_to(folder).as_posix() for p in files]
        reasons = dict(ex.skipped)
        assert set(reasons) == {"notes.png", "cut.jpg", "huge.png"}
        assert "not an image" in reasons["notes.png"] and "truncated" in reasons["cut.jpg"]
        assert "over the limit" in reasons["huge.png"]
        mx, amx, mn, amn, used, w = _brute(tiny, files, layer)
        for c in range(ex.channels):
            order = mx[:, c].argsort(descending=True)[:4]
            assert ex.top_image[c].tolist() == used[order].tolist()
            np.testing.assert_allclose(ex.top_value[c], mx[order, c].numpy(), rtol=1e-5, atol=1e-6)
            assert ex.top_pos[c].tolist() == [[int(p) // w, int(p) % w] for p in amx[order, c]]
            order = mn[:, c].argsort()[:4]
            assert ex.bottom_image[c].tolist() == used[order].tolist()
            np.testing.assert_allclose(ex.bottom_value[c], mn[order, c].numpy(), rtol=1e-5, atol=1e-6)
            assert ex.bottom_pos[c].tolist() == [[int(p) // w, int(p) % w] for p in amn[order, c]]
        best = ex.examples(0)[0]
        assert best.path == folder / ex.files[best.image] and best.value == pytest.approx(float(ex.top_value[0, 0]))


def test_empty_missing_and_unreadable_folders_get_clear_messages(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ExamplesError, match="contains no images"):
        dataset_examples(tiny, tmp_path / "empty", "conv1", cache=False)
    with pytest.raises(ExamplesError, match="not a folder"):
        dataset_examples(tiny, tmp_path / "nowhere", "conv1", cache=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"garbage")
    with pytest.raises(ExamplesError, match="None of the 1 image files"):
        dataset_examples(tiny, tmp_path / "bad", "conv1", cache=False)
    with pytest.raises(ExamplesError, match="at least 1"):
        dataset_examples(tiny, tmp_path / "bad", "conv1", k=0, cache=False)
    assert hook_count(tiny.module) == 0


def test_cache_is_keyed_by_model_folder_layer_and_k(tiny, folder, tmp_path, monkeypatch):
    cache = Cache(tmp_path / "cache")
    first = dataset_examples(tiny, folder, "conv2", k=3, cache=cache, max_pixels=5000)["conv2"]
    assert not first.cached

    def no_scan(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    with monkeypatch.context() as m:
        m.setattr(scan_module, "_scan", no_scan)
        again = dataset_examples(tiny, folder, "conv2", k=3, cache=cache, max_pixels=5000)["conv2"]
    assert again.cached and again.files == first.files and again.skipped == first.skipped
    np.testing.assert_array_equal(again.top_image, first.top_image)
    np.testing.assert_array_equal(again.bottom_pos, first.bottom_pos)
    assert not dataset_examples(tiny, folder, "conv2", k=2, cache=cache, max_pixels=5000)["conv2"].cached
    changed = folder / "one" / "img01.png"
    Image.fromarray(np.full((20, 20, 3), 255, np.uint8)).save(changed)
    fresh = dataset_examples(tiny, folder, "conv2", k=3, cache=cache, max_pixels=5000)["conv2"]
    assert not fresh.cached


def test_receptive_field_boxes_match_the_architecture(tiny):
    # conv1: 3×3, stride 1 → field 3; conv2: 3×3 stride 2 on top → field 5, stride 2, position y at 2y.
    rf1 = receptive_field(tiny, "conv1")
    assert rf1.size == (3, 3) and rf1.stride == (1.0, 1.0) and rf1.box(5, 7) == (6, 4, 9, 7)
    rf2 = receptive_field(tiny, "conv2")
    assert rf2.size == (5, 5) and rf2.stride == (2.0, 2.0) and rf2.grid == (8, 8)
    for y in range(8):
        for x in range(8):
            assert rf2.box(y, x) == (max(0, 2 * x - 2), max(0, 2 * y - 2), min(16, 2 * x + 3), min(16, 2 * y + 3))
    assert hook_count(tiny.module) == 0


def test_patches_are_the_receptive_field_of_the_preprocessed_image(tiny, folder):
    ex = dataset_examples(tiny, folder, "conv2", k=2, cache=False, max_pixels=5000)["conv2"]
    example = ex.examples(3, "bottom")[0]
    patch = ex.patches(tiny, 3, "bottom")[0]
    left, top, right, bottom = example.box
    assert patch.size == (right - left, bottom - top)
    seen = (tiny.to_tensor01(load_image(example.path)).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(patch), seen[top:bottom, left:right])
    assert patch_image(tiny, example.path, example.box, size=32).size == (32, 32)
    with pytest.raises(ExamplesError, match="out of range"):
        ex.examples(6)


def test_a_patch_is_memoized_until_its_file_changes(tiny, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((40, 40, 3), 10, np.uint8)).save(path)
    box = (0, 0, 8, 8)
    first = patch_image(tiny, path, box)
    assert patch_image(tiny, path, box) is first  # the same crop again: from the memo
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later modification time, as a rewrite has
    second = patch_image(tiny, path, box)
    assert second is not first and np.asarray(second).mean() > np.asarray(first).mean() + 100  # the new pixels


def test_bundled_model_on_the_sample_photos(bundled):
    ex = dataset_examples(bundled, ASSETS_DIR, "blocks.1.0", k=2, cache=False)["blocks.1.0"]
    assert ex.channels == 24 and ex.grid == (56, 56) and ex.images_used == len(list_images(ASSETS_DIR))
    best = ex.examples(5)[0]
    with torch.no_grad():
        a = forward_until(bundled.module, "blocks.1.0", bundled.preprocess(load_image(best.path)))[0, 5]
    assert best.value == pytest.approx(float(a.max()), rel=1e-4)
    assert float(a[best.y, best.x]) == pytest.approx(float(a.max()), rel=1e-4)
    assert hook_count(bundled.module) == 0


def test_cli_examples_writes_patches_and_an_index(bundled, tmp_path, monkeypatch, capsys):
    import json

    import explorer.models
    from explorer.cli import main

    monkeypatch.setattr(explorer.models, "load_model", lambda *a, **k: bundled)
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ex"
    args = ["examples", str(ASSETS_DIR), "--layer", "blocks.1.0", "--k", "2", "--channels", "0-1,5", "--bottom"]
    assert main([*args, "--out", str(out)]) == 0
    index = json.loads((out / "index.json").read_text())
    layer = index["layers"]["blocks.1.0"]
    assert list(layer["examples"]) == ["0", "1", "5"] and layer["images_used"] == len(list_images(ASSETS_DIR))
    first = layer["examples"]["5"]["top"][0]
    left, top, right, bottom = first["box"]
    assert Image.open(out / first["png"]).size == (right - left, bottom - top)
    assert len(list((out / "blocks.1.0").glob("*.png"))) == 3 * 2 * 2
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads((out / "index.json").read_text())["layers"]["blocks.1.0"]["cached"] is True
    (tmp_path / "empty").mkdir()
    assert main([args[0], str(tmp_path / "empty"), *args[2:], "--out", str(tmp_path / "o2")]) == 2
    assert "contains no images" in capsys.readouterr().err
    assert main([*args[:-3], "--channels", "0-99", "--out", str(out)]) == 2
    assert "out of range" in capsys.readouterr().err
