"""The images a trust measure reads: a labelled folder (one sub-folder per class), a demo dataset, or a flat folder
of unlabelled images, cut to a class-stratified subset of at most `max_images`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from explorer.data import (
    DataError,
    ImageFolderDataset,
    eval_transform,
    list_images,
    load_image,
    resolve_data,
    stratified_subset,
)
from explorer.errors import ExplorerError


class TrustError(ExplorerError):
    """A request a trust measure cannot use (data, layers, methods), phrased for the user in one sentence."""


@dataclass
class Samples:
    """Some images of one source, in a fixed order, with their labels (-1 when the folder has none)."""

    source: str
    files: list[str]
    images: list[Image.Image]
    labels: list[int]
    classes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, start: int, stop: int) -> Samples:
        """Images `start` … `stop` - 1, with their files and labels."""
        sl = slice(start, stop)
        return Samples(self.source, self.files[sl], self.images[sl], self.labels[sl], self.classes)

    def batch01(self, model: Any, size: int | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] as `model` sees them (its resize and centre crop), at `size` px when given."""
        if size is None:
            return torch.stack([model.to_tensor01(im) for im in self.images])
        tf, _ = eval_transform(model, size, normalize=False)
        return torch.stack([tf(im.convert("RGB")) for im in self.images])


def load_samples(
    data: str | Path | Samples, max_images: int | None = 64, seed: int = 0, *, labelled: bool = False
) -> Samples:
    """Open `data` ('demo:digits', a class folder, or a flat folder of images when `labelled` is False) and load a
    class-stratified subset of at most `max_images` images (None: all)."""
    if isinstance(data, Samples):
        return data
    root = resolve_data(data)
    try:
        ds: ImageFolderDataset | None = ImageFolderDataset(root)
    except DataError:
        if labelled:
            raise
        ds = None
    if ds is not None:
        labels = ds.targets
        keep = stratified_subset(labels, max_images, seed)
        files = [ds.samples[i][0] for i in keep]
        images = [load_image(p) for p in files]
        return Samples(str(data), [str(p) for p in files], images, [labels[i] for i in keep], list(ds.classes))
    paths = list_images(root)
    if not paths:
        raise TrustError(f"{root} contains no images.")
    if max_images is not None and len(paths) > max_images:
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:max_images]
        paths = [paths[i] for i in sorted(order.tolist())]
    return Samples(str(data), [str(p) for p in paths], [load_image(p) for p in paths], [-1] * len(paths))
