"""Named render settings. A preset is a frozen value; its `cache_params()` go into every cache key.

- ``classic``: Lucent's defaults exactly (128 px FFT image with colour decorrelation, Adam 0.05, 512 steps,
  pad 12 / jitter 8 / scale 0.90–1.10 / rotate ±10° / jitter 4, upsampled to the model input).
- ``maco``: Fel et al. 2023 (phase-only optimisation under a natural spectrum, random crops plus noise, NAdam).
- ``fast``: a CPU preview: smaller image, fewer steps, a smaller model input, frequent previews. Its transforms read
  the image as a torus (no constant pad whose edge the first layers clip against) and roll the image of an early
  layer (≤ 8× smaller than the input) over the whole period, so its texture has no frame
  (`benchmarks/bench_saturation.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from explorer.errors import ExplorerError
from explorer.featurevis.transforms import TransformSpec


@dataclass(frozen=True)
class Preset:
    """Everything that decides what a render produces (and, in `preview_every_s`, how often it reports)."""

    name: str
    param: str = "fft"  # fft | pixel | maco
    size: int = 128  # side of the optimised image (and of the returned image)
    steps: int = 512
    lr: float = 0.05
    optimizer: str = "adam"  # adam | nadam
    decay_power: float = 1.0  # fft: spectrum scale 1/f^decay_power
    decorrelate: bool = True
    sd: float = 0.01  # fft/pixel: std of the random initialisation
    transforms: TransformSpec = field(default_factory=TransformSpec)
    model_size: int | None = None  # side of the model input; None = the model's own input size
    maco_gain: float = 1.0  # maco: contrast before the sigmoid
    spectrum_folder: str | None = None  # maco: images for the magnitude spectrum (None = assets/)
    preview_every_s: float = 1.0  # not part of the result: excluded from cache keys

    def replace(self, **changes: Any) -> Preset:
        """A copy with some fields changed; `transforms` may be given as a dict of TransformSpec fields."""
        tf = changes.get("transforms")
        if isinstance(tf, dict):
            changes["transforms"] = dataclasses.replace(self.transforms, **tf)
        return dataclasses.replace(self, **changes)

    def cache_params(self) -> dict[str, Any]:
        """The fields that determine the pixels, as plain JSON-ready values."""
        out = dataclasses.asdict(self)
        out.pop("preview_every_s")
        return out


CLASSIC = Preset(name="classic")

MACO = Preset(
    name="maco",
    param="maco",
    size=256,
    steps=256,
    lr=1.0,
    optimizer="nadam",
    transforms=TransformSpec(kind="crops", crops=4, box=(0.5, 0.8), noise=0.05),
)

FAST = Preset(
    name="fast",
    size=96,
    steps=48,
    lr=0.08,
    transforms=TransformSpec(kind="classic", pad=0, jitter=4, jitter2=2, wrap=True, roll=1.0, roll_stride=8),
    model_size=160,
    preview_every_s=0.3,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (CLASSIC, MACO, FAST)}


def get_preset(preset: str | Preset, *, steps: int | None = None, size: int | None = None) -> Preset:
    """A preset by name (or as given), with `steps` and `size` overridden when set."""
    if isinstance(preset, Preset):
        p = preset
    else:
        try:
            p = PRESETS[preset]
        except KeyError:
            raise ExplorerError(f"Unknown preset {preset!r}: use one of {', '.join(PRESETS)}.") from None
    if steps is not None:
        if steps < 1:
            raise ExplorerError(f"Steps must be at least 1, not {steps}.")
        p = p.replace(steps=int(steps))
    if size is not None:
        if not 16 <= size <= 2048:
            raise ExplorerError(f"Image size must be between 16 and 2048 pixels, not {size}.")
        p = p.replace(size=int(size))
    return p
