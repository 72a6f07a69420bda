"""Fine-tune and compare on transformers: freeze points on encoder blocks fix exactly what the point's output depends
on (ViT, ResNet, stage containers), SqueezeNet's advice stays before its head, a ViT runs only at its own size, and
the freeze sweep and compare run on a tiny ViT (patch tokens pooled, class token reported apart)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from explorer.errors import ExplorerError
from explorer.layers import forward_hooks, ladder
from explorer.models import LoadedModel
from explorer.models.freeze import FreezeError, apply_freeze, freeze_code, freeze_summary, frozen_parameters
from explorer.transfer.advice.recommend import body_rows, predict
from explorer.transfer.comparison.compare import compare
from explorer.transfer.reporting.report import LayerComparison
from explorer.transfer.sweeping.prefix import prefix_layer
from explorer.transfer.sweeping.sweep import sweep, sweep_settings
from explorer.transfer.sweeping.sweep_tasks import auto_points, check_points
from explorer.transfer.training.finetune import FinetuneSettings, finetune

BLOCK = "encoder.layers.encoder_layer_{}"


def tiny_vit(seed: int = 0, layers: int = 3) -> LoadedModel:
    torch.manual_seed(seed)
    module = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    )
    return LoadedModel.wrap(module, spec="tiny-vit", input_size=(32, 32), pretrained=False)


@pytest.fixture(scope="module")
def vit() -> LoadedModel:
    return tiny_vit()


@pytest.fixture(scope="module")
def resnet() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel.wrap(torchvision.models.resnet18(num_classes=3), input_size=(32, 32), pretrained=False)


def depends_on(model: LoadedModel, layer: str) -> set[str]:
    """Parameters that receive a nonzero gradient from a random projection of `layer`'s output (two random images)."""
    module = copy.deepcopy(model.module).eval().requires_grad_(True)
    seen: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, *model.input_size, generator=g)
    with forward_hooks(module, {layer: lambda n, _m, out: seen.setdefault(n, out)}):
        module(x)
    out = seen[layer]
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    return {n for n, p in module.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}


def frozen_after(model: LoadedModel, point: str) -> set[str]:
    module = copy.deepcopy(model.module).requires_grad_(True)
    apply_freeze(module, point, input_size=model.input_size)
    return {n for n, p in module.named_parameters() if not p.requires_grad}


def _check_exact(model: LoadedModel, point: str) -> set[str]:
    layer = prefix_layer(model.module, point, model.input_size)
    frozen = frozen_after(model, point)
    assert frozen == depends_on(model, layer), point
    assert set(frozen_parameters(model, point)) == frozen
    total = sum(p.numel() for n, p in model.module.named_parameters() if n in frozen)
    assert freeze_summary(model, point).non_trainable == total
    return frozen


@pytest.mark.parametrize("k", [0, 1, 2])
def test_freezing_at_a_vit_block_fixes_exactly_what_its_output_depends_on(vit, k):
    point = BLOCK.format(k)
    assert prefix_layer(vit.module, point, vit.input_size) == point  # the next block's ln_1 is not the point's
    frozen = _check_exact(vit, point)
    assert {"class_token", "encoder.pos_embedding", "conv_proj.weight"} <= frozen
    for j in range(k + 1):  # the attention's own in_proj and its out_proj (never called as a module) too
        for p in ("self_attention.in_proj_weight", "self_attention.out_proj.weight", "ln_1.weight", "mlp.3.bias"):
            assert f"{BLOCK.format(j)}.{p}" in frozen
    untouched = {"encoder.ln.weight", "heads.head.weight"}
    if k < 2:
        untouched |= {f"{BLOCK.format(k + 1)}.ln_1.weight", f"{BLOCK.format(k + 1)}.self_attention.in_proj_weight"}
    assert not untouched & frozen


def test_freezing_the_whole_vit_encoder_stack_leaves_its_final_norm_and_head(vit):
    frozen = _check_exact(vit, "encoder.layers")
    assert f"{BLOCK.format(2)}.mlp.3.weight" in frozen and "encoder.ln.weight" not in frozen


@pytest.mark.parametrize("point", ["conv1", "maxpool", "layer1.1", "layer2.0", "layer3", "layer4.1", "avgpool"])
def test_freezing_a_cnn_block_or_stage_fixes_exactly_what_its_output_depends_on(resnet, point):
    frozen = _check_exact(resnet, point)
    assert "fc.weight" not in frozen
    if point == "conv1":  # the stem's own BatchNorm belongs to it
        assert prefix_layer(resnet.module, point, resnet.input_size) == "relu" and "bn1.weight" in frozen


def test_the_freeze_code_and_eval_mode_match_the_fine_tune_on_a_vit(vit):
    point = BLOCK.format(1)
    ours = copy.deepcopy(vit.module).requires_grad_(True)
    apply_freeze(ours, point, input_size=vit.input_size)
    theirs = copy.deepcopy(vit.module).requires_grad_(True)
    code = freeze_code(vit, point)
    assert "FROZEN_PARAMETERS" in code and "'class_token'" in code
    exec(code, {"model": theirs, "torch": torch})  # noqa: S102 - our own snippet
    assert {n: p.requires_grad for n, p in theirs.named_parameters()} == {
        n: p.requires_grad for n, p in ours.named_parameters()
    }
    ours.train()
    layers = ours.encoder.layers
    assert not layers[0].training and not layers[1].training and layers[2].training
    assert not layers[1].self_attention.out_proj.training and ours.heads.training


def test_squeezenet_advice_never_lands_after_its_convolutional_head():
    model = LoadedModel.wrap(torchvision.models.squeezenet1_0(num_classes=3), input_size=(64, 64), pretrained=False)
    rows = ladder(model, "blocks")
    names = [r.name for r in rows]
    assert names[-2:] == ["classifier.1", "classifier.3"]  # the pooling runs after the head
    layers = [
        LayerComparison(r.name, i, r.type, r.stage, r.channels, r.params, 1.0, 1.0, 1.0, None)
        for i, r in enumerate(rows)
    ]
    body = [r.name for r in body_rows(layers)]
    assert "classifier.1" not in body and "classifier.3" not in body and body[-1] == "features.12"
    deepest, _ = predict(layers, 0.9)  # every block unchanged: the deepest body block, not the pooling after the head
    assert deepest is not None and deepest.name == "features.12"
    assert freeze_summary(model, deepest.name, num_classes=3).trainable > 0
    with pytest.raises(FreezeError, match="nothing to train"):
        freeze_summary(model, "classifier.3")
    points = auto_points(model)
    assert check_points(model, points) == points and "classifier.3" not in points


def test_a_vit_is_swept_compared_and_fine_tuned_only_at_its_own_size(vit, color_folder, tmp_path):
    with pytest.raises(ExplorerError, match="takes only 32×32") as err:
        sweep(vit, color_folder, points=["none"], settings=sweep_settings(1, input_size=48))
    assert "\n" not in str(err.value)
    with pytest.raises(ExplorerError, match="takes only 32×32"):
        compare(vit, vit, color_folder, input_size=48, probes=False)
    out = tmp_path / "runs" / "vit.safetensors"
    with pytest.raises(ExplorerError, match="takes only 32×32"):  # before anything is read or written
        finetune(vit, color_folder, FinetuneSettings(input_size=48, epochs=1), out=out)
    assert not (tmp_path / "runs").exists()


def test_the_freeze_sweep_runs_on_a_tiny_vit(vit, color_folder):
    s = sweep_settings(1, input_size=32, batch_size=8, val_fraction=0.25)
    report = sweep(vit, color_folder, points="auto", settings=s)
    points = {o.point for o in report.options}
    assert {BLOCK.format(k) for k in range(3)} & points and "none" in points
    assert report.complete and report.options
    # the cut network cannot start from a block's output (class token and position embedding come in between)
    assert any("trained on images every epoch" in n and "encoder_layer" in n for n in report.notes)
    for o in report.options:
        assert 0.0 <= o.accuracy <= 1.0 and o.low <= o.accuracy <= o.high
        if o.route == "finetune":
            point = None if o.point == "none" else o.point
            assert o.trainable == freeze_summary(vit, point, num_classes=3).trainable


def test_compare_on_a_tiny_vit_reads_patch_tokens_and_the_class_token_apart(vit, color_folder):
    tuned_module = copy.deepcopy(vit.module)
    with torch.no_grad():  # change the last block only
        for p in tuned_module.encoder.layers[2].parameters():
            p.add_(torch.randn_like(p) * 0.5)
    tuned = LoadedModel.wrap(tuned_module, spec="tiny-vit-tuned", input_size=(32, 32), pretrained=False)
    report = compare(vit, tuned, color_folder, probes=False, grid=2, bn_parts=False)
    rows = {r.name: r for r in report.layers}
    blocks = [BLOCK.format(k) for k in range(3)]
    assert set(blocks) <= set(rows)
    for b in blocks:
        assert math.isfinite(rows[b].cka) and rows[b].cka_class_token is not None
    assert rows[blocks[0]].cka == pytest.approx(1.0, abs=1e-4)
    assert rows[blocks[0]].cka_class_token == pytest.approx(1.0, abs=1e-4)
    assert rows[blocks[2]].cka < 0.99 and rows[blocks[2]].cka_class_token < 0.99
    assert rows["conv_proj"].cka_class_token is None  # a patch map has no class token
    assert rows[blocks[2]].cka != pytest.approx(rows[blocks[2]].cka_class_token, abs=1e-6)
    from explorer.ui.compare.freeze_panel import ladder_frame  # the Compare page's table shows it beside the CKA

    table = ladder_frame(report, blocks[0]).set_index("layer")
    assert table.loc[blocks[2], "CKA class token"] == f"{rows[blocks[2]].cka_class_token:.3f}"
    assert table.loc["conv_proj", "CKA class token"] == "—"


def test_class_token_is_left_out_of_the_pooled_patch_features(vit):
    from explorer.layers import layout_of
    from explorer.transfer.comparison.pooling import gap_features, pooled_features

    lay = layout_of(vit, BLOCK.format(0))
    t = torch.randn(2, 17, 32)
    moved = t.clone()
    moved[:, 0] += 100.0  # only the class token changes
    assert torch.equal(pooled_features(t, 2, lay), pooled_features(moved, 2, lay))
    assert torch.allclose(gap_features(t, lay), t[:, 1:].mean(1))
    assert isinstance(vit.module.encoder.layers[0].self_attention, nn.MultiheadAttention)
