"""The training loop every fine-tune and every sweep task runs, on a module the caller owns.

Epochs of AdamW steps (:mod:`explorer.transfer.training.optim`: warm-up then cosine, no decay on BatchNorm or biases);
after
each epoch the held-out loss and accuracy; the epoch with the lowest held-out loss is kept (its weights restored at
the end) and training stops after `patience` epochs without improvement. Batches and convolutions use the
channels-last layout on every device: on CPUs with oneDNN a training step of EfficientNet-Lite0 runs several times
faster than in NCHW (docs/benchmarks.md). The loader may yield images or, for a sweep, frozen-prefix features.

After each epoch `on_state` (when given) receives the whole training state (:func:`training_state`: weights of the
last epoch, optimiser, schedule, best epoch so far, histories, random generators), and `train(start=…)` continues
from such a state with the next epoch, exactly as the uninterrupted loop would have (the resume of a fine-tune whose
process was killed, :mod:`explorer.transfer.training.resume`). The state holds only tensors, numbers, strings, lists and
dicts, so ``torch.load(weights_only=True)`` reads it back.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from explorer.models import logits_of
from explorer.runtime import Progress, autocast
from explorer.transfer.training.optim import StepBudget, lr_factor, param_groups
from explorer.transfer.training.settings import FinetuneSettings

EpochHook = Callable[[dict[str, float], bool, dict[str, object]], None]  # (epoch, best so far?, step budget)
StateHook = Callable[[dict[str, Any]], None]  # the training state after an epoch (before EpochHook runs)


def to_layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on `device`, channels-last when it is a 4-D map."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def set_mode(module: nn.Module, training: bool, *, bn_frozen: bool = False) -> None:
    """train()/eval() that honours frozen parts (apply_freeze) and, with `bn_frozen`, keeps every BatchNorm in eval."""
    module.train(training)
    if training and bn_frozen:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


@torch.no_grad()
def evaluate(module: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """Mean cross-entropy, accuracy and per-item correctness of `module` (left in eval mode) on a loader."""
    module.eval()
    loss_sum, hits = 0.0, []
    for x, y in loader:
        x, y = to_layout(x, device), y.to(device)
        with autocast(device):
            logits = logits_of(module(x)).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        hits.append((logits.argmax(1) == y).cpu())
    correct = torch.cat(hits).tolist() if hits else []
    n = max(len(correct), 1)
    return {"loss": loss_sum / n, "acc": sum(correct) / n, "correct": [bool(c) for c in correct]}


@dataclass
class TrainOutcome:
    """What a training run did: per-step and per-epoch records, the best epoch, and the optimiser's step budget."""

    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    correct: list[bool] = field(default_factory=list)  # held-out correctness of the returned weights
    stopped: bool = False  # cancelled by the stop signal
    early_stopped: bool = False
    train_seconds: float = 0.0
    images_seen: int = 0
    budget: StepBudget = field(default_factory=StepBudget)

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else 0.0


@dataclass
class _Step:
    """What one epoch of steps needs: the optimiser, its schedule, the loss, the device, and where to report."""

    module: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    device: torch.device
    total: int
    progress: Progress | None
    stop: Callable[[], bool]


def _epoch(k: _Step, loader: DataLoader, epoch: int, out: TrainOutcome) -> tuple[float, float]:
    """One pass over `loader`: (mean training loss, training accuracy); sets ``out.stopped`` when asked to."""
    e_loss, e_correct, e_n, t0 = 0.0, 0, 0, time.perf_counter()
    for x, y in loader:
        if k.stop():
            out.stopped = True
            break
        x, y = to_layout(x, k.device), y.to(k.device)
        with autocast(k.device):
            logits = logits_of(k.module(x)).float()
        loss = k.loss_fn(logits, y)
        k.opt.zero_grad(set_to_none=True)
        loss.backward()
        out.budget.record(k.opt)
        k.opt.step()
        k.sched.step()
        correct, value = int((logits.detach().argmax(1) == y).sum()), loss.item()
        e_loss, e_correct, e_n = e_loss + value * len(y), e_correct + correct, e_n + len(y)
        rec = {
            "step": len(out.steps) + 1,
            "epoch": epoch,
            "loss": value,
            "acc": correct / len(y),
            "lr": k.opt.param_groups[0]["lr"],
        }
        out.steps.append(rec)
        if k.progress:
            k.progress(len(out.steps), k.total, {"phase": "train", **rec})
    out.train_seconds += time.perf_counter() - t0
    out.images_seen += e_n
    return e_loss / max(e_n, 1), e_correct / max(e_n, 1)


@dataclass
class _Best:
    """The epoch with the lowest held-out loss so far, its correctness and (when later epochs follow) its weights."""

    loss: float | None = None
    correct: list[bool] = field(default_factory=list)
    state: dict[str, torch.Tensor] | None = None
    since: int = 0

    def update(self, val: dict[str, Any] | None, module: nn.Module, keep: bool, last: bool) -> bool:
        if val is not None and self.loss is not None and val["loss"] >= self.loss:
            self.since += 1
            return False
        self.since = 0
        if val is not None:
            self.loss, self.correct = val["loss"], val["correct"]
            if keep and not last:
                self.state = copy.deepcopy(module.state_dict())
        return True


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu", copy=True) for name, t in state.items()}


def training_state(
    k: _Step, out: TrainOutcome, best: _Best, epoch: int, loader: DataLoader, *, last: bool
) -> dict[str, Any]:
    """Everything the loop needs to continue after `epoch` as if it had never stopped (`last`: nothing follows)."""
    gen = getattr(loader, "generator", None)
    return {
        "epoch": epoch,
        "last": last,
        "model": _cpu(k.module.state_dict()),
        "optimizer": k.opt.state_dict(),
        "scheduler": k.sched.state_dict(),
        "best": {"epoch": out.best_epoch, "loss": best.loss, "correct": list(best.correct), "since": best.since},
        "budget": {"sums": dict(out.budget.sums), "steps": out.budget.steps},
        "epochs": [dict(e) for e in out.epochs],
        "steps": [dict(r) for r in out.steps],
        "correct": list(out.correct),
        "train_seconds": out.train_seconds,
        "images_seen": out.images_seen,
        "rng": {"torch": torch.get_rng_state(), "loader": gen.get_state() if gen is not None else None},
    }


def restore_state(
    state: dict[str, Any], k: _Step, out: TrainOutcome, best: _Best, loader: DataLoader, s: FinetuneSettings
) -> int:
    """Load a :func:`training_state` into the loop's parts; the epoch to continue with (past the end: nothing)."""
    k.module.load_state_dict(state["model"])
    k.opt.load_state_dict(state["optimizer"])
    k.sched.load_state_dict(state["scheduler"])
    b = state["best"]
    out.best_epoch, best.loss, best.correct, best.since = b["epoch"], b["loss"], list(b["correct"]), int(b["since"])
    if s.keep_best and b["epoch"] is not None and b["epoch"] != state["epoch"]:
        best.state = state.get("best_state")  # the weights of an earlier epoch, kept in the checkpoint
    elif s.keep_best and b["epoch"] is not None:
        best.state = copy.deepcopy(k.module.state_dict())
    out.budget = StepBudget(sums=dict(state["budget"]["sums"]), steps=int(state["budget"]["steps"]))
    out.epochs, out.steps = [dict(e) for e in state["epochs"]], [dict(r) for r in state["steps"]]
    out.correct = list(state["correct"])
    out.train_seconds, out.images_seen = float(state["train_seconds"]), int(state["images_seen"])
    torch.set_rng_state(state["rng"]["torch"])
    gen = getattr(loader, "generator", None)
    if gen is not None and state["rng"]["loader"] is not None:
        gen.set_state(state["rng"]["loader"])
    if state["last"]:
        out.early_stopped = state["epoch"] < s.epochs
        return s.epochs + 1
    return int(state["epoch"]) + 1


def train(
    module: nn.Module,
    head: str,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    s: FinetuneSettings,
    device: torch.device,
    *,
    progress: Progress | None = None,
    stop: Callable[[], bool] = lambda: False,
    on_epoch: EpochHook | None = None,
    eval_each_epoch: bool = True,
    on_state: StateHook | None = None,
    start: dict[str, Any] | None = None,
    min_epochs: int = 0,
) -> TrainOutcome:
    """Train `module` (its trainable parameters) for `s.epochs`; returns the outcome with the best epoch restored.

    With `eval_each_epoch` False (and no best epoch to keep, no patience), the held-out images are scored once,
    after the last epoch: what a sweep needs, one pass instead of one per epoch. `on_state` gets the training
    state after every epoch, before `on_epoch`; `start` is such a state to continue from (its ``best_state``: the
    best epoch's weights when that is not its last epoch and `s.keep_best`). Early stopping waits for `min_epochs`
    (a sweep's minimum number of optimiser steps).
    """
    every = eval_each_epoch or s.keep_best or s.patience is not None
    opt = torch.optim.AdamW(param_groups(module, head, lr=s.lr, backbone_lr=s.backbone_lr, weight_decay=s.weight_decay))
    total = s.epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(s.schedule, total, round(s.warmup * total)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
    k = _Step(module, opt, sched, loss_fn, device, total, progress, stop)
    out, best = TrainOutcome(), _Best()
    first = restore_state(start, k, out, best, train_loader, s) if start is not None else 1
    for epoch in range(first, s.epochs + 1):
        set_mode(module, True, bn_frozen=s.bn == "frozen")
        train_loss, train_acc = _epoch(k, train_loader, epoch, out)
        if out.stopped:
            break
        scored = val_loader is not None and (every or epoch == s.epochs)
        val = evaluate(module, val_loader, device) if scored else None  # type: ignore[arg-type]
        ep = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val["loss"] if val else float("nan"),
            "val_acc": val["acc"] if val else float("nan"),
        }
        out.epochs.append(ep)
        out.correct = val["correct"] if val else []
        improved = best.update(val, module, s.keep_best, epoch == s.epochs)
        if improved:
            out.best_epoch = epoch
        early = s.patience is not None and best.since >= s.patience and min_epochs <= epoch < s.epochs
        if on_state:
            on_state(training_state(k, out, best, epoch, train_loader, last=early or epoch == s.epochs))
        if on_epoch:
            on_epoch(ep, improved, out.budget.as_dict())
        if early:
            out.early_stopped = True
            break
    last = out.epochs[-1]["epoch"] if out.epochs else None
    if s.keep_best and best.state is not None and (out.best_epoch != last or out.stopped):
        module.load_state_dict(best.state)  # a later epoch (or a cancelled part of one) trained past the best
    if s.keep_best and out.best_epoch is not None and best.loss is not None:
        out.correct = best.correct
    module.eval()
    return out
