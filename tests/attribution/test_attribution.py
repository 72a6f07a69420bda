"""Layer attribution: equality with Captum, hand-computed maps, completeness, costs, hooks, colour scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import (
    GuidedGradCam,
    LayerDeepLift,
    LayerGradCam,
    LayerGradientXActivation,
)
from PIL import Image
from torch import nn

from explorer.attribution import (
    METHODS,
    AttributionError,
    attribute,
    availability,
    method_cost,
    overlay,
    scale,
    shadow,
    shared_scale,
    unit_attribution,
)
from explorer.data import sample_images
from explorer.layers import LayerError, hook_count, resolve
from explorer.models import LoadedModel

# --------------------------------------------------------------------------- tiny models


class Tiny(nn.Module):
    """conv → ReLU → strided conv → ReLU → pool → linear; `inplace` makes the ReLUs overwrite the conv outputs."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act2 = nn.ReLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


class Hand(nn.Module):
    """A_0 = R, A_1 = -2 G (a 1×1 conv), y = V · mean_hw(A) with V = [[3, 1], [0, 1]]: all by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 2, 1, bias=False)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.weight[0, 0] = 1.0
            self.mix.weight[1, 1] = -2.0
            self.head.weight.copy_(torch.tensor([[3.0, 1.0], [0.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(x).mean(dim=(2, 3)))


CALLS: list[int] = []  # batch size of every forward of a Counted model (class-level: shadows share it)
BACKWARDS: list[int] = []


class Counted(nn.Module):
    """Counts forwards and backwards through `inner`, also when Captum runs it on a shadow copy."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        CALLS.append(int(x.shape[0]))
        if out.requires_grad:
            out.register_hook(lambda g: BACKWARDS.append(int(g.shape[0])))
        return out


def loaded(module: nn.Module, size: tuple[int, int] = (16, 16), classes: int = 3) -> LoadedModel:
    module = module.eval()
    return LoadedModel.wrap(
        module,
        spec="test:tiny",
        input_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=[f"c{i}" for i in range(classes)],
        resize_size=size[0],
    )


@pytest.fixture(scope="module")
def cat(bundled: LoadedModel) -> torch.Tensor:
    return bundled.preprocess(Image.open(sample_images()["chelsea"]))


def _state(module: nn.Module) -> tuple:
    return (
        hook_count(module),
        module.training,
        [p.requires_grad for p in module.parameters()],
        [p.grad is None for p in module.parameters()],
        [getattr(m, "inplace", None) for m in module.modules()],
    )


# --------------------------------------------------------------------------- equal to Captum


def test_all_layers_gradcam_in_one_pass_equals_captum_per_layer_on_bundled(bundled, cat):
    x = cat  # the loop below is 18 Captum passes: keep the batch at one image
    res = attribute(bundled, x, "all", "gradcam", target=[285])
    assert res.cost.forward_calls == 1 and res.cost.backward_calls == 1
    assert len(res.layers) == 18 and res.layers[0] == "conv_stem" and res.layers[-1] == "conv_head"
    for name in res.layers:
        ref = LayerGradCam(bundled.module, resolve(bundled.module, name)).attribute(x, target=285)
        assert res.maps[name].shape == ref[:, 0].shape
        torch.testing.assert_close(res.maps[name], ref[:, 0], atol=1e-5, rtol=0)
    assert hook_count(bundled.module) == 0


def test_gradxact_and_channel_scores_equal_captum_multi_layer(bundled, cat):
    names = ["blocks.1.0", "blocks.3.2", "conv_head"]
    res = attribute(bundled, cat, names, "gradxact")
    ref = LayerGradientXActivation(bundled.module, [resolve(bundled.module, n) for n in names]).attribute(
        cat, target=res.target
    )
    for name, r in zip(names, ref, strict=True):
        torch.testing.assert_close(res.maps[name], r.sum(1), atol=1e-5, rtol=0)
        torch.testing.assert_close(res.channels[name], r.sum((2, 3)), atol=1e-5, rtol=1e-5)
    top = res.top_channels("blocks.3.2", k=4)
    scores = res.channels["blocks.3.2"][0]
    assert [c for c, _ in top] == scores.argsort(descending=True)[:4].tolist()
    assert res.target_name() == bundled.class_names[res.target[0]]


def test_gradcam_on_hand_built_model_matches_hand_computation():
    model = loaded(Hand(), size=(2, 2), classes=2)
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # R
    x[0, 1] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G
    # dy0/dA_c = V[0, c] / 4 everywhere, so Grad-CAM = 3/4 R + 1/4 (-2 G).
    expected = torch.tensor([[[0.25, 1.5], [2.25, 2.5]]])
    for method in ("gradcam", "gradxact"):
        res = attribute(model, x, ["mix"], method, target=0)
        torch.testing.assert_close(res.maps["mix"], expected)
        assert res.top_channels("mix") == [(0, pytest.approx(7.5)), (1, pytest.approx(-1.0))]
    ref = LayerGradCam(model.module, model.module.mix).attribute(x, target=0)
    torch.testing.assert_close(ref[:, 0], expected)
    # The model is linear: Integrated Gradients from a zero baseline gives the same map, with no error.
    ig = attribute(model, x, ["mix"], "ig", target=0, baseline="zeros", n_steps=4)
    torch.testing.assert_close(ig.maps["mix"], expected, atol=1e-6, rtol=0)
    assert abs(float(ig.delta["mix"][0])) < 1e-5


def test_in_place_activation_after_the_layer_still_matches_captum():
    torch.manual_seed(0)
    model = loaded(Tiny(inplace=True))
    x = torch.randn(3, 3, 16, 16)
    res = attribute(model, x, "all", "gradcam", target=2)
    assert res.layers == ["conv1", "conv2"]
    for name in res.layers:
        ref = LayerGradCam(model.module, resolve(model.module, name)).attribute(x, target=2)
        torch.testing.assert_close(res.maps[name], ref[:, 0], atol=1e-6, rtol=0)
    assert (res.maps["conv1"] < 0).any()  # pre-ReLU values: the in-place ReLU did not change the record


def test_guided_gradcam_for_all_layers_equals_captum_per_layer():
    torch.manual_seed(1)
    model = loaded(Tiny())
    x = torch.randn(2, 3, 16, 16)
    res = attribute(model, x, "all", "guided_gradcam", target=1)
    assert res.cost.forward_calls == 2
    for name in res.layers:
        ref = GuidedGradCam(model.module, resolve(model.module, name)).attribute(x, target=1)
        torch.testing.assert_close(res.maps[name], ref.sum(1), atol=1e-6, rtol=0)


def test_guided_gradcam_sees_relu6_through_the_sanitised_copy(bundled, cat):
    res = attribute(bundled, cat, ["blocks.5.3"], "guided_gradcam", keep_raw=True)
    twin = shadow(bundled.module, no_inplace=True, relu6_as_relu=True)
    ref = GuidedGradCam(twin, resolve(twin, "blocks.5.3")).attribute(cat, target=res.target)
    torch.testing.assert_close(res.raw["blocks.5.3"], ref, atol=1e-5, rtol=1e-4)
    plain = GuidedGradCam(bundled.module, resolve(bundled.module, "blocks.5.3")).attribute(cat, target=res.target)
    assert not torch.allclose(ref, plain)  # unsanitised, Captum would not guide the ReLU6 layers at all
    assert all(type(m).__name__ != "GuidedReLU6" for m in bundled.module.modules())


# --------------------------------------------------------------------------- completeness, ablation, DeepLift


def test_integrated_gradients_completeness_on_tiny_model():
    torch.manual_seed(2)
    model = loaded(Tiny())
    x = torch.randn(2, 3, 16, 16)
    res = attribute(model, x, ["conv2"], "ig", target=0, n_steps=64)
    with torch.no_grad():
        gap = model.module(x)[:, 0] - model.module(model.normalize(torch.zeros_like(x)))[:, 0]
    total = res.maps["conv2"].sum((1, 2))
    torch.testing.assert_close(total - res.delta["conv2"], gap, atol=1e-4, rtol=1e-4)  # Captum's delta is honest
    assert (res.delta["conv2"].abs() <= 0.02 * gap.abs() + 1e-4).all()  # and small


def test_ablation_map_is_the_drop_when_a_patch_is_zeroed():
    torch.manual_seed(3)
    model = loaded(Tiny())
    x = torch.randn(1, 3, 16, 16)
    res = attribute(model, x, ["conv2"], "ablation", target=1, grid=2)
    m = model.module

    def score(zero: tuple[slice, slice] | None) -> float:
        h = m.conv2(m.act1(m.conv1(x)))
        if zero is not None:
            h = h.clone()
            h[:, :, zero[0], zero[1]] = 0
        return float(m.fc(m.pool(m.act2(h)).flatten(1))[0, 1].detach())

    full = score(None)
    with torch.no_grad():
        for (r, c), patch in {(0, 0): (slice(0, 4), slice(0, 4)), (1, 1): (slice(4, 8), slice(4, 8))}.items():
            expected = full - score(patch)
            assert res.maps["conv2"][0, r * 4, c * 4] == pytest.approx(expected, abs=1e-5)
    assert res.maps["conv2"][0, :4, :4].unique().numel() == 1  # one value per patch


def test_deeplift_runs_on_a_sanitised_copy_and_is_refused_with_reasons_elsewhere(bundled):
    torch.manual_seed(4)
    model = loaded(Tiny(inplace=True))
    before = _state(model.module)
    x = torch.randn(2, 3, 16, 16)
    res = attribute(model, x, ["conv2"], "deeplift", target=0)
    twin = Tiny()
    twin.load_state_dict(model.module.state_dict())
    base = model.normalize(torch.zeros_like(x))
    ref = LayerDeepLift(twin.eval(), twin.conv2).attribute(x, baselines=base, target=0)
    torch.testing.assert_close(res.maps["conv2"], ref.sum(1), atol=1e-5, rtol=1e-5)
    assert _state(model.module) == before  # the shared model keeps its in-place ReLUs
    assert "ReLU6" in availability(bundled)["deeplift"]
    resnet = loaded(torchvision.models.resnet18(weights=None), size=(64, 64), classes=1000)
    reason = availability(resnet)["deeplift"]
    assert reason and "several times" in reason and "relu" in reason
    with pytest.raises(AttributionError, match="several times"):
        attribute(resnet, torch.zeros(1, 3, 64, 64), "all", "deeplift")
    assert method_cost(resnet, 1, "all", "deeplift").available is False


# --------------------------------------------------------------------------- costs and hooks

COST_CASES = [
    ("gradcam", {}),
    ("gradxact", {}),
    ("activation", {}),
    ("guided_gradcam", {}),
    ("ig", {"n_steps": 5, "internal_batch_size": None}),
    ("ig", {"n_steps": 7, "internal_batch_size": 6}),
    ("conductance", {"n_steps": 5, "internal_batch_size": 4}),
    ("conductance", {"n_steps": 6, "internal_batch_size": None}),
    ("ablation", {"grid": 3, "perturbations_per_eval": 4}),
    ("deeplift", {}),
]


@pytest.mark.parametrize("target", [None, 1])
@pytest.mark.parametrize(("method", "options"), COST_CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(COST_CASES)])
def test_cost_report_matches_counted_passes(method, options, target):
    torch.manual_seed(5)
    model = loaded(Counted(Tiny()))
    layers = ["inner.conv1", "inner.conv2"]
    x = torch.randn(2, 3, 16, 16)
    cost = method_cost(model, x, layers, method, target, **options)
    CALLS.clear()
    BACKWARDS.clear()
    attribute(model, x, layers, method, target, **options)
    assert (len(CALLS), sum(CALLS), len(BACKWARDS)) == (cost.forward_calls, cost.images_forward, cost.backward_calls)
    assert cost.available and str(cost.forward_calls) in cost.describe()
    assert hook_count(model.module) == 0


def test_cost_on_bundled_and_no_hook_on_the_shared_model_even_inside_captum(bundled, cat):
    model = LoadedModel(**{**bundled.__dict__, "module": Counted(bundled.module)})
    seen: list[int] = []
    original_forward = Counted.forward

    def watching(self: Counted, x: torch.Tensor) -> torch.Tensor:
        seen.append(hook_count(model.module))  # the shared module, while Captum's hooks sit on its shadow
        return original_forward(self, x)

    layers = ["inner.blocks.3.2"]
    cost = method_cost(model, cat, layers, "ig", n_steps=4)
    CALLS.clear()
    Counted.forward = watching  # type: ignore[method-assign]
    try:
        res = attribute(model, cat, layers, "ig", n_steps=4)
    finally:
        Counted.forward = original_forward  # type: ignore[method-assign]
    assert len(CALLS) == cost.forward_calls == 6 and sum(CALLS) == cost.images_forward
    assert seen and set(seen) == {0}
    assert res.delta["inner.blocks.3.2"].shape == (1,)


def test_shared_model_untouched_by_every_method(bundled, cat):
    before = _state(bundled.module)
    for method in METHODS:
        if availability(bundled)[method]:
            continue
        attribute(bundled, cat, ["blocks.5.3"], method, n_steps=2, internal_batch_size=None, grid=2,
                  perturbations_per_eval=4)  # fmt: skip
        assert _state(bundled.module) == before, method
    with pytest.raises(AttributionError, match="out of range"):
        attribute(bundled, cat, ["blocks.5.3"], "gradcam", target=5000)
    assert _state(bundled.module) == before


def test_shadow_shares_weights_and_carries_no_hooks():
    model = Tiny(inplace=True)
    handle = model.conv1.register_forward_hook(lambda *a: None)
    try:
        twin = shadow(model, no_inplace=True)
    finally:
        handle.remove()
    assert hook_count(twin) == 0
    assert twin.conv1.weight is model.conv1.weight and twin is not model
    assert twin.act1.inplace is False and model.act1.inplace is True


# --------------------------------------------------------------------------- inputs, targets, layers


def test_targets_layers_and_methods_are_checked():
    model = loaded(Tiny())
    x = torch.randn(2, 3, 16, 16)
    assert attribute(model, x, ["conv2"], "gradcam", target=["c2", "C1"]).target == [2, 1]
    with pytest.raises(AttributionError, match="no class called 'dog'"):
        attribute(model, x, ["conv2"], "gradcam", target="dog")
    with pytest.raises(AttributionError, match="3 targets were given for 2 images"):
        attribute(model, x, ["conv2"], "gradcam", target=[0, 1, 2])
    with pytest.raises(AttributionError, match="Unknown attribution method"):
        attribute(model, x, ["conv2"], "lime")
    with pytest.raises(LayerError):
        attribute(model, x, ["conv9"], "gradcam")
    with pytest.raises(AttributionError, match="Unknown option.*nsteps"):
        attribute(model, x, ["conv2"], "ig", nsteps=3)
    res = attribute(model, x, ["conv2", "fc"], "ablation", grid=2)
    assert res.layers == ["conv2"] and "no spatial map" in res.skipped["fc"]
    assert hook_count(model.module) == 0


def test_pil_and_path_inputs_give_the_same_maps(bundled):
    path = sample_images()["coffee"]
    a = attribute(bundled, Image.open(path), ["blocks.5.3"], "gradcam")
    b = attribute(bundled, str(path), ["blocks.5.3"], "gradcam")
    torch.testing.assert_close(a.maps["blocks.5.3"], b.maps["blocks.5.3"])
    assert a.images.shape == (1, 224, 224, 3) and float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    assert a.predictions()[0][0] == bundled.predict(Image.open(path), 1)[0][0]


# --------------------------------------------------------------------------- colour scales and overlays


def test_shared_scale_spans_all_layers_and_per_layer_scales_each():
    model = loaded(Tiny())
    x = torch.randn(1, 3, 16, 16)
    res = attribute(model, x, "all", "gradxact")
    shared = res.scale("shared", "signed")
    top = max(float(m.abs().max()) for m in res.maps.values())
    assert all(v == pytest.approx((-top, top)) for v in shared.values())
    per = res.scale("layer", "abs")
    assert per["conv1"][1] == pytest.approx(float(res.maps["conv1"].abs().max()))
    other = attribute(model, 2 * x, "all", "gradxact")
    assert shared_scale([res, other], "abs")[1] == pytest.approx(
        max(top, *(float(m.abs().max()) for m in other.maps.values()))
    )
    pics = res.overlays(scale="layer")
    assert set(pics) == {"conv1", "conv2"} and all(p.size == (16, 16) for p in pics.values())


def test_overlay_leaves_zero_attribution_untouched_and_colours_the_peak():
    image = np.full((8, 8, 3), 0.5, np.float32)
    values = np.zeros((4, 4), np.float32)
    same = np.asarray(overlay(image, values, 0.0, 1.0))
    assert (same == 128).all()
    values[0, 0] = 10.0
    vmin, vmax = scale([values], "positive")
    out = np.asarray(overlay(image, values, vmin, vmax, alpha=1.0)).astype(int)
    assert (out[0, 0] != 128).any() and (out[7, 7] == 128).all()
    assert abs(out[0, 0] - np.array([252, 255, 164])).max() <= 40  # the hot end of inferno


# --------------------------------------------------------------------------- one unit instead of a class


def test_unit_saliency_is_the_gradient_of_the_channel_maximum_and_ig_is_complete():
    torch.manual_seed(6)
    model = loaded(Tiny())
    x = torch.randn(2, 3, 16, 16)
    sal = unit_attribution(model, x, "conv2", 4, "saliency")
    xg = x.clone().requires_grad_(True)
    m = model.module
    unit = m.conv2(m.act1(m.conv1(xg)))[:, 4].amax((1, 2))
    (g,) = torch.autograd.grad(unit.sum(), xg)
    torch.testing.assert_close(sal.maps, g.abs().amax(1))
    torch.testing.assert_close(sal.values, unit.detach())
    ig = unit_attribution(model, x, "conv2", 4, "ig", reduce="mean", n_steps=64, baseline="zeros")
    with torch.no_grad():
        gap = m.conv2(m.act1(m.conv1(x)))[:, 4].mean((1, 2)) - m.conv2(m.act1(m.conv1(torch.zeros_like(x))))[:, 4].mean(
            (1, 2)
        )
    torch.testing.assert_close(ig.maps.sum((1, 2)), gap, atol=1e-3, rtol=1e-2)
    assert len(ig.overlays()) == 2 and hook_count(m) == 0
    with pytest.raises(AttributionError, match="out of range"):
        unit_attribution(model, x, "conv2", 6)


# --------------------------------------------------------------------------- command line


def test_cli_attribute_writes_overlays_and_magnitudes(bundled, tmp_path, monkeypatch, capsys):
    import json

    import explorer.models
    from explorer.cli import main

    monkeypatch.setattr(explorer.models, "load_model", lambda *a, **k: bundled)
    chelsea = str(sample_images()["chelsea"])
    out = tmp_path / "att"
    args = ["attribute", chelsea, "--layers", "blocks.3.2,blocks.5.3", "--target", "tabby", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "attribution.json").read_text())
    assert summary["target_name"] == "tabby" and summary["forward_calls"] == 1
    assert set(summary["layers"]) == {"blocks.3.2", "blocks.5.3"}
    rec = summary["layers"]["blocks.5.3"]
    assert rec["colour_range"] == summary["layers"]["blocks.3.2"]["colour_range"]  # shared scale
    assert rec["colour_range"][1] == pytest.approx(max(r["max"] for r in summary["layers"].values()), rel=1e-5)
    assert Image.open(out / rec["png"]).size == (224, 224) and (out / "input.png").exists()
    assert Image.open(out / "grid.png").width > 2 * 224  # both layers side by side above the colour bar
    csv_layers = {line.split(",")[0] for line in (out / "magnitudes.csv").read_text().splitlines()[1:]}
    assert csv_layers == {"blocks.3.2", "blocks.5.3"}
    assert "1 forward pass" in capsys.readouterr().err
    assert main(["attribute", chelsea, "--method", "deeplift", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: DeepLift has no rule for ReLU6")
