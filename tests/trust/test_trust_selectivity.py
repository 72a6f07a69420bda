"""explorer.trust.selectivity: the class selectivity index on hand-made responses and on a hand-built network whose
units are made to fire for one class only, or for every class alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explorer.models import LoadedModel
from explorer.trust import TrustError, selectivity, selectivity_index


def test_index_of_hand_made_responses() -> None:
    labels = np.repeat(np.arange(4), 25)
    rng = np.random.default_rng(0)
    only_two = np.where(labels == 2, 5.0, 0.0)  # fires for class 2 only
    agnostic = np.full(100, 3.0)  # the same response to every image
    noisy_agnostic = rng.uniform(1.0, 2.0, 100)
    half = np.where(labels < 2, 4.0, 0.0)  # two classes alike: mu_max 4, rest (4 + 0 + 0) / 3
    silent = np.zeros(100)
    negative = -np.ones(100)  # clipped at 0: silent
    si = selectivity_index(np.stack([only_two, agnostic, noisy_agnostic, half, silent, negative], 1), labels)
    assert si[0] == pytest.approx(1.0)
    assert si[1] == pytest.approx(0.0)
    assert 0 <= si[2] < 0.1
    assert si[3] == pytest.approx((4 - 4 / 3) / (4 + 4 / 3))
    assert np.isnan(si[4]) and np.isnan(si[5])
    with pytest.raises(TrustError, match="two classes"):
        selectivity_index(np.ones((5, 2)), [0] * 5)


class ColourUnits(nn.Module):
    """Three units on a 1×1 convolution over RGB: 0 = red minus the rest (fires for red images only), 1 = the mean
    brightness (fires for every image alike), 2 = blue minus the rest; then a pool and a 3-class head."""

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.units.weight.copy_(
                torch.tensor([[1.0, -1.0, -1.0], [1 / 3, 1 / 3, 1 / 3], [-1.0, -1.0, 1.0]]).view(3, 3, 1, 1)
            )
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.units(x))).flatten(1))


def test_units_built_for_one_class_and_for_all(color_folder: Path) -> None:
    torch.manual_seed(0)
    model = LoadedModel.wrap(ColourUnits(), input_size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1))
    rep = selectivity(model, color_folder, ["relu", "head"], max_images=None)
    assert rep.classes == ["blue", "green", "red"] and rep.images == 36
    relu = rep.layers[0]
    assert relu.layer == "relu" and relu.units == 3
    assert relu.index[0] > 0.95 and relu.index[2] > 0.95
    assert relu.index[1] < 0.05
    assert [rep.classes[c] for c in relu.top_classes[0][:1]] == ["red"]
    assert [rep.classes[c] for c in relu.top_classes[2][:1]] == ["blue"]
    assert relu.chance < 0.3 < relu.mean  # shuffled labels: far less selective
    assert [ls.depth for ls in rep.layers] == [0.0, 1.0]
    data = rep.to_dict()
    json.dumps(data, allow_nan=False)
    row = data["layers"][0]
    assert row["unit_top_classes"][0][0] == "red" and len(row["unit_selectivity"]) == 3
    assert rep.to_dict(units=False)["layers"][0].keys() >= {"mean_selectivity", "chance_selectivity"}
    assert "unit_selectivity" not in rep.to_dict(units=False)["layers"][0]


def test_a_folder_without_classes_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    model = LoadedModel.wrap(ColourUnits(), input_size=(32, 32))
    with pytest.raises(Exception, match="sub-folder"):
        selectivity(model, tmp_path)


@pytest.mark.slow
def test_bundled_generic_to_specific_on_digits(bundled: LoadedModel) -> None:
    rep = selectivity(bundled, "demo:digits", max_images=300, input_size=64)
    means = [ls.mean for ls in rep.layers]
    first, last = np.mean(means[:4]), np.mean(means[-6:])
    assert last > first + 0.1  # early blocks respond to every digit alike, late ones to a few
    assert all(ls.mean > ls.chance for ls in rep.layers)
