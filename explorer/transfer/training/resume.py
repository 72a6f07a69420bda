"""Resuming a fine-tune whose process was killed: from its last complete epoch to the epoch count it was given.

A run writes ``<name>.resume.pt`` beside its checkpoint after every epoch (:mod:`explorer.transfer.training.finetune`):
the
last epoch's weights, the optimiser and schedule state, the best epoch so far, the histories, the random generators
and the run's metadata (settings, data source, base model, held-out split). :func:`resume` rebuilds the model,
checks that the data still gives the same split, and continues with the next epoch in the same folder, so the
finished run is the one an uninterrupted run would have produced (tests/transfer/training/test_resume.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import explorer.models
from explorer.models import LoadedModel
from explorer.runtime import Progress, StopSignal
from explorer.transfer.training.checkpoints import load_resume_state, remove_stale_temps, resume_path
from explorer.transfer.training.finetune import FinetuneResult, fit, training_data
from explorer.transfer.training.settings import FinetuneError, FinetuneSettings

__all__ = ["can_resume", "resume", "run_checkpoint", "saved_settings"]


def run_checkpoint(run: str | Path) -> Path:
    """The checkpoint of a run given as its folder (``runs/<name>/``) or its ``.safetensors`` file."""
    path = Path(run).expanduser()
    if path.is_dir():
        path = path / f"{path.name}.safetensors"
    if path.suffix.lower() != ".safetensors":
        raise FinetuneError(f"{run} is neither a run folder nor a .safetensors checkpoint.")
    return path


def can_resume(run: str | Path) -> bool:
    """Whether a run (folder or checkpoint) has a resume state beside its checkpoint."""
    try:
        return resume_path(run_checkpoint(run)).is_file()
    except FinetuneError:
        return False


def saved_settings(saved: Any) -> FinetuneSettings:
    """The FinetuneSettings a run's metadata recorded (fields this version does not know are left out)."""
    if not isinstance(saved, dict):
        raise FinetuneError("The resume state does not record the run's settings.")
    known = {f.name for f in dataclasses.fields(FinetuneSettings)}
    s = FinetuneSettings(**{k: v for k, v in saved.items() if k in known})
    s.check()
    return s


def resume(
    run: str | Path,
    *,
    model: LoadedModel | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    should_stop: StopSignal | None = None,
) -> FinetuneResult:
    """Continue an interrupted fine-tune (its folder or checkpoint) from its next epoch, in the same folder.

    `model` is the run's base (loaded from the metadata's ``base_spec`` when None; only its architecture matters,
    every weight comes from the resume state). Progress and stopping work as in
    :func:`explorer.transfer.training.finetune.finetune`; the step count continues where the run was.
    """
    checkpoint = run_checkpoint(run)
    remove_stale_temps(checkpoint.parent)  # a kill during a write leaves a hidden temporary file behind
    state = load_resume_state(checkpoint)
    try:
        meta = json.loads(state["metadata"])
        data = meta["data"]["source"]
        spec = meta["base_spec"]
    except (KeyError, TypeError, ValueError):
        raise FinetuneError(f"{resume_path(checkpoint).name} lacks the run's metadata; it cannot be resumed.") from None
    s = saved_settings(meta.get("settings"))
    if model is None:
        model = explorer.models.load_model(spec, device=device)
    elif model.arch != meta.get("arch"):
        raise FinetuneError(f"The run was trained from {meta.get('arch')}, not {model.arch}; load its base model.")
    dataset, classes, split = training_data(data, s)
    if classes != meta.get("class_names") or split.to_dict() != meta.get("split"):
        raise FinetuneError(f"The images of {data} changed since the run started, so it cannot continue on them.")
    try:
        return fit(
            model, data, s, (dataset, classes, split), out=checkpoint, progress=progress, should_stop=should_stop,
            start=state,
        )  # fmt: skip
    except (KeyError, RuntimeError) as exc:
        if "state_dict" in str(exc) or isinstance(exc, KeyError):
            raise FinetuneError(f"The resume state does not fit the model {spec} ({exc.__class__.__name__}).") from None
        raise
