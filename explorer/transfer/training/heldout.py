"""The held-out split: made once by the fine-tune, saved in its checkpoint, and found again by compare and sweep.

A split is the stratified subset a run used (``max_images``), divided per class into training and held-out
images (``val_fraction``, ``seed``), as indices into the dataset's file list. The checkpoint stores the indices
and a SHA-256 of that file list (class and relative path of every image, in order), so a later comparison can tell
whether it is looking at the very images the model was tuned on, and then measure on the held-out ones only.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from explorer.data import split_indices, stratified_subset
from explorer.errors import msg


@dataclass
class Split:
    """Which images a run trained on and which it held out (indices into the dataset's file list)."""

    train: list[int]
    heldout: list[int]
    files_sha256: str | None  # None: a dataset without a file list (nothing to check it against)
    n_files: int
    seed: int
    val_fraction: float
    max_images: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        return cls(
            train=[int(i) for i in d["train"]],
            heldout=[int(i) for i in d["heldout"]],
            files_sha256=d.get("files_sha256"),
            n_files=int(d["n_files"]),
            seed=int(d.get("seed", 0)),
            val_fraction=float(d.get("val_fraction", 0.0)),
            max_images=d.get("max_images"),
        )


def file_list_sha256(dataset: Dataset) -> str | None:
    """SHA-256 of 'label<TAB>relative/path' for every image in order; None for a dataset without a file list."""
    samples = getattr(dataset, "samples", None)
    root = getattr(dataset, "root", None)
    if not samples or root is None:
        return None
    h = hashlib.sha256()
    for path, label in samples:
        try:
            rel = Path(path).relative_to(root).as_posix()
        except ValueError:
            rel = Path(path).as_posix()
        h.update(f"{int(label)}\t{rel}\n".encode())
    return h.hexdigest()


def labels_of(dataset: Dataset) -> list[int]:
    """Every image's class index, in dataset order."""
    return [int(y) for y in getattr(dataset, "targets", [])]


def make_split(dataset: Dataset, *, val_fraction: float, seed: int, max_images: int | None) -> Split:
    """The stratified subset (`max_images`) split per class into training and held-out images, reproducibly."""
    labels = labels_of(dataset)
    chosen = stratified_subset(labels, max_images, seed)
    tr, va = split_indices([labels[i] for i in chosen], val_fraction, seed)
    return Split(
        train=[chosen[i] for i in tr],
        heldout=[chosen[i] for i in va],
        files_sha256=file_list_sha256(dataset),
        n_files=len(labels),
        seed=seed,
        val_fraction=val_fraction,
        max_images=max_images,
    )


def split_of(metadata: dict[str, Any]) -> Split | None:
    """The split a checkpoint's metadata records, or None (older checkpoints, other tools)."""
    d = metadata.get("split")
    if not isinstance(d, dict):
        return None
    try:
        return Split.from_dict(d)
    except (KeyError, TypeError, ValueError):
        return None


Status = Literal["heldout", "different", "unknown"]


@dataclass
class HeldOut:
    """The images a measurement may use, and what they are relative to the tuned model's training."""

    indices: list[int]
    status: Status  # heldout: the run's own held-out images; different: other data; unknown: cannot tell
    note: str  # one plain sentence for the report and the page
    train_images: int | None = None  # images the tuned model trained on (None: unknown)


def heldout_images(metadata: dict[str, Any], dataset: Dataset, source: str) -> HeldOut:
    """Which of `dataset`'s images compare may score the tuned model on, from the tuned checkpoint's metadata."""
    everything = list(range(len(labels_of(dataset))))
    split = split_of(metadata)
    raw = metadata.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    tuned_on = data.get("source")
    train_images = data.get("train_images")
    signature = file_list_sha256(dataset)
    if split is not None and split.files_sha256 is not None and split.files_sha256 == signature:
        return HeldOut(
            split.heldout,
            "heldout",
            msg(
                f"Measured on the {len(split.heldout)} images the fine-tune held out (the split saved in its "
                "checkpoint)."
            ),
            len(split.train),
        )
    if tuned_on and str(tuned_on) == str(source):
        note = (
            msg(
                f"These are the tuning data ({source}) but its file list changed since the fine-tune, so some images "
                "may have been trained on: the tuned model's accuracy is not reported."
            )
            if split is not None
            else msg(
                f"These are the tuning data ({source}) but the checkpoint does not record which images it trained on, "
                "so some images may have been trained on: the tuned model's accuracy is not reported."
            )
        )
        return HeldOut(
            everything,
            "unknown",
            note,
            train_images if isinstance(train_images, int) else None,
        )
    if tuned_on or split is not None:
        return HeldOut(
            everything,
            "different",
            msg(
                f"These images ({source}) are not the tuning data ({tuned_on}): every image is unseen by the tuned "
                "model, but they may differ from what it was tuned for."
            )
            if tuned_on
            else msg(
                f"These images ({source}) are not the tuning data (another file list): every image is unseen by the "
                "tuned model, but they may differ from what it was tuned for."
            ),
            train_images if isinstance(train_images, int) else None,
        )
    return HeldOut(
        everything,
        "unknown",
        msg(
            "The checkpoint does not say what it was trained on, so some of these images may be training images: the "
            "tuned model's accuracy is not reported."
        ),
        None,
    )
