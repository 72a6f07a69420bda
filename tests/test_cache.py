"""The content-addressed cache: keys, round trips, damage detection, atomic writes, the default folder."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explorer import featurevis as fv
from explorer.cache import ENV_VAR, ORPHAN_GRACE, Cache, cache_root, make_key, png_bytes
from explorer.featurevis import get_preset, render_cached
from explorer.models import LoadedModel
from explorer.runtime import torch_threads


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


def _age(*paths: Path) -> None:
    """Make files older than the grace given to writes in progress."""
    past = time.time() - ORPHAN_GRACE - 60
    for p in paths:
        os.utime(p, (past, past))


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _flip_digit_in_meta(record: bytes) -> bytes:
    """A single bit flip that keeps the record valid JSON: the first digit of a metadata value (2 ↔ 3, …)."""
    start = record.index(b'"meta"')
    i = next(i for i in range(start, len(record)) if record[i : i + 1].isdigit())
    return _flip(record, i, 0)


def _record_for_another_key(data: bytes, record: bytes) -> bytes:
    """A record that is intact in itself and vouches for these very bytes, but under another key."""
    with tempfile.TemporaryDirectory() as folder:
        scratch = Cache(folder)
        scratch.put("fv", "c" * 64, data, json.loads(record)["meta"])
        return scratch.paths("fv", "c" * 64)[1].read_bytes()


DAMAGE = {
    "truncated payload": lambda data, record: (data[: len(data) // 2], record),
    "truncated record": lambda data, record: (data, record[: len(record) // 2]),
    "empty payload": lambda data, record: (b"", record),
    "empty record": lambda data, record: (data, b""),
    "wrong size": lambda data, record: (data + b"\0" * 7, record),  # a PNG with trailing bytes still decodes
    "bit flip in payload": lambda data, record: (_flip(data, len(data) // 2, 3), record),
    "bit flip in record": lambda data, record: (data, _flip_digit_in_meta(record)),
    "payload missing": lambda data, record: (None, record),
    "record missing": lambda data, record: (data, None),
    "another entry's payload": lambda data, record: (png_bytes(_image(1)), record),
    "record not an object": lambda data, record: (data, b"[1, 2]"),
    "another entry's record": lambda data, record: (data, _record_for_another_key(data, record)),
}

PAYLOADS = {".png": png_bytes(_image()), ".json": b'{"layers": [1, 2, 3]}', ".npy": bytes(range(200))}


def _write_damaged(cache: Cache, suffix: str, damage: str) -> tuple[Path, Path]:
    key = "a" * 64
    cache.put("fv", key, PAYLOADS[suffix], {"curve": [1.25, 2.5], "label": "x"}, suffix=suffix)
    data_path, meta_path = cache.paths("fv", key, suffix)
    data, record = DAMAGE[damage](data_path.read_bytes(), meta_path.read_bytes())
    for path, content in ((data_path, data), (meta_path, record)):
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
    _age(*(p for p in (data_path, meta_path) if p.exists()))  # a crash long ago, not a write in progress
    return data_path, meta_path


@pytest.mark.parametrize("suffix", list(PAYLOADS))
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_a_miss_is_removed_and_is_rewritten(tmp_path, damage, suffix):
    cache = Cache(tmp_path)
    data_path, meta_path = _write_damaged(cache, suffix, damage)
    assert cache.get("fv", "a" * 64, suffix) is None
    assert not data_path.exists() and not meta_path.exists()  # dropped whole, so the next put starts clean
    cache.put("fv", "a" * 64, PAYLOADS[suffix], {"v": 2}, suffix=suffix)
    hit = cache.get("fv", "a" * 64, suffix)
    assert hit is not None and hit.data == PAYLOADS[suffix] and hit.meta == {"v": 2}


def test_a_lone_young_payload_is_left_for_the_write_in_progress(tmp_path):
    cache = Cache(tmp_path)
    cache.put_image("fv", "a" * 64, _image(), {})
    data_path, meta_path = cache.paths("fv", "a" * 64)
    meta_path.unlink()  # as between a writer's two renames
    assert cache.get("fv", "a" * 64) is None
    assert data_path.exists()  # its record may be about to land
    _age(data_path)
    assert cache.get("fv", "a" * 64) is None
    assert not data_path.exists()  # a crashed writer's leftover


def test_every_single_bit_flip_of_a_record_is_detected(tmp_path):
    cache = Cache(tmp_path)
    key = "a" * 64
    cache.put_image("fv", key, _image(), {"curve": [1.25, 2.5, -0.125], "label": "cat", "n": 12})
    data_path, meta_path = cache.paths("fv", key)
    data, record = data_path.read_bytes(), meta_path.read_bytes()
    served = 0
    for i in range(len(record)):
        for bit in range(8):
            data_path.write_bytes(data)
            meta_path.write_bytes(_flip(record, i, bit))
            served += cache.get("fv", key) is not None
    assert served == 0, f"{served} of {len(record) * 8} flipped records were served"
    assert len(record) > 300


def test_a_bit_flip_in_any_byte_of_the_payload_is_detected(tmp_path):
    cache = Cache(tmp_path)
    key = "a" * 64
    cache.put_image("fv", key, _image(), {})
    data_path, meta_path = cache.paths("fv", key)
    data, record = data_path.read_bytes(), meta_path.read_bytes()
    for i in range(len(data)):
        data_path.write_bytes(_flip(data, i, i % 8))
        meta_path.write_bytes(record)
        assert cache.get("fv", key) is None, f"byte {i} bit {i % 8}"


def test_records_from_before_the_record_checksum_are_still_served(tmp_path):
    cache = Cache(tmp_path)
    data = png_bytes(_image())
    data_path, meta_path = cache.paths("fv", "a" * 64)
    data_path.parent.mkdir(parents=True)
    data_path.write_bytes(data)
    legacy = {"key": "a" * 64, "sha256": hashlib.sha256(data).hexdigest(), "meta": {"i": 1}}
    meta_path.write_text(json.dumps(legacy, indent=1))
    hit = cache.get("fv", "a" * 64)
    assert hit is not None and hit.meta == {"i": 1}
    meta_path.write_text(json.dumps({**legacy, "kez": 1}))  # an unknown field: not a record this code wrote
    assert cache.get("fv", "a" * 64) is None


def test_a_hit_marks_the_entry_used(tmp_path):
    cache = Cache(tmp_path)
    cache.put_image("fv", "a" * 64, _image(), {})
    meta_path = cache.paths("fv", "a" * 64)[1]
    _age(meta_path)
    before = meta_path.stat().st_mtime
    assert cache.get("fv", "a" * 64) is not None
    assert meta_path.stat().st_mtime > before + ORPHAN_GRACE


def test_reserved_folders_and_odd_names_are_not_kinds(tmp_path):
    cache = Cache(tmp_path)
    for kind in ("uploads", "runs", "datasets", "demo", "subsets", "../x", ".hidden", ""):
        with pytest.raises(ValueError, match="not a cache kind"):
            cache.put(kind, "a" * 64, b"x", {})
    for key in ("../../etc", "a.b", ""):
        with pytest.raises(ValueError, match="not a cache key"):
            cache.get("fv", key)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- a real render through the cache


def _tiny_model() -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    return LoadedModel.wrap(
        net,
        spec="test:tiny",
        input_size=(32, 32),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        class_names=list("abc"),
        resize_size=36,
    )


@pytest.fixture(scope="module")
def tiny_render_setup():
    with torch_threads(1):
        yield _tiny_model(), get_preset("classic", steps=2, size=32), [fv.channel("2", c) for c in (0, 3)]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_render_cached_serves_a_recomputed_image_after_damage(tmp_path, tiny_render_setup, damage):
    model, preset, objs = tiny_render_setup
    cache = Cache(tmp_path)
    first = render_cached(model, objs, preset, seed=3, cache=cache)
    assert not first.hits.any()
    data_path, meta_path = cache.paths("featurevis", first.keys[1])
    data, record = DAMAGE[damage](data_path.read_bytes(), meta_path.read_bytes())
    for path, content in ((data_path, data), (meta_path, record)):
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
    _age(*(p for p in (data_path, meta_path) if p.exists()))
    again = render_cached(model, objs, preset, seed=3, cache=cache)
    assert list(again.hits) == [True, False]  # the damaged image was rendered again, the other served
    assert again.png == first.png  # deterministic on one CPU thread: the recomputed image is the same
    assert np.array_equal(again.images, first.images)
    hit = cache.get("featurevis", first.keys[1])
    assert hit is not None and hit.data == first.png[1]  # and the entry is whole again


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


def test_png_memo_returns_the_encoding_of_these_pixels_and_stays_within_its_bound():
    import io

    from PIL import Image

    from explorer.cache import PngMemo

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    memo = PngMemo(max_bytes=3 * len(PngMemo()(images[0])) + 100)  # room for about three of them
    for im in images:
        data = memo(im)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), im)
    assert memo.misses == 6 and memo.hits == 0
    assert memo.nbytes <= memo.max_bytes and len(memo) == 3  # the oldest were dropped
    again = images[-1].copy()
    assert memo(again) == memo(images[-1]) and memo.hits == 2  # equal pixels, another array: a hit
    changed = again.copy()
    changed[0, 0, 0] ^= 1
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(memo(changed)))), changed)  # one bit: a miss
    assert memo.misses == 7
    assert memo(images[0][:, :16]) != memo(np.ascontiguousarray(images[0][:16, :, :]).reshape(32, 16, 3))
    assert png_bytes(images[1]) == PngMemo()(images[1])  # the module's memo encodes the same bytes


def test_the_cache_owns_every_folder_under_its_root(tmp_path, monkeypatch) -> None:
    """Every file the app keeps under the root is in a folder `cache.folder` hands out, so prune and the summary know
    it as user data; a folder nobody registered is refused, and no module builds a path under the root itself."""
    import re

    from explorer import cache as cache_module
    from explorer.cache import USER_DATA_DIRS, cache_summary, clear
    from explorer.cache import folder as cache_folder
    from explorer.data.demos import demo_dataset

    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(ValueError, match="not a folder the cache owns"):
        cache_folder("mine")
    assert demo_dataset("shapes").parent == tmp_path / "demo"  # $LAYER_EXPLORER_CACHE, not ~/.cache
    (cache_folder("tour") / "t.json").parent.mkdir(parents=True)
    (cache_folder("tour") / "t.json").write_text("{}")
    old = time.time() - 10 * ORPHAN_GRACE
    for p in [cache_folder("tour") / "t.json", *cache_folder("demo").rglob("*")]:
        os.utime(p, (old, old))
    clear(tmp_path)  # derived entries only: the tour's measurement and the demo data are not half entries
    assert (cache_folder("tour") / "t.json").exists() and demo_dataset("shapes").is_dir()
    kinds = {k.name: k.category for k in cache_summary(tmp_path).kinds}
    assert kinds["tour"] == kinds["demo"] == "user data" and {"tour", "demo"} <= set(USER_DATA_DIRS)
    package = Path(cache_module.__file__).parent
    builders = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "cache.py" and re.search(r"cache_root\(\)\s*/", p.read_text(encoding="utf-8"))
    ]
    assert builders == []  # every folder under the root comes from cache.folder
