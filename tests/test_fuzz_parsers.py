"""Fuzzing the readers of untrusted files with hypothesis, on mutated real files.

Targets: the checkpoint reader (`read_checkpoint`, and `load_model(path)` on a real timm checkpoint), the zip
extractor (`safe_extract_zip`) and the image loader (`load_image`). Inputs start from real files (a safetensors and a
``.pt`` state_dict saved here, the photographs in ``assets/`` as JPEG and re-encoded as PNG, GIF, BMP, TIFF and WebP,
zips built here) and are truncated, bit-flipped, overwritten, given another format's header, or rebuilt with hostile
structure (huge declared sizes, absolute and ``..`` paths, symlinks, nested zips, bombs by ratio).

Property: a reader returns a sound result or raises an `ExplorerError` (ModelError, DataError) with a one-line
message; nothing else escapes, and nothing is written outside the target folder.

Each target runs `DEFAULT` cases (derandomized: the same cases every run) in the default suite and `SLOW` random
cases under ``-m slow``. Counts per outcome are printed (``-s``) for docs/reliability.md.
"""

from __future__ import annotations

import collections
import io
import json
import os
import shutil
import stat
import struct
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as save_safetensors
from torch import nn

from explorer.data import ASSETS_DIR, load_image, safe_extract_zip
from explorer.errors import ExplorerError
from explorer.models import META_KEY, build_arch, load_model, read_checkpoint
from explorer.transfer.training.checkpoints import save_checkpoint

DEFAULT, SLOW = 60, 400  # cases per target; 7 targets
BUDGETS = [pytest.param(DEFAULT, id="default"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]
MARK = uuid.uuid4().hex[:10]  # in every name a hostile zip may try to write, so an escape can be found
ARCH = "timm:test_resnet:untrained"  # 470k parameters, built in milliseconds
pytestmark = [
    pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning"),  # hostile zips repeat names
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin"),  # "Corrupt EXIF data", then refused
]


def run_fuzz(n: int, strategy: st.SearchStrategy, check: Callable[[Any], str], name: str, share: float = 1) -> None:
    """Run `check` on `n` × `share` drawn cases; it returns an outcome label (or raises: the property failed).

    The default budget is derandomized (the same cases every run); the slow one draws new cases each run."""
    outcomes: collections.Counter[str] = collections.Counter()
    n, derandomize = int(n * share), n == DEFAULT

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        outcomes[check(case)] += 1

    fuzz()
    print(f"\nfuzz {name}: {sum(outcomes.values())} cases: {dict(sorted(outcomes.items()))}")
    assert sum(outcomes.values()) >= n * 0.9
    assert sum(v for k, v in outcomes.items() if k != "ok") >= n * 0.1, "the fuzzer rarely reached an error path"


# Phrases of the readers' messages, to count refusals by reason in the printed summary.
REASONS = [
    "absolute path", "leaving the folder", "symbolic link", "special file", "password-protected", "zip bomb",
    "would expand", "entries, more than the limit", "beyond its declared size", "shorter than declared",
    "not a valid zip", "could not be extracted", "no free folder name", "a file and a folder",
    "truncated or corrupt", "not an image", "over the limit", "is empty", "colour mode",
    "unusable metadata", "not a readable", "holds no", "does not fit", "another architecture",
    "carries no metadata", "Refused to load", "must be bundled", "Unknown", "not found",
]  # fmt: skip


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", result) or ("<error class>: <reason>", None); any other exception propagates (the property fails)."""
    try:
        return "ok", call()
    except ExplorerError as e:
        text = str(e)
        assert text and "\n" not in text and "Traceback" not in text, repr(text)
        assert ".extract-" not in text and "Errno" not in text, repr(text)  # no internals: a sentence to act on
        reason = next((r for r in REASONS if r.lower() in text.lower()), text[:50])
        return f"{type(e).__name__}: {reason}", None


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder`: files with their size and modification time, folders as (-1, -1)."""
    out = {}
    for p in folder.rglob("*"):
        info = p.lstat()
        is_dir = stat.S_ISDIR(info.st_mode)
        out[p.relative_to(folder).as_posix()] = (-1, -1) if is_dir else (info.st_size, info.st_mtime_ns)
    return out


def around(folder: Path) -> list[str]:
    """Names a hostile zip could create next to `folder` or in any folder above it (all carry MARK or are in
    UNMARKED), so that an escape from the target shows up here."""
    found = []
    for anc in folder.parents:
        with os.scandir(anc) as it:
            found += [os.path.join(anc, e.name) for e in it if MARK in e.name or e.name in UNMARKED]
    return sorted(found)


# --------------------------------------------------------------------------- byte mutations

HEADERS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"PK\x03\x04",
    b"\x80\x02}q\x00",
    struct.pack("<Q", 2**63),  # a safetensors header length past any file
    b"{}",
    b"",
]


def positions(hot: int) -> st.SearchStrategy[float | int]:
    """Where to mutate: often in the first `hot` bytes (headers, tables), else anywhere (a fraction)."""
    return st.one_of(st.integers(0, max(hot - 1, 0)), st.floats(0, 1, exclude_max=True))


def mutations(hot: int) -> st.SearchStrategy[list[tuple]]:
    where = positions(hot)
    op = st.one_of(
        st.tuples(st.just("flip"), where, st.integers(0, 7)),
        st.tuples(st.just("truncate"), where),
        st.tuples(st.just("overwrite"), where, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("insert"), where, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), where, st.integers(1, 64)),
        st.tuples(st.just("header"), st.sampled_from(HEADERS)),
        st.tuples(st.just("garbage"), st.binary(max_size=64)),
    )
    return st.lists(op, min_size=1, max_size=4)


def mutate(data: bytes, ops: list[tuple], start: int = 0) -> bytes:
    """Apply `ops` in order; whole-number positions count from `start`, fractions span the whole file."""
    b = bytearray(data)
    for kind, *args in ops:
        if kind == "header":
            b[: len(args[0])] = args[0]
            continue
        if kind == "garbage":
            b = bytearray(args[0])
            continue
        at = start + args[0] if isinstance(args[0], int) else int(args[0] * len(b))
        at = min(at, max(len(b) - 1, 0))
        if kind == "flip" and b:
            b[at] ^= 1 << args[1]
        elif kind == "truncate":
            del b[at:]
        elif kind == "overwrite":
            b[at : at + len(args[1])] = args[1]
        elif kind == "insert":
            b[at:at] = args[1]
        elif kind == "delete":
            del b[at : at + args[1]]
    return bytes(b)


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoints() -> dict[str, bytes]:
    """A real small state_dict as safetensors (with our metadata) and as a torch.save zip."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {"arch": ARCH, "input_size": [32, 32], "class_names": ["a", "b"], "mean": [0.5] * 3, "std": [0.25] * 3}
    buf = io.BytesIO()
    torch.save(state, buf)
    return {
        ".safetensors": save_safetensors(state, metadata={META_KEY: json.dumps(meta)}),
        ".pt": buf.getvalue(),
    }


def check_checkpoint(folder: Path, name: str, data: bytes, sidecar: bytes | None) -> str:
    case = Path(tempfile.mkdtemp(dir=folder))
    try:
        path = case / name
        path.write_bytes(data)
        if sidecar is not None:
            path.with_suffix(".json").write_bytes(sidecar)
        before = snapshot(case)
        label, got = outcome(lambda: read_checkpoint(path))
        if got is not None:
            tensors, meta = got
            assert tensors and all(isinstance(v, torch.Tensor) for v in tensors.values()) and isinstance(meta, dict)
        assert snapshot(case) == before  # a reader writes nothing
        return label
    finally:
        shutil.rmtree(case)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
META_FIELDS = ["arch", "base_spec", "input_size", "mean", "std", "resize_size", "class_names", "freeze_after"]
SIZES = st.sampled_from([0, 1, -1, 3, 16, 2**31, 2**40, 2**63 - 1, 2**64 - 1, 10**30])


@st.composite
def header_edits(draw: st.DrawFn) -> dict[str, Any]:
    """A structural edit of the safetensors header, or of our metadata inside it, or of the JSON sidecar."""
    return {
        "tensor": draw(st.integers(0, 10)),
        "field": draw(st.sampled_from(["shape", "data_offsets", "dtype", "drop", "metadata", "length", "sidecar"])),
        "shape": draw(st.lists(SIZES, max_size=4)),
        "offsets": draw(st.lists(SIZES, max_size=3)),
        "dtype": draw(st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "X", 5, None])),
        "meta": draw(st.dictionaries(st.sampled_from(META_FIELDS), JSON, max_size=3) | JSON),
        "length_delta": draw(st.integers(-16, 16)),
    }


def edit_safetensors(data: bytes, edit: dict[str, Any]) -> tuple[bytes, bytes | None]:
    n = struct.unpack("<Q", data[:8])[0]
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    names = sorted(k for k in header if k != "__metadata__")
    name = names[edit["tensor"] % len(names)]
    sidecar = None
    field = edit["field"]
    if field == "shape":
        header[name]["shape"] = edit["shape"]
    elif field == "data_offsets":
        header[name]["data_offsets"] = edit["offsets"]
    elif field == "dtype":
        header[name]["dtype"] = edit["dtype"]
    elif field == "drop":
        del header[name]
    elif field == "metadata":
        header["__metadata__"][META_KEY] = json.dumps(edit["meta"])
    elif field == "sidecar":
        sidecar = json.dumps(edit["meta"]).encode()
    raw = json.dumps(header).encode()
    length = len(raw) + (edit["length_delta"] if field == "length" else 0)
    return struct.pack("<Q", max(length, 0)) + raw + body, sidecar


@pytest.mark.parametrize("n", BUDGETS)
def test_checkpoint_reader_on_mutated_bytes(n, base, checkpoints):
    cases = st.tuples(st.sampled_from(sorted(checkpoints)), mutations(hot=600))
    run_fuzz(
        n,
        cases,
        lambda c: check_checkpoint(base, f"m{c[0]}", mutate(checkpoints[c[0]], c[1]), None),
        "read_checkpoint, mutated bytes",
    )


@pytest.mark.parametrize("n", BUDGETS)
def test_checkpoint_reader_on_hostile_headers_and_metadata(n, base, checkpoints):
    def check(edit: dict[str, Any]) -> str:
        data, sidecar = edit_safetensors(checkpoints[".safetensors"], edit)
        return check_checkpoint(base, "m.safetensors", data, sidecar)

    run_fuzz(n, header_edits(), check, "read_checkpoint, hostile headers and metadata")


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A checkpoint as fine-tuning writes it (weights + metadata naming its architecture), as bytes."""
    torch.manual_seed(0)
    module = build_arch(ARCH, load_weights=False).module
    meta = {"arch": ARCH, "input_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "resize_size": 36,
            "class_names": [f"c{i}" for i in range(1000)], "freeze_after": "layer1"}  # fmt: skip
    path = save_checkpoint(module, tmp_path_factory.mktemp("ckpt") / "m.safetensors", meta)
    return path.read_bytes()


@pytest.mark.parametrize("n", BUDGETS)
def test_load_model_on_mutated_checkpoints(n, base, real_checkpoint):
    def check(case: tuple) -> str:
        ops, edit = case
        data, sidecar = edit_safetensors(real_checkpoint, edit) if edit else (real_checkpoint, None)
        folder = Path(tempfile.mkdtemp(dir=base))
        try:
            path = folder / "m.safetensors"
            path.write_bytes(mutate(data, ops) if ops else data)
            if sidecar is not None:
                path.with_suffix(".json").write_bytes(sidecar)
            before = snapshot(folder)
            label, model = outcome(lambda: load_model(str(path), device="cpu"))
            if model is not None:  # a flip may leave a spec that still builds ("timm:test_resnet:tntrained")
                assert model.arch.startswith("timm:") and len(model.input_size) == 2 and model.fingerprint
            assert snapshot(folder) == before
            return label
        finally:
            shutil.rmtree(folder)

    no_ops = st.just([])
    cases = st.one_of(
        st.tuples(mutations(hot=4000), st.none()),
        st.tuples(no_ops, header_edits()),
    )
    run_fuzz(n, cases, check, "load_model, mutated checkpoint", share=0.5)  # each case builds a model


# --------------------------------------------------------------------------- zips

UNMARKED = {"__MACOSX", ".hidden", "C:"}
COMPONENTS = ["..", ".", "", f"a{MARK}", f"evil{MARK}.txt", f"ü{MARK}", "x" * 190 + MARK, *sorted(UNMARKED)]


@st.composite
def member_names(draw: st.DrawFn, hostile: bool) -> str:
    if not hostile:  # a plain relative path, as a dataset zip has
        return "/".join(draw(st.lists(st.sampled_from(COMPONENTS[3:7]), min_size=1, max_size=3)))
    parts = draw(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=5))
    sep = draw(st.sampled_from(["/", "\\"]))
    lead = draw(st.sampled_from(["", "", "", "/", "\\", "C:/", "//"]))
    return lead + sep.join(parts)


@st.composite
def members(draw: st.DrawFn, hostile: bool = False) -> dict[str, Any]:
    kinds = ["file", "dir", "symlink", "fifo", "encrypted", "nested", "bomb"] if hostile else ["file", "dir", "nested"]
    kind = draw(st.sampled_from(kinds))
    return {
        "name": draw(member_names(hostile and draw(st.booleans()))),  # a hostile kind may have a plain name
        "kind": kind,
        "data": draw(st.binary(max_size=300)),
        "bomb": draw(st.integers(1 << 20, 3 << 20)),
        "compress": draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])),
        "declared": draw(st.none() | SIZES if hostile else st.none()),  # written into the directory instead
    }


def build_zip(entries: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    patches = []
    with zipfile.ZipFile(buf, "w") as zf:
        for e in entries:
            info = zipfile.ZipInfo(e["name"] + ("/" if e["kind"] == "dir" else ""))
            info.compress_type = zipfile.ZIP_DEFLATED if e["kind"] == "bomb" else e["compress"]
            data = e["data"]
            if e["kind"] == "symlink":
                info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
                data = f"../../../evil{MARK}".encode()
            elif e["kind"] == "fifo":
                info.create_system, info.external_attr = 3, (stat.S_IFIFO | 0o644) << 16
            elif e["kind"] == "nested":
                data = build_zip([{**e, "kind": "file", "name": f"../evil{MARK}.txt", "declared": None}])
            elif e["kind"] == "bomb":
                data = bytes(e["bomb"])
            elif e["kind"] == "dir":
                data = b""
            zf.writestr(info, data)
            if e["declared"] is not None or e["kind"] == "encrypted":
                patches.append((info.filename, e["declared"], e["kind"] == "encrypted"))
    raw = bytearray(buf.getvalue())
    for filename, size, encrypted in patches:  # what zipfile will not write: lies and an encryption flag
        at = raw.find(b"PK\x01\x02")
        while at != -1:
            n_name = struct.unpack("<H", raw[at + 28 : at + 30])[0]
            if raw[at + 46 : at + 46 + n_name] == filename.encode():
                if size is not None:  # the uncompressed size in the central directory
                    raw[at + 24 : at + 28] = struct.pack("<I", min(max(size, 0), 2**32 - 1))
                if encrypted:  # bit 0 of the flags, in the central directory and the local header
                    raw[at + 8] |= 1
                    raw[struct.unpack("<I", raw[at + 42 : at + 46])[0] + 6] |= 1
                break
            at = raw.find(b"PK\x01\x02", at + 4)
    return bytes(raw)


def check_zip(folder: Path, data: bytes, limits: dict[str, Any], source: str) -> str:
    case = Path(tempfile.mkdtemp(dir=folder))
    try:
        zpath = case / "in.zip"
        zpath.write_bytes(data)
        target = case / "out"
        (target / "keep").mkdir(parents=True)
        (target / "keep" / "mine.txt").write_bytes(b"user data")
        before, nearby = snapshot(case), around(case)
        arg: Any = {"path": zpath, "bytes": data, "stream": io.BytesIO(data)}[source]
        label, got = outcome(lambda: safe_extract_zip(arg, target, **limits))
        after = snapshot(case)
        new = {k: v for k, v in after.items() if k not in before}
        assert {k: after.get(k) for k in before} == before  # nothing changed or removed, the zip included
        assert all(k.startswith("out/") for k in new), new  # everything new is in the target folder
        for rel in new:
            p = case / rel
            assert p.is_file() or p.is_dir(), rel  # no links, no special files
            assert not p.is_symlink() and p.resolve().is_relative_to(target.resolve()), rel
        if got is None:
            assert new == {}, new  # a refused archive leaves nothing behind, not even a temp folder
        else:
            assert Path(got).resolve().is_relative_to(target.resolve()) and Path(got).is_dir()
            assert not any(Path(k).name.startswith(".") or "__MACOSX" in k for k in new), new
        assert around(case) == nearby, "written outside the target folder"
        return label
    finally:
        shutil.rmtree(case)


LIMITS = st.fixed_dictionaries(
    {},
    optional={
        "max_total_bytes": st.integers(0, 5_000_000),
        "max_files": st.integers(0, 20),
        "max_ratio": st.floats(1, 1000),
    },
)


@pytest.mark.parametrize("n", BUDGETS)
def test_zip_extractor_on_hostile_archives(n, base):
    entries = st.tuples(
        st.lists(members(), min_size=1, max_size=4), st.lists(members(hostile=True), max_size=1), st.randoms()
    ).map(lambda t: t[2].sample(t[0] + t[1], len(t[0]) + len(t[1])))  # benign members, maybe one hostile, shuffled
    cases = st.tuples(entries, LIMITS, st.sampled_from(["path", "bytes", "stream"]))
    run_fuzz(n, cases, lambda c: check_zip(base, build_zip(c[0]), c[1], c[2]), "safe_extract_zip, hostile archives")


@pytest.fixture(scope="module")
def real_zip() -> bytes:
    """A dataset zip as a user would upload it: a top folder, two classes of real photos, macOS debris."""
    photos = sorted(ASSETS_DIR.glob("*.jpg"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, p in enumerate(photos):
            zf.writestr(f"set/{'cats' if i % 2 else 'dogs'}/{p.name}", p.read_bytes())
        zf.writestr("set/notes.txt", b"hello " * 50)
        zf.writestr("__MACOSX/set/._notes.txt", b"junk")
    return buf.getvalue()


@pytest.mark.parametrize("n", BUDGETS)
def test_zip_extractor_on_mutated_bytes(n, base, real_zip):
    directory = real_zip.find(b"PK\x01\x02")  # the central directory, at the end: names, sizes, offsets
    cases = st.tuples(mutations(hot=len(real_zip) - directory), LIMITS)
    run_fuzz(
        n,
        cases,
        lambda c: check_zip(base, mutate(real_zip, c[0], start=directory), c[1], "bytes"),
        "safe_extract_zip, mutated real zip",
    )


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """Real photographs: a JPEG from assets/ as is, and a crop re-encoded in every other trusted format."""
    jpeg = (ASSETS_DIR / "chelsea.jpg").read_bytes()
    with Image.open(ASSETS_DIR / "chelsea.jpg") as im:
        crop = im.convert("RGB").crop((150, 40, 214, 104))
    out = {"jpeg": jpeg}
    for fmt in ("PNG", "GIF", "BMP", "TIFF", "WEBP"):
        buf = io.BytesIO()
        crop.save(buf, fmt)
        out[fmt.lower()] = buf.getvalue()
    return out


def check_image(folder: Path, data: bytes, source: str, max_pixels: int) -> str:
    case = Path(tempfile.mkdtemp(dir=folder))
    try:
        path = case / "upload.img"
        path.write_bytes(data)
        before = snapshot(case)
        arg: Any = {"path": path, "bytes": data, "stream": io.BytesIO(data)}[source]
        label, im = outcome(lambda: load_image(arg, max_pixels=max_pixels))
        if im is not None:
            assert im.mode == "RGB" and im.width * im.height <= max_pixels
            im.tobytes()  # fully decoded
        assert snapshot(case) == before
        return label
    finally:
        shutil.rmtree(case)


@pytest.mark.parametrize("n", BUDGETS)
def test_image_loader_on_mutated_photos(n, base, images):
    cases = st.tuples(
        st.sampled_from(sorted(images)),
        mutations(hot=200),
        st.sampled_from(["path", "bytes", "stream"]),
        st.sampled_from([40_000_000, 40_000_000, 2_000]),
    )
    run_fuzz(
        n, cases, lambda c: check_image(base, mutate(images[c[0]], c[1]), c[2], c[3]), "load_image, mutated photos"
    )


def with_declared_size(fmt: str, data: bytes, width: int, height: int) -> bytes:
    """The image with its header claiming width x height (checksums kept valid where the format has them)."""
    b = bytearray(data)
    if fmt == "png":
        b[16:24] = struct.pack(">II", width % 2**32, height % 2**32)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    elif fmt == "jpeg":
        at = b.find(b"\xff\xc0")
        at = at if at != -1 else b.find(b"\xff\xc2")
        b[at + 5 : at + 9] = struct.pack(">HH", height % 2**16, width % 2**16)
    elif fmt == "bmp":
        b[18:26] = struct.pack("<II", width % 2**32, height % 2**32)
    elif fmt == "gif":
        b[6:10] = struct.pack("<HH", width % 2**16, height % 2**16)
    return bytes(b)


@pytest.mark.parametrize("n", BUDGETS)
def test_image_loader_on_huge_declared_sizes(n, base, images):
    side = st.sampled_from([0, 1, 64, 65, 6_000, 9_000, 65_535, 100_000, 2**31 - 1, 2**32 - 1])
    cases = st.tuples(st.sampled_from(["png", "jpeg", "bmp", "gif"]), side, side)
    run_fuzz(
        n,
        cases,
        lambda c: check_image(base, with_declared_size(c[0], images[c[0]], c[1], c[2]), "bytes", 40_000_000),
        "load_image, declared sizes",
    )


# --------------------------------------------------------------------------- what the fuzzer found, kept as tests


@pytest.mark.parametrize("meta", ["null", "[1, 2]", "5", '"text"'])
def test_metadata_json_that_is_not_an_object_is_ignored_like_unreadable_json(tmp_path, checkpoints, meta):
    # found by test_load_model_on_mutated_checkpoints: {**None} raised TypeError out of read_checkpoint
    edit = {"tensor": 0, "field": "metadata", "meta": json.loads(meta)}
    path = tmp_path / "m.safetensors"
    path.write_bytes(edit_safetensors(checkpoints[".safetensors"], edit)[0])
    path.with_suffix(".json").write_text(meta)  # the sidecar too
    tensors, found = read_checkpoint(path)
    assert found == {} and len(tensors) == 9  # the Conv2d, BatchNorm2d and Linear of the fixture


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_size", [0, 0]),
        ("input_size", 224),
        ("input_size", [10**6, 10**6]),
        ("resize_size", "x"),
        ("resize_size", 1.5),
        ("mean", 5),
        ("mean", [0.5, 0.5]),
        ("std", [0.0, 0.2, 0.2]),
        ("class_names", 5),
        ("arch", 5),
        ("freeze_after", ["layer1"]),
    ],
)
def test_metadata_of_the_wrong_type_is_one_sentence_naming_the_field(tmp_path, field, value):
    # found fuzzing load_model's metadata: TypeError, ValueError or RuntimeError (a 10^12-pixel forward) escaped
    module = build_arch(ARCH, load_weights=False).module
    path = save_checkpoint(module, tmp_path / "m.safetensors", {"arch": ARCH, field: value})
    with pytest.raises(ExplorerError, match=rf"m\.safetensors has unusable metadata: {field} must be"):
        load_model(str(path), device="cpu")


def test_null_metadata_fields_mean_absent(tmp_path):
    module = build_arch(ARCH, load_weights=False).module
    meta = {"arch": ARCH, "input_size": None, "mean": None, "std": None, "resize_size": None, "class_names": None}
    model = load_model(str(save_checkpoint(module, tmp_path / "m.safetensors", meta)), device="cpu")
    reference = load_model(ARCH, device="cpu")
    assert (model.input_size, model.mean, model.std) == (reference.input_size, reference.mean, reference.std)


@pytest.mark.parametrize(
    "names",
    [["a", "a/b.txt"], ["a/b.txt", "a"], ["a/", "a"], ["x/a", "x/a/b/c.txt"], ["a//b.txt", "a/./b.txt/c"]],
)
def test_a_file_and_a_folder_of_the_same_name_is_refused_in_one_sentence(tmp_path, names):
    # found by test_zip_extractor_on_hostile_archives: "could not be extracted ([Errno 21] Is a directory:
    # '.../out/.extract-m3wpl_sx/a')", an OS error naming the temporary folder, after writing part of the archive
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n in names:
            zf.writestr(n, b"" if n.endswith("/") else b"data")
    with pytest.raises(ExplorerError, match=r"has a file and a folder both named .+; refusing it\.$") as e:
        safe_extract_zip(buf.getvalue(), tmp_path / "out")
    assert ".extract-" not in str(e.value)
    assert not (tmp_path / "out").exists()  # refused before anything was written
