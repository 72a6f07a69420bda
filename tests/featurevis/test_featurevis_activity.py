"""Inactive units: a render whose objective could not be raised is told apart from a picture, on the real model too."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.featurevis import channel, render
from explorer.featurevis.activity import FLAT_STD, MIN_STEPS, ZERO_TOL, activity

RNG = np.random.default_rng(0)
TEXTURE = RNG.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def _curve(*values: float) -> np.ndarray:
    """A curve of MIN_STEPS steps ending with `values` (zeros before)."""
    out = np.zeros(MIN_STEPS)
    out[-len(values) :] = values
    return out


def test_a_curve_that_never_leaves_zero_is_inactive_whatever_the_image():
    state = activity(_curve(0.0, 0.002, -0.01, 0.03), TEXTURE)
    assert state.inactive and state.reason == "never left zero" and state.final == pytest.approx(0.03)
    assert "inactive" in state.describe() and "0.03" in state.describe()
    assert activity(np.zeros(48), None).inactive  # a dead ReLU: exactly 0 at every step


def test_a_constant_curve_away_from_zero_is_inactive():
    state = activity(np.full(48, 3.25), TEXTURE)  # a dead channel after a BatchNorm shift: 3.25 whatever the image
    assert state.inactive and state.reason == "constant"


def test_a_flat_image_is_inactive():
    flat = np.full((32, 32, 3), 128, np.uint8)
    flat[0, 0] = 160  # a speck is still flat
    assert float(flat.std()) < FLAT_STD
    state = activity(np.linspace(0.5, 2.0, 48), flat)
    assert state.inactive and state.reason == "flat image"


def test_a_render_too_short_to_tell_is_not_judged():
    near_grey = np.full((32, 32, 3), 128, np.uint8) + RNG.integers(0, 4, size=(32, 32, 3), dtype=np.uint8)
    for curve in ([0.0, 0.05], np.zeros(MIN_STEPS - 1), [1.9, 1.89]):  # two steps of a live unit look like this
        assert not activity(curve, near_grey).inactive


def test_a_rising_curve_with_a_picture_is_active():
    state = activity(np.linspace(0.0, 2.0, 48), TEXTURE)
    assert not state.inactive and state.describe() == "" and state.final == pytest.approx(2.0)
    assert not activity(np.linspace(-3.0, -0.5, 48), TEXTURE).inactive  # a negative that rose: it moved
    assert not activity(_curve(ZERO_TOL * 3), TEXTURE).inactive  # one step above the tolerance
    assert not activity([float("nan")], TEXTURE).inactive  # a cached image without its curve: judged by the image


@pytest.mark.slow  # ~20-60 s on a shared CPU: 16 + 24 real renders with the fast preset
def test_the_bundled_stems_dead_units_are_inactive_and_real_units_are_not(bundled):
    stem = render(bundled, [channel("conv_stem", u) for u in range(16)], "fast")
    flagged = [u for u in range(16) if activity(stem.curves[u], stem.images[u]).inactive]
    assert flagged == [0, 5, 11, 15], [(u, float(stem.final[u])) for u in range(16)]
    objs = [channel(layer, u) for layer in ("bn1", "blocks.1.0", "blocks.4.1") for u in range(8)]
    live = render(bundled, objs, "fast")
    states = [activity(c, im) for c, im in zip(live.curves, live.images, strict=True)]
    assert not any(s.inactive for s in states), [(o.key, s.final) for o, s in zip(objs, states, strict=True)]
