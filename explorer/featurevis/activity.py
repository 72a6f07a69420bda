"""Whether a render found anything: a unit whose objective cannot be raised is *inactive*, not a picture.

Read from what every render keeps (its objective curve and its image), so cached images are judged the same way:

- **the objective never left zero**: |value| ≤ `ZERO_TOL` at every step of the budget. A ReLU unit that no image
  turns on sits at exactly 0 with no gradient; a first-layer kernel whose weights sum to zero has a spatial mean of
  ≈ 0 whatever the pixels (only the border moves it), so its picture is the optimiser pushing border pixels around;
- **the objective did not move**: the curve is constant (a unit whose output does not depend on the image, e.g.
  a dead channel after a BatchNorm with a positive shift: its value is not 0, but nothing raises it);
- **the image did not move**: the pixels' standard deviation is below `FLAT_STD` (out of 255): the gradient was
  zero, the image is the grey it started as.

A render shorter than `MIN_STEPS` is not judged: after two steps a live unit can still sit near zero on a
near-grey image. The thresholds come from the bundled EfficientNet-Lite0 with the fast preset
(tests/featurevis/test_featurevis_activity.py): conv_stem's units 0, 5, 11 and 15 stay below 0.04 at every step
(zero-sum or zero kernels), bn1's units 11 and 14 sit at exactly 0 on a grey image (std < 1), while the live units
of bn1, blocks.1.0 and blocks.4.1 end above 1.5 with images of std above 20.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from explorer.errors import msg

ZERO_TOL = 0.1  # |objective| at or below this at every step: it never left zero
CONSTANT_TOL = 1e-4  # curve range at or below this × max(1, |final|): the objective did not move
FLAT_STD = 2.0  # pixel std (0–255) below this: the image never moved from its grey start
MIN_STEPS = 16  # shorter renders are not judged


@dataclass(frozen=True)
class Activity:
    """What the render says about its unit: inactive or not, why, and the value it ended at."""

    inactive: bool
    final: float
    reason: str = ""  # "never left zero" | "constant" | "flat image" | ""

    def describe(self) -> str:
        """'inactive: stayed at 0.01' for a tile; '' for an active unit."""
        if not self.inactive:
            return ""
        return msg(f"inactive ({self.reason}): ended at {self.final:.2f}")


def activity(curve: Sequence[float] | np.ndarray, image: np.ndarray | None = None) -> Activity:
    """Judge one render by its objective `curve` (value at each step) and its (H, W, 3) uint8 `image`."""
    values = np.asarray(curve, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    final = float(values[-1]) if values.size else float("nan")
    if values.size < MIN_STEPS:  # too short to tell (or no curve kept): a picture, as it is
        return Activity(False, final)
    if float(np.abs(values).max()) <= ZERO_TOL:
        return Activity(True, final, msg("never left zero"))
    if float(np.ptp(values)) <= CONSTANT_TOL * max(1.0, abs(final)):
        return Activity(True, final, msg("constant"))
    if image is not None and float(np.asarray(image, dtype=np.float64).std()) < FLAT_STD:
        return Activity(True, final, msg("flat image"))
    return Activity(False, final)
