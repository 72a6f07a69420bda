"""The render-only copy with BatchNorm folded into convolutions, and the CPU bf16 rule."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from explorer import featurevis as fv
from explorer.featurevis.fold import fold_batchnorm, render_network
from explorer.layers import forward_until, hook_count, ladder
from explorer.models import LoadedModel, fingerprint

render_mod = importlib.import_module("explorer.featurevis.render")


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.act1(self.bn1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def bn_model() -> LoadedModel:
    torch.manual_seed(0)
    net = BNNet()
    for m in net.modules():  # non-trivial running statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    net.eval()
    return LoadedModel.wrap(
        net,
        spec="test:bn",
        input_size=(32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=[f"c{i}" for i in range(4)],
        resize_size=36,
    )


def test_folding_keeps_every_block_output_and_leaves_the_model_alone(bundled):
    before = fingerprint(bundled.module)
    folded, names = fold_batchnorm(bundled.module)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in bundled.module.modules())
    assert len(names) == n_bn > 40  # every BatchNorm of EfficientNet-Lite0 (incl. Conv2dSame ones) folds
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    blocks = [r.name for r in ladder(bundled, "blocks") if r.name not in names][:-1]
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = forward_until(bundled.module, blocks, x), forward_until(folded, blocks, x)
    for name in blocks:
        scale = float(a[name].abs().max()) or 1.0
        assert float((a[name] - b[name]).abs().max()) < 1e-4 * scale, name
    assert fingerprint(bundled.module) == before and hook_count(bundled.module) == hook_count(folded) == 0


def test_render_uses_the_folded_copy_except_for_folded_convolutions():
    model = bn_model()
    net = render_network(model, ["block.2"])
    assert net is not model.module and render_network(model, ["act1"]) is net  # one shared copy
    assert render_network(model, ["conv1"]) is model.module  # its output would include the BatchNorm
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(forward_until(net, "block.2", x), forward_until(model.module, "block.2", x), atol=1e-5)
        assert torch.allclose(forward_until(net, "bn1", x), forward_until(model.module, "bn1", x), atol=1e-5)


def test_render_with_and_without_folding_agree(monkeypatch):
    model = bn_model()
    preset = fv.get_preset("classic", steps=6, size=24)
    monkeypatch.setenv("LAYER_EXPLORER_CPU_BF16", "0")  # float32 both ways: only the folding differs
    folded = fv.render(model, [fv.channel("block.2", c) for c in range(3)], preset, seed=1)
    monkeypatch.setattr(render_mod, "render_network", lambda m, layers: m.module)
    plain = fv.render(model, [fv.channel("block.2", c) for c in range(3)], preset, seed=1)
    assert np.allclose(folded.curves, plain.curves, rtol=1e-3, atol=1e-4)
    assert np.abs(folded.images.astype(int) - plain.images.astype(int)).max() <= 2
    assert hook_count(model.module) == 0


def test_cpu_bf16_only_for_early_and_middle_layers(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert render_mod.use_bf16(cuda, (224, 224), (7, 7))
    monkeypatch.setenv("LAYER_EXPLORER_CPU_BF16", "1")
    assert render_mod.use_bf16(cpu, (224, 224), (56, 56)) and render_mod.use_bf16(cpu, (224, 224), (14, 14))
    assert not render_mod.use_bf16(cpu, (224, 224), (7, 7)) and not render_mod.use_bf16(cpu, (224, 224), None)
    monkeypatch.setenv("LAYER_EXPLORER_CPU_BF16", "0")
    assert not render_mod.use_bf16(cpu, (224, 224), (56, 56))


def test_objective_still_rises_under_cpu_bf16(monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CPU_BF16", "1")
    model = bn_model()
    res = fv.render(model, [fv.channel("bn1", c) for c in range(4)], fv.get_preset("classic", steps=24, size=24))
    assert (res.curves[:, -1] > res.curves[:, 0]).all()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path))
