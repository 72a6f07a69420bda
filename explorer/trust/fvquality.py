"""Feature-visualization quality, measured: did a render find what the unit responds to, or only a grey, saturated
or collapsed picture?

Per rendered image (uint8, H × W × 3), from its pixels alone:

- **grey**: the pixel standard deviation is below `GREY_STD` (of 255): a washed-out image that barely left its
  grey start;
- **saturated**: more than `SATURATED_FRACTION` of the colour values are pinned at 0 or 255 (the sigmoid at a corner
  of the colour cube); a natural photograph with dark and white areas has about 14 % (skimage's astronaut);
- **collapsed**: no detail — less than `COLLAPSED_HF` of the luminance spectrum's energy (Hann-windowed, so the
  image's edges do not count as detail) lies above a quarter cycle per pixel, or every colour channel is nearly
  constant over the image (spatial std below `FLAT_STD`). Natural photographs hold 0.8–7 % there (skimage's test
  images at 96–512 px); a smooth blob 0.001 %.

Per unit, from the render's objective curve: **inactive** when `explorer.featurevis.activity` finds that the
objective never moved (the picture is then the optimiser's noise, whatever its pixels look like). From the model:
the **activation reached** (the channel's spatial maximum when the render is fed at the
model's input size) against the mean of the same value on the unit's top dataset examples
(`explorer.exemplars`), flagged **weak** below `WEAK_RATIO` of it; and for a diversity render, the **diversity**:
the mean pairwise cosine distance between the images' channel vectors (spatial means) at the unit's layer, 0 when
the images are the same picture for the network. Renders of one unit share most of their channel statistics, so
the values are small; compare them with renders of the same unit from independent seeds
(`benchmarks/bench_fv_quality.py` does).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from explorer import featurevis as fv
from explorer.errors import msg
from explorer.exemplars import dataset_examples
from explorer.featurevis.activity import activity
from explorer.layers import forward_until, layout_of
from explorer.models import LoadedModel
from explorer.trust.values import jsonable

GREY_STD = 12.0
SATURATED_FRACTION = 0.3
COLLAPSED_HF = 0.002
HF_CUTOFF = 0.25  # cycles per pixel
FLAT_STD = 4.0
WEAK_RATIO = 0.5
FLAG_TEXT = {
    "grey": msg("grey: barely left its start"),
    "saturated": msg("saturated: colours pinned at 0/255"),
    "collapsed": msg("collapsed: no detail"),
    "weak": msg("weak: far below its dataset examples"),
    "inactive": msg("inactive: the objective never moved"),
}


@dataclass(frozen=True)
class ImageQuality:
    """What the pixels of one render say, and the flags they raise."""

    std: float  # over every pixel and channel, 0–255
    saturated: float  # share of colour values at 0 or 255
    high_freq: float  # share of the (mean-removed) luminance spectrum's energy above HF_CUTOFF
    spatial_std: float  # the largest per-channel spatial std, 0–255
    flags: tuple[str, ...] = ()


def image_quality(image: np.ndarray) -> ImageQuality:
    """Measure and flag one (H, W, 3) image (uint8, or floats in [0, 1])."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(np.asarray(a, dtype=np.float64) * 255.0), 0, 255)
    px = a.astype(np.float64)
    if px.ndim == 2:
        px = np.repeat(px[..., None], 3, axis=-1)
    std = float(px.std())
    saturated = float(((px <= 0.5) | (px >= 254.5)).mean())
    spatial = float(px.reshape(-1, px.shape[-1]).std(0).max())
    lum = px[..., :3].mean(-1)
    lum = (lum - lum.mean()) * np.outer(np.hanning(lum.shape[0]), np.hanning(lum.shape[1]))  # no wrap-around edge
    power = np.abs(np.fft.fft2(lum)) ** 2
    fy = np.fft.fftfreq(lum.shape[0])[:, None]
    fx = np.fft.fftfreq(lum.shape[1])[None, :]
    total = float(power.sum())
    high = float(power[np.hypot(fy, fx) > HF_CUTOFF].sum() / total) if total > 0 else 0.0
    flags = []
    if std < GREY_STD:
        flags.append("grey")
    if saturated > SATURATED_FRACTION:
        flags.append("saturated")
    if high < COLLAPSED_HF or spatial < FLAT_STD:
        flags.append("collapsed")
    return ImageQuality(std, saturated, high, spatial, tuple(flags))


def flagged_labels(images: Sequence[np.ndarray] | np.ndarray, labels: Sequence[str]) -> tuple[list[str], str]:
    """Contact-sheet labels with each image's pixel flags appended ('12 (grey)'), and a one-cell summary of them
    ('2 of 8: grey 1, collapsed 1', or '0 of 8'), for the CLI's render and atlas sheets and tables."""
    out: list[str] = []
    counts: dict[str, int] = {}
    flagged = 0
    for image, label in zip(images, labels, strict=True):
        flags = image_quality(image).flags
        flagged += bool(flags)
        for f in flags:
            counts[f] = counts.get(f, 0) + 1
        out.append(f"{label} ({', '.join(flags)})" if flags else str(label))
    detail = ", ".join(f"{f} {n}" for f, n in counts.items())
    return out, f"{flagged} of {len(out)}" + (f": {detail}" if detail else "")


def model_batch(model: LoadedModel, images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Rendered uint8 images as the network's normalised input batch, resized (bilinear) to its input size."""
    x = torch.as_tensor(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=tuple(model.input_size), mode="bilinear", align_corners=False, antialias=True)
    return model.normalize(x.clamp(0, 1).to(model.device))


@torch.no_grad()
def layer_grid(model: LoadedModel, images: Sequence[np.ndarray] | np.ndarray, layer: str) -> torch.Tensor:
    """(N, C, h, w) output of `layer` for rendered images (tokens as their patch grid)."""
    out = forward_until(model.module, layer, model_batch(model, images))
    return layout_of(model, layer).to_grid(out).float().cpu()


def activation_reached(
    model: LoadedModel, images: Sequence[np.ndarray] | np.ndarray, layer: str, channels: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(spatial max, spatial mean) of channel `channels[i]` on image i, fed at the model's input size."""
    g = layer_grid(model, images, layer)
    idx = torch.as_tensor(list(channels))
    picked = g[torch.arange(len(idx)), idx].reshape(len(idx), -1)
    return picked.amax(1).numpy().astype(np.float64), picked.mean(1).numpy().astype(np.float64)


def diversity_score(model: LoadedModel, images: Sequence[np.ndarray] | np.ndarray, layer: str) -> float:
    """Mean pairwise cosine distance of the images' channel vectors (spatial means) at `layer`; NaN for < 2."""
    if len(images) < 2:
        return float("nan")
    v = F.normalize(layer_grid(model, images, layer).mean(dim=(2, 3)).double(), dim=1)
    d = [1.0 - float(v[i] @ v[j]) for i, j in itertools.combinations(range(v.shape[0]), 2)]
    return float(np.mean(d))


@dataclass
class UnitQuality:
    """One rendered unit: its images' quality, the activation reached against its dataset examples, diversity."""

    layer: str
    channel: int
    images: list[ImageQuality]
    activation: float  # the render's spatial max (mean over its images)
    examples: float | None = None  # mean spatial max over the unit's top dataset examples
    diversity: float | None = None  # diversity renders only
    flags: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """Activation reached / its top dataset examples' (None without examples or when they are ≤ 0)."""
        if self.examples is None or not self.examples > 0:
            return None
        return self.activation / self.examples

    def caption(self) -> str:
        """A short line for a tile: '⚠ grey, saturated' or '' when nothing is flagged."""
        return f"⚠ {', '.join(self.flags)}" if self.flags else ""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "layer": self.layer,
                "channel": self.channel,
                "activation": self.activation,
                "examples_activation": self.examples,
                "ratio": self.ratio,
                "diversity": self.diversity,
                "flags": self.flags,
                "images": [
                    {"std": q.std, "saturated": q.saturated, "high_freq": q.high_freq, "spatial_std": q.spatial_std,
                     "flags": list(q.flags)}
                    for q in self.images
                ],
            }
        )  # fmt: skip


def unit_quality(
    model: LoadedModel,
    images: Sequence[np.ndarray] | np.ndarray,
    layer: str,
    channel: int,
    *,
    examples: float | None = None,
    curves: Sequence[Sequence[float]] | None = None,
) -> UnitQuality:
    """The quality of one unit's render (one image, or a diversity set): image flags (raised when any image raises
    them), activation reached vs `examples` (the mean spatial max of its top dataset examples), diversity, and
    with the render's objective `curves` (one per image) whether it was inactive."""
    quals = [image_quality(im) for im in images]
    peak, _ = activation_reached(model, images, layer, [channel] * len(images))
    flags = list(dict.fromkeys(f for q in quals for f in q.flags))
    activation = float(peak.mean())
    uq = UnitQuality(layer, channel, quals, activation, examples, None, flags)
    if len(images) > 1:
        uq.diversity = diversity_score(model, images, layer)
    if uq.ratio is not None and uq.ratio < WEAK_RATIO:
        uq.flags.append("weak")
    if curves is not None and all(activity(c, im).inactive for c, im in zip(curves, images, strict=True)):
        uq.flags.append("inactive")
    return uq


def fv_quality(
    model: LoadedModel,
    layer: str,
    channels: Sequence[int],
    preset: str = "fast",
    *,
    seed: int = 0,
    examples_folder: str | None = None,
    k: int = 9,
    diverse: int = 0,
    cache: bool = True,
    progress: Any = None,
) -> list[UnitQuality]:
    """Render `channels` of `layer` (through the render cache) and judge each; with `examples_folder` compare the
    activation reached with the unit's top-`k` dataset examples; with `diverse` ≥ 2 judge a diversity render of
    that many images per unit instead of the channel render."""
    objs: list[Any] = []
    owner: list[int] = []
    for i, c in enumerate(channels):
        group = fv.for_unit("diversity", layer, c, diverse) if diverse >= 2 else [fv.channel(layer, c)]
        objs += group
        owner += [i] * len(group)
    if cache:
        res: Any = fv.render_cached(model, objs, preset, seed=seed, progress=progress)
        images, curves = res.images, list(res.curves)
    else:
        res = fv.render(model, objs, preset, seed=seed, progress=progress)
        images, curves = res.images, list(res.curves)
    ex_means: dict[int, float] = {}
    if examples_folder is not None:
        ex = dataset_examples(model, examples_folder, [layer], k=k)[layer]
        ex_means = {c: float(ex.top_value[c].mean()) for c in channels}
    out = []
    for i, c in enumerate(channels):
        mine = [j for j, o in enumerate(owner) if o == i]
        out.append(
            unit_quality(
                model, [images[j] for j in mine], layer, c, examples=ex_means.get(c), curves=[curves[j] for j in mine]
            )
        )
    return out
