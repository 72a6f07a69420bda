"""explorer.trust.faithfulness: deletion and insertion curves on a model whose class score is a known weighted sum of
pixels (the true importance is known), and the per-layer report on a tiny convolutional network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from explorer.models import LoadedModel
from explorer.trust import TrustError, area, faithfulness, perturbation_curves
from explorer.trust.faithfulness import fill_image, random_map

SIDE = 24


class WeightedSum(nn.Module):
    """Class 0 scores a fixed weighted sum of the pixels (the same weight on R, G and B); class 1 scores 0."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.head = nn.Linear(1, 2, bias=False)  # present so that LoadedModel.wrap counts 2 classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.weight).sum(dim=(1, 2, 3)) / (3 * self.weight.sum())  # the weighted mean pixel, in [0, 1]
        logit = 12.0 * (s - 0.3)
        return torch.stack([logit, torch.zeros_like(logit)], 1)


def weighted_model(seed: int = 0) -> tuple[LoadedModel, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(SIDE, SIDE, generator=g) ** 4  # a few pixels carry most of the weight
    net = WeightedSum(w.expand(1, 1, SIDE, SIDE).clone())
    return LoadedModel.wrap(net, input_size=(SIDE, SIDE), mean=(0, 0, 0), std=(1, 1, 1), resize_size=SIDE), w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_true_importance_beats_a_random_map(seed: int) -> None:
    model, w = weighted_model(seed)
    x = torch.rand(3, SIDE, SIDE, generator=torch.Generator().manual_seed(100 + seed)) * 0.5 + 0.5
    true = perturbation_curves(model, x, w, 0, steps=12, fill="black")
    rand = perturbation_curves(model, x, random_map((SIDE, SIDE), 1000 + seed), 0, steps=12, fill="black")
    anti = perturbation_curves(model, x, -w, 0, steps=12, fill="black")
    assert area(true["deletion"]) < area(rand["deletion"]) - 0.1
    assert area(true["insertion"]) > area(rand["insertion"]) + 0.1
    assert area(anti["deletion"]) > area(rand["deletion"])  # least relevant first is the worst order
    for c in (true, rand):
        assert c["deletion"][0] == pytest.approx(c["insertion"][-1], abs=1e-6)  # the whole image
        assert c["deletion"][-1] == pytest.approx(c["insertion"][0], abs=1e-6)  # the fill image
    assert np.all(np.diff(true["deletion"]) <= 1e-9)  # every deleted pixel had a positive weight


def test_areas_and_fills() -> None:
    assert area([1.0] * 9) == pytest.approx(1.0)
    assert area(np.linspace(0, 1, 17)) == pytest.approx(0.5)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = fill_image(x, "blur")
    assert blurred.shape == x.shape
    assert float(blurred.mean()) == pytest.approx(float(x.mean()), abs=0.02)
    assert float(blurred.std()) < 0.5 * float(x.std())  # detail is gone
    assert float(fill_image(x, "black").abs().max()) == 0.0
    mean = fill_image(x, "mean")
    assert torch.allclose(mean[0, :, 0, 0], x.mean(dim=(2, 3))[0])
    with pytest.raises(TrustError, match="Unknown fill"):
        fill_image(x, "sepia")


def convnet() -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 4),
    )  # fmt: skip
    return LoadedModel.wrap(net, input_size=(32, 32))


def test_the_report_ranks_every_layer_against_its_own_random_grid(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    model = convnet()
    rep = faithfulness(model, tmp_path, "gradcam", max_images=3, steps=8)
    assert rep.images == 3 and set(rep.layers) == {"0", "2", "4"}
    assert {n: rep.layers[n].grid for n in rep.layers} == {"0": (32, 32), "2": (16, 16), "4": (8, 8)}
    scores = [rep.layers[n].score for n in rep.ranking]
    assert scores == sorted(scores, reverse=True)
    data = rep.to_dict()
    json.dumps(data, allow_nan=False)
    for rec in data["layers"].values():
        for key in ("insertion", "deletion", "random_insertion", "random_deletion", "score"):
            assert isinstance(rec[key], float)
        assert len(rec["curves"]["deletion"]) == 9
    assert "smooth" in data["bias_note"] and data["ranking"] == rep.ranking
    one = faithfulness(model, tmp_path / "0.png", "gradxact", layers=["4"], steps=4)
    assert one.images == 1 and list(one.layers) == ["4"]


def test_refusals() -> None:
    model = convnet()
    img = Image.new("RGB", (32, 32), "gray")
    with pytest.raises(TrustError, match="at least 2 steps"):
        faithfulness(model, img, "gradcam", steps=1)
    with pytest.raises(Exception, match="Unknown attribution method"):
        faithfulness(model, img, "nope")
