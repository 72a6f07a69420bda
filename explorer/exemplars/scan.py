"""Dataset examples: for every channel of the chosen layers, the images of a folder that excite it most (and
least), and where in the image, from one streamed, batched pass.

Per channel and image the score is the channel's spatial maximum (top-k) or minimum (bottom-k); the position of
that extreme on the layer's map is kept, so the app can crop the receptive field around it. Results are stored
in the content cache under the model fingerprint, the model's preprocessing, a signature of the folder's files
(relative path, size, modification time), the layer and k.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from explorer.cache import Cache, make_key
from explorer.data import IMAGE_EXTENSIONS, DataError, list_images, load_image
from explorer.errors import ExplorerError, msg
from explorer.exemplars.receptive import ReceptiveField, receptive_field
from explorer.layers import forward_until, layout_of
from explorer.runtime import Progress

CACHE_KIND = "examples"
FORMAT_VERSION = 2  # 2: token and channels-last layers read through their layout (1 read them as raw axes)
MAX_PIXELS = 40_000_000  # larger images are refused (skipped with the reason)


class ExamplesError(ExplorerError):
    """A folder or request the dataset-examples pass cannot use, phrased for the user."""


@dataclass
class Example:
    """One image that excites (or suppresses) a channel, and where."""

    rank: int
    image: int  # index into LayerExamples.files
    path: Path
    value: float
    y: int  # position of the extreme on the layer's map
    x: int
    box: tuple[int, int, int, int]  # receptive field (left, top, right, bottom) in the model's input pixels


@dataclass
class LayerExamples:
    """Top-k and bottom-k images of every channel of one layer over one folder."""

    layer: str
    k: int
    folder: Path
    files: list[str]  # relative to `folder`; indices below point here
    top_value: np.ndarray  # (C, k) float32, descending
    top_image: np.ndarray  # (C, k) int64
    top_pos: np.ndarray  # (C, k, 2) int64 (y, x) on the layer's map
    bottom_value: np.ndarray  # (C, k) ascending
    bottom_image: np.ndarray
    bottom_pos: np.ndarray
    grid: tuple[int, int]
    rf: ReceptiveField
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    images_used: int = 0
    cached: bool = False
    seconds: float = 0.0

    @property
    def channels(self) -> int:
        return int(self.top_value.shape[0])

    def examples(self, channel: int, which: str = "top") -> list[Example]:
        """The ranked examples of `channel`: 'top' (largest maximum) or 'bottom' (smallest minimum)."""
        if not 0 <= channel < self.channels:
            raise ExamplesError(f"Layer {self.layer} has {self.channels} channels; {channel} is out of range.")
        if which not in ("top", "bottom"):
            raise ExamplesError(f"Unknown example kind {which!r}: use 'top' or 'bottom'.")
        vals, imgs, pos = (
            (self.top_value, self.top_image, self.top_pos)
            if which == "top"
            else (self.bottom_value, self.bottom_image, self.bottom_pos)
        )
        out = []
        for r in range(vals.shape[1]):
            y, x = (int(v) for v in pos[channel, r])
            i = int(imgs[channel, r])
            out.append(Example(r, i, self.folder / self.files[i], float(vals[channel, r]), y, x, self.rf.box(y, x)))
        return out

    def patches(self, model: Any, channel: int, which: str = "top", size: int | None = None) -> list[Image.Image]:
        """The receptive-field crops of a channel's examples, as the model saw them (optionally resized)."""
        return [patch_image(model, ex.path, ex.box, size) for ex in self.examples(channel, which)]

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            files=np.array(self.files, dtype=str),
            top_value=self.top_value,
            top_image=self.top_image,
            top_pos=self.top_pos,
            bottom_value=self.bottom_value,
            bottom_image=self.bottom_image,
            bottom_pos=self.bottom_pos,
            skipped=np.array([f"{f}\t{r}" for f, r in self.skipped], dtype=str),
        )
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes, layer: str, k: int, folder: Path, grid: tuple[int, int], rf: ReceptiveField,
                 images_used: int) -> LayerExamples:  # fmt: skip
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            skipped = [tuple(s.split("\t", 1)) for s in z["skipped"].tolist()]
            return cls(layer, k, folder, z["files"].tolist(), z["top_value"], z["top_image"], z["top_pos"],
                       z["bottom_value"], z["bottom_image"], z["bottom_pos"], grid, rf,
                       skipped=skipped, images_used=images_used, cached=True)  # fmt: skip


PATCH_MEMO_ENTRIES = 512  # recent crops kept: a page shows the same examples on every run
_patch_memo: OrderedDict[tuple[Any, ...], Image.Image] = OrderedDict()
_patch_lock = threading.Lock()


def patch_image(model: Any, path: str | Path, box: tuple[int, int, int, int], size: int | None = None) -> Image.Image:
    """Crop `box` out of the image as the model sees it (its resize and centre crop), optionally resized.

    Recent crops are memoized (by the model's fingerprint and preprocessing, the file's path, size and modification
    time, the box and the size): treat the returned image as read-only."""
    stat = os.stat(path)
    key = (model.fingerprint, tuple(model.input_size), model.resize_size, model.interpolation, str(path),
           stat.st_size, stat.st_mtime_ns, tuple(box), size)  # fmt: skip
    with _patch_lock:
        if key in _patch_memo:
            _patch_memo.move_to_end(key)
            return _patch_memo[key]
    arr = (model.to_tensor01(load_image(path)).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    crop = Image.fromarray(arr).crop(box)
    out = crop.resize((size, size), Image.Resampling.LANCZOS) if size else crop
    with _patch_lock:
        _patch_memo[key] = out
        while len(_patch_memo) > PATCH_MEMO_ENTRIES:
            _patch_memo.popitem(last=False)
    return out


def folder_signature(folder: Path, files: Sequence[Path]) -> str:
    """A hash of the folder's image files: relative path, size and modification time of each."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_key(model: Any, signature: str, layer: str, k: int) -> str:
    return make_key(
        kind=CACHE_KIND, version=FORMAT_VERSION, model=model.fingerprint, folder=signature, layer=layer, k=k,
        input_size=list(model.input_size), resize=model.resize_size, mean=list(model.mean), std=list(model.std),
        interpolation=model.interpolation,
    )  # fmt: skip


def _get_cache(cache: Any) -> Any:
    if cache is None or cache is False:
        return None
    if cache is True:
        return Cache()
    return cache


class _TopK:
    """Running top-k (largest) values per channel with the image index and map position of each."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.value = torch.empty(0, 0)  # (C, ≤k) once something was added
        self.image = torch.empty(0, 0, dtype=torch.long)
        self.pos = torch.empty(0, 0, dtype=torch.long)

    def add(self, value: torch.Tensor, image: torch.Tensor, pos: torch.Tensor) -> None:
        """value, pos: (B, C); image: (B,)."""
        v, i, p = value.T, image[None, :].expand_as(value.T), pos.T
        if self.value.numel():
            v = torch.cat([self.value, v], 1)
            i = torch.cat([self.image, i], 1)
            p = torch.cat([self.pos, p], 1)
        top = v.topk(min(self.k, v.shape[1]), dim=1)
        self.value, self.image, self.pos = top.values, i.gather(1, top.indices), p.gather(1, top.indices)


def dataset_examples(
    model: Any,
    folder: str | Path,
    layers: str | Sequence[str],
    k: int = 9,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    cache: Any = True,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> dict[str, LayerExamples]:
    """Top-k and bottom-k images (and positions) of every channel of `layers` over the images in `folder`.

    One streamed pass computes all layers that are not cached yet; unreadable, corrupt and oversized files are
    skipped and listed. `cache`: True (the default disk cache), an `explorer.cache.Cache`, or False.
    """
    started = time.perf_counter()
    names = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
    if not names:
        raise ExamplesError("No layer was chosen.")
    if k < 1:
        raise ExamplesError("k must be at least 1.")
    for n in names:
        lay = layout_of(model, n)  # an unknown or never-run layer: LayerError
        if lay.kind == "none":
            raise ExamplesError(f"{lay.problem(n)} {msg('Pick a layer with channels to rank images by.')}")
    root = Path(folder).expanduser()
    try:
        files = list_images(root)
    except DataError as exc:
        raise ExamplesError(str(exc)) from None
    if not files:
        exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise ExamplesError(f"{root} contains no images (looked for {exts}, in subfolders too).")
    rel = [p.relative_to(root).as_posix() for p in files]
    store = _get_cache(cache)
    signature = folder_signature(root, files)
    out: dict[str, LayerExamples] = {}
    for n in names:
        entry = store.get(CACHE_KIND, _cache_key(model, signature, n, k), suffix=".npz") if store else None
        if entry is not None:
            meta = entry.meta
            rf = receptive_field(model, n)
            out[n] = LayerExamples.from_npz(
                entry.data,
                n,
                k,
                root,
                tuple(meta["grid"]),
                rf,
                int(meta["images_used"]),
            )
    todo = [n for n in names if n not in out]
    if todo:
        fresh = _scan(model, root, files, rel, todo, k, batch_size, progress, workers, max_pixels)
        for n, ex in fresh.items():
            ex.seconds = time.perf_counter() - started
            if store:
                meta = {"layer": n, "k": k, "grid": list(ex.grid), "images_used": ex.images_used, "folder": str(root)}
                store.put(CACHE_KIND, _cache_key(model, signature, n, k), ex.to_npz(), meta, suffix=".npz")
            out[n] = ex
    elif progress:
        progress(len(files), len(files), None)
    return {n: out[n] for n in names}


def _decode(model: Any, path: Path, max_pixels: int) -> tuple[torch.Tensor | None, str]:
    try:
        return model.to_tensor01(load_image(path, max_pixels=max_pixels)), ""
    except DataError as exc:
        return None, str(exc)
    except OSError as exc:  # vanished or unreadable between listing and reading
        return None, msg(f"{path.name} could not be read ({exc.strerror or exc}).")


def _scan(
    model: Any, root: Path, files: list[Path], rel: list[str], layers: list[str], k: int, batch_size: int,
    progress: Progress | None, workers: int | None, max_pixels: int,
) -> dict[str, LayerExamples]:  # fmt: skip
    device = model.device
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    layouts = {n: layout_of(model, n) for n in layers}
    top = {n: _TopK(k) for n in layers}
    bottom = {n: _TopK(k) for n in layers}
    grids: dict[str, tuple[int, int]] = {}
    skipped: list[tuple[str, str]] = []
    used = 0
    batches = [list(range(i, min(i + batch_size, len(files)))) for i in range(0, len(files), batch_size)]
    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        pending = [pool.submit(_decode, model, files[i], max_pixels) for i in batches[0]] if batches else []
        for b, idx in enumerate(batches):
            decoded = [f.result() for f in pending]
            if b + 1 < len(batches):  # decode the next batch while this one runs through the network
                pending = [pool.submit(_decode, model, files[i], max_pixels) for i in batches[b + 1]]
            ok = [(i, t) for i, (t, _) in zip(idx, decoded, strict=True) if t is not None]
            skipped += [(rel[i], why) for i, (t, why) in zip(idx, decoded, strict=True) if t is None]
            if ok:
                x = model.normalize(torch.stack([t for _, t in ok]).to(device))
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.no_grad(), amp:
                    acts = forward_until(model.module, layers, x)
                image = torch.tensor([i for i, _ in ok])
                for n in layers:
                    a = layouts[n].to_grid(acts[n]).float()  # (N, C, h, w): patch tokens only, channels first
                    grids[n] = (int(a.shape[2]), int(a.shape[3]))
                    flat = a.reshape(a.shape[0], a.shape[1], -1).cpu()
                    hi, hi_at = flat.max(dim=2)
                    lo, lo_at = flat.min(dim=2)
                    top[n].add(hi, image, hi_at)
                    bottom[n].add(-lo, image, lo_at)
                used += len(ok)
            if progress:
                progress(idx[-1] + 1, len(files), None)
    if not used:
        first = skipped[0][1] if skipped else msg("no file could be decoded")
        raise ExamplesError(f"None of the {len(files)} image files in {root} could be used; e.g. {first}")
    out = {}
    for n in layers:
        w = grids[n][1]
        t, m = top[n], bottom[n]
        out[n] = LayerExamples(
            layer=n, k=k, folder=root, files=rel,
            top_value=t.value.numpy().astype(np.float32), top_image=t.image.numpy().astype(np.int64),
            top_pos=_rows_cols(t.pos, w),
            bottom_value=(-m.value).numpy().astype(np.float32), bottom_image=m.image.numpy().astype(np.int64),
            bottom_pos=_rows_cols(m.pos, w),
            grid=grids[n], rf=receptive_field(model, n), skipped=list(skipped), images_used=used,
        )  # fmt: skip
    return out


def _rows_cols(pos: torch.Tensor, width: int) -> np.ndarray:
    """Flat positions on a grid of `width` columns → (…, 2) int64 (row, column)."""
    rows = torch.div(pos, width, rounding_mode="floor")
    return np.stack([rows.numpy(), (pos - rows * width).numpy()], -1).astype(np.int64)
