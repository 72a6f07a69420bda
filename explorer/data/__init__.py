"""Data: the user's images and datasets, validated before anything reads them.

``images`` opens and converts single image files (size limits, formats, EXIF, transparency) and lists folders;
``folders`` turns a folder with one sub-folder per class into a dataset and splits it reproducibly; ``archive``
extracts uploaded zips safely (no path escapes, no bombs, nothing overwritten); ``demos`` builds the offline demo
datasets (scikit-learn digits, generated shapes); ``datasets`` is what fine-tuning and comparison read (subsets,
transforms, views that skip unreadable files). Every problem the user can cause raises `DataError`.
"""

from explorer.data.archive import safe_extract_zip
from explorer.data.datasets import (
    AUGMENTS,
    TransformedView,
    eval_transform,
    open_dataset,
    stratified_subset,
    train_transform,
)
from explorer.data.demos import DEMO_DATASETS, demo_dataset
from explorer.data.folders import ImageFolderDataset, resolve_data, split, split_indices
from explorer.data.images import (
    ASSETS_DIR,
    IMAGE_EXTENSIONS,
    check_image,
    is_hidden,
    list_images,
    load_image,
    sample_images,
    typical_side,
)
from explorer.errors import DataError

__all__ = [
    "ASSETS_DIR",
    "AUGMENTS",
    "DEMO_DATASETS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "ImageFolderDataset",
    "TransformedView",
    "check_image",
    "demo_dataset",
    "eval_transform",
    "is_hidden",
    "list_images",
    "load_image",
    "open_dataset",
    "resolve_data",
    "safe_extract_zip",
    "sample_images",
    "typical_side",
    "split",
    "split_indices",
    "stratified_subset",
    "train_transform",
]
