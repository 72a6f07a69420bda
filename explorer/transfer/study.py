"""Where a comparison study is kept: comparison reports, freeze sweeps, predictions and the demo's manifest.

In memory for this process, and on disk under the cache root, for every session and every later process.

A report is keyed by everything that decides it: both models' fingerprints, a signature of the image folder's
files, the comparison settings and the report's schema. A revisit (another session, a reopened link, a restart)
reads it back instead of recomputing. The same-seed renders are not part of a stored report (they have their
own cache). A sweep is its own file, ``<cache>/sweeps/<key>.json``, keyed the same way (base fingerprint, data,
settings): the sweep writes each finished task to it, so a sweep the page stopped resumes where it was. The app's
Compare page and the CLI both keep their results here; the UI keeps no storage of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from explorer.cache import Cache, make_key
from explorer.cache import folder as cache_folder
from explorer.data import list_images
from explorer.data.datasets import stratified_subset
from explorer.transfer.reporting.report import ComparisonReport, LayerComparison, Recommendation
from explorer.transfer.sweeping.predict import PredictError, PredictReport
from explorer.transfer.sweeping.sweep import SweepError, SweepReport, load_sweep
from explorer.transfer.training.checkpoints import write_atomic

KIND = "compare"
VERSION = 2  # 2: held-out images, BatchNorm parts, jackknife intervals, the gate
MEMORY_ENTRIES = 16
DEMO_FORMAT = "layer_explorer.demo/1"
SUFFIX = ".report.json"  # not ".json": Cache keeps each entry's metadata in <key>.json


def report_key(base_fp: str, tuned_fp: str, data_signature: str, settings: dict[str, Any]) -> str:
    """The cache key of a comparison: models, data, settings, and the report's field names (its schema)."""
    schema = [f.name for f in dataclasses.fields(LayerComparison)] + [
        f.name for f in dataclasses.fields(Recommendation)
    ]
    return make_key(
        kind=KIND, version=VERSION, base=base_fp, tuned=tuned_fp, data=data_signature, settings=settings, schema=schema
    )


# Reports recently read or written by this process, by (cache root, key): a new cache root starts empty.
_MEMORY: OrderedDict[tuple[str, str], ComparisonReport] = OrderedDict()
_LOCK = threading.Lock()


def forget_reports() -> None:
    """Drop the reports this process holds in memory (as a new process would start): only the disk copies remain."""
    with _LOCK:
        _MEMORY.clear()


def get_report(key: str, cache: Cache | None = None) -> ComparisonReport | None:
    """The stored report for `key` (memory first, then disk), or None."""
    cache = cache or Cache()
    slot = (str(cache.root), key)
    with _LOCK:
        if slot in _MEMORY:
            _MEMORY.move_to_end(slot)
            return _MEMORY[slot]
    entry = cache.get(KIND, key, suffix=SUFFIX)
    if entry is None:
        return None
    try:
        report = ComparisonReport.from_dict(json.loads(entry.data))
    except (KeyError, TypeError, ValueError):  # an older or damaged record: recompute
        return None
    _remember(slot, report)
    return report


def put_report(key: str, report: ComparisonReport, cache: Cache | None = None) -> None:
    """Keep `report` in memory and on disk (an unwritable cache only loses the disk copy)."""
    cache = cache or Cache()
    _remember((str(cache.root), key), report)
    meta = {"base": report.base.get("spec"), "tuned": report.tuned.get("spec"), "data": report.data.get("source")}
    with contextlib.suppress(OSError):
        cache.put(KIND, key, report.to_json().encode(), meta, suffix=SUFFIX)


def _remember(slot: tuple[str, str], report: ComparisonReport) -> None:
    with _LOCK:
        _MEMORY[slot] = report
        _MEMORY.move_to_end(slot)
        while len(_MEMORY) > MEMORY_ENTRIES:
            _MEMORY.popitem(last=False)


def with_renders(report: ComparisonReport, layer: str | None, renders: dict[str, Any]) -> ComparisonReport:
    """A copy of `report` carrying one layer's same-seed renders, so its HTML export shows them (as data URIs)."""
    return dataclasses.replace(report, renders={layer: renders} if layer and renders else {})


def subset_folder(root: Path, max_images: int | None, seed: int, cache_dir: Path) -> Path:
    """A folder of links to a class-stratified subset of `root`'s images (as `compare` samples them), or `root`.

    Dataset examples scan a whole folder; pointing them at the compared subset bounds their cost by the same
    `max_images`. Links are made once per subset (content-addressed folder name) and never overwrite a file.
    """
    files = list_images(root)
    if max_images is None or len(files) <= max_images:
        return root
    labels_of: dict[str, int] = {}
    labels = [
        labels_of.setdefault(p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "", len(labels_of))
        for p in files
    ]
    keep = stratified_subset(labels, max_images, seed)
    target = cache_dir / make_key(root=str(root.resolve()), files=[str(files[i]) for i in keep])[:24]
    done = target / ".complete"
    if done.exists():
        return target
    for i in keep:
        link = target / files[i].relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            link.symlink_to(files[i].resolve())
    done.touch()
    return target


def sweep_path(base_fp: str, data_signature: str, settings: dict[str, Any]) -> Path:
    """Where the sweep of this base model on these images with these settings lives (and resumes from)."""
    key = make_key(kind="sweep", version=1, base=base_fp, data=data_signature, settings=settings)
    return cache_folder("sweeps") / f"{key[:32]}.json"


def get_sweep(path: Path) -> SweepReport | None:
    """The sweep stored at `path` (complete or not), or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        return load_sweep(path)
    except SweepError:
        return None


def stored_tasks(path: Path) -> int:
    """How many tasks of a sweep have finished and are kept at `path` (0 when none)."""
    try:
        return len(json.loads(path.read_text()).get("tasks") or {})
    except (OSError, ValueError, AttributeError):
        return 0


def comparison_key(base_fp: str, tuned_fp: str, data: str, signature: str, settings: dict[str, Any]) -> str:
    """The key the page and the demo both store a comparison under (its settings and the data's name included)."""
    return report_key(base_fp, tuned_fp, signature, {**settings, "data": data})


# --------------------------------------------------------------------------- freeze predictions

PREDICT_KIND = "predict"
PREDICT_SUFFIX = ".predict.json"


def prediction_key(base_fp: str, data_signature: str, settings: dict[str, Any]) -> str:
    """The cache key of a freeze prediction: the base model, the images and the split/size settings it shares with
    the sweep it is shown beside."""
    return make_key(kind=PREDICT_KIND, version=1, base=base_fp, data=data_signature, settings=settings)


def get_prediction(key: str, cache: Cache | None = None) -> PredictReport | None:
    """The stored prediction for `key`, or None (none, another format, damaged: predict again)."""
    entry = (cache or Cache()).get(PREDICT_KIND, key, suffix=PREDICT_SUFFIX)
    if entry is None:
        return None
    try:
        return PredictReport.from_dict(json.loads(entry.data))
    except (PredictError, ValueError):
        return None


def put_prediction(key: str, report: PredictReport, cache: Cache | None = None) -> None:
    """Keep a prediction on disk for every session (an unwritable cache only loses the copy)."""
    meta = {"base": report.base.get("spec"), "data": report.data.get("source")}
    with contextlib.suppress(OSError):
        (cache or Cache()).put(PREDICT_KIND, key, json.dumps(report.to_dict()).encode(), meta, suffix=PREDICT_SUFFIX)


# --------------------------------------------------------------------------- the demo's manifest


def demo_path(base_fp: str) -> Path:
    """Where the manifest of the demo run on the base model with this fingerprint lives."""
    return cache_folder("demo") / f"{base_fp[:32]}.json"


def put_demo(base_fp: str, manifest: dict[str, Any]) -> Path:
    """Record a finished demo for every later session (atomically: a reader sees the old manifest or the new)."""
    path = demo_path(base_fp)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": DEMO_FORMAT, **manifest, "base_fingerprint": base_fp}
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True).encode())
    return path


def get_demo(base_fp: str) -> dict[str, Any] | None:
    """The manifest of the last finished demo on this base model, or None (none, unreadable, another format)."""
    try:
        record = json.loads(demo_path(base_fp).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(record, dict)
        and record.get("format") == DEMO_FORMAT
        and record.get("base_fingerprint") == base_fp
        and isinstance(record.get("run"), str)
        and isinstance(record.get("compare"), dict)
        and isinstance(record.get("sweep"), dict)
    )
    return record if ok else None
