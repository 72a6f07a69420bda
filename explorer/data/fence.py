"""The fence of a shared server: which paths a user of the app may name, decided before the file system is asked.

A class shares one server, so a path typed into a box or written in a link must never list, open or even *probe* a
file outside the folders the server shares. :func:`fence` is the one gate every such path goes through:

1. the text is checked as text (length, NUL bytes) and made absolute and normal **without touching the file
   system** (``~`` expanded, relative to the working folder, ``..`` folded): if it does not lie under a shared root,
   it is refused;
2. only then is it resolved (symbolic links followed), which reads folders inside a root only; a link that leaves
   the roots is refused;
3. when the caller needs a folder or a file, a missing one is refused too.

Every refusal is the same sentence, so a missing path and a forbidden one cannot be told apart (no existence
oracle). The roots are ``$LAYER_EXPLORER_DATA_ROOTS`` (separated by the system's path separator), else the working
folder; the app's cache is always shared. The command line, run by the machine's own user, is not fenced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from explorer.cache import cache_root
from explorer.errors import DataError, msg

DATA_ROOTS_VAR = "LAYER_EXPLORER_DATA_ROOTS"
MAX_PATH_CHARS = 1024

Kind = Literal["any", "dir", "file"]
THE_PATH = msg("The path")  # what a refusal calls the path when its caller names it no better


class FenceError(DataError):
    """A path the app may not use: missing, outside the shared folders, or not a path at all (one sentence)."""


def data_roots() -> list[Path]:
    """The folders a path typed into the app or named in a link may lie under: the operator's
    ``$LAYER_EXPLORER_DATA_ROOTS``, else the working folder; and always the app's cache (its uploads, runs,
    extracted zips and demos)."""
    env = os.environ.get(DATA_ROOTS_VAR, "").strip()
    roots = [Path(p) for p in env.split(os.pathsep) if p.strip()] if env else [Path.cwd()]
    return [r.expanduser().resolve() for r in [*roots, cache_root()]]


def shown(text: str) -> str:
    """A path as a message quotes it: at most 80 characters."""
    return text if len(text) <= 80 else text[:77] + "…"


def refusal(text: str, what: str = THE_PATH) -> str:
    """The one sentence for every path the fence refuses (missing and forbidden alike)."""
    return msg(
        f"{what} {shown(text)!r} cannot be opened: it does not exist, or it lies outside the folders this server "
        f"shares (its operator can add folders to {DATA_ROOTS_VAR})."
    )


def lexical(text: str) -> Path:
    """`text` as an absolute, normal path, computed from the text alone (no file-system call)."""
    expanded = os.path.expanduser(text.strip())
    return Path(os.path.normpath(os.path.join(os.getcwd(), expanded)))


def inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


MAX_LINKS = 40  # symbolic links followed in one path at most (the kernel's own limit)


def resolve_inside(path: Path, roots: list[Path]) -> Path | None:
    """`path` (absolute, normal, under a root) with every symbolic link followed, or None as soon as a link points
    outside `roots`. Unlike ``Path.resolve``, it never asks the file system about a path outside the roots: each
    link's target is checked as text before it is followed."""
    root = max((r for r in roots if inside(path, [r])), key=lambda r: len(r.parts))
    current, pending, links = root, list(path.relative_to(root).parts), 0
    while pending:
        part = pending.pop(0)
        step = current.parent if part == ".." else current / part
        if part in ("", ".") or not inside(step, roots):
            if part in ("", "."):
                continue
            return None
        if not os.path.islink(step):
            current = step
            continue
        links += 1
        if links > MAX_LINKS:
            return None
        target = Path(os.path.normpath(os.path.join(current, os.readlink(step))))
        if not inside(target, roots):
            return None
        root = max((r for r in roots if inside(target, [r])), key=lambda r: len(r.parts))
        current, pending = root, [*target.relative_to(root).parts, *pending]
    return current


def fence(text: str | Path, what: str = THE_PATH, kind: Kind = "any", roots: list[Path] | None = None) -> Path:
    """The resolved path a user named, or :class:`FenceError` with :func:`refusal`'s sentence.

    `kind` "dir" or "file" also refuses a path that is not an existing folder or file (the same sentence, so
    "missing" says nothing that "forbidden" does not). Nothing outside `roots` (default :func:`data_roots`) is
    ever passed to the file system.
    """
    raw = str(text)
    if len(raw) > MAX_PATH_CHARS:
        raise FenceError(f"{what} is {len(raw):,} characters long; paths here have at most {MAX_PATH_CHARS:,}.")
    if "\x00" in raw or not raw.strip():
        raise FenceError(f"{what} {shown(raw)!r} is not a valid path.")
    shared = data_roots() if roots is None else roots
    try:
        candidate = lexical(raw)
    except (OSError, RuntimeError, ValueError):  # an unknown ~user, a working folder that vanished
        raise FenceError(refusal(raw, what)) from None
    if not inside(candidate, shared):
        raise FenceError(refusal(raw, what))
    resolved = resolve_inside(candidate, shared)
    if resolved is None:  # a symbolic link that leaves the shared folders, or a loop of them
        raise FenceError(refusal(raw, what))
    if kind == "any" or (resolved.is_dir() if kind == "dir" else resolved.is_file()):
        return resolved
    if resolved.exists():  # inside the shared folders: saying what it is tells nothing new
        raise FenceError(
            f"{what} {shown(raw)!r} is a file, not a folder."
            if kind == "dir"
            else f"{what} {shown(raw)!r} is a folder."
        )
    raise FenceError(refusal(raw, what))


def allowed(text: str | Path, kind: Kind = "any") -> bool:
    """Whether :func:`fence` lets `text` through."""
    try:
        fence(text, kind=kind)
    except DataError:
        return False
    return True
