"""Fine-tuned checkpoints: safetensors with our JSON metadata in the header plus a ``.json`` sidecar.

Both files are written atomically (temporary file, fsync, rename), so a reader, or a run interrupted between
epochs, only ever sees a complete checkpoint. `explorer.models.load_model(path)` reopens them with no extra
arguments: the metadata names the architecture, classes and preprocessing.

Beside a run's checkpoint ``<name>.safetensors``, ``<name>.resume.pt`` holds what continuing the run needs after its
process was killed (the last epoch's weights, optimiser and schedule state, histories, random generators and the
run's metadata; :mod:`explorer.transfer.training.resume`). It is written atomically too, read only with
``torch.load(weights_only=True)``, and removed when the run ends normally.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from explorer.errors import ExplorerError
from explorer.models import META_KEY
from explorer.runtime import atomic_write


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
    """:func:`explorer.runtime.atomic_write` with fsync, its failure said as a :class:`CheckpointError`."""
    try:
        atomic_write(path, data, durable=True)
    except OSError as exc:
        raise CheckpointError(f"Could not write {path} ({exc.strerror}).") from None


def save_checkpoint(module: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write weights (safetensors, our JSON metadata in its header) and a ``.json`` sidecar, each atomically."""
    path = Path(path)
    meta = json_safe(metadata)
    text = json.dumps(meta, indent=1)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    write_atomic(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    write_atomic(path.with_suffix(".json"), text.encode())
    return path


def update_metadata(path: str | Path, metadata: dict[str, Any]) -> Path:
    """Rewrite a checkpoint's metadata (header and sidecar) keeping its weights, each file atomically."""
    path = Path(path)
    meta = json_safe(metadata)
    tensors = load_file(str(path))
    write_atomic(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    return path


# --------------------------------------------------------------------------- resume state

RESUME_SUFFIX = ".resume.pt"
RESUME_FORMAT = "layer_explorer.resume/1"


def resume_path(checkpoint: str | Path) -> Path:
    """Where the resume state of the run whose checkpoint is `checkpoint` lives: ``<name>.resume.pt`` beside it."""
    path = Path(checkpoint)
    return path.with_name(path.stem + RESUME_SUFFIX)


def save_resume_state(checkpoint: str | Path, state: dict[str, Any]) -> Path:
    """Write a training state (tensors, numbers, strings, lists, dicts only) beside `checkpoint`, atomically."""
    buf = io.BytesIO()
    torch.save({"format": RESUME_FORMAT, **state}, buf)
    path = resume_path(checkpoint)
    write_atomic(path, buf.getvalue())
    return path


def load_resume_state(checkpoint: str | Path) -> dict[str, Any]:
    """The resume state saved beside `checkpoint` (read with weights_only=True); one sentence if there is none."""
    path = resume_path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{Path(checkpoint).name} has no resume state ({path.name}): the run cannot be resumed.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: the file is not a state we wrote
        raise CheckpointError(f"{path.name} is not a readable resume state ({type(exc).__name__}).") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{path.name} is not a resume state this version can read.")
    return state


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<pid>.<thread>.tmp``) a killed writer left in `folder`; those removed.

    Files of a process that is still alive are kept (it may be writing them right now).
    """
    removed: list[Path] = []
    base = Path(folder)
    if not base.is_dir():
        return removed
    for p in base.glob(".*.tmp"):
        parts = p.name.split(".")
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is None or process_alive(pid):  # not our naming, or its writer may still be at work
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with id `pid` exists (POSIX; elsewhere only this process counts as alive)."""
    if pid == os.getpid():
        return True
    if os.name != "posix" or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
