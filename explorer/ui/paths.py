"""Every path a user types or a link names goes through the server's fence here, before any file-system call, with the
same sentence for missing and forbidden paths (:mod:`explorer.data.fence`)."""

from __future__ import annotations

from pathlib import Path

from explorer.data.fence import Kind, allowed, fence, shown
from explorer.errors import msg
from explorer.models import CHECKPOINT_SUFFIXES, ModelError, parse_spec


def fenced_path(text: str | Path, what: str = msg("The path"), kind: Kind = "any") -> Path:
    """A path a user typed or a link named, through the server's fence (:func:`explorer.data.fence.fence`) before
    any file-system call: the resolved path, or one sentence that is the same for missing and forbidden paths."""
    return fence(text, what, kind)


def allowed_path(path: str | Path, kind: Kind = "any") -> bool:
    """Whether the app may read `path` (see `fenced_path`)."""
    return allowed(path, kind)


def fenced_spec(spec: str, what: str = msg("The model")) -> str:
    """A model spec a user typed or a link named, safe to load: a name (bundled:, torchvision:, timm:) as it is; a
    checkpoint path through the fence, resolved. A path without a checkpoint suffix is refused from its text alone,
    so no file outside the shared folders is ever opened or even looked for."""
    kind, name, _ = parse_spec(spec)
    if kind != "file":
        return spec.strip()
    if Path(name).suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelError(
            f"{what} {shown(name)!r} is not a checkpoint file: a checkpoint ends in {', '.join(CHECKPOINT_SUFFIXES)}."
        )
    return str(fence(name, what, "file"))
