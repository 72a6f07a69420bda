"""Attribution on transformer layouts: a ViT's token blocks and Swin's channels-last stages read as grids, the
one-pass Grad-CAM equal to Captum's LayerGradCam with the same reshape, Captum's per-layer methods through grid
taps, and models whose forward returns a dict or a tuple."""

from __future__ import annotations

import re

import pytest
import torch
from captum.attr import LayerGradCam
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from explorer.attribution import AttributionError, attribute, availability, method_cost, resolve_layers, shadow
from explorer.attribution.sanitize import Logits, tap_grids
from explorer.errors import ModelError
from explorer.layers import hook_count, layout_of, resolve
from explorer.models import LoadedModel


def _vit() -> LoadedModel:
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=5)  # fmt: skip
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero: every gradient would be zero
    return LoadedModel.wrap(vit, input_size=(32, 32))


def _swin() -> LoadedModel:
    torch.manual_seed(0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2],
                           num_classes=5)  # fmt: skip
    return LoadedModel.wrap(swin, input_size=(32, 32))


def _x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("make", [_vit, _swin], ids=["vit", "swin"])
def test_one_pass_gradcam_on_every_block_equals_captum_layer_gradcam_with_the_same_reshape(make) -> None:
    model = make()
    x = _x()
    res = attribute(model, x, "all", "gradcam")
    kinds = {layout_of(model, n).kind for n in res.layers}
    assert kinds == ({"nchw", "tokens"} if make is _vit else {"nchw", "nhwc"})
    if make is _vit:
        assert [n for n in res.layers if n.startswith("encoder.layers.")] == [
            f"encoder.layers.encoder_layer_{i}" for i in range(3)
        ]
    tgt = torch.tensor(res.target)
    last = "encoder.layers.encoder_layer_2"  # the ViT's classifier reads only the class token after it
    for name in res.layers:
        twin = shadow(model.module)
        taps = tap_grids(twin, {name: layout_of(model, name)})
        ref = LayerGradCam(Logits(twin), resolve(twin, taps[name])).attribute(x, target=tgt)[:, 0].detach()
        assert res.maps[name].shape == ref.shape
        assert (float(ref.abs().max()) == 0) == (name == last)
        assert torch.allclose(res.maps[name], ref, atol=1e-5, rtol=0), name
    if make is _vit:
        assert any(note.startswith(f"{last}: zero, because") for note in res.notes)
    assert hook_count(model.module) == 0


def test_token_maps_leave_the_class_token_out_and_grad_x_act_sums_over_channels() -> None:
    model = _vit()
    x = _x(1)
    res = attribute(model, x, ["encoder.layers.encoder_layer_1"], "gradxact", keep_raw=True)
    assert res.maps["encoder.layers.encoder_layer_1"].shape == (1, 4, 4)
    assert res.channels["encoder.layers.encoder_layer_1"].shape == (1, 16)
    raw = res.raw["encoder.layers.encoder_layer_1"]
    assert raw.shape == (1, 16, 4, 4)  # 16 patch tokens as a grid; the class token (index 0) is not in it
    assert torch.allclose(raw.sum(1), res.maps["encoder.layers.encoder_layer_1"])


@pytest.mark.parametrize("method", ["ig", "ablation", "conductance"])
def test_captum_per_layer_methods_run_on_token_and_channels_last_layers(method: str) -> None:
    for model, layer, grid in ((_vit(), "encoder.layers.encoder_layer_1", (4, 4)), (_swin(), "features.1.0", (8, 8))):
        res = attribute(model, _x(1), [layer], method, n_steps=4, grid=2)
        assert res.maps[layer].shape == (1, *grid)
        assert torch.isfinite(res.maps[layer]).all() and float(res.maps[layer].abs().max()) > 0
        assert hook_count(model.module) == 0


def test_integrated_gradients_on_token_blocks_stays_complete_with_the_class_token_apart() -> None:
    model = _vit()
    x = _x(1)
    layers = ["conv_proj", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    res = attribute(model, x, layers, "ig", n_steps=64)
    with torch.no_grad():
        gap = float(
            model.module(x)[0, res.target[0]] - model.module(model.normalize(torch.zeros_like(x)))[0, res.target[0]]
        )
    assert "conv_proj" not in res.prefix and set(res.prefix) == set(layers[1:])
    for name in layers:
        total = float(res.maps[name].sum()) + (float(res.prefix[name][0]) if name in res.prefix else 0.0)
        assert abs(total - gap) < 1e-2 * max(1.0, abs(gap)), (name, total, gap)  # IG's completeness, all tokens
        assert abs(float(res.delta[name][0])) < 1e-2
    assert any("class token's own attribution" in note for note in res.notes)
    assert "class_tokens" in res.summary()["layers"]["encoder.layers.encoder_layer_0"]


def test_unavailable_methods_say_why_and_blocks_without_a_grid_are_skipped() -> None:
    model = _vit()
    problems = availability(model)
    assert "has none (GELU)" in problems["guided_gradcam"]
    assert "DeepLift has no rule for GELU" in problems["deeplift"]
    assert problems["gradcam"] is None and problems["ig"] is None
    assert method_cost(model, 1, "all", "gradcam").layers == len(resolve_layers(model, "all")) == 4
    windows = LoadedModel.wrap(Windows(), input_size=(32, 32))
    res = attribute(windows, _x(1), ["conv", "inside"], "gradcam")
    assert res.layers == ["conv"] and res.maps["conv"].shape == (1, 8, 8)
    assert res.skipped["inside"].startswith("inside has an output (4×16×5) that does not keep the image's layout")
    cost = method_cost(windows, 1, ["inside"], "gradcam")
    assert not cost.available and "windows of tokens" in cost.reason


class Windows(nn.Module):
    """An 8×8 map (at 32 px) cut into 2×2 windows of 4×4 positions, (N, windows, positions, C), inside `inside`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 4, stride=4)
        self.inside = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)
        n, h, w, c = y.shape
        win = y.reshape(n, h // 4, 4, w // 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(n, -1, 16, c)
        return self.head(self.inside(win).mean((1, 2)))


class DictOut(nn.Module):
    def __init__(self, key: str = "logits") -> None:
        super().__init__()
        self.key = key
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.conv(x)
        return {self.key: self.fc(h.mean((2, 3))), "features": h}


class TupleOut(DictOut):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        h = self.conv(x)
        return self.fc(h.mean((2, 3))), h


def test_a_forward_returning_a_dict_or_a_tuple_is_used_or_refused_in_one_sentence() -> None:
    torch.manual_seed(0)
    named = LoadedModel.wrap(DictOut(), input_size=(16, 16))
    x = torch.randn(1, 3, 16, 16)
    assert attribute(named, x, ["conv"], "gradcam").maps["conv"].shape == (1, 16, 16)
    assert attribute(named, x, ["conv"], "ig", n_steps=2).maps["conv"].shape == (1, 16, 16)
    for odd, words in ((DictOut("scores"), "a dict (keys scores, features) without 'logits'"),
                       (TupleOut(), "a tuple of 2 values")):  # fmt: skip
        model = LoadedModel.wrap(odd, input_size=(16, 16))
        with pytest.raises(
            ModelError, match=re.escape(f"forward returns {words}, not a tensor of class scores")
        ) as err:
            attribute(model, x, ["conv"], "gradcam")
        assert "\n" not in str(err.value)


def test_unit_attribution_on_a_token_layer_ranks_by_the_patch_tokens() -> None:
    from explorer.attribution import unit_attribution

    model = _vit()
    x = _x(2)
    res = unit_attribution(model, x, "encoder.layers.encoder_layer_1", 3)
    tokens = forward_until_tokens(model, "encoder.layers.encoder_layer_1", x)
    assert res.maps.shape == (2, 32, 32) and float(res.maps.abs().sum()) > 0
    assert torch.allclose(res.values, tokens[:, 1:, 3].amax(1))  # the patch tokens' maximum, class token left out
    with pytest.raises(AttributionError, match="16 channels; channel 99"):
        unit_attribution(model, x, "encoder.layers.encoder_layer_1", 99)


def forward_until_tokens(model: LoadedModel, layer: str, x: torch.Tensor) -> torch.Tensor:
    from explorer.layers import forward_until

    with torch.no_grad():
        return forward_until(model.module, layer, x)  # `x` is already normalised, as `attribute` takes it
