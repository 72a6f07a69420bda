"""explorer.trust.sanity: cascading randomization (Adebayo et al. 2018) on tiny hand-built networks, and once on the
bundled EfficientNet-Lite0 (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from explorer.layers import hook_count
from explorer.models import LoadedModel
from explorer.trust import TrustError, randomization_steps, sanity_check, similarity, spearman, ssim
from explorer.trust.sanity import randomize, top_step


def convnet(seed: int, width: int = 32, depth: int = 6, act: type[nn.Module] = nn.ReLU) -> LoadedModel:
    """`depth` 3×3 convolutions (two of them strided), global pooling and a 10-class linear head, seeded."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = 3
    for i in range(depth):
        layers += [nn.Conv2d(c, width, 3, stride=2 if i in (1, 3) else 1, padding=1), act()]
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return LoadedModel.wrap(nn.Sequential(*layers), input_size=(32, 32))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.astronaut()).resize((64, 64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_and_gradcam_decorrelate_while_guided_backprop_stays(seed: int, photo: Image.Image) -> None:
    model = convnet(seed)
    res = sanity_check(model, photo, ["gradient", "guided_backprop", "gradcam"], seed=seed)
    m = res.methods
    assert res.steps[0] == "original" and res.steps[1] == "14"  # the classifier goes first
    assert res.steps[res.top_step] == "6"  # the top half of the weights: 14, 10, 8, 6
    for name in ("gradient", "guided_backprop", "gradcam"):
        assert m[name].spearman[0] == pytest.approx(1.0) and m[name].ssim[0] == pytest.approx(1.0)
    assert m["gradcam"].top_spearman < 0.3
    assert m["gradient"].top_spearman < 0.3
    assert m["guided_backprop"].top_spearman > 0.6
    assert m["guided_backprop"].top_spearman > m["gradcam"].top_spearman + 0.4
    assert m["gradcam"].passed and m["gradient"].passed and not m["guided_backprop"].passed
    assert "fails" in m["guided_backprop"].verdict() and "passes" in m["gradcam"].verdict()


def test_the_shared_model_is_never_touched(photo: Image.Image) -> None:
    model = convnet(0, width=8, depth=3)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    params = [id(p) for p in model.module.parameters()]
    fp = model.fingerprint
    sanity_check(model, photo, ["gradient", "guided_backprop", "gradcam", "guided_gradcam"])
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [id(p) for p in model.module.parameters()] == params
    assert hook_count(model.module) == 0
    from explorer.models import fingerprint

    assert fingerprint(model.module) == fp


def test_steps_run_from_the_top_and_cover_every_parameter() -> None:
    model = convnet(0, width=8, depth=3)
    steps = randomization_steps(model)
    assert [s.block for s in steps] == ["8", "4", "2", "0"]
    covered = [name for s in steps for name in s.modules]
    owners = [n for n, mod in model.module.named_modules() if any(True for _ in mod.parameters(recurse=False))]
    assert sorted(covered) == sorted(owners)
    assert sum(s.params for s in steps) == sum(p.numel() for p in model.module.parameters())
    total = sum(s.params for s in steps)
    k = top_step(steps)
    assert sum(s.params for s in steps[:k]) >= total / 2 > sum(s.params for s in steps[: k - 1])


def test_randomize_draws_new_tensors_with_the_old_moments() -> None:
    from explorer.attribution import shadow

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3))
    with torch.no_grad():
        net[2].weight.mul_(3.0).add_(0.5)
    twin = shadow(net)
    old = net[2].weight.detach().clone()
    randomize(twin, ["2"], torch.Generator().manual_seed(1))
    new = twin[2].weight.detach()
    assert torch.equal(net[2].weight, old)  # the original keeps its tensor and values
    assert twin[0].weight is net[0].weight  # what was not randomized is still shared
    assert float(new.mean()) == pytest.approx(float(old.mean()), abs=0.02)
    assert float(new.std()) == pytest.approx(float(old.std()), rel=0.05)
    assert abs(float(np.corrcoef(new.flatten(), old.flatten())[0, 1])) < 0.05


def test_the_json_is_strict_and_named_for_its_measures(photo: Image.Image) -> None:
    model = convnet(0, width=8, depth=3)
    data = sanity_check(model, photo, ["gradient", "gradxact"], layers=["2", "4"]).to_dict()
    text = json.dumps(data, allow_nan=False)
    assert "spearman" in text and "ssim" in text
    assert set(data["methods"]) == {"gradient", "gradxact"}
    assert set(data["methods"]["gradxact"]["layers"]) == {"2", "4"}
    assert set(data["methods"]["gradient"]["layers"]) == {"input"}
    for rec in data["methods"].values():
        assert len(rec["spearman"]) == len(rec["ssim"]) == len(data["steps"])
        assert isinstance(rec["passed"], bool) and rec["verdict"]


def test_methods_that_cannot_run_are_reported_and_unknown_ones_refused(photo: Image.Image) -> None:
    model = convnet(0, width=8, depth=3, act=nn.GELU)
    res = sanity_check(model, photo, ["gradient", "guided_backprop"])
    assert "guided_backprop" in res.skipped and "ReLU" in res.skipped["guided_backprop"]
    assert list(res.methods) == ["gradient"]
    with pytest.raises(TrustError, match="Unknown attribution method"):
        sanity_check(model, photo, ["gradient", "nope"])
    with pytest.raises(TrustError):
        sanity_check(model, photo, ["guided_backprop"])


def test_map_similarity_measures() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((20, 20))
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, 3 * a**2 + 1) == pytest.approx(1.0)  # ranks only
    assert np.isnan(spearman(a, np.zeros_like(a)))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, rng.random((20, 20))) < 0.3
    t = torch.as_tensor(a, dtype=torch.float32)
    rho, s = similarity(t, -t)  # absolute values: a sign flip is the same map
    assert rho == pytest.approx(1.0) and s == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_bundled_model_reproduces_adebayo(bundled: LoadedModel) -> None:
    from explorer.data import ASSETS_DIR

    res = sanity_check(bundled, ASSETS_DIR / "chelsea.jpg", ["gradient", "guided_backprop", "gradcam"])
    m = res.methods
    assert res.steps[1] == "classifier"
    assert m["gradient"].passed and m["gradcam"].passed
    assert not m["guided_backprop"].passed and m["guided_backprop"].top_spearman > 0.9
    assert m["gradcam"].top_spearman < 0.3
