"""Models: from a spec string (or any ``nn.Module``) to a `LoadedModel` every engine can use.

``specs`` parses the one string that names a model (``bundled:…``, ``torchvision:…``, ``timm:…``, a checkpoint
path); ``sources`` builds the architecture with its pretrained weights and preprocessing; ``checkpoint`` reads
checkpoint files without running code from them and fits their tensors into an architecture; ``loaded`` holds
`LoadedModel` (with `LoadedModel.wrap` for any module) and the weight fingerprint; ``load`` is `load_model`.
"""

from explorer.errors import ModelError
from explorer.models.checkpoint import (
    CHECKPOINT_SUFFIXES,
    META_KEY,
    LoadReport,
    load_into,
    read_checkpoint,
    read_metadata,
)
from explorer.models.load import load_model, num_outputs
from explorer.models.loaded import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, fingerprint, logits_of, pick_device
from explorer.models.sources import Arch, build_arch
from explorer.models.specs import BUNDLED, DEFAULT_SPEC, class_names, imagenet_classes, parse_spec

__all__ = [
    "BUNDLED",
    "CHECKPOINT_SUFFIXES",
    "DEFAULT_SPEC",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "META_KEY",
    "Arch",
    "LoadReport",
    "LoadedModel",
    "ModelError",
    "build_arch",
    "class_names",
    "fingerprint",
    "imagenet_classes",
    "load_into",
    "load_model",
    "logits_of",
    "num_outputs",
    "parse_spec",
    "pick_device",
    "read_checkpoint",
    "read_metadata",
]
