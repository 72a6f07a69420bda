"""Uploaded checkpoints: stored once per content under the cache's ``uploads`` folder, and the architecture their
own metadata names."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from pathlib import Path

from explorer.cache import folder as cache_folder
from explorer.models import CHECKPOINT_SUFFIXES, ModelError, read_metadata


def upload_dir() -> Path:
    return cache_folder("uploads")


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "checkpoint"
    return stem[-100:]


def save_upload(name: str, data: bytes) -> Path:
    """Store an uploaded checkpoint under uploads/<sha256>/ and return its path; never overwrites a file.

    The same content uploaded twice (under any name) maps to the same file, so it is loaded once.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ModelError(f"{name} is not a checkpoint: use one of {', '.join(CHECKPOINT_SUFFIXES)}.")
    if not data:
        raise ModelError(f"{name} is empty (0 bytes).")
    folder = upload_dir() / hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    for existing in sorted(folder.iterdir()):
        if existing.suffix.lower() == suffix and existing.is_file() and existing.stat().st_size == len(data):
            return existing
    target = folder / _safe_name(name)
    tmp = folder / f".{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_bytes(data)
        with contextlib.suppress(FileExistsError):  # a concurrent upload of the same file won
            os.link(tmp, target)  # atomic, and fails instead of overwriting
    finally:
        tmp.unlink(missing_ok=True)
    return target


def checkpoint_arch_hint(path: str | Path) -> str | None:
    """The architecture a checkpoint's own metadata names (safetensors header or JSON sidecar), if any."""
    meta = read_metadata(path)
    hint = meta.get("arch") or meta.get("base_spec")
    return str(hint) if hint else None
