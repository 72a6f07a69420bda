"""Safe extraction of uploaded zip archives: no path escapes, no bombs, nothing overwritten."""

from __future__ import annotations

import io
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from explorer.errors import DataError, brief, msg

_CHUNK = 1 << 20
_RATIO_MIN_BYTES = 1 << 20  # smaller members cannot be bombs; a blank BMP may compress 1000x
UPLOADED = msg("the uploaded zip")  # the name of an archive that came without one


def safe_extract_zip(
    zip_path_or_bytes: str | Path | bytes | BinaryIO,
    target_dir: str | Path,
    *,
    max_total_bytes: int = 2_000_000_000,
    max_files: int = 100_000,
    max_ratio: float = 200,
) -> Path:
    """Extract a zip into a fresh sub-folder of ``target_dir`` and return it.

    The whole archive is checked before anything is written: no absolute paths, no ``..``,
    no links or special files, no encryption, at most ``max_files`` entries, at most
    ``max_total_bytes`` declared, no member over 1 MiB compressed more than ``max_ratio``
    times. Bytes are counted again while extracting. ``__MACOSX/`` and dotfiles are skipped.
    If the archive holds a single top-level folder, that folder is returned.
    """
    if isinstance(zip_path_or_bytes, (str, Path)):
        name = Path(zip_path_or_bytes).name
        if not Path(zip_path_or_bytes).is_file():
            raise DataError(f"{name} does not exist or is not a file.")
        source: Any = zip_path_or_bytes
    elif isinstance(zip_path_or_bytes, (bytes, bytearray, memoryview)):
        name, source = UPLOADED, io.BytesIO(bytes(zip_path_or_bytes))
    else:
        name = Path(str(getattr(zip_path_or_bytes, "name", "") or UPLOADED)).name
        source = zip_path_or_bytes
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem if name.lower().endswith(".zip") else "") or "archive"

    try:
        with zipfile.ZipFile(source) as zf:
            members = _plan_zip(zf, name, max_total_bytes, max_files, max_ratio)
            target = Path(target_dir)
            target.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
            try:
                _extract_members(zf, members, tmp, name, max_total_bytes)
                final = _rename_fresh(tmp, target, stem)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except DataError:
        raise
    except zipfile.BadZipFile as e:
        raise DataError(f"{name} is not a valid zip file ({brief(e)}).") from None
    except (OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as e:
        raise DataError(f"{name} could not be extracted ({brief(e)}).") from None

    top = [p for p in final.iterdir()]
    return top[0] if len(top) == 1 and top[0].is_dir() else final


def _plan_zip(
    zf: zipfile.ZipFile, name: str, max_total: int, max_files: int, max_ratio: float
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Validate every entry and return the ones to extract with their relative paths."""
    infos = zf.infolist()
    if len(infos) > max_files:
        raise DataError(f"{name} has {len(infos):,} entries, more than the limit of {max_files:,}.")
    total = sum(i.file_size for i in infos)
    if total > max_total:
        raise DataError(f"{name} would expand to {total:,} bytes, more than the limit of {max_total:,} bytes.")
    plan = []
    for info in infos:
        raw = info.filename.replace("\\", "/")
        if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
            raise DataError(f"{name} contains an absolute path ({info.filename}); refusing it.")
        rel = PurePosixPath(raw)
        if ".." in rel.parts:
            raise DataError(f"{name} contains a path leaving the folder ({info.filename}); refusing it.")
        ftype = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver did not record it
        if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = msg("a symbolic link") if ftype == stat.S_IFLNK else msg("a special file")
            raise DataError(f"{name} contains {kind} ({info.filename}); refusing it.")
        if info.flag_bits & 0x1:
            raise DataError(f"{name} is password-protected ({info.filename}).")
        if info.file_size > _RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise DataError(
                f"{name} looks like a zip bomb: {info.filename} expands {ratio:,.0f}x, "
                f"over the limit of {max_ratio:g}x."
            )
        if not rel.parts or any(p.startswith(".") or p == "__MACOSX" for p in rel.parts):
            continue
        plan.append((info, rel))
    files = {rel for info, rel in plan if not info.is_dir()}
    folders = {parent for _, rel in plan for parent in rel.parents} | {rel for info, rel in plan if info.is_dir()}
    clash = sorted(files & folders)
    if clash:  # extracting would fail half-way with an OS error naming our temporary folder
        raise DataError(f"{name} has a file and a folder both named {clash[0]}; refusing it.")
    return plan


def _extract_members(
    zf: zipfile.ZipFile,
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    dest: Path,
    name: str,
    max_total: int,
) -> None:
    written_total = 0
    for info, rel in members:
        out = dest.joinpath(*rel.parts)
        if info.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with zf.open(info) as src, open(out, "wb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                written_total += len(chunk)
                if written > info.file_size or written_total > max_total:
                    raise DataError(f"{name} expands beyond its declared size at {info.filename}; extraction stopped.")
                dst.write(chunk)
        if written != info.file_size:
            raise DataError(f"{name} is corrupt: {info.filename} is shorter than declared.")


def _rename_fresh(tmp: Path, target: Path, stem: str) -> Path:
    """Move ``tmp`` to ``target/stem`` (or ``stem-1``, ``stem-2``...), never replacing anything."""
    for k in range(10_000):
        final = target / (stem if k == 0 else f"{stem}-{k}")
        if final.exists():
            continue
        try:
            tmp.rename(final)  # fails rather than replacing a non-empty folder
            return final
        except OSError:
            if not final.exists():
                raise
    raise DataError(f"{target} has no free folder name for {stem}.")
