"""explorer.trust.fvquality: flags on synthetic failures and on a natural photograph, activation reached, diversity,
and the whole measure on a tiny network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from explorer.models import LoadedModel
from explorer.trust import activation_reached, diversity_score, fv_quality, image_quality, unit_quality
from explorer.trust.fvquality import flagged_labels


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.astronaut()


def test_no_flag_on_a_natural_photo(astronaut: np.ndarray) -> None:
    for side in (512, 128, 96):
        img = np.asarray(Image.fromarray(astronaut).resize((side, side), Image.Resampling.LANCZOS))
        q = image_quality(img)
        assert q.flags == (), (side, q)
    assert image_quality(astronaut / 255.0).flags == ()  # floats in [0, 1] read the same


def test_grey_saturated_and_collapsed_fire_on_synthetic_failures() -> None:
    rng = np.random.default_rng(0)
    grey = np.clip(128 + rng.normal(0, 8, (96, 96, 3)), 0, 255).astype(np.uint8)
    assert "grey" in image_quality(grey).flags
    assert "collapsed" not in image_quality(grey).flags  # fine noise is detail, only faint
    flat = np.full((96, 96, 3), 128, np.uint8)
    assert set(image_quality(flat).flags) == {"grey", "collapsed"}
    pinned = (rng.random((96, 96, 3)) > 0.5).astype(np.uint8) * 255
    assert image_quality(pinned).flags == ("saturated",)
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    blob = np.stack([255 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.1), 200 * xx, 180 * yy], -1)
    q = image_quality(blob.astype(np.uint8))
    assert q.flags == ("collapsed",) and q.high_freq < 0.002
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 230
    assert "collapsed" in image_quality(red).flags  # one flat colour: no detail, though not grey


class Colours(nn.Module):
    """Unit 0 of layer 'units' = the red channel, unit 1 = the green one; then a pool and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.units.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.units(x)).flatten(1))


def colours() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel.wrap(Colours(), input_size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1))


def test_activation_reached_and_diversity() -> None:
    model = colours()
    red = np.zeros((40, 40, 3), np.uint8)
    red[..., 0] = 255
    green = np.zeros((40, 40, 3), np.uint8)
    green[10:20, 10:20, 1] = 255
    peak, mean = activation_reached(model, [red, green], "units", [0, 1])
    assert peak[0] == pytest.approx(1.0, abs=1e-5) and mean[0] == pytest.approx(1.0, abs=1e-5)
    assert peak[1] == pytest.approx(1.0, abs=0.05) and mean[1] < 0.2
    assert diversity_score(model, [red, red, red], "units") == pytest.approx(0.0, abs=1e-9)
    assert diversity_score(model, [red, green], "units") == pytest.approx(1.0, abs=1e-6)  # orthogonal vectors
    assert np.isnan(diversity_score(model, [red], "units"))


def test_unit_flags_weak_and_inactive(astronaut: np.ndarray) -> None:
    model = colours()
    photo = np.asarray(Image.fromarray(astronaut).resize((64, 64)))
    ok = unit_quality(model, [photo], "units", 0, examples=0.9)
    assert ok.flags == [] and ok.ratio == pytest.approx(ok.activation / 0.9)
    weak = unit_quality(model, [photo], "units", 0, examples=10.0)
    assert weak.flags == ["weak"] and weak.caption().startswith("⚠")
    flat_curve = [0.0] * 40
    inactive = unit_quality(model, [photo], "units", 0, curves=[flat_curve])
    assert inactive.flags == ["inactive"]
    json.dumps(inactive.to_dict(), allow_nan=False)


def test_fv_quality_renders_and_compares_with_dataset_examples(color_folder: Path) -> None:
    from explorer.featurevis import get_preset

    model = colours()
    preset = get_preset("fast", steps=24, size=32).replace(model_size=None)
    res = fv_quality(model, "units", [0, 1], preset, examples_folder=str(color_folder), k=3, cache=False)
    assert [u.channel for u in res] == [0, 1]
    for u in res:
        assert u.examples is not None and u.examples > 0.5  # the reddest / greenest images read about 0.9
        assert u.ratio is not None and u.activation > 0
        assert "inactive" not in u.flags
    div = fv_quality(model, "units", [0], preset, diverse=3, cache=False)
    assert len(div[0].images) == 3 and div[0].diversity is not None and div[0].diversity >= 0


def test_flagged_labels_mark_only_the_flagged_images(astronaut: np.ndarray) -> None:
    photo = np.asarray(Image.fromarray(astronaut).resize((96, 96), Image.Resampling.LANCZOS))
    flat = np.full((96, 96, 3), 128, np.uint8)
    labels, summary = flagged_labels([photo, flat, photo], ["0", "1", "2"])
    assert labels == ["0", "1 (grey, collapsed)", "2"]
    assert summary == "1 of 3: grey 1, collapsed 1"
    assert flagged_labels([photo], ["7"]) == (["7"], "0 of 1")
