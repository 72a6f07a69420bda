"""Fine-tuning with a freeze point, on a copy of the model; checkpoints that `load_model(path)` reopens alone.

The shared model is never touched: training runs on a deep copy with a new head for the dataset's classes.
Everything up to and including the freeze point is frozen (parameters *and* BatchNorm statistics, see
:mod:`explorer.transfer.freeze`). After every complete epoch the checkpoint is written atomically (safetensors with our
JSON metadata in its header, plus a ``.json`` sidecar), so an interrupted run leaves the last epoch usable.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from explorer.data import (
    AUGMENTS,
    TransformedView,
    eval_transform,
    open_dataset,
    split_indices,
    stratified_subset,
    train_transform,
)
from explorer.errors import ExplorerError
from explorer.layers import execution_order
from explorer.models import LoadedModel, fingerprint
from explorer.runtime import Progress, StopSignal, autocast, stop_requested, to_input
from explorer.transfer.checkpoints import check_writable, save_checkpoint
from explorer.transfer.freeze import apply_freeze, head_name


class FinetuneError(ExplorerError):
    """A fine-tuning setting or dataset that cannot work, phrased for the user."""


@dataclass
class FinetuneSettings:
    """What a fine-tune does; the defaults suit a few hundred to a few thousand images on a pretrained CNN."""

    freeze_after: str | None = None  # a ladder layer: it and everything before it stay frozen; None trains all
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3  # the new head
    backbone_lr: float = 1e-4  # trainable pretrained layers: 10x lower so they adapt without forgetting
    weight_decay: float = 0.01
    schedule: str = "cosine"  # or "constant"
    augment: str = "light"  # "none", "light" (random crop 80–100 %, slight colour jitter), "light+flip"
    val_fraction: float = 0.2
    input_size: int | None = None  # train at this square size instead of the model's (e.g. 128 for speed)
    max_images: int | None = None  # use a stratified random subset of the dataset (quick runs)
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = 0

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise FinetuneError("Epochs and batch size must be at least 1.")
        if not (self.lr > 0 and self.backbone_lr > 0 and self.weight_decay >= 0):
            raise FinetuneError(
                "Learning rates must be positive and weight decay non-negative (to train only the head, freeze "
                "after the last layer before it instead of a zero learning rate)."
            )
        if self.schedule not in ("cosine", "constant"):
            raise FinetuneError(f"Unknown schedule {self.schedule!r}: use cosine or constant.")
        if self.augment not in AUGMENTS:
            raise FinetuneError(f"Unknown augmentation {self.augment!r}: use none, light or light+flip.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise FinetuneError("The validation fraction must be in [0, 1).")
        if self.input_size is not None and not 32 <= self.input_size <= 1024:
            raise FinetuneError("The input size must be between 32 and 1024 pixels.")


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

    def to_loaded_model(self, base: LoadedModel) -> LoadedModel:
        """The tuned network as a LoadedModel (eval mode), without going through the checkpoint file."""
        meta = self.metadata
        return LoadedModel(
            module=self.module.eval(),
            spec=str(self.checkpoint) if self.checkpoint else f"finetuned:{base.spec}",
            arch=meta["arch"],
            description=f"fine-tuned {base.arch} ({len(meta['class_names'])} classes)",
            input_size=tuple(meta["input_size"]),  # type: ignore[arg-type]
            mean=tuple(meta["mean"]),  # type: ignore[arg-type]
            std=tuple(meta["std"]),  # type: ignore[arg-type]
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


def trainable_copy(model: LoadedModel) -> nn.Module:
    """A private deep copy of the model's network, eval mode, every parameter trainable, no hooks."""
    module = copy.deepcopy(model.module)
    _strip_hooks(module)
    module.eval().requires_grad_(True)
    return module


def replace_head(module: nn.Module, num_classes: int, *, input_size: tuple[int, int] = (224, 224)) -> str:
    """Swap the final classifier (a Linear or 1×1 Conv2d) for a fresh one with `num_classes` outputs; its name."""
    head = head_name(module, execution_order(module, input_size))
    old = module.get_submodule(head)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(
            old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
        )
    else:
        raise FinetuneError(f"Cannot replace the head {head!r} ({type(old).__name__}): only Linear or Conv2d heads.")
    p = next(old.parameters())
    new = new.to(device=p.device, dtype=p.dtype)
    parent_name, _, child = head.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, child, new)
    if hasattr(module, "num_classes"):
        with contextlib.suppress(AttributeError):
            module.num_classes = num_classes
    return head


# --------------------------------------------------------------------------- the loop


def _param_groups(module: nn.Module, head: str, s: FinetuneSettings) -> list[dict[str, Any]]:
    head_params = [p for p in module.get_submodule(head).parameters() if p.requires_grad]
    ids = {id(p) for p in head_params}
    body = [p for p in module.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": head_params, "lr": s.lr}]
    if body:
        groups.append({"params": body, "lr": s.backbone_lr})
    return groups


@torch.no_grad()
def evaluate(module: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `module` (left in eval mode) on a loader."""
    module.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = to_input(x, device), y.to(device)
        with autocast(device):
            logits = module(x).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1)}


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

    Reports every step through `progress(step, total_steps, preview)` (preview: a dict with phase, epoch,
    loss, acc, lr; after each epoch phase "val" with the epoch's metrics). `should_stop` (callable or
    threading.Event) is checked before every step; the result then has ``stopped=True`` and the checkpoint of
    the last complete epoch. `out` (a ``.safetensors`` path) is refused if it exists unless `overwrite`.
    """
    s = settings or FinetuneSettings()
    s.check()
    out_path = check_writable(out, overwrite=overwrite) if out is not None else None
    stop = stop_requested(should_stop)
    dataset = open_dataset(data)
    classes = list(getattr(dataset, "classes", []))
    labels = [int(y) for y in getattr(dataset, "targets", [])]
    if len(classes) < 2 or not labels:
        raise FinetuneError("Fine-tuning needs a dataset with at least two classes of images.")
    chosen = stratified_subset(labels, s.max_images, s.seed)
    tr, va = split_indices([labels[i] for i in chosen], s.val_fraction, s.seed)
    train_idx, val_idx = [chosen[i] for i in tr], [chosen[i] for i in va]
    size = s.input_size or model.input_size[0]
    eval_tf, resize = eval_transform(model, size)
    prep = {"input_size": [size, size], "resize_size": resize, "mean": list(model.mean), "std": list(model.std)}
    device = model.device
    gen = torch.Generator().manual_seed(s.seed)
    bs = min(s.batch_size, len(train_idx))
    train_set = TransformedView(dataset, train_idx, train_transform(model, size, s.augment))
    val_set = TransformedView(dataset, val_idx, eval_tf)
    train_loader = DataLoader(
        train_set,
        batch_size=bs,
        shuffle=True,
        generator=gen,
        drop_last=len(train_idx) > bs,
        num_workers=s.num_workers,
        pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(val_set, batch_size=max(bs, 64), num_workers=s.num_workers)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # seed our run without changing other threads' RNG for good
        torch.manual_seed(s.seed)
        module = trainable_copy(model)
        head = replace_head(module, len(classes), input_size=model.input_size)
        apply_freeze(module, s.freeze_after, input_size=model.input_size)
        if device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        groups = _param_groups(module, head, s)
        opt = torch.optim.AdamW(groups, weight_decay=s.weight_decay)
        total = s.epochs * len(train_loader)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, (lambda k: 0.5 * (1 + math.cos(math.pi * k / total))) if s.schedule == "cosine" else (lambda k: 1.0)
        )
        meta: dict[str, Any] = {
            "format": "layer_explorer.finetune/1",
            "arch": model.arch,
            "base_spec": model.spec,
            "base_fingerprint": model.fingerprint,
            "class_names": classes,
            **prep,
            "freeze_after": s.freeze_after,
            "head": head,
            "parameters": {
                "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
                "non_trainable": sum(p.numel() for p in module.parameters() if not p.requires_grad),
            },
            "data": {
                "source": str(data) if not isinstance(data, Dataset) else type(data).__name__,
                "train_images": len(train_idx),
                "val_images": len(val_idx),
            },
            "settings": asdict(s),
            "metrics": {},
        }
        result = FinetuneResult(module=module, checkpoint=None, metadata=meta)
        t0, seen, step, train_s = time.perf_counter(), 0, 0, 0.0
        loss_fn = nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
        for epoch in range(1, s.epochs + 1):
            module.train()  # apply_freeze keeps the frozen part in eval mode
            e_loss, e_correct, e_n, e_t0 = 0.0, 0, 0, time.perf_counter()
            for x, y in train_loader:
                if stop():
                    result.stopped = True
                    break
                x, y = to_input(x, device), y.to(device)
                with autocast(device):
                    logits = module(x).float()
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                seen += len(y)
                correct = int((logits.detach().argmax(1) == y).sum())
                e_loss, e_correct, e_n = e_loss + loss.item() * len(y), e_correct + correct, e_n + len(y)
                rec = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss.item(),
                    "acc": correct / len(y),
                    "lr": opt.param_groups[0]["lr"],
                }
                result.steps.append(rec)
                if progress:
                    progress(step, total, {"phase": "train", **rec})
            train_s += time.perf_counter() - e_t0
            if result.stopped:
                break
            val = evaluate(module, val_loader, device) if val_idx else {"loss": float("nan"), "acc": float("nan")}
            ep = {
                "epoch": epoch,
                "train_loss": e_loss / max(e_n, 1),
                "train_acc": e_correct / max(e_n, 1),
                "val_loss": val["loss"],
                "val_acc": val["acc"],
                "seconds": time.perf_counter() - t0,
            }
            result.epochs.append(ep)
            meta["metrics"] = {**ep, "history": list(result.epochs)}
            unreadable = [
                *(str(p) for p, _ in getattr(dataset, "skipped", [])),
                *train_set.skipped.values(),
                *val_set.skipped.values(),
            ]
            meta["data"]["unreadable"] = {"count": len(unreadable), "first": unreadable[:5]}
            if out_path is not None:
                save_checkpoint(module, out_path, meta)
                result.checkpoint = out_path
            result.images_per_second = seen / train_s if train_s > 0 else 0.0
            if progress:
                progress(step, total, {"phase": "val", **ep, "checkpoint": str(out_path) if out_path else None})
        module.eval()
    result.seconds = time.perf_counter() - t0
    meta["stopped"] = result.stopped
    return result
