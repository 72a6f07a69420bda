"""Datasets as fine-tuning and comparison read them: opening, stratified subsets, transforms, robust views.

Built on :mod:`explorer.data.folders` (which validates files and folders). A file that only fails when decoded is
skipped (and counted), not fatal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from explorer.data.folders import ImageFolderDataset, resolve_data, split_indices
from explorer.errors import DataError, ExplorerError
from explorer.models import LoadedModel

AUGMENTS = ("none", "light", "light+flip")


def open_dataset(data: str | Path | Dataset) -> Any:
    """An ImageFolderDataset from 'demo:NAME' or a folder path (one sub-folder per class), or the dataset given."""
    if isinstance(data, Dataset):
        return data
    return ImageFolderDataset(resolve_data(data))


def stratified_subset(labels: list[int], max_images: int | None, seed: int) -> list[int]:
    """Indices of a class-stratified random subset of about `max_images` items (all when None or enough)."""
    if max_images is None or max_images >= len(labels):
        return list(range(len(labels)))
    keep, _ = split_indices(labels, 1.0 - max_images / len(labels), seed)
    return keep


def _interp(model: LoadedModel) -> Any:
    # start-up cost: torchvision takes ~1 s to import; explorer.data is imported by the CLI and the app at start
    from torchvision import transforms as T

    return T.InterpolationMode.BICUBIC if model.interpolation == "bicubic" else T.InterpolationMode.BILINEAR


def eval_transform(model: LoadedModel, size: int | None = None, *, normalize: bool = True) -> tuple[Any, int]:
    """Resize the shorter side and centre-crop as the model expects (at `size` px if given): (transform, resize)."""
    # start-up cost: torchvision takes ~1 s to import; explorer.data is imported by the CLI and the app at start
    from torchvision import transforms as T

    crop = size or model.input_size[0]
    resize = round(crop * model.resize_size / model.input_size[0])
    steps = [T.Resize(resize, interpolation=_interp(model)), T.CenterCrop(crop), T.ToTensor()]
    if normalize:
        steps.append(T.Normalize(model.mean, model.std))
    return T.Compose(steps), resize


def train_transform(model: LoadedModel, size: int | None = None, augment: str = "light") -> Any:
    """Light augmentation: random crop of 80–100 % of the image, ±10 % brightness/contrast/saturation (+ flip)."""
    # start-up cost: torchvision takes ~1 s to import; explorer.data is imported by the CLI and the app at start
    from torchvision import transforms as T

    if augment not in AUGMENTS:
        raise DataError(f"Unknown augmentation {augment!r}: use {', '.join(AUGMENTS)}.")
    if augment == "none":
        return eval_transform(model, size)[0]
    crop = size or model.input_size[0]
    steps = [
        T.RandomResizedCrop(crop, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=_interp(model)),
        T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
    ]
    if augment == "light+flip":  # not the default: flips change digits and text
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(model.mean, model.std)])


class TransformedView(Dataset):
    """Some items of an image dataset (items `(PIL, label)`) through a transform.

    A file that turns out unreadable only when decoded (the folder scan reads headers) is recorded in
    `skipped` and replaced by the next readable one, so one corrupt image does not end a long run.
    """

    def __init__(self, base: Dataset, indices: list[int], transform: Any) -> None:
        self.base, self.indices, self.transform = base, list(indices), transform
        self.skipped: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        for k in range(len(self.indices)):
            j = self.indices[(i + k) % len(self.indices)]
            if j in self.skipped:
                continue
            try:
                image, label = self.base[j]
            except ExplorerError as exc:
                self.skipped[j] = str(exc)
                continue
            return self.transform(image), label
        raise DataError("None of the images could be read.")
