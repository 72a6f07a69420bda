"""A comparison study, for the Compare page and the CLI alike: open a fine-tuned model against its base, compare
them (checked comparable), attach the freeze sweep's measured choice, run the demo pipeline; and where all of it is
kept: comparison reports, freeze sweeps, predictions and the demo's manifest.

`Study` (one base model on one image folder) is the service both the page and ``python -m explorer compare`` call;
`open_pair` opens the pair; `run_demo` chains fine-tune → compare → sweep. Results are kept in memory for this
process, and on disk under the cache root, for every session and every later process.

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
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from explorer.cache import Cache, make_key
from explorer.cache import folder as cache_folder
from explorer.data import list_images, open_dataset, resolve_data
from explorer.data.datasets import stratified_subset
from explorer.exemplars import folder_signature
from explorer.models import LoadedModel, read_metadata
from explorer.runtime import Progress
from explorer.transfer.advice.recommend import with_sweep
from explorer.transfer.comparison.compare import CompareError, compare
from explorer.transfer.reporting.report import ComparisonReport, LayerComparison, Recommendation
from explorer.transfer.sweeping.predict import PredictError, PredictReport
from explorer.transfer.sweeping.sweep import SweepError, SweepReport, load_sweep, mismatch, sweep, sweep_settings
from explorer.transfer.training.checkpoints import write_atomic
from explorer.transfer.training.finetune import finetune
from explorer.transfer.training.heldout import file_list_sha256
from explorer.transfer.training.runs import finish_run, get_run, reserve_run
from explorer.transfer.training.settings import FinetuneSettings

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
    """Drop the reports and sweeps this process holds in memory (as a new process would start): only the disk copies
    remain."""
    with _LOCK:
        _MEMORY.clear()
        _SWEEPS.clear()


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


# Sweeps this process has read, by path, with the file's (modification time, size) when read: a page run asks for
# the same sweep twice (the recommendation and the sweep's section) and reads it once; a rewrite is read again.
_SWEEPS: OrderedDict[str, tuple[tuple[int, int], SweepReport]] = OrderedDict()


def get_sweep(path: Path) -> SweepReport | None:
    """The sweep stored at `path` (complete or not), or None when there is none or it cannot be read. Read once per
    version of the file (kept in memory until the file changes)."""
    try:
        st = path.stat()
    except OSError:
        return None
    version = (st.st_mtime_ns, st.st_size)
    with _LOCK:
        held = _SWEEPS.get(str(path))
    if held is not None and held[0] == version:
        return held[1]
    try:
        report = load_sweep(path)
    except SweepError:
        return None
    with _LOCK:
        _SWEEPS[str(path)] = (version, report)
        _SWEEPS.move_to_end(str(path))
        while len(_SWEEPS) > MEMORY_ENTRIES:
            _SWEEPS.popitem(last=False)
    return report


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


# --------------------------------------------------------------------------- the study: one service for page and CLI

Opener = Callable[[str, "str | None"], LoadedModel]  # (spec, architecture hint) → an open model


def tuned_arch_hint(path: str | Path, base: LoadedModel) -> str | None:
    """The architecture to open a fine-tuned checkpoint with: None when it names its own (metadata), else the base's
    (a bare state dict of the base architecture)."""
    return None if read_metadata(path).get("arch") else base.arch


def open_pair(
    tuned_spec: str, *, open_model: Opener, base: LoadedModel | None = None
) -> tuple[LoadedModel, LoadedModel]:
    """Open a fine-tuned model against its base: (base, tuned).

    With `base` given, the tuned checkpoint is opened as that architecture when it does not name its own; without,
    the base is the model the checkpoint's metadata names (a checkpoint that names none is refused). `open_model`
    opens a spec (the app passes its cached opener, the CLI `load_model` on its device)."""
    is_file = Path(tuned_spec).suffix != "" and Path(tuned_spec).is_file()
    if base is None and is_file and not read_metadata(tuned_spec).get("arch"):
        name = Path(tuned_spec).name
        raise CompareError(
            f"{name} carries no metadata naming its base model: name it too (--base on the command line)."
        )
    tuned = open_model(tuned_spec, tuned_arch_hint(tuned_spec, base) if base is not None and is_file else None)
    if base is None:
        spec = tuned.metadata.get("base_spec")
        if not spec:
            raise CompareError(
                "The tuned model does not name its base model: name it too (--base on the command line)."
            )
        base = open_model(str(spec), None)
    return base, tuned


def data_signature(root: str | Path) -> str:
    """A signature of the image folder's files (paths, sizes, times): part of every key of the study."""
    return folder_signature(Path(root), list_images(root))


def sweep_budget(cfg: dict[str, int]) -> FinetuneSettings:
    """The FinetuneSettings of a sweep from the Compare page's three choices (most epochs, input px, image cap: 0
    for all): the split and size the sweep and its prediction share."""
    return sweep_settings(cfg["epochs"], input_size=cfg["input"], max_images=cfg["images"] or None)


@dataclasses.dataclass(frozen=True)
class Study:
    """A comparison study of `base` on the images `data` (their name; their folder `root`): its comparisons with
    fine-tuned models, its freeze sweeps and how the two meet. Every result is stored (:func:`put_report`,
    :func:`sweep_path`) under keys that hold the models' fingerprints and the folder's `signature`, so the page, the
    demo and the CLI find each other's results. `signature` may be given by a caller that caches it."""

    base: LoadedModel
    data: str
    root: Path
    signature: str = ""

    def __post_init__(self) -> None:
        if not self.signature:
            object.__setattr__(self, "signature", data_signature(self.root))

    # comparisons --------------------------------------------------------------------------------------------

    def comparison_key(self, tuned: LoadedModel, settings: dict[str, Any]) -> str:
        return comparison_key(self.base.fingerprint, tuned.fingerprint, self.data, self.signature, settings)

    def stored_comparison(self, tuned: LoadedModel, settings: dict[str, Any]) -> ComparisonReport | None:
        """The comparison with `tuned` under `settings` (`compare`'s keyword arguments), if one was made."""
        return get_report(self.comparison_key(tuned, settings))

    def compare(
        self, tuned: LoadedModel, settings: dict[str, Any], progress: Progress | None = None
    ) -> ComparisonReport:
        """Compare `tuned` with the base on the images (checked comparable first) and store the report."""
        report = compare(self.base, tuned, str(self.root), progress=progress, **settings)
        report.data["source"] = self.data
        put_report(self.comparison_key(tuned, settings), report)
        return report

    # sweeps -------------------------------------------------------------------------------------------------

    def sweep_file(self, cfg: dict[str, int]) -> Path:
        """Where the sweep with the page's choices `cfg` lives (and resumes from)."""
        return sweep_path(self.base.fingerprint, self.signature, dict(cfg))

    def stored_sweep(self, cfg: dict[str, int]) -> SweepReport | None:
        """The finished sweep with these choices, if there is one."""
        report = get_sweep(self.sweep_file(cfg))
        return report if report is not None and report.complete else None

    def sweep(self, cfg: dict[str, int], *, seeds: int | str = "auto", progress: Progress | None = None) -> SweepReport:
        """Run (or resume: finished tasks are kept in its file) the sweep with these choices."""
        return sweep(
            self.base,
            str(self.root),
            settings=sweep_budget(cfg),
            seeds=seeds,
            out=self.sweep_file(cfg),
            progress=progress,
        )

    def decide(
        self, report: ComparisonReport, cfg: dict[str, int], *, files_sha256: Callable[[], str | None] | None = None
    ) -> tuple[ComparisonReport, str | None]:
        """The comparison with the stored sweep's measured choice as its recommendation, when a finished sweep with
        these choices exists and was measured on the same model, files and input size; else the report as it is,
        with the one sentence that says why the sweep was not used (None when there is no sweep). A sweep of other
        data is never applied silently. `files_sha256`: gives the folder's file-list hash, when the caller caches it
        (asked only when there is a sweep to check)."""
        measured = self.stored_sweep(cfg)
        if measured is None:
            return report, None
        sha = files_sha256() if files_sha256 is not None else file_list_sha256(open_dataset(str(self.root)))
        size = (report.data.get("input_size") or [None])[0]
        why = mismatch(measured, base_fingerprint=self.base.fingerprint, data_sha256=sha, input_size=size)
        if why:
            return report, why
        return with_sweep(report, measured, self.base), None


# --------------------------------------------------------------------------- the demo pipeline


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """What "Run the demo" does: fine-tune every layer on the digits for a couple of epochs, compare the tuned model
    with its base on 400 of them, then sweep the freeze options with one seed (the demo stays quick)."""

    data: str = "demo:digits"
    finetune: FinetuneSettings = dataclasses.field(default_factory=lambda: FinetuneSettings(input_size=64, epochs=2))
    compare: dict[str, Any] = dataclasses.field(default_factory=lambda: {"images": 400, "input": 64, "probes": True})
    sweep: dict[str, int] = dataclasses.field(default_factory=lambda: {"epochs": 2, "input": 64, "images": 0})
    seeds: int = 1


DEMO = DemoPlan()


def comparison_settings(images: int, size: int, probes: bool) -> dict[str, Any]:
    """The keyword arguments of `compare` for the Compare page's settings (the demo computes with the same ones)."""
    return {"max_images": images, "input_size": size or None, "probes": probes, "probe_folds": 5, "seed": 0}


def run_demo(
    base: LoadedModel,
    *,
    open_model: Opener,
    progress_for: Callable[[str], Progress | None] = lambda step: None,
    on_step: Callable[[str, dict[str, Any]], None] = lambda step, info: None,
    plan: DemoPlan = DEMO,
) -> dict[str, Any]:
    """Fine-tune → compare → sweep, each stored where the Compare page looks, then record the demo for every later
    session; returns its manifest. `on_step(step, info)` is told each step as it starts ("finetune", "compare",
    "sweep") and the fine-tune's accuracy ("finetuned", {"accuracy": …}); `progress_for(step)` gives each step's
    progress callback."""
    started = time.time()
    root = resolve_data(plan.data)
    name, checkpoint = reserve_run("demo-digits", data=plan.data)
    on_step("finetune", {"input_size": plan.finetune.input_size, "epochs": plan.finetune.epochs})
    state = "failed"
    try:
        result = finetune(base, plan.data, plan.finetune, out=checkpoint, progress=progress_for("finetune"))
        state = "done"
    finally:
        finish_run(checkpoint, state)
    on_step("finetuned", {"accuracy": result.metadata["metrics"]["val_acc"]})
    on_step("compare", {})
    tuned = open_model(str(checkpoint), None)
    study = Study(base, plan.data, Path(root))
    c = plan.compare
    study.compare(tuned, comparison_settings(c["images"], c["input"], c["probes"]), progress=progress_for("compare"))
    on_step("sweep", {})
    study.sweep(plan.sweep, seeds=plan.seeds, progress=progress_for("sweep"))
    now = time.time()
    manifest = {
        "run": name,
        "data": plan.data,
        "base_spec": base.spec,
        "tuned_fingerprint": tuned.fingerprint,
        "compare": dict(plan.compare),
        "sweep": dict(plan.sweep),
        "finetune": {"input_size": plan.finetune.input_size, "epochs": plan.finetune.epochs},
        "finished": now,
        "seconds": round(now - started, 1),
    }
    put_demo(base.fingerprint, manifest)
    return manifest


def stored_demo(base: LoadedModel) -> dict[str, Any] | None:
    """The last finished demo on `base` whose run still exists (a deleted run leaves no demo to show), or None."""
    manifest = get_demo(base.fingerprint)
    if manifest is None or get_run(manifest["run"]) is None:
        return None
    return manifest
