"""Fine-tuned checkpoints: safetensors with our JSON metadata in the header plus a ``.json`` sidecar.

Both files are written atomically (temporary file, fsync, rename), so a reader, or a run interrupted between
epochs, only ever sees a complete checkpoint. `explorer.models.load_model(path)` reopens them with no extra
arguments: the metadata names the architecture, classes and preprocessing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

from torch import nn

from explorer.errors import ExplorerError
from explorer.models import META_KEY


class CheckpointError(ExplorerError):
    """A checkpoint that cannot be written where asked, phrased for the user."""


def check_writable(out: str | Path, *, overwrite: bool = False) -> Path:
    """The checkpoint path to write, refused when it would replace a file the user has (unless `overwrite`)."""
    path = Path(out).expanduser()
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"The checkpoint name must end in .safetensors (got {path.name}).")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a file name ending in .safetensors.")
    for p in (path, path.with_suffix(".json")):
        if p.exists() and not overwrite:
            raise CheckpointError(f"{p} already exists; choose another name or allow overwriting it.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"Cannot create the folder {path.parent} ({exc.strerror}).") from None
    return path


def json_safe(obj: Any) -> Any:
    """`obj` with non-finite floats as None and anything else unknown as its string, for JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, fsync and rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(f"Could not write {path} ({exc.strerror}).") from None


def save_checkpoint(module: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write weights (safetensors, our JSON metadata in its header) and a ``.json`` sidecar, each atomically."""
    from safetensors.torch import save

    path = Path(path)
    meta = json_safe(metadata)
    text = json.dumps(meta, indent=1)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    write_atomic(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    write_atomic(path.with_suffix(".json"), text.encode())
    return path


def update_metadata(path: str | Path, metadata: dict[str, Any]) -> Path:
    """Rewrite a checkpoint's metadata (header and sidecar) keeping its weights, each file atomically."""
    from safetensors.torch import load_file, save

    path = Path(path)
    meta = json_safe(metadata)
    tensors = load_file(str(path))
    write_atomic(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    return path
