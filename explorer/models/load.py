"""`load_model(spec)`: the one entry point from a model spec (or checkpoint file) to a LoadedModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError, ModelError, msg
from explorer.models.checkpoint import load_into, read_checkpoint
from explorer.models.freeze import apply_freeze
from explorer.models.loaded import LoadedModel, fingerprint, pick_device
from explorer.models.sources import build_arch, rgb
from explorer.models.specs import DEFAULT_SPEC, class_names, parse_spec


def load_model(
    spec: str = DEFAULT_SPEC, *, arch: str | None = None, device: str | torch.device | None = None
) -> LoadedModel:
    """Build the model a spec names, in eval mode on `device` (auto: CUDA, MPS, CPU)."""
    dev = pick_device(device)
    kind, name, variant = parse_spec(spec)
    meta: dict[str, Any] = {}
    report = None
    if kind == "file":
        state, meta = read_checkpoint(name)
        arch_spec = arch or meta.get("arch") or meta.get("base_spec")
        if not arch_spec:
            raise ModelError(
                f"{Path(name).name} carries no metadata naming its architecture: give it (e.g. --arch timm:resnet18)."
            )
        if parse_spec(arch_spec)[0] == "file":
            raise ModelError(f"The architecture must be bundled:, torchvision: or timm:, not a file ({arch_spec}).")
        built = build_arch(arch_spec, load_weights=False)
        report = load_into(built.module, state, Path(name).name)
        n_out = num_outputs(built.module)
        built.class_names = class_names(n_out, meta.get("class_names"))
        built.description = msg(f"checkpoint {Path(name).name} on {arch_spec}")
        pretrained = True
    else:
        arch_spec = f"{kind}:{name}"
        built = build_arch(spec)
        pretrained = variant != "untrained"
    module = built.module.eval().to(dev)
    h, w = (int(v) for v in meta.get("input_size", built.input_size))
    input_size = (h, w)
    if kind == "file" and meta.get("freeze_after"):
        # a fine-tuned checkpoint keeps its freeze point, so the ladder shows which layers stayed frozen
        try:
            apply_freeze(module, meta["freeze_after"], input_size=input_size)
        except ExplorerError as exc:  # a checkpoint must not load silently unfrozen
            raise ModelError(
                f"{Path(name).name} says it was frozen after {meta['freeze_after']!r}, but that point does not fit "
                f"its architecture ({exc})"
            ) from None
        module.eval()
    return LoadedModel(
        module=module,
        spec=spec,
        arch=arch_spec,
        description=built.description,
        input_size=input_size,
        mean=rgb(meta.get("mean", built.mean)),
        std=rgb(meta.get("std", built.std)),
        class_names=built.class_names,
        fingerprint=fingerprint(module),
        device=dev,
        resize_size=int(meta.get("resize_size", built.resize_size)),
        interpolation=built.interpolation,
        pretrained=pretrained,
        metadata=meta,
        load_report=report,
    )


def num_outputs(module: nn.Module) -> int:
    """Number of classes: the first dimension of the last parameter (the classifier's bias or weight)."""
    return int(list(module.parameters())[-1].shape[0])
