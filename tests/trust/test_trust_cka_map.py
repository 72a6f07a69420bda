"""explorer.trust.cka_map: debiased CKA for every pair of layers of two models, with a permutation null and a
calibrated value."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from explorer.models import LoadedModel
from explorer.transfer.comparison.cka import gram_cka
from explorer.trust import Samples, TrustError, calibrated_map, cka_map, layer_grams
from explorer.trust.cka_map import calibrate, critical_value, pooled


def convnet(seed: int, width: int = 8) -> LoadedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * width, 5),
    )  # fmt: skip
    return LoadedModel.wrap(net, input_size=(32, 32))


@pytest.fixture(scope="module")
def samples() -> Samples:
    """40 images with structure (smooth blobs of colour plus noise), so that layers agree beyond chance."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(40):
        coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        big = np.asarray(Image.fromarray(coarse).resize((36, 36), Image.Resampling.BICUBIC), dtype=np.float64)
        images.append(Image.fromarray(np.clip(big + rng.normal(0, 20, big.shape), 0, 255).astype(np.uint8)))
    return Samples("blobs", [f"{i}" for i in range(40)], images, [-1] * 40)


def test_self_comparison_has_a_diagonal_of_one_and_is_symmetric(samples: Samples) -> None:
    model = convnet(0)
    res = cka_map(model, model, samples, permutations=50)
    assert res.a_layers == res.b_layers == ["0", "2", "4", "6", "8"]
    assert np.allclose(np.diag(res.raw), 1.0, atol=1e-6)
    assert np.allclose(np.diag(res.calibrated), 1.0, atol=1e-6)
    assert np.allclose(res.raw, res.raw.T, atol=1e-10)
    assert np.abs(res.calibrated - res.calibrated.T).max() < 0.05  # separate shuffles per pair: close, not equal
    assert np.all(res.p_values[np.diag_indices(5)] == pytest.approx(1 / 51))
    assert res.notes and "same weights" in res.notes[0]


def test_raw_values_are_the_debiased_cka_of_explorer_transfer(samples: Samples) -> None:
    a, b = convnet(0), convnet(1, width=6)
    ga = layer_grams(a, samples, ["2", "8"], grid=4)
    gb = layer_grams(b, samples, ["4"], grid=4)
    res = calibrated_map(ga, gb, permutations=10)
    feats = {}
    for model, name in ((a, "2"), (a, "8"), (b, "4")):
        from explorer.layers import forward_until, layout_of

        with torch.no_grad():
            out = forward_until(model.module, name, model.normalize(samples.batch01(model)))
        feats[(model is a, name)] = pooled(out, layout_of(model, name), 4)
    for i, name in enumerate(["2", "8"]):
        fa, fb = feats[(True, name)], feats[(False, "4")]
        expected = gram_cka(fa @ fa.T, fb @ fb.T, debiased=True)
        assert res["raw"][i, 0] == pytest.approx(expected, abs=1e-9)


def test_calibration_lowers_every_value_against_an_unrelated_network(samples: Samples) -> None:
    a, b = convnet(0), convnet(7)
    res = cka_map(a, b, samples, permutations=100)
    below_one = res.raw < 1 - 1e-9
    assert np.all(res.calibrated[below_one] < res.raw[below_one])
    assert np.all(res.tau > 0)
    assert np.all((res.calibrated >= 0) & (res.calibrated <= 1))
    assert res.best["raw"] == pytest.approx(float(res.raw.max()))
    assert 0 <= res.best["calibrated"] <= res.best["raw"]
    data = res.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert "raw" in data and "calibrated" in data and "null" in text
    assert np.asarray(data["raw"]).shape == (5, 5) == np.asarray(data["calibrated"]).shape


def test_independent_features_calibrate_to_zero() -> None:
    rng = np.random.default_rng(0)
    n = 60

    def grams(k: int) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(k):
            f = torch.as_tensor(rng.normal(size=(n, 30)))
            out[str(i)] = f @ f.T
        return out

    res = calibrated_map(grams(6), grams(6), permutations=99, seed=3)
    assert np.abs(res["raw"]).max() < 0.2  # debiased: unrelated features read about 0
    assert res["plain"].min() > 0.25  # the plain estimator reads about d / (n + d) = 0.33 on the same features
    assert (res["calibrated"] == 0).mean() >= 0.8  # not above the 95 % critical value, mostly
    assert abs(float(np.mean(res["null_mean"]))) < 0.01
    assert 0.2 < float(np.mean(res["p_values"])) < 0.8  # p-values of a true null spread over (0, 1]


def test_critical_value_and_calibration() -> None:
    null = torch.arange(1.0, 20.0)[None] / 100  # 19 null values 0.01 … 0.19
    tau = critical_value(torch.tensor([0.5]), null, 0.05)
    assert float(tau) == pytest.approx(0.19)  # ceil(0.95 · 20) = 19th smallest of the 20
    assert float(calibrate(torch.tensor(1.0), torch.tensor(0.3))) == pytest.approx(1.0)
    assert float(calibrate(torch.tensor(0.65), torch.tensor(0.3))) == pytest.approx(0.5)
    assert float(calibrate(torch.tensor(0.2), torch.tensor(0.3))) == 0.0
    with pytest.raises(TrustError):
        calibrated_map({"x": torch.eye(5)}, {"y": torch.eye(5)}, permutations=0)


def test_too_few_images_and_unknown_layers_are_refused(samples: Samples) -> None:
    model = convnet(0)
    with pytest.raises(TrustError, match="at least 8 images"):
        cka_map(model, model, samples.subset(0, 5))
    with pytest.raises(TrustError, match="no layer"):
        cka_map(model, model, samples, layers_a=["nope"])


@pytest.mark.slow
def test_bundled_against_its_untrained_twin(bundled: LoadedModel) -> None:
    from explorer.models import load_model

    untrained = load_model("bundled:efficientnet_lite0:untrained", device="cpu")
    res = cka_map(bundled, untrained, "demo:digits", max_images=100, input_size=64, permutations=100)
    below_one = res.raw < 1 - 1e-9
    assert np.all(res.calibrated[below_one] < res.raw[below_one])
    # debiased CKA already reads ~0 by chance: calibration lowers it by about tau ~ 1/n here, plain CKA sits higher
    assert float(res.raw.mean() - res.calibrated.mean()) > 0.005
    assert res.plain is not None and float(res.plain.mean()) > float(res.raw.mean())
    same = cka_map(bundled, bundled, "demo:digits", max_images=60, input_size=64, permutations=20)
    assert np.allclose(np.diag(same.raw), 1.0, atol=1e-6)
