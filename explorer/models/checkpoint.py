"""Checkpoint files → tensors and metadata, and tensors → an architecture.

Never runs code from a file: safetensors, or ``torch.load(..., weights_only=True)`` (a pickle that holds anything
but tensors is refused with the name of what it holds). A classifier head whose only difference is its number of
outputs is resized; missing and unexpected keys are reported by name.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from explorer.errors import ModelError, msg

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
META_KEY = "layer_explorer"  # key of our JSON metadata inside a safetensors header


@dataclass
class LoadReport:
    """What happened when a checkpoint's tensors were put into the architecture."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected)

    def summary(self) -> str:
        parts = []
        if self.resized:
            parts.append(msg(f"classifier resized from the checkpoint: {', '.join(self.resized)}"))
        if self.missing:
            parts.append(msg(f"{len(self.missing)} missing keys: {', '.join(self.missing[:8])}"))
        if self.unexpected:
            parts.append(msg(f"{len(self.unexpected)} unexpected keys: {', '.join(self.unexpected[:8])}"))
        return "; ".join(parts) or msg("all keys matched")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Our metadata of a checkpoint, without reading its tensors: the JSON sidecar over the safetensors header.

    The one reader of checkpoint metadata (the loader, the app's architecture hint and the CLI use it). Unreadable or
    missing metadata is ``{}``: a corrupt file is reported when it is loaded, not here. Not validated: see
    :func:`check_metadata`.
    """
    path = Path(path)
    meta: dict[str, Any] = {}
    sidecar = path.with_suffix(".json")
    with contextlib.suppress(OSError, ValueError):
        if sidecar.is_file():
            found = json.loads(sidecar.read_text())
            meta = found if isinstance(found, dict) else {}  # like unreadable JSON: not metadata we wrote
    if path.suffix.lower() == ".safetensors" and path.is_file():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
            found = json.loads(header[META_KEY]) if META_KEY in header else {}
        except Exception:  # noqa: BLE001 (safetensors raises its own error type, and others, on a corrupt header)
            found = {}
        if isinstance(found, dict):
            meta = {**found, **meta}
    return meta


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and our metadata (if any) from a checkpoint file, never running code from it."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"Checkpoint {path} does not exist.")
    if not path.is_file():
        raise ModelError(f"Checkpoint {path} is not a file.")
    if path.suffix.lower() == ".safetensors":
        try:
            tensors = {}
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for k in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                    tensors[k] = f.get_tensor(k)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{path.name} is not a readable safetensors file (corrupt or truncated).") from exc
        return tensors, check_metadata(read_metadata(path), path.name)
    meta = read_metadata(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; the error says it all
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise ModelError(
                f"Refused to load {path.name}: it contains Python objects other than tensors ({found.group(1)}), "
                "and a pickle can run code. Save a plain state_dict or use safetensors."
            ) from exc
        raise ModelError(
            f"{path.name} is not a readable PyTorch checkpoint: corrupt, or a pickle that the tensors-only loader "
            "refuses (a pickle can run code)."
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ModelError(f"{path.name} is not a readable PyTorch checkpoint (corrupt or truncated).") from exc
    except Exception as exc:  # the unpickler fails in many ways on garbage (KeyError, struct.error, …)
        raise ModelError(f"{path.name} is not a readable PyTorch checkpoint (corrupt or truncated).") from exc
    return unwrap_state_dict(obj, path.name), check_metadata(meta, path.name)


def _sizes(lo: int, hi: int, n: int) -> Any:
    return lambda v: isinstance(v, list) and len(v) == n and all(type(x) is int and lo <= x <= hi for x in v)


def _numbers(positive: bool) -> Any:
    ok = (int, float)
    return lambda v: (
        isinstance(v, list)
        and len(v) == 3
        and all(type(x) in ok and math.isfinite(x) and (x > 0 or not positive) for x in v)
    )


# The metadata fields `load_model` uses, with the shape each must have (a checkpoint may carry more).
_META_RULES: dict[str, tuple[Any, str]] = {
    "arch": (lambda v: isinstance(v, str), msg("a model spec (text)")),
    "base_spec": (lambda v: isinstance(v, str), msg("a model spec (text)")),
    "freeze_after": (lambda v: isinstance(v, str), msg("a layer name (text)")),
    "class_names": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), msg("a list of names")),
    "input_size": (_sizes(16, 2048, 2), msg("two whole numbers of pixels between 16 and 2048")),
    "resize_size": (lambda v: type(v) is int and 16 <= v <= 4096, msg("a whole number of pixels between 16 and 4096")),
    "mean": (_numbers(positive=False), msg("three finite numbers")),
    "std": (_numbers(positive=True), msg("three finite numbers above 0")),
}


def check_metadata(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """`meta` without null fields (null means absent) when every field the loader uses has a usable type and
    range, else ModelError naming the field."""
    meta = {k: v for k, v in meta.items() if not (v is None and k in _META_RULES)}
    for key, (ok, what) in _META_RULES.items():
        if key in meta and not ok(meta[key]):
            shown = repr(meta[key]) if len(repr(meta[key])) <= 60 else repr(meta[key])[:57] + "..."
            raise ModelError(f"{name} has unusable metadata: {key} must be {what}, not {shown}.")
    return meta


def unwrap_state_dict(obj: Any, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "module", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"{name} holds no state_dict (expected a dict of tensors, or one under 'state_dict'/'model').")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{name} holds no tensors.")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def resize_head(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Replace the final classifier when the checkpoint's differs only in its number of outputs."""
    own = module.state_dict()
    bad = [k for k in state if k in own and own[k].shape != state[k].shape]
    if not bad:
        return []
    owners = sorted({k.rsplit(".", 1)[0] for k in bad})
    last_param_owner = [n for n, _ in module.named_parameters()][-1].rsplit(".", 1)[0]
    if len(owners) == 1 and owners[0] == last_param_owner:
        name = owners[0]
        old = module.get_submodule(name)
        w = state[f"{name}.weight"]
        new: nn.Module | None = None
        if isinstance(old, nn.Linear) and w.shape[1] == old.in_features:
            new = nn.Linear(old.in_features, w.shape[0], bias=old.bias is not None)
        elif isinstance(old, nn.Conv2d) and w.shape[1:] == old.weight.shape[1:]:
            new = resized_conv(old, int(w.shape[0]))
        if new is not None:
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, new)
            if hasattr(module, "num_classes"):
                with contextlib.suppress(AttributeError):
                    setattr(module, "num_classes", int(w.shape[0]))  # noqa: B010 (an attribute of some models only)
            return [f"{name}: {tuple(own[name + '.weight'].shape)} → {tuple(w.shape)}"]
    k = bad[0]
    raise ModelError(
        f"The checkpoint is for another architecture: {len(bad)} tensors have other shapes "
        f"(e.g. {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})."
    )


def resized_conv(old: nn.Conv2d, out_channels: int) -> nn.Conv2d:
    """A fresh Conv2d like `old` (kernel, stride, padding, bias) with `out_channels` outputs: a resized 1×1 head."""
    return nn.Conv2d(
        old.in_channels, out_channels, old.kernel_size, old.stride, old.padding,  # type: ignore[arg-type]  # torch's own attributes
        bias=old.bias is not None,
    )  # fmt: skip


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    report = LoadReport(resized=resize_head(module, state))
    own = module.state_dict()
    matched = [k for k in state if k in own]
    if len(matched) < max(1, len(own) // 2):
        sample = ", ".join(list(state)[:3])
        raise ModelError(
            f"{source} does not fit this architecture: only {len(matched)} of its {len(state)} tensors match "
            f"the model's {len(own)} (its keys start: {sample})."
        )
    result = module.load_state_dict(state, strict=False)
    report.missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    report.unexpected = list(result.unexpected_keys)
    return report
