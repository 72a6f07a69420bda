"""Tests for explorer.data: image loading, image folders, splits, safe zips, demo datasets."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from explorer.data import (
    ASSETS_DIR,
    DEMO_DATASETS,
    IMAGE_EXTENSIONS,
    DataError,
    ImageFolderDataset,
    demo_dataset,
    list_images,
    load_image,
    resolve_data,
    safe_extract_zip,
    sample_images,
    split,
    split_indices,
)

# ------------------------------------------------------------------------------ helpers


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise_image(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def rgb(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    a = np.asarray(im)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    return a


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only a signature, an IHDR claiming ``width`` x ``height`` and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# ---------------------------------------------------------------------- image modes


def test_rgb_and_grayscale() -> None:
    src = np.array([[[10, 20, 30], [200, 100, 0]]], dtype=np.uint8)
    assert (rgb(load_image(encode(Image.fromarray(src)))) == src).all()
    gray = load_image(encode(Image.new("L", (3, 2), 77)))
    assert (rgb(gray) == 77).all() and gray.size == (3, 2)
    one = rgb(load_image(encode(Image.new("1", (2, 2), 1))))
    assert (one == 255).all()


def test_alpha_is_composited_on_white() -> None:
    la = Image.new("LA", (3, 1))
    la.putdata([(100, 0), (100, 255), (100, 128)])
    a = rgb(load_image(encode(la)))
    assert (a[0, 0] == 255).all() and (a[0, 1] == 100).all()
    assert abs(int(a[0, 2, 0]) - round(100 * 128 / 255 + 255 * 127 / 255)) <= 1

    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255)])
    b = rgb(load_image(encode(rgba)))
    assert b[0, 0].tolist() == [255, 255, 255] and b[0, 1].tolist() == [0, 0, 255]


def test_palette_with_transparency() -> None:
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    p.putdata([0, 1])
    a = rgb(load_image(encode(p, transparency=1)))
    assert a[0, 0].tolist() == [255, 0, 0]
    assert a[0, 1].tolist() == [255, 255, 255]  # transparent green shows the white background
    opaque = rgb(load_image(encode(p)))
    assert opaque[0, 1].tolist() == [0, 255, 0]


def test_cmyk() -> None:
    im = Image.new("CMYK", (2, 2), (255, 0, 0, 0))
    assert rgb(load_image(encode(im, "TIFF")))[0, 0].tolist() == [0, 255, 255]
    assert (rgb(load_image(encode(Image.new("CMYK", (2, 2), (0, 0, 0, 0)), "TIFF"))) == 255).all()


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_is_stretched_over_its_range(mode: str) -> None:
    values = np.linspace(1000, 5000, 9).round().astype(np.uint16).reshape(3, 3)
    dtype = ">u2" if mode == "I;16B" else "<u2"
    im = Image.frombytes(mode, (3, 3), values.astype(dtype).tobytes())
    raw = encode(im, "TIFF")
    assert Image.open(io.BytesIO(raw)).mode == mode
    a = rgb(load_image(raw))[..., 0]
    assert a.min() == 0 and a.max() == 255  # stretched, not clipped to 1000/257 ~ 4 .. 5000/257 ~ 19
    assert a[1, 1] in (127, 128)
    assert (np.diff(a.ravel().astype(int)) > 0).all()


def test_16bit_png_and_constant_16bit() -> None:
    ramp = Image.fromarray(np.array([[0, 300, 600]], dtype=np.uint16))
    assert rgb(load_image(encode(ramp)))[0, :, 0].tolist() == [0, 128, 255]
    flat = Image.frombytes("I;16", (2, 2), np.full(4, 65535, "<u2").tobytes())
    assert (rgb(load_image(encode(flat, "TIFF"))) == 255).all()


def test_int32_and_float() -> None:
    ints = Image.fromarray(np.array([[-500, 500, 1500]], dtype=np.int32))
    assert ints.mode == "I"
    assert rgb(load_image(encode(ints, "TIFF")))[0, :, 0].tolist() == [0, 128, 255]
    floats = Image.fromarray(np.array([[0.25, 0.5, 0.75]], dtype=np.float32))
    assert floats.mode == "F"
    assert rgb(load_image(encode(floats, "TIFF")))[0, :, 1].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied() -> None:
    a = np.zeros((2, 4, 3), np.uint8)
    a[:, :2] = (255, 0, 0)  # left half red
    a[:, 2:] = (0, 0, 255)  # right half blue
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_image(encode(im, exif=exif.tobytes()))
    assert out.size == (2, 4)
    b = rgb(out)
    assert b[0, 0].tolist() == [255, 0, 0] and b[-1, -1].tolist() == [0, 0, 255]


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    assert (rgb(load_image(buf.getvalue())) == [255, 0, 0]).all()


def test_sources_path_stream_and_unseekable(tmp_path: Path) -> None:
    data = encode(noise_image(8))
    expected = np.asarray(noise_image(8))
    (tmp_path / "x.png").write_bytes(data)
    assert (rgb(load_image(tmp_path / "x.png")) == expected).all()
    assert (rgb(load_image(str(tmp_path / "x.png"))) == expected).all()

    class Unseekable(io.RawIOBase):
        name = "upload.png"

        def __init__(self) -> None:
            self._buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            chunk = self._buf.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    assert (rgb(load_image(Unseekable())) == expected).all()
    with pytest.raises(DataError, match="upload.png"):
        bad = Unseekable()
        bad._buf = io.BytesIO(b"nope")
        load_image(bad)


# ---------------------------------------------------------------------- image errors


def test_not_an_image(tmp_path: Path) -> None:
    f = tmp_path / "photo.png"
    f.write_text("hello, I am text")
    with pytest.raises(DataError, match=r"photo\.png is not an image file") as e:
        load_image(f)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="holiday.jpg"):
        load_image(b"not an image", name="holiday.jpg")


def test_untrusted_formats_are_refused(tmp_path: Path) -> None:
    eps = tmp_path / "figure.png"  # PIL would hand EPS to Ghostscript; the extension does not matter
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(DataError, match=r"figure\.png is not an image file"):
        load_image(eps)


def test_missing_empty_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothere.png does not exist"):
        load_image(tmp_path / "nothere.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg is empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(DataError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    data = encode(noise_image(64), fmt)
    f = tmp_path / f"cut.{fmt.lower()}"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"cut\.{fmt.lower()} is truncated or corrupt"):
        load_image(f)


def test_size_checked_before_decoding(tmp_path: Path) -> None:
    # The header claims 8000x8000 = 64 M pixels but there is no pixel data at all: the size
    # message (not "truncated") proves the check ran before any decoding was attempted.
    f = tmp_path / "bomb.png"
    f.write_bytes(png_header(8000, 8000))
    with pytest.raises(DataError, match=r"bomb\.png is 8000x8000 = 64,000,000 pixels.*40,000,000"):
        load_image(f)
    with pytest.raises(DataError, match=r"64x64 = 4,096 pixels, over the limit of 1,000 pixels"):
        load_image(encode(noise_image(64)), max_pixels=1000)


@pytest.mark.parametrize("side", [10_000, 100_000])  # PIL's warning (>89 M) and error (>179 M) ranges
def test_pil_decompression_bomb_guard_becomes_data_error(tmp_path: Path, side: int) -> None:
    f = tmp_path / "huge.png"
    f.write_bytes(png_header(side, side))
    with pytest.raises(DataError, match=rf"huge\.png is .*{side * side:,} pixels, over the limit of [\d,]+ pixels"):
        load_image(f, max_pixels=10**12)


# ------------------------------------------------------------------------- folders


def write_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(16, seed).save(path)
    return path


def test_list_images(tmp_path: Path) -> None:
    write_png(tmp_path / "b" / "z.png")
    write_png(tmp_path / "a" / "deep" / "y.PNG")
    write_png(tmp_path / "x.jpg")
    (tmp_path / "notes.txt").write_text("no")
    write_png(tmp_path / ".hidden" / "h.png")
    write_png(tmp_path / "__MACOSX" / "m.png")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "a/deep/y.PNG",
        "b/z.png",
        "x.jpg",
    ]
    assert {".png", ".jpg", ".jpeg"} <= IMAGE_EXTENSIONS
    with pytest.raises(DataError):
        list_images(tmp_path / "missing")


def test_folder_validation(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        ImageFolderDataset(tmp_path / "file.txt")
    flat = tmp_path / "flat"
    write_png(flat / "1.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderDataset(flat)
    one = tmp_path / "one"
    write_png(one / "cats" / "1.png")
    with pytest.raises(DataError, match=r"needs at least two classes.*\(cats\)"):
        ImageFolderDataset(one)
    hollow = tmp_path / "hollow"
    write_png(hollow / "cats" / "1.png")
    (hollow / "dogs").mkdir()
    (hollow / "birds").mkdir()
    (hollow / "birds" / "bad.png").write_text("not an image")
    with pytest.raises(DataError, match="no readable images: birds, dogs") as e:
        ImageFolderDataset(hollow)
    assert "\n" not in str(e.value)


def test_corrupt_files_are_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i in range(3):
        write_png(root / "b_cats" / f"{i}.png", seed=i)
    write_png(root / "a_dogs" / "0.png")
    write_png(root / "a_dogs" / "sub" / "1.png")
    (root / "b_cats" / "text.png").write_text("not an image")
    (root / "b_cats" / "empty.jpg").write_bytes(b"")
    png = encode(noise_image(64))
    (root / "b_cats" / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "b_cats" / "readme.txt").write_text("ignored, not an image extension")
    (root / ".git").mkdir()
    (root / "b_cats" / ".DS_Store").write_bytes(b"\0\0")

    ds = ImageFolderDataset(root)
    assert ds.classes == ["a_dogs", "b_cats"]
    assert len(ds) == 5 and ds.targets == [0, 0, 1, 1, 1]
    assert sorted(p.name for p, _ in ds.skipped) == ["cut.png", "empty.jpg", "text.png"]
    assert all(reason.endswith(".") and p.name in reason for p, reason in ds.skipped)
    img, label = ds[2]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == 1
    assert ds.samples[2][0].name == "0.png"


def test_full_check_catches_what_headers_miss(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_png(root / "a" / "ok.png")
    write_png(root / "b" / "ok.png")
    jpg = encode(noise_image(64), "JPEG")
    (root / "b" / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    assert len(ImageFolderDataset(root)) == 3  # a JPEG header looks fine
    strict = ImageFolderDataset(root, full_check=True)
    assert len(strict) == 2 and [p.name for p, _ in strict.skipped] == ["cut.jpg"]
    with pytest.raises(DataError, match="cut.jpg is truncated"):
        ImageFolderDataset(root)[1]  # samples are sorted: a/ok.png, b/cut.jpg, b/ok.png


def test_transform_and_dataloader(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader

    root = tmp_path / "ds"
    for c in "xy":
        for i in range(3):
            write_png(root / c / f"{i}.png", seed=i)

    def to_tensor(im: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)

    ds = ImageFolderDataset(root, transform=to_tensor)
    assert isinstance(ds, torch.utils.data.Dataset)
    batches = list(DataLoader(ds, batch_size=4))
    assert batches[0][0].shape == (4, 3, 16, 16) and batches[0][0].dtype == torch.uint8
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 0, 0, 1, 1, 1]


# -------------------------------------------------------------------------- splits


def test_split_deterministic_disjoint_covering() -> None:
    train, val = split(100, 0.2, seed=3)
    assert (train, val) == split(100, 0.2, seed=3)
    assert split(100, 0.2, seed=4) != (train, val)
    assert len(val) == 20 and not set(train) & set(val) and sorted(train + val) == list(range(100))
    labels = [0] * 10 + [1] * 90
    assert split(100, 0.2, 3, labels=labels) == split_indices(labels, 0.2, 3)
    with pytest.raises(DataError, match="needs 100 labels but got 3"):
        split(100, 0.2, 3, labels=[0, 1, 0])
    assert split(1, 0.5, 0) == ([0], [])
    assert split(0, 0.5, 0) == ([], [])
    for bad in (-0.1, 1.0):
        with pytest.raises(DataError, match="validation fraction"):
            split(10, bad, 0)


def test_split_indices_stratified() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 20 + [3]
    train, val = split_indices(labels, 0.2, seed=0)
    assert [sum(labels[i] == c for i in val) for c in range(4)] == [10, 6, 4, 0]
    assert 100 in train  # the lone example of class 3 stays in training
    assert (train, val) == split_indices(labels, 0.2, seed=0)
    assert split_indices(labels, 0.2, seed=1)[1] != val
    assert split_indices(["b", "a", "b", "a"], 0.5, 0)[1].__len__() == 2


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=0, max_size=60),
    frac=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_indices_properties(labels: list[int], frac: float, seed: int) -> None:
    train, val = split_indices(labels, frac, seed)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(len(labels)))
    assert {labels[i] for i in train} == set(labels)  # every class keeps a training example
    assert (train, val) == split_indices(labels, frac, seed)


# ---------------------------------------------------------------------------- zips


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entries", "kwargs", "message"),
    [
        ([("ok.txt", b"x"), ("../evil.txt", b"x")], {}, "leaving the folder"),
        ([("a/../../evil.txt", b"x")], {}, "leaving the folder"),
        ([("..\\evil.txt", b"x")], {}, "leaving the folder"),
        ([(zipfile.ZipInfo("/tmp/evil.txt"), b"x")], {}, "absolute path"),
        ([("C:/evil.txt", b"x")], {}, "absolute path"),
        ([(symlink_info("link"), b"/etc/passwd")], {}, "symbolic link"),
        ([("bomb.bin", bytes(5_000_000))], {}, r"zip bomb: bomb\.bin expands [\d,]+x, over the limit of 200x"),
        ([(f"{i}.txt", b"x") for i in range(6)], {"max_files": 5}, "6 entries, more than the limit of 5"),
        ([("big.txt", b"x" * 200)], {"max_total_bytes": 100}, "200 bytes, more than the limit of 100"),
    ],
)
def test_zip_refusals_write_nothing(tmp_path: Path, entries: list, kwargs: dict, message: str) -> None:
    z = make_zip(tmp_path / "in.zip", entries)
    before = tree(tmp_path)
    with pytest.raises(DataError, match=message) as e:
        safe_extract_zip(z, tmp_path / "out", **kwargs)
    assert "\n" not in str(e.value) and "in.zip" in str(e.value)
    assert tree(tmp_path) == before  # not even the target folder was created
    assert not (tmp_path.parent / "evil.txt").exists()


def test_zip_corrupt_member_cleans_up(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("data/a.txt", b"A" * 1000)
    raw = bytearray(buf.getvalue())
    raw[raw.index(b"A" * 1000) + 10] = ord("B")  # CRC mismatch found only while extracting
    out = tmp_path / "out"
    with pytest.raises(DataError, match="the uploaded zip"):
        safe_extract_zip(bytes(raw), out)
    assert list(out.iterdir()) == []  # no partial folder, no temp folder left behind


def test_zip_with_single_top_folder(tmp_path: Path) -> None:
    img = encode(noise_image(16))
    z = make_zip(
        tmp_path / "my data.zip",
        [
            ("dataset/cats/1.png", img),
            ("dataset/dogs/2.png", img),
            ("dataset/.DS_Store", b"junk"),
            ("__MACOSX/dataset/cats/._1.png", b"junk"),
        ],
    )
    got = safe_extract_zip(z, tmp_path / "out")
    assert got == tmp_path / "out" / "my_data" / "dataset"
    assert tree(tmp_path / "out" / "my_data") == {
        "dataset",
        "dataset/cats",
        "dataset/cats/1.png",
        "dataset/dogs",
        "dataset/dogs/2.png",
    }
    assert ImageFolderDataset(got).classes == ["cats", "dogs"]
    assert (got / "cats" / "1.png").read_bytes() == img


def test_zip_never_overwrites(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "set.zip", [("a/1.txt", b"new"), ("b/2.txt", b"new")])
    out = tmp_path / "out"
    (out / "set").mkdir(parents=True)
    (out / "set" / "keep.txt").write_text("old")
    first = safe_extract_zip(z, out)
    second = safe_extract_zip(z.read_bytes(), out)
    third = safe_extract_zip(io.BytesIO(z.read_bytes()), out)
    assert first == out / "set-1"  # two top-level folders: the extraction folder itself
    assert second == out / "archive" and third == out / "archive-1"
    assert (out / "set" / "keep.txt").read_text() == "old" and tree(out / "set") == {"keep.txt"}
    assert (first / "a" / "1.txt").read_bytes() == b"new"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_text("hello")
    with pytest.raises(DataError, match=r"x\.zip is not a valid zip file"):
        safe_extract_zip(tmp_path / "x.zip", tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        safe_extract_zip(tmp_path / "missing.zip", tmp_path / "out")


# ---------------------------------------------------------------------------- demos


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


def test_digits_demo(demo_root: Path) -> None:
    from sklearn.datasets import load_digits

    root = demo_dataset("digits", demo_root)
    assert root == demo_root / "digits"
    ds = ImageFolderDataset(root)
    assert ds.classes == [str(i) for i in range(10)] and len(ds) == 1797 and not ds.skipped
    digits = load_digits()
    assert np.bincount(ds.targets).tolist() == np.bincount(digits.target).tolist()
    for i in (0, 1, 777, 1796):
        f = root / str(digits.target[i]) / f"{i:04d}.png"
        img = rgb(load_image(f))
        assert img.shape == (64, 64, 3) and (img[..., 0] == img[..., 2]).all()
        small = img[..., 0].reshape(8, 8, 8, 8).mean(axis=(1, 3))  # back to 8x8 by area
        assert np.corrcoef(small.ravel(), digits.images[i].ravel())[0, 1] > 0.9
        assert img.max() > 200 and np.bincount(img[..., 0].ravel()).argmax() == 0  # bright strokes on black


def test_shapes_demo_and_idempotence(demo_root: Path) -> None:
    root = demo_dataset("shapes", demo_root)
    ds = ImageFolderDataset(root)
    assert ds.classes == ["circle", "square", "triangle"]
    assert np.bincount(ds.targets).tolist() == [40, 40, 40]
    assert ds[0][0].size == (64, 64)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert demo_dataset("shapes", demo_root) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    assert not [p for p in demo_root.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_shapes_are_reproducible(tmp_path: Path, demo_root: Path) -> None:
    other = demo_dataset("shapes", tmp_path)
    for rel in ("circle/000.png", "triangle/039.png"):
        assert (other / rel).read_bytes() == (demo_root / "shapes" / rel).read_bytes()


def test_demo_older_version_is_replaced(tmp_path: Path) -> None:
    old = tmp_path / "shapes"
    old.mkdir()
    (old / ".layer-explorer-demo").write_text(json.dumps({"name": "shapes", "version": 0}))
    (old / "stale.txt").write_text("from an older release")
    root = demo_dataset("shapes", tmp_path)
    assert root == old and not (root / "stale.txt").exists()
    assert len(list_images(root)) == 120
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # temp and stale folders removed


def test_demo_errors_and_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(DEMO_DATASETS) == {"digits", "shapes"}
    with pytest.raises(DataError, match="Unknown demo dataset 'cifar'.*digits, shapes"):
        demo_dataset("cifar", tmp_path)
    (tmp_path / "shapes" / "mine").mkdir(parents=True)
    with pytest.raises(DataError, match="not a Layer Explorer demo dataset"):
        demo_dataset("shapes", tmp_path)
    assert (tmp_path / "shapes" / "mine").is_dir()  # the user's folder is left alone

    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))  # the demo data live under the cache root
    assert resolve_data("demo:shapes") == tmp_path / "cache" / "demo" / "shapes"
    assert resolve_data(str(tmp_path)) == tmp_path
    with pytest.raises(DataError, match="does not exist"):
        resolve_data(str(tmp_path / "nope"))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        resolve_data(str(tmp_path / "f.txt"))


# --------------------------------------------------------------------------- assets


def test_sample_images() -> None:
    samples = sample_images()
    assert {"chelsea", "coffee", "astronaut", "rocket", "brick"} <= set(samples)
    assert samples["chelsea"] == ASSETS_DIR / "chelsea.jpg" and samples["coffee"].name == "coffee.jpg"
    for path in samples.values():
        assert os.path.getsize(path) <= 150_000
        img = rgb(load_image(path))
        assert min(img.shape[:2]) >= 256
    assert Image.open(samples["brick"]).mode == "L"  # exercises the grayscale path
    assert (ASSETS_DIR / "README.md").read_text().count("CC0") >= 3


def test_typical_side_reads_headers_and_skips_what_is_not_an_image(tmp_path):
    from explorer.data import typical_side

    paths = []
    for i, side in enumerate((30, 64, 64, 500)):
        Image.new("RGB", (side, side // 2 + 1)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert typical_side([*paths, tmp_path / "bad.png"]) == 64
    assert typical_side([tmp_path / "bad.png"]) is None and typical_side([]) is None


def test_the_suggested_size_follows_small_data_and_keeps_a_fixed_models_size():
    from explorer.transfer.training.settings import suggested_input_size

    assert suggested_input_size(224, 64) == 64  # the digits
    assert suggested_input_size(224, 8) == 32  # never below 32
    assert suggested_input_size(224, 70) == 80  # rounded up to a multiple of 16
    assert suggested_input_size(224, 1000) == 224  # never above the model's
    assert suggested_input_size(224, 64, fixed=True) == 224 and suggested_input_size(224, None) == 224
