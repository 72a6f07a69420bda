"""A content-addressed disk cache: what was computed is stored under a hash of everything that determined it.

Each entry is a PNG (or another payload) and a JSON file side by side, ``<root>/<kind>/<ab>/<key>.png`` and
``<key>.json``. The JSON holds the key's parts, any metadata, and the payload's SHA-256, so a half-written,
truncated or edited file is detected and treated as a miss (then recomputed and overwritten), never served.
Writes go to a temporary file in the same folder and are renamed into place (``os.replace``), so readers in
other threads or processes see either the old entry or the new one, never a mix.

The root is ``$LAYER_EXPLORER_CACHE`` when set, else ``~/.cache/layer-explorer``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ENV_VAR = "LAYER_EXPLORER_CACHE"
DEFAULT_ROOT = Path("~/.cache/layer-explorer")
KEY_VERSION = 1  # bump when the meaning of stored entries changes


def cache_root() -> Path:
    """The cache folder: ``$LAYER_EXPLORER_CACHE`` or ``~/.cache/layer-explorer`` (not created here)."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_ROOT.expanduser()


def _canonical(value: Any) -> Any:
    """JSON-ready form with stable types: tuples → lists, numpy scalars → Python, floats kept exact."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def make_key(**parts: Any) -> str:
    """A hex SHA-256 of the canonical JSON of `parts` (order of keyword arguments does not matter)."""
    blob = json.dumps(_canonical({"v": KEY_VERSION, **parts}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (H,W,3) or (H,W) uint8 array as PNG (deterministic for equal pixels)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Entry:
    """A cache hit: the payload bytes exactly as stored, its metadata, and where it lives."""

    key: str
    data: bytes
    meta: dict[str, Any]
    path: Path

    def image(self) -> np.ndarray:
        """The payload decoded as an RGB uint8 array (PNG entries)."""
        with Image.open(io.BytesIO(self.data)) as im:
            return np.asarray(im.convert("RGB")).copy()


class Cache:
    """A content-addressed store of payloads (PNG by default) with JSON metadata beside each."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_root()

    def paths(self, kind: str, key: str, suffix: str = ".png") -> tuple[Path, Path]:
        """(payload path, JSON path) of an entry."""
        folder = self.root / kind / key[:2]
        meta = f"{key}.meta.json" if suffix == ".json" else f"{key}.json"  # never the payload's own path
        return folder / f"{key}{suffix}", folder / meta

    def get(self, kind: str, key: str, suffix: str = ".png") -> Entry | None:
        """The entry if present and intact; a damaged one is deleted and reported as a miss."""
        data_path, meta_path = self.paths(kind, key, suffix)
        try:
            data = data_path.read_bytes()
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._discard(data_path, meta_path)
            return None
        ok = isinstance(meta, dict) and meta.get("sha256") == hashlib.sha256(data).hexdigest()
        if ok and suffix == ".png":
            ok = _png_decodes(data)
        if not ok:
            self._discard(data_path, meta_path)
            return None
        return Entry(key=key, data=data, meta=meta.get("meta", {}), path=data_path)

    def put(self, kind: str, key: str, data: bytes, meta: dict[str, Any] | None = None, suffix: str = ".png") -> Path:
        """Store `data` with `meta` atomically (payload first, then the JSON that vouches for it)."""
        data_path, meta_path = self.paths(kind, key, suffix)
        record = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "meta": _canonical(meta or {})}
        _atomic_write(data_path, data)
        _atomic_write(meta_path, json.dumps(record, indent=1).encode())
        return data_path

    def put_image(self, kind: str, key: str, image: np.ndarray, meta: dict[str, Any] | None = None) -> Entry:
        """Encode an image as PNG and store it; returns the entry as a later `get` would."""
        data = png_bytes(image)
        path = self.put(kind, key, data, meta)
        return Entry(key=key, data=data, meta=_canonical(meta or {}), path=path)

    @staticmethod
    def _discard(*paths: Path) -> None:
        for p in paths:
            with contextlib.suppress(OSError):
                p.unlink()


def _png_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # any decoder failure means a damaged entry
        return False
