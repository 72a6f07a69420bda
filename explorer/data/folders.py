"""Image folders (one sub-folder per class) as datasets, reproducible train/validation splits, and data specs.

``demo:NAME`` names a built-in demo dataset (:mod:`explorer.data.demos`); anything else is a folder path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from explorer.data.demos import demo_dataset
from explorer.data.images import check_image, is_hidden, list_images, load_image
from explorer.errors import DataError


class ImageFolderDataset(Dataset):
    """A folder with one sub-folder per class; items are ``(RGB image or transform(image), label)``.

    Unreadable files are skipped at scan time and listed in ``skipped`` as ``(path, reason)``.
    The scan only reads headers unless ``full_check`` decodes every image.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        max_pixels: int = 40_000_000,
        full_check: bool = False,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.max_pixels = max_pixels
        if not self.root.exists():
            raise DataError(f"Dataset folder {self.root} does not exist.")
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a folder.")
        dirs = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not is_hidden(d, self.root))
        if not dirs:
            raise DataError(
                f"{self.root} has no class sub-folders; put each class's images in its own "
                f"sub-folder (e.g. {self.root.name}/cats/1.jpg)."
            )
        if len(dirs) < 2:
            raise DataError(f"{self.root} needs at least two classes but has only one sub-folder ({dirs[0]}).")
        self.classes: list[str] = dirs
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(dirs)}
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        empty: list[str] = []
        for label, cls in enumerate(dirs):
            found = 0
            for path in list_images(self.root / cls):
                reason = check_image(path, max_pixels, full=full_check)
                if reason is None:
                    self.samples.append((path, label))
                    found += 1
                else:
                    self.skipped.append((path, reason))
            if not found:
                empty.append(cls)
        if empty:
            raise DataError(f"{self.root} has classes with no readable images: {', '.join(empty)}.")

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = load_image(path, max_pixels=self.max_pixels)
        return (self.transform(img) if self.transform else img), label


def _n_val(count: int, val_fraction: float) -> int:
    return max(0, min(count - 1, int(np.floor(count * val_fraction + 0.5))))


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"The validation fraction must be in [0, 1), got {val_fraction}.")


def split(n: int, val_fraction: float, seed: int, labels: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
    """Random train/validation split of ``range(n)`` as sorted index lists, deterministic in ``seed``.

    Stratified (see :func:`split_indices`) when ``labels`` are given; keeps at least one train item.
    """
    if labels is not None:
        if len(labels) != n:
            raise DataError(f"The split needs {n} labels but got {len(labels)}.")
        return split_indices(labels, val_fraction, seed)
    _check_fraction(val_fraction)
    order = np.random.default_rng(seed).permutation(n)
    k = _n_val(n, val_fraction)
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


def split_indices(labels: Sequence[Any], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified :func:`split`: each class contributes ``round(count * val_fraction)`` items to
    validation and always keeps at least one training item."""
    _check_fraction(val_fraction)
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    train: list[int] = []
    val: list[int] = []
    for y in sorted(by_class, key=repr):
        idx = np.array(by_class[y])[rng.permutation(len(by_class[y]))]
        k = _n_val(len(idx), val_fraction)
        val += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(val)


def resolve_data(spec_or_path: str | Path) -> Path:
    """Turn ``demo:<name>`` or a folder path into an existing image-folder path."""
    spec = str(spec_or_path)
    if spec.startswith("demo:"):
        return demo_dataset(spec.removeprefix("demo:"))
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"Data folder {path} does not exist.")
    if not path.is_dir():
        raise DataError(f"{path} is not a folder.")
    return path
