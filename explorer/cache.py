"""A content-addressed disk cache: what was computed is stored under a hash of everything that determined it.

Each entry is a payload (a PNG by default) and a JSON record side by side, ``<root>/<kind>/<ab>/<key>.png`` and
``<key>.json`` (``<key>.meta.json`` when the payload is itself JSON). The record holds the key, the payload's file
name, size and SHA-256, the metadata, and a SHA-256 of all of these, so a truncated, bit-flipped or edited payload
or record, or half an entry, is detected on read, deleted and reported as a miss (then recomputed), never served.
Writes go to a temporary file in the same folder and are renamed into place (``os.replace``), payload first, then
the record that vouches for it; removal deletes the record first. Races between threads or processes can cost a
recomputation, never wrong bytes.

The root is ``$LAYER_EXPLORER_CACHE`` when set, else ``~/.cache/layer-explorer``.

**Derived entries and user data.** Only `Cache` entries are derived, and only they are ever evicted or removed by
`prune` and `clear`: an entry is recognised by its record, ``<kind>/<key[:2]>/<key>(.meta).json``, in a top-level
folder that is not reserved. The reserved folders are never `Cache` kinds and never walked: ``USER_DATA_DIRS``
(``uploads``, ``runs``, ``datasets``, ``demo``, ``sweeps``, ``tour``: what the user brought, trained or measured,
removed only by ``clear(user_data=True)``) and ``subsets`` (the Compare page's folders of links into user data).
This module owns the root's folders: every part that keeps files under the root asks :func:`folder` for one of
these names, so eviction, ``cache info|prune|clear`` and the summary know every folder that exists.

**Size bound.** ``$LAYER_EXPLORER_CACHE_MAX_GB`` (default 5, decimal gigabytes, fractions allowed, 0 keeps
nothing) bounds the derived entries, evicted least recently used first: an entry's last use is its record's
mtime, which `Cache.get` touches on every hit (one ``utime``). Eviction is amortised: each process keeps a running
estimate of the derived size per root (seeded from ``<root>/.cache-state.json``, which every walk rewrites) and
adds each put's bytes; it walks the kind folders only when the estimate passes the bound, after writing
``WALK_SLACK`` of the bound, or ``WALK_MAX_AGE`` seconds after the last walk, and evicts down to ``LOW_WATER`` of
the bound. So a walk, whose cost grows with the number of entries, is paid once per the same share of the cache
written, and the cost per put stays flat as the cache grows. Other processes' writes since the last walk are not in
a process's estimate, so with P processes writing the bound can be overshot by about P × WALK_SLACK. Files
that vanish during a walk (another process evicting) are skipped; half entries and temporary files older than
``ORPHAN_GRACE`` seconds (a crashed writer's) are removed by the walk.

**The shipped seed.** A second, read-only root ships inside the package, ``explorer/assets/seed/`` (the bundled
model's default views, built by ``benchmarks/build_seed.py``), so the first visit to a cold server shows pictures at
once; ``$LAYER_EXPLORER_SEED`` names another folder, and an empty value disables it. It has the root's layout. A key
the seed holds (its file names are listed once per process) and the main root lacks is *adopted*: verified like any
entry (a damaged seed entry is a miss, never an error), copied into the main root (then it is evicted, pruned and
cleared like any other), and served from there. Adoption happens in `Cache.paths`, so `get` and the callers that only
check a payload's path (the featurevis store's memo and its existence checks) see seeded entries alike; a key the seed
lacks costs one set lookup. The seed itself is never written, evicted or cleared.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from explorer.errors import ExplorerError
from explorer.runtime import atomic_write

ENV_VAR = "LAYER_EXPLORER_CACHE"
DEFAULT_ROOT = Path("~/.cache/layer-explorer")
KEY_VERSION = 1  # bump when the meaning of stored entries changes
MAX_GB_VAR = "LAYER_EXPLORER_CACHE_MAX_GB"
DEFAULT_MAX_GB = 5.0
USER_DATA_DIRS = (
    "uploads",
    "runs",
    "datasets",
    "demo",
    "sweeps",
    "tour",
)  # never evicted; `clear(user_data=True)` only
LINK_DIRS = ("subsets",)  # folders of links into user data: not Cache entries, left alone by eviction
RESERVED_DIRS = frozenset(USER_DATA_DIRS + LINK_DIRS)
WALK_SLACK = 0.05  # a process walks again after writing this share of the bound (and when over it)
WALK_MAX_AGE = 600.0  # seconds after which a put walks again however little was written
LOW_WATER = 0.9  # automatic eviction goes down to this fraction of the bound, so it does not run on every put
ORPHAN_GRACE = 600.0  # half entries and temporary files younger than this may belong to a write in progress
STATE_FILE = ".cache-state.json"
SEED_VAR = "LAYER_EXPLORER_SEED"
DEFAULT_SEED = Path(__file__).resolve().parent / "assets" / "seed"

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_RECORD_FIELDS = frozenset({"key", "payload", "bytes", "sha256", "meta", "check"})
_LEGACY_FIELDS = frozenset({"key", "sha256", "meta"})  # records written before the record checksum existed


class CacheError(ExplorerError):
    """A cache setting or request the user must fix, in one sentence."""


def cache_root() -> Path:
    """The cache folder: ``$LAYER_EXPLORER_CACHE`` or ``~/.cache/layer-explorer`` (not created here)."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_ROOT.expanduser()


def seed_root() -> Path | None:
    """The read-only seed folder: ``$LAYER_EXPLORER_SEED`` (empty: none) or the package's ``assets/seed``."""
    env = os.environ.get(SEED_VAR)
    if env is None:
        return DEFAULT_SEED
    return Path(env.strip()).expanduser() if env.strip() else None


def folder(name: str) -> Path:
    """The reserved folder `name` under the cache root (not created here); a name this module does not own is a bug.

    The one way to a folder under the root outside `Cache`'s kinds: the user-data folders (``USER_DATA_DIRS``) and
    the link folders (``LINK_DIRS``), so nothing lands where eviction would take it for a half-written entry.
    """
    if name not in RESERVED_DIRS:
        raise ValueError(f"{name!r} is not a folder the cache owns: add it to USER_DATA_DIRS or LINK_DIRS")
    return cache_root() / name


def parse_gb(text: str, what: str = MAX_GB_VAR) -> int:
    """Bytes from a size in decimal gigabytes (``"5"``, ``"0.5"``); CacheError naming `what` otherwise."""
    try:
        gb = float(str(text).strip())
    except ValueError:
        raise CacheError(f"{what} must be a number of gigabytes such as 5 or 0.5, not {text!r}.") from None
    if not math.isfinite(gb) or gb < 0:
        raise CacheError(f"{what} must be a finite number of gigabytes, 0 or more, not {text!r}.")
    return int(gb * 1e9)


def cache_max_bytes() -> int:
    """The bound on derived entries: ``$LAYER_EXPLORER_CACHE_MAX_GB`` (default 5 GB) in bytes."""
    text = os.environ.get(MAX_GB_VAR, "").strip()
    return parse_gb(text) if text else int(DEFAULT_MAX_GB * 1e9)


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


class PngMemo:
    """The PNG bytes of recently encoded arrays, found again by a hash of their pixels.

    A page shows the same images on every run (cached renders, attribution maps, example patches); encoding them
    each time took a fifth of the server's CPU under load. Hashing the pixels costs about a thirtieth of encoding
    them. Bounded by the bytes it holds (least recently used dropped first); thread-safe (sessions are threads).
    """

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: dict[bytes, bytes] = {}  # insertion order = recency (a hit is moved to the end)
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """The bytes of PNG it holds."""
        return self._bytes

    @staticmethod
    def key(image: np.ndarray) -> bytes:
        h = hashlib.blake2b(image.data, digest_size=16)
        h.update(f"{image.dtype.str}{image.shape}".encode())
        return h.digest()

    def __call__(self, image: np.ndarray) -> bytes:
        a = np.ascontiguousarray(image)
        k = self.key(a)
        with self._lock:
            data = self._items.pop(k, None)
            if data is not None:
                self._items[k] = data
                self.hits += 1
                return data
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        data = buf.getvalue()
        with self._lock:
            self.misses += 1
            if k not in self._items and len(data) <= self.max_bytes:
                self._items[k] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes:
                    self._bytes -= len(self._items.pop(next(iter(self._items))))
        return data


_PNG_MEMO = PngMemo()


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (H,W,3) or (H,W) uint8 array as PNG (deterministic for equal pixels; recent ones memoized)."""
    return _PNG_MEMO(image)


def _record_check(record: dict[str, Any]) -> str:
    fields = {k: v for k, v in record.items() if k != "check"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    """A content-addressed store of payloads (PNG by default) with JSON records beside each, bounded in size."""

    def __init__(self, root: str | Path | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.max_bytes = cache_max_bytes() if max_bytes is None else int(max_bytes)  # read now: fail before work
        seed = seed_root()
        self.seed = seed if seed is not None and os.path.abspath(seed) != os.path.abspath(self.root) else None

    def paths(self, kind: str, key: str, suffix: str = ".png") -> tuple[Path, Path]:
        """(payload path, JSON record path) of an entry; a seeded entry missing here is adopted first."""
        data_path, meta_path = _locate(self.root, kind, key, suffix)
        if self.seed is not None and (kind, key) in _seed_keys(self.seed) and not meta_path.exists():
            self._adopt(self.seed, kind, key, suffix)
        return data_path, meta_path

    def _adopt(self, seed: Path, kind: str, key: str, suffix: str) -> None:
        """Copy the seed's intact entry into the root (payload first, then its record); a damaged one is left."""
        src_data, src_meta = _locate(seed, kind, key, suffix)
        try:
            data, blob = src_data.read_bytes(), src_meta.read_bytes()
            if _verified(json.loads(blob), key, src_data.name, data) is None:
                return
            data_path, meta_path = _locate(self.root, kind, key, suffix)
            atomic_write(data_path, data)
            atomic_write(meta_path, blob)
        except (OSError, ValueError):  # unreadable seed or unwritable root: a miss
            return
        self._account(len(data) + len(blob))

    def get(self, kind: str, key: str, suffix: str = ".png") -> Entry | None:
        """The entry if present and intact (marking it used); a damaged or half entry is deleted: a miss (then the
        seed's copy, if it has an intact one)."""
        entry = self._read(kind, key, suffix)
        if entry is None and self.seed is not None and (kind, key) in _seed_keys(self.seed):
            entry = self._read(kind, key, suffix)  # `paths` adopts the seed's copy of what was just removed
        return entry

    def _read(self, kind: str, key: str, suffix: str) -> Entry | None:
        data_path, meta_path = self.paths(kind, key, suffix)
        try:
            data = data_path.read_bytes()
            record = json.loads(meta_path.read_bytes())
        except FileNotFoundError:
            self._drop_half(data_path, meta_path)
            return None
        except (OSError, ValueError):
            _remove(meta_path, data_path)
            return None
        meta = _verified(record, key, data_path.name, data)
        if meta is None:
            _remove(meta_path, data_path)
            return None
        with contextlib.suppress(OSError):  # last use, for eviction; a read-only cache still serves
            os.utime(meta_path)
        return Entry(key=key, data=data, meta=meta, path=data_path)

    def put(self, kind: str, key: str, data: bytes, meta: dict[str, Any] | None = None, suffix: str = ".png") -> Path:
        """Store `data` with `meta` atomically (payload first, then the record), then keep the size bound."""
        data_path, meta_path = _locate(self.root, kind, key, suffix)
        record: dict[str, Any] = {
            "key": key,
            "payload": data_path.name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "meta": _canonical(meta or {}),
        }
        record["check"] = _record_check(json.loads(json.dumps(record)))  # as a reader will parse it
        blob = json.dumps(record, indent=1).encode()
        atomic_write(data_path, data)
        atomic_write(meta_path, blob)
        self._account(len(data) + len(blob))
        return data_path

    def put_image(self, kind: str, key: str, image: np.ndarray, meta: dict[str, Any] | None = None) -> Entry:
        """Encode an image as PNG and store it; returns the entry as a later `get` would."""
        data = png_bytes(image)
        path = self.put(kind, key, data, meta)
        return Entry(key=key, data=data, meta=_canonical(meta or {}), path=path)

    @staticmethod
    def _drop_half(data_path: Path, meta_path: Path) -> None:
        """Delete what is left of an entry missing a file; a lone young payload may be a write in progress."""
        record_there, payload_there = meta_path.exists(), data_path.exists()  # again: a writer may have finished
        if record_there and not payload_there:
            _remove(meta_path)
        elif payload_there and not record_there:
            with contextlib.suppress(OSError):
                if time.time() - data_path.stat().st_mtime > ORPHAN_GRACE:
                    _remove(data_path)

    def _account(self, nbytes: int) -> None:
        """Add a put's bytes to the running estimate; walk and evict when the estimate or the schedule says so."""
        budget = _budget(self.root)
        with budget.lock:
            if not budget.seeded:
                budget.seeded = True
                budget.estimate, budget.walked_at = _read_state(self.root)
            budget.estimate += nbytes
            budget.written += nbytes
            due = (
                budget.estimate > self.max_bytes
                or budget.written >= WALK_SLACK * self.max_bytes
                or time.time() - budget.walked_at >= WALK_MAX_AGE
            )
            if not due or budget.walking:
                return
            budget.walking, before = True, budget.estimate
        remaining = before
        try:
            remaining = _enforce(self.root, int(self.max_bytes * LOW_WATER), self.max_bytes).remaining_bytes
        except OSError:  # an unreadable cache folder: try again after the next WALK_SLACK of writes
            pass
        finally:
            with budget.lock:
                budget.estimate = remaining + (budget.estimate - before)  # puts made during the walk
                budget.written, budget.walked_at, budget.walking = 0, time.time(), False


def _locate(root: Path, kind: str, key: str, suffix: str) -> tuple[Path, Path]:
    """(payload path, JSON record path) of an entry under `root`."""
    if not _NAME.fullmatch(kind) or kind in RESERVED_DIRS:
        raise ValueError(f"{kind!r} is not a cache kind (letters, digits, - and _; not {sorted(RESERVED_DIRS)})")
    if not _NAME.fullmatch(key):
        raise ValueError(f"{key!r} is not a cache key (letters, digits, - and _)")
    folder = root / kind / key[:2]
    meta = f"{key}.meta.json" if suffix == ".json" else f"{key}.json"  # never the payload's own path
    return folder / f"{key}{suffix}", folder / meta


_SEEDS: dict[str, frozenset[tuple[str, str]]] = {}
_SEEDS_LOCK = threading.Lock()


def _seed_keys(seed: Path) -> frozenset[tuple[str, str]]:
    """The (kind, key) of every record in the seed folder, listed once per process (none if it is missing)."""
    where = os.path.abspath(seed)
    found = _SEEDS.get(where)
    if found is None:
        found = frozenset(
            (kind_dir.name, f.name.split(".", 1)[0])
            for kind_dir in _scandir(Path(where))
            if _NAME.fullmatch(kind_dir.name) and kind_dir.name not in RESERVED_DIRS and _is_dir(kind_dir)
            for shard in _scandir(Path(kind_dir.path))
            for f in _scandir(Path(shard.path))
            if f.name.endswith(".json") and _NAME.fullmatch(f.name.split(".", 1)[0])
        )
        with _SEEDS_LOCK:
            _SEEDS[where] = found
    return found


def _verified(record: Any, key: str, payload_name: str, data: bytes) -> dict[str, Any] | None:
    """The metadata of a record that vouches for exactly `data`, else None."""
    if not isinstance(record, dict) or not isinstance(record.get("meta"), dict) or record.get("key") != key:
        return None
    fields = frozenset(record)
    if fields == _RECORD_FIELDS:
        if record["check"] != _record_check(record) or record["payload"] != payload_name:
            return None
        if record["bytes"] != len(data):
            return None
    elif fields != _LEGACY_FIELDS:
        return None
    if record["sha256"] != hashlib.sha256(data).hexdigest():
        return None
    if payload_name.endswith(".png") and not _png_decodes(data):
        return None
    return record["meta"]


def _png_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # any decoder failure means a damaged entry
        return False


def _remove(*paths: Path) -> int:
    """Unlink files in order (record before payload), ignoring ones already gone; the bytes freed."""
    freed = 0
    for p in paths:
        with contextlib.suppress(OSError):
            size = p.stat().st_size
            p.unlink()
            freed += size
    return freed


# --------------------------------------------------------------------------- running size estimate


@dataclass
class _Budget:
    lock: threading.Lock = field(default_factory=threading.Lock)
    seeded: bool = False
    estimate: int = 0
    written: int = 0
    walked_at: float = 0.0
    walking: bool = False


_BUDGETS: dict[str, _Budget] = {}
_BUDGETS_LOCK = threading.Lock()


def _budget(root: Path) -> _Budget:
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault(os.path.abspath(root), _Budget())


def _read_state(root: Path) -> tuple[int, float]:
    """(derived bytes, time) of the last walk by any process, or (0, 0.0): walk at the first put."""
    try:
        state = json.loads((root / STATE_FILE).read_bytes())
        return int(state["derived_bytes"]), float(state["walked_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0.0


def _write_state(root: Path, derived: int) -> None:
    if not root.is_dir():  # nothing cached yet: do not create the root just for this
        return
    with contextlib.suppress(OSError):
        atomic_write(root / STATE_FILE, json.dumps({"derived_bytes": derived, "walked_at": time.time()}).encode())


# --------------------------------------------------------------------------- walking, eviction, summary


@dataclass(frozen=True)
class _Stored:
    """One complete entry found by a walk."""

    kind: str
    record: Path
    payloads: tuple[Path, ...]
    bytes: int
    last_used: float


@dataclass
class _Walk:
    entries: list[_Stored] = field(default_factory=list)
    loose: list[tuple[str, Path, int, float]] = field(default_factory=list)  # (kind, file, bytes, mtime)

    @property
    def total(self) -> int:
        return sum(e.bytes for e in self.entries) + sum(b for _, _, b, _ in self.loose)


def _walk(root: Path) -> _Walk:
    """Every derived entry, half entry and temporary file under `root`; vanishing files are skipped."""
    out = _Walk()
    for kind_dir in _scandir(root):
        if kind_dir.name in RESERVED_DIRS or not _NAME.fullmatch(kind_dir.name) or not _is_dir(kind_dir):
            continue
        for shard in _scandir(Path(kind_dir.path)):
            if len(shard.name) > 2 or not _is_dir(shard):
                continue
            groups: dict[str, dict[str, tuple[Path, int, float]]] = {}
            for f in _scandir(Path(shard.path)):
                try:
                    if not f.is_file(follow_symlinks=False):
                        continue
                    st = f.stat(follow_symlinks=False)
                except OSError:
                    continue
                info = (Path(f.path), st.st_size, st.st_mtime)
                key = f.name.split(".", 1)[0]
                if f.name.endswith(".tmp") and f.name.startswith("."):
                    out.loose.append((kind_dir.name, *info))
                elif key and key[:2] == shard.name and _NAME.fullmatch(key):
                    groups.setdefault(key, {})[f.name] = info
            for key, files in groups.items():
                record = next((n for n in (f"{key}.meta.json", f"{key}.json") if n in files), None)
                payloads = [files[n] for n in files if n != record]
                if record is None or not payloads:
                    out.loose.extend((kind_dir.name, *info) for info in files.values())
                    continue
                rec_path, rec_size, rec_time = files[record]
                size = rec_size + sum(s for _, s, _ in payloads)
                out.entries.append(_Stored(kind_dir.name, rec_path, tuple(p for p, _, _ in payloads), size, rec_time))
    return out


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:  # gone, or not a folder
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


@dataclass(frozen=True)
class PruneResult:
    """What an eviction did: entries evicted, half entries and temporary files removed, bytes freed and left."""

    evicted: int
    loose_removed: int
    freed_bytes: int
    remaining_bytes: int
    max_bytes: int


def _evict(walk: _Walk, target: int, now: float, loose_age: float) -> tuple[int, int, int]:
    """Remove loose files older than `loose_age`, then entries by last use until the total is ≤ target."""
    total, evicted, loose, freed = walk.total, 0, 0, 0
    for _, path, size, mtime in walk.loose:
        if now - mtime >= loose_age:
            got = _remove(path)
            loose += bool(got)
            freed, total = freed + got, total - size
    for e in sorted(walk.entries, key=lambda e: e.last_used):
        if total <= target:
            break
        with contextlib.suppress(OSError):
            if e.record.stat().st_mtime > e.last_used:  # used since the walk: keep it
                continue
        got = _remove(e.record, *e.payloads)
        evicted += bool(got)
        freed, total = freed + got, total - e.bytes
    return evicted, loose, freed


def _enforce(root: Path, target: int, max_bytes: int) -> PruneResult:
    """Walk; when derived entries exceed `max_bytes`, evict down to `target`; always reap old loose files."""
    walk = _walk(root)
    goal = target if walk.total > max_bytes else walk.total
    evicted, loose, freed = _evict(walk, goal, time.time(), ORPHAN_GRACE)
    remaining = max(0, walk.total - freed)
    _write_state(root, remaining)
    return PruneResult(evicted, loose, freed, remaining, max_bytes)


def prune(root: str | Path | None = None, max_bytes: int | None = None) -> PruneResult:
    """Evict least recently used derived entries until they fit in `max_bytes` (default: the configured bound)."""
    bound = cache_max_bytes() if max_bytes is None else int(max_bytes)
    where = Path(root).expanduser() if root is not None else cache_root()
    return _enforce(where, bound, bound)


@dataclass(frozen=True)
class ClearResult:
    """What `clear` removed: derived entries, other loose cache files, user-data folders, and the bytes freed."""

    entries: int
    loose_removed: int
    user_dirs: tuple[str, ...]
    freed_bytes: int


def clear(root: str | Path | None = None, *, user_data: bool = False) -> ClearResult:
    """Remove every derived entry; with `user_data`, also uploads, runs, datasets, demo data and subset links.

    Temporary files younger than ``ORPHAN_GRACE`` are kept: they belong to writes in progress. Folders of kinds
    are kept (a writer may be about to use them); anything the cache does not know is never touched.
    """
    where = Path(root).expanduser() if root is not None else cache_root()
    walk = _walk(where)
    now = time.time()
    halves = [item for item in walk.loose if not item[1].name.startswith(".")]
    temps = [item for item in walk.loose if item[1].name.startswith(".")]
    entries, loose, freed = _evict(_Walk(walk.entries, halves), -1, now, 0.0)
    _, old_temps, freed_temps = _evict(_Walk(loose=temps), -1, now, ORPHAN_GRACE)
    removed: list[str] = []
    if user_data:
        for name in USER_DATA_DIRS + LINK_DIRS:
            folder = where / name
            if folder.is_dir() and not folder.is_symlink():
                size = _tree_usage(folder)[0]
                shutil.rmtree(folder, ignore_errors=True)
                if not folder.exists():
                    removed.append(name)
                    freed += size
    _write_state(where, max(0, walk.total - freed - freed_temps))
    return ClearResult(entries, loose + old_temps, tuple(removed), freed + freed_temps)


@dataclass(frozen=True)
class KindUsage:
    """Disk use of one top-level folder of the cache."""

    name: str
    category: str  # "derived" (Cache entries, evictable), "user data" or "other"
    bytes: int
    entries: int  # complete Cache entries for derived kinds; files otherwise
    incomplete: int = 0  # half entries and temporary files (derived kinds)


@dataclass(frozen=True)
class CacheSummary:
    """Where the cache is, its bound, and what each top-level folder holds."""

    root: Path
    max_bytes: int
    kinds: tuple[KindUsage, ...]

    def total(self, category: str) -> int:
        """Bytes in folders of one category ("derived", "user data", "other")."""
        return sum(k.bytes for k in self.kinds if k.category == category)

    @property
    def derived_bytes(self) -> int:
        """Bytes the bound applies to."""
        return self.total("derived")

    @property
    def over_bound(self) -> bool:
        """True when derived entries exceed the bound (the next walk will evict)."""
        return self.derived_bytes > self.max_bytes


def _tree_usage(folder: Path) -> tuple[int, int]:
    """(bytes, files) under `folder`, links counted as themselves, vanishing files skipped."""
    size = count = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(dirpath, name)).st_size
                count += 1
    return size, count


def cache_summary(root: str | Path | None = None, max_bytes: int | None = None) -> CacheSummary:
    """Size and entry count of each top-level folder, derived kinds first (walks the whole cache: seconds at most)."""
    where = Path(root).expanduser() if root is not None else cache_root()
    bound = cache_max_bytes() if max_bytes is None else int(max_bytes)
    walk = _walk(where)
    kinds: dict[str, KindUsage] = {}
    for e in walk.entries:
        k = kinds.get(e.kind, KindUsage(e.kind, "derived", 0, 0))
        kinds[e.kind] = KindUsage(e.kind, "derived", k.bytes + e.bytes, k.entries + 1, k.incomplete)
    for kind, _, size, _ in walk.loose:
        k = kinds.get(kind, KindUsage(kind, "derived", 0, 0))
        kinds[kind] = KindUsage(kind, "derived", k.bytes + size, k.entries, k.incomplete + 1)
    for entry in _scandir(where):
        if entry.name in kinds or entry.name.startswith(".") or not _is_dir(entry):
            continue
        if entry.name in RESERVED_DIRS or not _NAME.fullmatch(entry.name):
            category = "user data" if entry.name in USER_DATA_DIRS else "other"
            kinds[entry.name] = KindUsage(entry.name, category, *_tree_usage(Path(entry.path)))
        else:  # a kind folder with no entries (left after eviction or clear)
            kinds[entry.name] = KindUsage(entry.name, "derived", 0, 0)
    order = {"derived": 0, "user data": 1, "other": 2}
    return CacheSummary(where, bound, tuple(sorted(kinds.values(), key=lambda k: (order[k.category], k.name))))
