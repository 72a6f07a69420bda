"""Fine-tuning on a copy with a freeze point: what stays frozen stays frozen, and checkpoints reopen alone."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.layers import hook_count, ladder
from explorer.models import META_KEY, fingerprint, load_model
from explorer.models.freeze import (
    FreezeError,
    apply_freeze,
    freeze_code,
    freeze_summary,
    freeze_table,
    frozen_modules,
)
from explorer.transfer.training.checkpoints import CheckpointError
from explorer.transfer.training.finetune import FinetuneError, FinetuneSettings, finetune, replace_head, trainable_copy

FAST = {"input_size": 32, "batch_size": 8, "val_fraction": 0.25}


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _owned(name: str, frozen: list[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in frozen)


# --------------------------------------------------------------------------- freeze points


def test_freeze_counts_add_up_and_match_requires_grad(tiny) -> None:
    table = freeze_table(tiny)
    names = [r.name for r in ladder(tiny)]
    assert [s.freeze_after for s in table] == [None, *names[: names.index("classifier")]]
    total = sum(p.numel() for p in tiny.module.parameters())
    trainables = [s.trainable for s in table]
    assert all(s.total == total and s.trainable + s.non_trainable == total for s in table)
    assert trainables == sorted(trainables, reverse=True) and trainables[0] == total
    module = trainable_copy(tiny)
    apply_freeze(module, "blocks.2.0")
    s = freeze_summary(tiny, "blocks.2.0")
    assert s.trainable == sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert s.non_trainable == sum(p.numel() for p in module.parameters() if not p.requires_grad)
    assert s.frozen == ["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"]
    # The new head is counted at its new size.
    assert freeze_summary(tiny, "blocks.2.0", num_classes=3).trainable == s.trainable - 997 * 257


def test_freeze_point_includes_the_layers_own_batchnorm(tiny) -> None:
    frozen = frozen_modules(tiny, "conv_stem")
    assert "conv_stem" in frozen and "bn1" in frozen  # bn1 is hidden in the block view but belongs to the stem
    assert not any(n.startswith("blocks") for n in frozen)


def test_bad_freeze_points_are_refused_clearly(tiny) -> None:
    with pytest.raises(FreezeError, match="Did you mean"):
        freeze_summary(tiny, "block.2.0")
    with pytest.raises(FreezeError, match="nothing to train"):
        freeze_summary(tiny, "classifier")
    assert freeze_summary(tiny, None).non_trainable == 0


def test_freeze_code_freezes_exactly_what_the_fine_tune_freezes(tiny) -> None:
    ours = trainable_copy(tiny)
    apply_freeze(ours, "blocks.3.0")
    model = trainable_copy(tiny)
    exec(freeze_code(tiny, "blocks.3.0"), {"model": model, "torch": torch})  # noqa: S102 - our own snippet
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        n: p.requires_grad for n, p in ours.named_parameters()
    }
    model.train()
    assert not model.bn1.training and not model.blocks[3].training and model.blocks[4].training
    assert "requires_grad_(False)" in freeze_code(tiny, "blocks.3.0")
    assert "nothing to freeze" in freeze_code(tiny, None)


@pytest.mark.parametrize("point", ["blocks.3.0", None])
def test_freeze_code_with_new_classes_replaces_the_head_and_counts_it(tiny, point) -> None:
    model = trainable_copy(tiny)
    code = freeze_code(tiny, point, num_classes=3)
    exec(code, {"model": model, "torch": torch})  # noqa: S102 - our own snippet
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    expected = freeze_summary(tiny, point, num_classes=3)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected.trainable
    assert sum(p.numel() for p in model.parameters()) == expected.total
    if point:
        assert f"{expected.trainable:,} trainable" in code
    assert "new head" not in freeze_code(tiny, point, num_classes=tiny.num_classes)


def test_apply_freeze_keeps_frozen_batchnorm_in_eval_through_train(tiny) -> None:
    module = trainable_copy(tiny)
    apply_freeze(module, "blocks.1.0")
    module.train()
    bns = {n: m.training for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert bns["bn1"] is False and bns["blocks.1.0.bn1"] is False
    assert bns["blocks.2.0.bn1"] is True and bns["bn2"] is True
    module.eval()
    assert not any(m.training for m in module.modules())


def test_replace_head_builds_a_fresh_classifier(tiny) -> None:
    module = trainable_copy(tiny)
    assert replace_head(module, 3, input_size=tiny.input_size) == "classifier"
    assert module.classifier.out_features == 3
    assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert tiny.module.classifier.out_features == 1000  # the shared model still has its head


# --------------------------------------------------------------------------- training


def test_finetune_freezes_params_and_batchnorm_and_leaves_the_base_untouched(tiny, color_folder, tmp_path) -> None:
    before = fingerprint(tiny.module)
    grads_before = {n: p.requires_grad for n, p in tiny.module.named_parameters()}
    base_state = _state(tiny.module)
    steps: list[dict] = []
    result = finetune(
        tiny,
        color_folder,
        FinetuneSettings(freeze_after="blocks.2.0", epochs=2, lr=5e-3, backbone_lr=5e-3, **FAST),
        out=tmp_path / "t.safetensors",
        progress=lambda d, t, p: steps.append(p),
    )
    assert fingerprint(tiny.module) == before and not tiny.module.training and hook_count(tiny.module) == 0
    assert {n: p.requires_grad for n, p in tiny.module.named_parameters()} == grads_before
    assert all(p.grad is None for p in tiny.module.parameters())
    frozen = frozen_modules(tiny, "blocks.2.0")
    tuned = result.module.state_dict()
    changed = {
        k
        for k in base_state
        if k in tuned and base_state[k].shape == tuned[k].shape and not torch.equal(base_state[k], tuned[k])
    }
    stats = [k for k in base_state if k.endswith(("running_mean", "running_var"))]
    assert not any(_owned(k.rsplit(".", 1)[0], frozen) for k in changed)  # weights *and* BN statistics fixed
    assert any(_owned(k.rsplit(".", 1)[0], frozen) for k in stats)  # (there are frozen BN statistics to check)
    assert {k for k in changed if k.endswith("running_mean")}  # the trainable BatchNorms did adapt
    assert any(k.startswith("blocks.3") and k.endswith("weight") for k in changed)  # trainable weights moved
    train = [p for p in steps if p["phase"] == "train"]
    assert [p["step"] for p in train] == list(range(1, len(train) + 1)) and len(result.epochs) == 2
    assert {"loss", "acc", "lr", "epoch"} <= set(train[0])
    assert [p["epoch"] for p in steps if p["phase"] == "val"] == [1, 2]
    assert result.epochs[-1]["train_loss"] < result.epochs[0]["train_loss"] + 0.5  # it trained, not diverged
    assert result.images_per_second > 0


def test_checkpoint_round_trips_through_load_model(tiny, color_folder, tmp_path) -> None:
    out = tmp_path / "run" / "colors.safetensors"
    result = finetune(tiny, color_folder, FinetuneSettings(freeze_after="blocks.1.0", epochs=1, **FAST), out=out)
    assert result.checkpoint == out and out.with_suffix(".json").exists()
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        header = json.loads(f.metadata()[META_KEY])
    side = json.loads(out.with_suffix(".json").read_text())
    for meta in (header, side):
        assert meta["arch"] == tiny.arch and meta["base_fingerprint"] == tiny.fingerprint
        assert meta["class_names"] == ["blue", "green", "red"] and meta["freeze_after"] == "blocks.1.0"
        assert meta["input_size"] == [32, 32] and meta["metrics"]["epoch"] == 1
        assert {"mean", "std", "resize_size", "settings", "base_spec"} <= set(meta)
    loaded = load_model(str(out), device="cpu")  # no arch, no class names: the metadata carries them
    assert loaded.class_names == ["blue", "green", "red"] and loaded.input_size == (32, 32)
    assert loaded.fingerprint == fingerprint(result.module)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), result.module.eval()(x), atol=1e-5)
    assert not list(tmp_path.glob("run/.*tmp"))  # atomic writes leave no temporaries
    direct = result.to_loaded_model(tiny)  # the same model without the file (what the app offers as "tuned")
    assert direct.fingerprint == loaded.fingerprint and direct.class_names == loaded.class_names
    assert direct.metadata["freeze_after"] == "blocks.1.0"
    # the reopened checkpoint keeps its freeze point: the ladder shows the frozen layers as frozen
    rows = {r.name: r for r in ladder(loaded.module)}
    assert rows["blocks.0.0"].params_frozen > 0 and rows["blocks.1.0"].params_frozen > 0
    assert rows["blocks.2.0"].params_frozen == 0 and not loaded.module.training


def test_stopping_keeps_the_last_complete_epoch(tiny, color_folder, tmp_path) -> None:
    out = tmp_path / "stop.safetensors"
    stop = threading.Event()
    steps_per_epoch = 27 // 8

    def progress(done: int, total: int, preview: dict) -> None:
        if preview["phase"] == "train" and done == steps_per_epoch + 1:
            stop.set()  # in the middle of epoch 2

    result = finetune(
        tiny, color_folder, FinetuneSettings(epochs=3, **FAST), out=out, progress=progress, should_stop=stop
    )
    assert result.stopped and len(result.epochs) == 1
    reopened = load_model(str(out), device="cpu")
    assert reopened.metadata["metrics"]["epoch"] == 1


def test_an_interrupted_run_leaves_a_loadable_checkpoint(tiny, color_folder, tmp_path) -> None:
    out = tmp_path / "crash.safetensors"

    def progress(done: int, total: int, preview: dict) -> None:
        if preview["phase"] == "train" and preview["epoch"] == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of epoch 2

    with pytest.raises(KeyboardInterrupt):
        finetune(tiny, color_folder, FinetuneSettings(epochs=3, **FAST), out=out, progress=progress)
    reopened = load_model(str(out), device="cpu")
    assert reopened.metadata["metrics"]["epoch"] == 1 and reopened.num_classes == 3


def test_existing_files_are_not_overwritten(tiny, color_folder, tmp_path) -> None:
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(CheckpointError, match="already exists"):
        finetune(tiny, color_folder, FinetuneSettings(epochs=1, **FAST), out=out)
    assert out.read_bytes() == b"precious"
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        finetune(tiny, color_folder, FinetuneSettings(epochs=1, **FAST), out=tmp_path / "x.pt")


def test_bad_data_and_settings_give_clear_errors(tiny, tmp_path, color_folder) -> None:
    from PIL import Image

    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "only" / "a.png")
    with pytest.raises(ExplorerError, match="two classes"):
        finetune(tiny, one, FinetuneSettings(epochs=1, **FAST))
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    Image.new("RGB", (8, 8)).save(empty / "a" / "x.png")
    (empty / "b" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ExplorerError, match="no readable images"):
        finetune(tiny, empty, FinetuneSettings(epochs=1, **FAST))
    with pytest.raises(ExplorerError, match="does not exist"):
        finetune(tiny, tmp_path / "nowhere", FinetuneSettings(epochs=1, **FAST))
    with pytest.raises(FinetuneError):
        finetune(tiny, color_folder, FinetuneSettings(epochs=0))
    with pytest.raises(FreezeError):
        finetune(tiny, color_folder, FinetuneSettings(freeze_after="nope", epochs=1, **FAST))


def test_cli_finetune_writes_a_checkpoint_and_refuses_to_overwrite(color_folder, tmp_path, capsys) -> None:
    from explorer.cli import main

    def args(out, freeze: str) -> list[str]:
        return [
            "finetune",
            "--model",
            "timm:test_efficientnet:untrained",
            "--device",
            "cpu",
            "--data",
            str(color_folder),
            "--freeze-after",
            freeze,
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ]

    out = tmp_path / "cli.safetensors"
    assert main(args(out, "blocks.1.0")) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "trainable" in printed
    assert load_model(str(out), device="cpu").metadata["freeze_after"] == "blocks.1.0"
    stamp = out.stat().st_mtime_ns
    assert main(args(out, "blocks.1.0")) == 2  # exists: one error line, nothing replaced
    assert "already exists" in capsys.readouterr().err and out.stat().st_mtime_ns == stamp
    assert main([*args(tmp_path / "all.safetensors", "none"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["freeze_after"] is None


def test_a_file_that_fails_only_when_decoded_is_skipped_and_counted(tiny, color_folder, tmp_path) -> None:
    import shutil

    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(color_folder, data)
    bad = data / "red" / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[:600])  # the header still parses; decoding fails
    result = finetune(tiny, data, FinetuneSettings(epochs=1, **{**FAST, "val_fraction": 0.0}))
    assert len(result.epochs) == 1
    unreadable = result.metadata["data"]["unreadable"]
    assert unreadable["count"] == 1 and "truncated" in unreadable["first"][0]


# --------------------------------------------------------------------------- the split, the best epoch, the optimiser


def test_the_split_is_saved_and_compare_finds_the_held_out_images_again(tiny, color_folder, tmp_path) -> None:
    import shutil

    from explorer.data import open_dataset
    from explorer.transfer.training.heldout import file_list_sha256, heldout_images, split_of

    out = tmp_path / "s.safetensors"
    finetune(tiny, color_folder, FinetuneSettings(epochs=1, **FAST), out=out)
    meta = load_model(str(out), device="cpu").metadata
    split = split_of(meta)
    dataset = open_dataset(color_folder)
    assert split is not None and not set(split.train) & set(split.heldout)
    assert sorted(split.train + split.heldout) == list(range(36)) and len(split.heldout) == 9
    assert split.files_sha256 == file_list_sha256(dataset) and meta["data"]["val_images"] == 9
    held = heldout_images(meta, dataset, str(color_folder))
    assert held.status == "heldout" and held.indices == split.heldout and held.train_images == 27
    changed = tmp_path / "changed"
    shutil.copytree(color_folder, changed)
    (changed / "red" / "00.png").rename(changed / "red" / "zz.png")  # same images, another file list
    moved = heldout_images(
        {**meta, "data": {**meta["data"], "source": str(changed)}}, open_dataset(changed), str(changed)
    )
    assert moved.status == "unknown" and "file list changed" in moved.note and len(moved.indices) == 36
    other = heldout_images(meta, open_dataset(changed), str(changed))
    assert other.status == "different" and "not the tuning data" in other.note
    bare = heldout_images({}, dataset, str(color_folder))
    assert bare.status == "unknown" and "does not say" in bare.note


def test_the_best_epoch_by_held_out_loss_is_the_one_saved(tiny, color_folder, tmp_path) -> None:
    from torch.utils.data import DataLoader

    from explorer.data import TransformedView, eval_transform, open_dataset
    from explorer.transfer.training.heldout import split_of
    from explorer.transfer.training.trainer import evaluate

    out = tmp_path / "best.safetensors"
    s = FinetuneSettings(epochs=3, lr=0.05, backbone_lr=0.05, patience=None, **FAST)  # a high rate: loss moves about
    result = finetune(tiny, color_folder, s, out=out)
    history = result.metadata["metrics"]["history"]
    best = min(history, key=lambda e: e["val_loss"])
    assert result.metadata["best_epoch"] == best["epoch"] and result.metadata["metrics"]["val_loss"] == best["val_loss"]
    loaded = load_model(str(out), device="cpu")
    split = split_of(loaded.metadata)
    view = TransformedView(open_dataset(color_folder), split.heldout, eval_transform(loaded, 32)[0])
    scored = evaluate(loaded.module, DataLoader(view, batch_size=16), torch.device("cpu"))
    assert scored["loss"] == pytest.approx(best["val_loss"], rel=1e-4) and scored["acc"] == best["val_acc"]
    assert result.heldout_correct == scored["correct"]  # the returned module is the saved one


def test_early_stopping_keeps_the_best_epoch(tiny, color_folder, monkeypatch) -> None:
    from explorer.transfer.training import trainer

    losses = iter([1.0, 0.5, 0.7, 0.9, 0.4, 0.3])
    real = trainer.evaluate
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def scripted(module, loader, device):
        out = real(module, loader, device)
        saved[len(saved) + 1] = {k: v.clone() for k, v in module.state_dict().items()}
        return {**out, "loss": next(losses)}

    monkeypatch.setattr(trainer, "evaluate", scripted)
    result = finetune(tiny, color_folder, FinetuneSettings(epochs=6, patience=2, **FAST))
    assert [e["epoch"] for e in result.epochs] == [1, 2, 3, 4]  # two epochs without a better loss: stop
    assert result.metadata["early_stopped"] and result.metadata["best_epoch"] == 2
    state = result.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved[2].items())  # epoch 2's weights restored


def test_no_weight_decay_on_batchnorm_or_biases_and_a_warm_up(tiny) -> None:
    from explorer.transfer.training.finetune import trainable_model
    from explorer.transfer.training.optim import lr_factor, param_groups

    module, head = trainable_model(tiny, 3, "blocks.1.0")
    groups = param_groups(module, head, lr=1e-2, backbone_lr=1e-3, weight_decay=0.05)
    for g in groups:
        assert all((p.ndim >= 2) == (g["weight_decay"] > 0) for p in g["params"])
        assert g["lr"] == (1e-2 if g["part"] == "head" else 1e-3)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in module.parameters() if p.requires_grad}
    bn = [p for n, p in module.named_parameters() if ".bn" in n and p.requires_grad]
    assert bn and all(g["weight_decay"] == 0 for g in groups for p in g["params"] if any(p is q for q in bn))
    f = lr_factor("cosine", total_steps=100, warmup_steps=10)
    ramp = [f(k) for k in range(10)]
    assert ramp == sorted(ramp) and ramp[0] < 0.2 and f(10) == pytest.approx(1.0) and f(99) < 0.01


def test_frozen_batchnorm_keeps_the_base_statistics_while_weights_train(tiny, color_folder) -> None:
    result = finetune(tiny, color_folder, FinetuneSettings(epochs=1, bn="frozen", lr=5e-3, backbone_lr=5e-3, **FAST))
    base, tuned = tiny.module.state_dict(), result.module.state_dict()
    stats = [k for k in base if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(base[k], tuned[k]) for k in stats)
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.endswith("conv_pw.weight"))


@pytest.mark.slow
def test_science_the_defaults_reach_the_best_probe_on_digits(bundled) -> None:
    """The defaults, every layer trainable, 64 px: ≥ 95 % on the held-out digits (the frozen-feature probe's level)."""
    import time

    t0 = time.perf_counter()
    result = finetune(bundled, "demo:digits", FinetuneSettings(input_size=64))
    seconds = time.perf_counter() - t0
    acc = result.metadata["metrics"]["val_acc"]
    print(
        f"\ndefaults: held-out {100 * acc:.1f} % on {result.metadata['data']['val_images']} images in {seconds:.0f} s"
    )
    assert acc >= 0.95


def test_the_linear_route_code_extracts_the_pooled_features_the_sweep_used(tiny) -> None:
    from explorer.transfer.sweeping.prefix import linear_route_code

    model = trainable_copy(tiny)
    scope = {"model": model}
    exec(linear_route_code(tiny, "blocks.2.0"), scope)  # noqa: S102 - our own snippet
    feats = scope["features"](torch.rand(4, 3, 32, 32))
    channels = {r.name: r.channels for r in ladder(tiny)}
    assert feats.shape == (4, channels["blocks.2.0"]) and "LogisticRegression" in linear_route_code(tiny, "blocks.2.0")
