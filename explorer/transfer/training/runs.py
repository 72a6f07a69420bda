"""Fine-tuning runs: where their checkpoints live, how pages find them, and training one in the background.

Every run gets its own folder ``<cache>/runs/<name>/`` holding ``<name>.safetensors`` and its ``<name>.json``
sidecar (both written by :mod:`explorer.transfer.training.finetune` after each complete epoch) plus ``.run.json`` (when
it was
started, by which process, and how it ended). Names are unique and reserved with an atomic ``mkdir``, so a run
never overwrites another. `list_runs` reads the sidecars; the Fine-tune and Compare pages both use it.
No Streamlit here: the page polls a :class:`TrainingJob`, whose thread never touches the UI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from explorer.cache import folder as cache_folder
from explorer.runtime import ThreadJob, atomic_write
from explorer.transfer.training.checkpoints import process_alive
from explorer.transfer.training.finetune import finetune
from explorer.transfer.training.resume import resume

RUN_RECORD = ".run.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")
STATES = ("running", "done", "stopped", "failed", "interrupted")


def runs_dir() -> Path:
    """The folder holding every run: ``<cache>/runs`` (``$LAYER_EXPLORER_CACHE`` or ``~/.cache/layer-explorer``)."""
    return cache_folder("runs")


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe form of `text` (letters, digits, dot, dash, underscore)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return out[:limit].rstrip("-._") or "run"


def valid_run_name(name: str) -> bool:
    """Whether `name` can name a run (no path separators or leading dots, so it cannot leave the runs folder)."""
    return bool(_NAME_RE.match(name)) and ".." not in name


# --------------------------------------------------------------------------- reading runs


@dataclass
class RunInfo:
    """A saved run as the sidecar describes it. `path` is the ``.safetensors`` checkpoint."""

    name: str
    path: Path
    created: float  # Unix time the run started
    base_spec: str | None
    base_fingerprint: str | None
    arch: str | None
    classes: list[str]
    freeze_after: str | None  # None: every layer trained
    metrics: dict[str, Any]  # the last complete epoch: val_acc, val_loss, train_acc, train_loss, epoch, history
    data: str | None  # the dataset it was trained on ('demo:shapes' or a folder)
    status: str  # one of STATES
    settings: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # the whole sidecar

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created)

    @property
    def epochs_done(self) -> int:
        return int(self.metrics.get("epoch") or 0)

    @property
    def val_acc(self) -> float | None:
        value = self.metrics.get("val_acc")
        return float(value) if isinstance(value, (int, float)) else None

    def as_row(self) -> dict[str, Any]:
        """One table row: what a list of runs shows."""
        m = self.metrics
        return {
            "run": self.name,
            "created": self.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            "data": self.data,
            "freeze after": self.freeze_after or "none",
            "epochs": self.epochs_done,
            "val acc": self.val_acc,
            "val loss": m.get("val_loss"),
            "train acc": m.get("train_acc"),
            "classes": len(self.classes),
            "status": self.status,
            "base": self.base_spec,
            "checkpoint": str(self.path),
        }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _status(record: dict[str, Any], meta: dict[str, Any]) -> str:
    status = str(record.get("status") or ("stopped" if meta.get("stopped") else "done"))
    pid = record.get("pid")
    if status == "running" and pid != os.getpid() and not (isinstance(pid, int) and process_alive(pid)):
        return "interrupted"  # the process that trained it is gone: its last complete epoch is what is left
    return status if status in STATES else "done"


def read_run(checkpoint: str | Path, name: str | None = None) -> RunInfo | None:
    """The run whose checkpoint is `checkpoint`, or None when it has no complete epoch (no readable sidecar)."""
    path = Path(checkpoint)
    meta = _read_json(path.with_suffix(".json"))
    if meta is None or not path.is_file():
        return None
    record = (_read_json(path.parent / RUN_RECORD) or {}) if path.parent.name == path.stem else {}
    created = record.get("created")
    if not isinstance(created, (int, float)):
        created = path.with_suffix(".json").stat().st_mtime
    raw_data, raw_metrics, raw_settings = meta.get("data"), meta.get("metrics"), meta.get("settings")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    metrics: dict[str, Any] = raw_metrics if isinstance(raw_metrics, dict) else {}
    return RunInfo(
        name=name or path.stem,
        path=path,
        created=float(created),
        base_spec=meta.get("base_spec"),
        base_fingerprint=meta.get("base_fingerprint"),
        arch=meta.get("arch"),
        classes=[str(c) for c in meta.get("class_names") or []],
        freeze_after=meta.get("freeze_after") or None,
        metrics=metrics,
        data=record.get("data") or data.get("source"),
        status=_status(record, meta),
        settings=raw_settings if isinstance(raw_settings, dict) else {},
        metadata=meta,
    )


def list_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every saved run with at least one complete epoch, newest first (runs/<name>/<name>.safetensors and any
    loose runs/<name>.safetensors with a sidecar)."""
    base = Path(root) if root is not None else runs_dir()
    if not base.is_dir():
        return []
    found: dict[str, RunInfo] = {}
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            info = read_run(entry / f"{entry.name}.safetensors", entry.name)
        elif entry.suffix == ".safetensors":
            info = read_run(entry)
        else:
            continue
        if info is not None and info.name not in found:
            found[info.name] = info
    return sorted(found.values(), key=lambda r: (r.created, r.name), reverse=True)


def get_run(name: str, root: str | Path | None = None) -> RunInfo | None:
    """The run called `name` (e.g. from a URL's ``?tuned=``), or None; names that could leave the folder are refused."""
    if not valid_run_name(name):
        return None
    base = Path(root) if root is not None else runs_dir()
    return read_run(base / name / f"{name}.safetensors", name) or read_run(base / f"{name}.safetensors")


# --------------------------------------------------------------------------- creating runs


def reserve_run(label: str, *, root: str | Path | None = None, data: str | None = None) -> tuple[str, Path]:
    """Reserve a fresh run folder named after `label` and the time; returns (name, checkpoint path to write).

    The folder is created with an exclusive ``mkdir``, so two runs started at the same second still get
    different names, and nothing that exists is ever reused.
    """
    base = Path(root) if root is not None else runs_dir()
    base.mkdir(parents=True, exist_ok=True)
    stem = f"{slug(label)}-{datetime.now():%Y%m%d-%H%M%S}"
    for k in range(1000):
        name = stem if k == 0 else f"{stem}-{k + 1}"
        folder = base / name
        if (base / f"{name}.safetensors").exists():
            continue
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        record = {"name": name, "created": time.time(), "pid": os.getpid(), "status": "running", "data": data}
        _write_record(folder, record)
        return name, folder / f"{name}.safetensors"
    raise OSError(f"No free run name for {stem} in {base}.")


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    atomic_write(folder / RUN_RECORD, json.dumps(record, indent=1))


def begin_run(checkpoint: str | Path, data: str | None = None) -> bool:
    """Record that this process trains the run at `checkpoint` (a new one, or one being resumed).

    Only a checkpoint laid out as a run (``<name>/<name>.safetensors``) has a record; False for any other path. If
    the process dies, the record still says "running" with a pid that is gone, and the run reads as interrupted.
    """
    path = Path(checkpoint)
    folder = path.parent
    if folder.name != path.stem or not folder.is_dir():
        return False
    record = _read_json(folder / RUN_RECORD) or {"name": path.stem, "created": time.time(), "data": data}
    record = {**record, "pid": os.getpid(), "status": "running"}
    record.pop("finished", None)
    _write_record(folder, record)
    return True


def finish_run(checkpoint: Path, status: str) -> None:
    """Record how a run ended; a run that never completed an epoch leaves nothing behind (its empty folder goes)."""
    folder = checkpoint.parent
    if not checkpoint.is_file():
        leftovers = [p for p in folder.iterdir() if p.name != RUN_RECORD] if folder.is_dir() else []
        if not leftovers:
            shutil.rmtree(folder, ignore_errors=True)
        return
    record = _read_json(folder / RUN_RECORD) or {}
    with contextlib.suppress(OSError):
        _write_record(folder, {**record, "status": status, "finished": time.time()})


# --------------------------------------------------------------------------- training in the background


@dataclass
class JobSnapshot:
    """A consistent copy of a job's progress for drawing (the thread keeps appending to the job)."""

    name: str
    checkpoint: Path
    state: str  # running, done, stopped, failed
    step: int
    total: int
    steps: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    error: BaseException | None
    seconds: float
    images_per_second: float
    stop_requested: bool

    @property
    def finished(self) -> bool:
        return self.state != "running"


class TrainingJob(ThreadJob):
    """`explorer.transfer.training.finetune.finetune` in a daemon thread, stoppable, with its progress kept for the UI
    to poll.

    The model passed in is only read (finetune trains a deep copy). Stopping takes effect before the next step;
    the checkpoint of the last complete epoch stays, and `finish_run` records how the run ended.
    """

    def __init__(
        self,
        model: Any,
        data: str,
        settings: Any,
        *,
        label: str,
        root: str | Path | None = None,
        resume_from: str | Path | None = None,
    ) -> None:
        """A new run in a fresh folder; or, with `resume_from` (an interrupted run's checkpoint), that run continued
        (`model` may then be None: the run's base is loaded in the thread)."""
        self.model, self.data, self.settings = model, data, settings
        self.resuming = resume_from is not None
        if resume_from is None:
            self.name, self.checkpoint = reserve_run(label, root=root, data=data)
        else:
            self.checkpoint = Path(resume_from)
            self.name = self.checkpoint.stem
            begin_run(self.checkpoint, data)
        self._step, self._total = 0, 0
        self._steps: list[dict[str, Any]] = []
        self._epochs: list[dict[str, Any]] = []
        self._ips = 0.0
        super().__init__(f"finetune-{self.name}")

    def _progress(self, done: int, total: int, preview: Any = None) -> None:
        with self._lock:
            self._step, self._total = done, total
            if isinstance(preview, dict) and preview.get("phase") == "train":
                self._steps.append({k: preview[k] for k in ("step", "epoch", "loss", "acc") if k in preview})
            elif isinstance(preview, dict) and preview.get("phase") == "val":
                self._epochs.append({k: v for k, v in preview.items() if k not in ("phase", "checkpoint")})

    def _run(self) -> None:
        state = "failed"
        try:
            if self.resuming:
                result = resume(self.checkpoint, model=self.model, progress=self._progress, should_stop=self._stop)
            else:
                result = finetune(
                    self.model, self.data, self.settings, out=self.checkpoint, progress=self._progress,
                    should_stop=self._stop,
                )  # fmt: skip
            state = "stopped" if result.stopped else "done"
            with self._lock:
                self._ips = result.images_per_second
        except BaseException as exc:  # reported to the page, which shows one message
            with self._lock:
                self._error = exc
        finally:
            self.model = None  # the shared model is not kept alive by a finished job
            with contextlib.suppress(OSError):
                finish_run(self.checkpoint, state)
            self.finish(state)

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(
                name=self.name,
                checkpoint=self.checkpoint,
                state=self._state,
                step=self._step,
                total=self._total,
                steps=list(self._steps),
                epochs=[dict(e) for e in self._epochs],
                error=self._error,
                seconds=self._elapsed(),
                images_per_second=self._ips,
                stop_requested=self._stop.is_set(),
            )
