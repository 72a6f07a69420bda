"""The first convolution's kernel figure: which layers it applies to, how a kernel becomes a tile, what comes after."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.featurevis import channel, render
from explorer.featurevis.kernels import KernelError, enlarge, kernel_figure, kernel_sheet, layer_after, pixel_convs
from explorer.models import LoadedModel, load_model

STD = (0.5, 0.25, 0.125)  # unequal on purpose: the figure divides each colour's weights by its std


def _stem_model() -> LoadedModel:
    """conv(3→4, 3×3, stride 2) → BatchNorm → ReLU → conv(4→6) → ReLU, with hand-set stem weights."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    w = torch.zeros(4, 3, 3, 3)
    w[0, 0, 1, 1] = 0.5  # red at the centre, nothing else
    w[1, 0, 0, 0], w[1, 2, 2, 2] = -1.0, 0.25  # red negative top-left, blue positive bottom-right
    # kernel 2 stays all zero (a pruned channel)
    w[3, 1] = 0.1  # uniform green; its BatchNorm scale is negative below
    with torch.no_grad():
        net[0].weight.copy_(w)
        net[1].weight.copy_(torch.tensor([1.0, 2.0, 1.0, -3.0]))
    return LoadedModel.wrap(net, input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=STD)


def test_the_stem_is_found_and_the_layer_after_its_nonlinearity_is_named():
    model = _stem_model()
    assert pixel_convs(model) == ["0"]  # the second convolution reads 4 channels, not the pixels
    assert layer_after(model, "0") == "2"  # the ReLU after the BatchNorm, not the BatchNorm itself
    assert layer_after(model, "nope") is None


def test_each_kernel_is_scaled_on_its_own_around_grey_with_the_input_std_folded_in():
    fig = kernel_figure(_stem_model(), tile=30)
    assert fig.layer == "0" and fig.after == "2" and fig.kernel_size == (3, 3) and fig.stride == (2, 2)
    assert fig.tiles.shape == (4, 30, 30, 3) and fig.tiles.dtype == np.uint8  # 3×3 enlarged 10×, nearest
    t0 = fig.tiles[0]
    assert (t0[10:20, 10:20] == [255, 128, 128]).all()  # the only weight: +max → full red, the rest grey (0)
    assert (t0[:10] == 128).all() and (t0[20:] == 128).all()
    # kernel 1: red −1/0.5 = −2 (the peak), blue 0.25/0.125 = +2: −max → 0, +max → 255
    t1 = fig.tiles[1]
    assert tuple(t1[0, 0]) == (0, 128, 128) and tuple(t1[29, 29]) == (128, 128, 255)
    assert np.isclose(fig.peak[1], 2.0) and np.isclose(fig.weights[1, 2, 2, 2], 2.0)
    assert (fig.tiles[2] == 128).all() and fig.zero == [2] and fig.peak[2] == 0  # all zero: flat grey
    # kernel 3: green +0.1 everywhere, but the BatchNorm after it has a negative scale: drawn inverted
    assert (fig.tiles[3] == [128, 0, 128]).all()
    assert any("inverted" in n for n in fig.notes) and any("Kernel 2 is zero" in n for n in fig.notes)
    sheet = kernel_sheet(fig)
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.shape[1] > 4 * 30


def test_enlarging_keeps_every_weight_a_square_block_at_any_kernel_size():
    k = np.random.default_rng(0).normal(size=(2, 3, 7, 7)).astype(np.float32)
    tiles = enlarge(k, tile=144)
    assert tiles.shape == (2, 140, 140, 3)  # 7 × 20: the largest multiple of 7 not above 144
    assert (tiles[0, :20, :20] == tiles[0, 0, 0]).all() and not (tiles[0, :20, 20:40] == tiles[0, 0, 0]).all()
    sign_kept = (tiles[0, ::20, ::20].astype(int) - 128) * np.sign(k[0].transpose(1, 2, 0)) >= 0
    assert sign_kept.all()  # a positive weight is brighter than grey, a negative one darker
    assert enlarge(np.ones((1, 3, 16, 16)), tile=144).shape == (1, 144, 144, 3)  # ViT patches: 9× each


def test_a_layer_that_does_not_read_the_pixels_is_one_sentence():
    with pytest.raises(KernelError) as err:
        kernel_figure(_stem_model(), "3")
    assert "not a convolution over the 3 colour channels" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ExplorerError)


@pytest.mark.parametrize(
    ("spec", "conv", "after", "size"),
    [
        ("bundled:efficientnet_lite0", "conv_stem", "bn1", (3, 3)),  # timm BatchNormAct2d: bn1.act's container
        ("torchvision:resnet18:untrained", "conv1", "relu", (7, 7)),
        ("torchvision:mobilenet_v3_small:untrained", "features.0.0", "features.0", (3, 3)),
        ("torchvision:vit_b_16:untrained", "conv_proj", None, (16, 16)),  # no nonlinearity on these channels alone
    ],
)
def test_real_stems(spec, conv, after, size):
    model = load_model(spec)
    fig = kernel_figure(model)
    assert (fig.layer, fig.after, fig.kernel_size) == (conv, after, size)
    assert len(fig.tiles) == model.module.get_submodule(conv).out_channels


def test_the_bundled_stems_pruned_kernels_are_grey_not_blown_up_noise(bundled):
    fig = kernel_figure(bundled)
    assert fig.zero == [11, 16, 28, 31]  # max |w| ~1e-7 against ~7 for the strongest kernel
    assert all((fig.tiles[i] == 128).all() for i in fig.zero)
    assert all(fig.tiles[i].std() > 10 for i in range(32) if i not in fig.zero)  # every other kernel has a picture


def test_the_layer_after_the_bundled_stem_renders(bundled):
    """bn1 is a name the BatchNorm-folded render copy still has (bn1.act would not be)."""
    out = render(bundled, [channel("bn1", 0)], "fast", steps=2, size=32)
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.final).all()
