"""Fine-tuning with a freeze point, on a copy of the model; checkpoints that `load_model(path)` reopens alone.

The shared model is never touched: training runs on a deep copy with a new head for the dataset's classes.
Everything up to and including the freeze point is frozen (parameters *and* BatchNorm statistics, see
:mod:`explorer.models.freeze`). The loop is :func:`explorer.transfer.training.trainer.train` with the settings of
:mod:`explorer.transfer.training.settings`. The held-out split (:mod:`explorer.transfer.training.heldout`) is saved in
the checkpoint's
metadata, so a comparison can later measure on images the model never trained on. The checkpoint is written
atomically (safetensors with our JSON metadata in its header, plus a ``.json`` sidecar) after every epoch that
improved the held-out loss, so an interrupted run leaves its best complete epoch usable. Beside it, before the
checkpoint, a resume state is written after every epoch
(:func:`explorer.transfer.training.checkpoints.save_resume_state`) so a run whose process was killed continues where
it was (:func:`explorer.transfer.training.resume.resume`); it is
removed when the run ends by itself. Order matters: the state is written before a checkpoint that replaces an
earlier best one, so the checkpoint on disk always holds the best epoch the state names (or the state's own weights
are that epoch); the first checkpoint is written before the first state, so a run that has a state is listed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from explorer.data import TransformedView, eval_transform, open_dataset, train_transform
from explorer.errors import msg
from explorer.layers import check_input_size, execution_order
from explorer.models import LoadedModel, fingerprint
from explorer.models.freeze import apply_freeze, head_name
from explorer.runtime import Progress, StopSignal, stop_requested
from explorer.transfer.training.checkpoints import (
    check_writable,
    json_safe,
    resume_path,
    save_checkpoint,
    save_resume_state,
    update_metadata,
)
from explorer.transfer.training.heldout import Split, make_split
from explorer.transfer.training.settings import FinetuneError, FinetuneSettings
from explorer.transfer.training.trainer import TrainOutcome, evaluate, train

__all__ = ["FinetuneError", "FinetuneResult", "FinetuneSettings", "evaluate", "finetune", "fit", "replace_head"]


@dataclass
class FinetuneResult:
    """The tuned copy, where it was saved, and the curves. `stopped` is True when cancelled before the end."""

    module: nn.Module
    checkpoint: Path | None
    metadata: dict[str, Any]
    steps: list[dict[str, float]] = field(default_factory=list)  # one per training step
    epochs: list[dict[str, float]] = field(default_factory=list)  # one per completed epoch
    stopped: bool = False
    seconds: float = 0.0
    images_per_second: float = 0.0
    heldout_correct: list[bool] = field(default_factory=list)  # per held-out image, for the kept epoch

    def to_loaded_model(self, base: LoadedModel) -> LoadedModel:
        """The tuned network as a LoadedModel (eval mode), without going through the checkpoint file."""
        meta = self.metadata
        return LoadedModel(
            module=self.module.eval(),
            spec=str(self.checkpoint) if self.checkpoint else f"finetuned:{base.spec}",
            arch=meta["arch"],
            description=msg(f"fine-tuned {base.arch} ({len(meta['class_names'])} classes)"),
            input_size=tuple(meta["input_size"]),
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            class_names=list(meta["class_names"]),
            fingerprint=fingerprint(self.module),
            device=base.device,
            resize_size=int(meta["resize_size"]),
            interpolation=base.interpolation,
            metadata=meta,
        )


# --------------------------------------------------------------------------- model copy and head


def _strip_hooks(module: nn.Module) -> None:
    """A deep copy also copies hooks another thread had registered on the shared model: drop them."""
    for m in module.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            d = getattr(m, attr, None)
            if d:
                d.clear()
        for attr in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
            d = getattr(m, attr, None)
            if d:
                d.clear()


def private_copy(module: nn.Module) -> nn.Module:
    """A deep copy of a (possibly shared) network in eval mode, without the hooks other threads had on it."""
    out = copy.deepcopy(module)
    _strip_hooks(out)
    return out.eval()


def trainable_copy(model: LoadedModel) -> nn.Module:
    """A private deep copy of the model's network, eval mode, every parameter trainable, no hooks."""
    return private_copy(model.module).requires_grad_(True)


def replace_head(module: nn.Module, num_classes: int, *, input_size: tuple[int, int] = (224, 224)) -> str:
    """Swap the final classifier (a Linear or 1×1 Conv2d) for a fresh one with `num_classes` outputs; its name."""
    head = head_name(module, execution_order(module, input_size))
    old = module.get_submodule(head)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(
            old.in_channels,
            num_classes,
            old.kernel_size,  # type: ignore[arg-type]  # torch types them tuple[int, ...]; a Conv2d's are pairs
            old.stride,  # type: ignore[arg-type]
            old.padding,  # type: ignore[arg-type]
            bias=old.bias is not None,
        )
    else:
        raise FinetuneError(f"Cannot replace the head {head!r} ({type(old).__name__}): only Linear or Conv2d heads.")
    p = next(old.parameters())
    new = new.to(device=p.device, dtype=p.dtype)
    parent_name, _, child = head.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, child, new)
    if hasattr(module, "num_classes"):
        with contextlib.suppress(AttributeError):
            module.num_classes = num_classes  # type: ignore[assignment]  # a plain int attribute on the models that keep one
    return head


def trainable_model(model: LoadedModel, num_classes: int, freeze_after: str | None) -> tuple[nn.Module, str]:
    """A private copy with a new head for `num_classes`, frozen after `freeze_after`, channels-last: (module, head)."""
    module = trainable_copy(model)
    head = replace_head(module, num_classes, input_size=model.input_size)
    apply_freeze(module, freeze_after, input_size=model.input_size)
    return module.to(memory_format=torch.channels_last), head


# --------------------------------------------------------------------------- data


def training_data(data: str | Path | Dataset, s: FinetuneSettings) -> tuple[Dataset, list[str], Split]:
    """The dataset, its class names and the split a run with settings `s` uses; one sentence if it cannot work."""
    dataset = open_dataset(data)
    classes = list(getattr(dataset, "classes", []))
    split = make_split(dataset, val_fraction=s.val_fraction, seed=s.seed, max_images=s.max_images)
    if len(classes) < 2 or not split.train:
        raise FinetuneError("Fine-tuning needs a dataset with at least two classes of images.")
    return dataset, classes, split


def image_loaders(
    model: LoadedModel, dataset: Dataset, split: Split, s: FinetuneSettings, *, augment: str | None = None
) -> tuple[DataLoader, DataLoader | None, list[TransformedView]]:
    """Shuffled training batches (augmented as `s.augment`) and in-order held-out batches, at the run's input size."""
    size = s.input_size or model.input_size[0]
    gen = torch.Generator().manual_seed(s.seed)
    bs = min(s.batch_size, len(split.train))
    train_set = TransformedView(dataset, split.train, train_transform(model, size, augment or s.augment))
    val_set = TransformedView(dataset, split.heldout, eval_transform(model, size)[0])
    pin = model.device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        batch_size=bs,
        shuffle=True,
        generator=gen,
        drop_last=len(split.train) > bs,
        num_workers=s.num_workers,
        pin_memory=pin,
    )
    val_loader = (
        DataLoader(val_set, batch_size=max(bs, 64), num_workers=s.num_workers, pin_memory=pin)
        if split.heldout
        else None
    )
    return train_loader, val_loader, [train_set, val_set]


def _metadata(
    model: LoadedModel, module: nn.Module, head: str, data: Any, classes: list[str], split: Split, s: FinetuneSettings
) -> dict[str, Any]:
    size = s.input_size or model.input_size[0]
    return {
        "format": "layer_explorer.finetune/2",
        "arch": model.arch,
        "base_spec": model.spec,
        "base_fingerprint": model.fingerprint,
        "class_names": classes,
        "input_size": [size, size],
        "resize_size": eval_transform(model, size)[1],
        "mean": list(model.mean),
        "std": list(model.std),
        "freeze_after": s.freeze_after,
        "head": head,
        "parameters": {
            "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "non_trainable": sum(p.numel() for p in module.parameters() if not p.requires_grad),
        },
        "data": {
            "source": str(data) if not isinstance(data, Dataset) else type(data).__name__,
            "train_images": len(split.train),
            "val_images": len(split.heldout),
        },
        "split": split.to_dict(),
        "settings": asdict(s),
        "metrics": {},
    }


# --------------------------------------------------------------------------- the fine-tune


def finetune(
    model: LoadedModel,
    data: str | Path | Dataset,
    settings: FinetuneSettings | None = None,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    should_stop: StopSignal | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of `model` on an image folder ('demo:digits', a path, or an image dataset).

    Reports every step through `progress(step, total_steps, info)` (info: a dict with phase "train", epoch,
    loss, acc, lr; after each epoch phase "val" with the epoch's metrics). `should_stop` (callable or
    threading.Event) is checked before every step; the result then has ``stopped=True`` and the checkpoint of
    the best complete epoch. `out` (a ``.safetensors`` path) is refused if it exists unless `overwrite`.
    """
    s = settings or FinetuneSettings()
    s.check()
    if s.input_size:  # a ViT takes only its own size: say so before anything is read or trained
        check_input_size(model, (s.input_size, s.input_size))
    out_path = check_writable(out, overwrite=overwrite) if out is not None else None
    dataset, classes, split = training_data(data, s)
    return fit(model, data, s, (dataset, classes, split), out=out_path, progress=progress, should_stop=should_stop)


def fit(
    model: LoadedModel,
    data: str | Path | Dataset,
    s: FinetuneSettings,
    prepared: tuple[Dataset, list[str], Split],
    *,
    out: Path | None,
    progress: Progress | None = None,
    should_stop: StopSignal | None = None,
    start: dict[str, Any] | None = None,
) -> FinetuneResult:
    """The fine-tune on a prepared (dataset, classes, split), writing to `out` (checked already).

    `start` is a resume state (:func:`explorer.transfer.training.checkpoints.load_resume_state`) to continue from with
    its
    next epoch; :func:`explorer.transfer.training.resume.resume` is the way in. A resume state is written after each
    epoch
    when there is a checkpoint and `data` names images that can be opened again (a path or a demo name).
    """
    dataset, classes, split = prepared
    train_loader, val_loader, views = image_loaders(model, dataset, split, s)
    device = model.device
    devices = [device.index or 0] if device.type == "cuda" else []
    resumable = out is not None and isinstance(data, (str, Path))
    with torch.random.fork_rng(devices=devices):  # seed our run without changing other threads' RNG for good
        torch.manual_seed(s.seed)
        module, head = trainable_model(model, len(classes), s.freeze_after)
        meta = json.loads(start["metadata"]) if start else _metadata(model, module, head, data, classes, split, s)
        result = FinetuneResult(module=module, checkpoint=None, metadata=meta)
        saver = _Saver(result, out, [dataset, *views], progress, s.epochs * len(train_loader))
        if start is not None:
            start = saver.restore(start)
        outcome = train(
            module,
            head,
            train_loader,
            val_loader,
            s,
            device,
            progress=_recording(progress, result),
            stop=stop_requested(should_stop),
            on_epoch=saver.on_epoch,
            on_state=saver.keep_state if resumable else None,
            start=start,
        )
    _finish(result, outcome, result.metadata, saver.seconds())
    if out is not None and not outcome.stopped:  # ended by itself: nothing left to resume
        with contextlib.suppress(OSError):
            resume_path(out).unlink(missing_ok=True)
    return result


class _Saver:
    """After each epoch: the history and the best epoch in the metadata; the checkpoint when the epoch is the best."""

    def __init__(
        self, result: FinetuneResult, out: Path | None, sources: list[Any], progress: Progress | None, total: int
    ) -> None:
        self.result, self.out, self.sources, self.progress, self.total = result, out, sources, progress, total
        self.t0 = time.perf_counter()
        self.before = 0.0  # seconds spent by the run before it was resumed
        self.pending: dict[str, Any] | None = None  # the training state of the epoch being recorded

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.t0

    def keep_state(self, state: dict[str, Any]) -> None:
        """The trainer's state after an epoch; written by `on_epoch`, which follows at once."""
        self.pending = state

    def restore(self, start: dict[str, Any]) -> dict[str, Any]:
        """Continue from a resume state: histories, elapsed time, and a checkpoint that holds the state's best epoch.

        Returns the state with ``best_state`` (the best epoch's weights, from the checkpoint) when the trainer needs
        it. The checkpoint is rewritten when the process died between writing the state and the checkpoint.
        """
        r, out = self.result, self.out
        r.epochs = [dict(e) for e in start["epochs"]]
        r.steps = [dict(x) for x in start["steps"]]
        self.before = float(start.get("seconds", 0.0))
        best = start["best"]["epoch"]
        if out is None or best is None:
            return start
        if best == start["epoch"]:  # the state's own weights are the best epoch
            r.module.load_state_dict(start["model"])
            save_checkpoint(r.module, out, r.metadata)
            r.checkpoint = out
            return start
        r.checkpoint = out
        update_metadata(out, r.metadata)
        return {**start, "best_state": load_file(str(out))}

    def _unreadable(self) -> dict[str, Any]:
        dataset, *views = self.sources
        bad = [*(str(p) for p, _ in getattr(dataset, "skipped", [])), *(r for v in views for r in v.skipped.values())]
        return {"count": len(bad), "first": bad[:5]}

    def on_epoch(self, ep: dict[str, float], improved: bool, budget: dict[str, object]) -> None:
        r, meta = self.result, self.result.metadata
        r.epochs.append(ep)
        meta["data"]["unreadable"] = self._unreadable()
        best = ep if improved else next(e for e in r.epochs if e["epoch"] == meta["best_epoch"])
        meta["best_epoch"] = best["epoch"]
        if improved:  # the step budget that moved the weights being kept
            meta["optimizer"] = {"name": "AdamW", **budget}
        seconds = self.seconds()
        meta["metrics"] = {**best, "seconds": seconds, "history": list(r.epochs)}
        first = self.out is not None and improved and r.checkpoint is None  # no earlier best to lose: write it first
        if first:
            save_checkpoint(r.module, self.out, meta)  # type: ignore[arg-type]
            r.checkpoint = self.out
        if self.out is not None and self.pending is not None:  # before a checkpoint that replaces an earlier best
            meta_text = json.dumps(json_safe(meta))
            save_resume_state(self.out, {**self.pending, "metadata": meta_text, "seconds": seconds})
        self.pending = None
        if self.out is not None and improved and not first:
            save_checkpoint(r.module, self.out, meta)
            r.checkpoint = self.out
        elif self.out is not None and r.checkpoint is not None and not first:  # keep the best weights, new history
            update_metadata(self.out, meta)
        if self.progress:
            info = {"phase": "val", **ep, "seconds": seconds, "checkpoint": str(self.out) if self.out else None}
            self.progress(len(r.steps), self.total, info)


def _recording(progress: Progress | None, result: FinetuneResult) -> Progress:
    def record(done: int, total: int, info: Any = None) -> None:
        if isinstance(info, dict) and info.get("phase") == "train":
            result.steps.append({k: v for k, v in info.items() if k != "phase"})
        if progress:
            progress(done, total, info)

    return record


def _finish(result: FinetuneResult, outcome: TrainOutcome, meta: dict[str, Any], seconds: float) -> None:
    result.stopped = outcome.stopped
    result.seconds = seconds
    result.images_per_second = outcome.images_per_second
    result.heldout_correct = outcome.correct
    meta["stopped"] = outcome.stopped
    meta["early_stopped"] = outcome.early_stopped
    if not outcome.epochs:  # nothing kept: the budget spent so far moved the returned weights
        meta["optimizer"] = {"name": "AdamW", **outcome.budget.as_dict()}
    if result.checkpoint is not None:
        update_metadata(result.checkpoint, meta)
