"""`LoadedModel`: an eval-mode network plus everything needed to feed it and to name what it says.

Every engine takes a LoadedModel. `load_model` builds one from a spec; :meth:`LoadedModel.wrap` makes one from any
``nn.Module`` (tests, notebooks, a model the user built). A LoadedModel may be shared by several app sessions, so
nothing may mutate its module: engines work on copies or only read it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from explorer.errors import ModelError, msg
from explorer.models.checkpoint import LoadReport

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    @classmethod
    def wrap(
        cls,
        module: nn.Module,
        *,
        spec: str | None = None,
        input_size: tuple[int, int] = (224, 224),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        class_names: list[str] | None = None,
        device: str | torch.device | None = "cpu",
        resize_size: int | None = None,
        interpolation: str = "bilinear",
        pretrained: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> LoadedModel:
        """Any ``nn.Module`` classifier as a LoadedModel (eval mode, on `device`), with ImageNet preprocessing unless
        told otherwise. The number of classes is read from the module's last parameter when `class_names` is None.
        The module is used as it is (not copied): wrap a module you own."""
        dev = pick_device(device)
        module = module.eval().to(dev)
        if class_names is None:
            params = list(module.parameters())
            n = int(params[-1].shape[0]) if params else 0
            class_names = [f"class {i}" for i in range(n)]
        name = spec or f"module:{type(module).__name__}"
        return cls(
            module=module,
            spec=name,
            arch=name,
            description=msg(f"{type(module).__name__} (wrapped module)"),
            input_size=(int(input_size[0]), int(input_size[1])),
            mean=mean,
            std=std,
            class_names=list(class_names),
            fingerprint=fingerprint(module),
            device=dev,
            resize_size=int(resize_size or round(input_size[0] / 0.875)),
            interpolation=interpolation,
            pretrained=pretrained,
            metadata=dict(metadata or {}),
        )

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
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
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

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The class scores (N, classes) of a normalised batch, whatever container the forward returns them in."""
        return logits_of(self.module(x))

    @torch.no_grad()
    def predict(self, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
        """Top-k (class name, probability) for one image."""
        logits = self.logits(self.preprocess(image))
        probs = logits.float().softmax(-1)[0]
        top = probs.topk(min(k, probs.numel()))
        return [
            (self.class_names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=False)
        ]


def logits_of(output: Any) -> torch.Tensor:
    """The class scores in a forward's output: a (N, classes) tensor as it is, or the `logits` of an output that
    names them (torchvision's InceptionOutputs, Hugging Face outputs, a dict); anything else is a ModelError."""
    if isinstance(output, torch.Tensor):
        if output.dim() == 2:
            return output
        shape = "×".join(str(s) for s in output.shape)
        raise ModelError(
            f"The model outputs a {shape} tensor, not one score per class (N×classes): only classifiers can be "
            "explained here."
        )
    named = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if named is not None:
        return logits_of(named)
    if isinstance(output, dict):
        keys = ", ".join(map(str, list(output)[:5]))
        what = msg(f"a dict (keys {keys}) without 'logits'") if keys else msg("a dict without keys")
    elif isinstance(output, (tuple, list)):
        what = msg(f"a {type(output).__name__} of {len(output)} values")
    else:
        what = f"a {type(output).__name__}"
    raise ModelError(
        f"The model's forward returns {what}, not a tensor of class scores: wrap it so that it returns the logits."
    )


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
