"""The content-addressed cache: keys, round trips, damage detection, atomic writes, the default folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from explorer.cache import ENV_VAR, Cache, cache_root, make_key, png_bytes


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def test_key_is_stable_and_order_free_but_sensitive_to_every_part():
    a = make_key(model="abc", layer="blocks.1.0", unit=3, preset={"lr": 0.05, "steps": 512}, seed=0)
    b = make_key(seed=0, preset={"steps": 512, "lr": 0.05}, unit=3, layer="blocks.1.0", model="abc")
    assert a == b and len(a) == 64
    variants = [
        make_key(model="abd", layer="blocks.1.0", unit=3, preset={"lr": 0.05, "steps": 512}, seed=0),
        make_key(model="abc", layer="blocks.1.1", unit=3, preset={"lr": 0.05, "steps": 512}, seed=0),
        make_key(model="abc", layer="blocks.1.0", unit=4, preset={"lr": 0.05, "steps": 512}, seed=0),
        make_key(model="abc", layer="blocks.1.0", unit=3, preset={"lr": 0.05, "steps": 511}, seed=0),
        make_key(model="abc", layer="blocks.1.0", unit=3, preset={"lr": 0.05, "steps": 512}, seed=1),
    ]
    assert len({a, *variants}) == 6


def test_tuples_and_lists_give_the_same_key():
    assert make_key(box=(0.5, 0.8)) == make_key(box=[0.5, 0.8])
    assert make_key(x=np.int64(3)) == make_key(x=3)


def test_round_trip_returns_identical_bytes_and_meta(tmp_path):
    cache = Cache(tmp_path)
    img = _image()
    stored = cache.put_image("fv", "k" * 64, img, {"curve": [1.0, 2.5], "label": "x"})
    hit = cache.get("fv", "k" * 64)
    assert hit is not None
    assert hit.data == stored.data == png_bytes(img)
    assert hit.meta == {"curve": [1.0, 2.5], "label": "x"}
    assert np.array_equal(hit.image(), img)
    png, meta = cache.paths("fv", "k" * 64)
    assert png.exists() and meta.exists() and png.parent == meta.parent  # side by side


def test_miss_is_none(tmp_path):
    assert Cache(tmp_path).get("fv", "0" * 64) is None


@pytest.mark.parametrize("damage", ["truncate_png", "garbage_png", "bad_json", "missing_json", "other_png"])
def test_damaged_entry_is_a_miss_and_is_removed(tmp_path, damage):
    cache = Cache(tmp_path)
    key = "a" * 64
    cache.put_image("fv", key, _image(), {})
    png, meta = cache.paths("fv", key)
    if damage == "truncate_png":
        png.write_bytes(png.read_bytes()[:40])
    elif damage == "garbage_png":
        png.write_bytes(b"not a png at all")
    elif damage == "bad_json":
        meta.write_text("{ this is not json")
    elif damage == "missing_json":
        meta.unlink()
    else:  # a valid PNG that is not the one the JSON vouches for
        png.write_bytes(png_bytes(_image(1)))
    assert cache.get("fv", key) is None
    if damage != "missing_json":
        assert not png.exists()  # removed, so the next put starts clean
    cache.put_image("fv", key, _image(), {})
    assert cache.get("fv", key) is not None


def test_write_leaves_no_temporary_files(tmp_path):
    cache = Cache(tmp_path)
    for i in range(3):
        cache.put_image("fv", f"{i:064d}", _image(i), {"i": i})
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".png", ".json")]
    assert leftovers == []
    record = json.loads(cache.paths("fv", f"{1:064d}")[1].read_text())
    assert record["meta"] == {"i": 1} and len(record["sha256"]) == 64


def test_a_failed_write_keeps_the_old_entry(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    key = "b" * 64
    cache.put_image("fv", key, _image(0), {"v": 0})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        cache.put_image("fv", key, _image(1), {"v": 1})
    monkeypatch.undo()
    hit = cache.get("fv", key)
    assert hit is not None and hit.meta == {"v": 0}
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_root_comes_from_env_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "here"))
    assert cache_root() == tmp_path / "here"
    assert Cache().root == tmp_path / "here"
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "layer-explorer"


def test_a_json_payload_does_not_overwrite_its_own_metadata(tmp_path) -> None:
    cache = Cache(tmp_path)
    payload = b'{"layers": [1, 2, 3]}'
    cache.put("reports", "ab" + "0" * 30, payload, {"what": "report"}, suffix=".json")
    entry = cache.get("reports", "ab" + "0" * 30, suffix=".json")
    assert entry is not None and entry.data == payload and entry.meta == {"what": "report"}
    data_path, meta_path = cache.paths("reports", "ab" + "0" * 30, suffix=".json")
    assert data_path != meta_path and data_path.read_bytes() == payload
