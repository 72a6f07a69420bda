"""Per-layer comparison: records in depth order, one pass per model, exports, recommendation, and the science."""

from __future__ import annotations

import csv
import io
import json
import math
import time

import numpy as np
import pytest
import torch

from explorer.errors import ExplorerError
from explorer.layers import hook_count, ladder
from explorer.models import fingerprint, load_model
from explorer.transfer.compare import CompareError, ComparisonReport, LayerComparison, compare
from explorer.transfer.finetune import FinetuneSettings, finetune
from explorer.transfer.recommend import recommend


@pytest.fixture(scope="module")
def tuned_tiny(tiny, color_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "tiny.safetensors"
    settings = FinetuneSettings(epochs=2, input_size=32, batch_size=8, lr=5e-3, backbone_lr=5e-3)
    finetune(tiny, color_folder, settings, out=out)
    return load_model(str(out), device="cpu")


class _Counter:
    """Counts images through a module's forward (batches of one are the ladder's shape traces)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = module.register_forward_pre_hook(lambda _m, args: self.batches.append(args[0].shape[0]))

    def images(self) -> int:
        return sum(b for b in self.batches if b > 1)


def test_report_has_one_record_per_block_in_depth_order_and_each_image_passes_once(tiny, tuned_tiny, color_folder):
    counters = [_Counter(tiny.module), _Counter(tuned_tiny.module)]
    seen: list[tuple[int, int]] = []
    try:
        report = compare(
            tiny, tuned_tiny, color_folder, n_boot=200, probe_folds=3, progress=lambda d, t, p: seen.append((d, t))
        )
    finally:
        for c in counters:
            c.handle.remove()
    assert [r.name for r in report.layers] == [r.name for r in ladder(tiny)]
    assert [r.index for r in report.layers] == list(range(len(report.layers)))
    assert report.data["images_used"] == 36
    assert [c.images() for c in counters] == [36, 36]  # every image once through each model
    assert hook_count(tiny.module) == 0 and hook_count(tuned_tiny.module) == 0
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    head = report.layer("classifier")
    assert head.new_head and head.weight_change is None
    body = [r for r in report.layers if r.weight_change is not None]
    assert all(r.weight_change > 0 for r in body)
    assert all(len(r.weight_change_channels) == (r.channels or 0) for r in body if r.name.startswith("blocks"))
    for r in report.layers:
        assert -0.2 <= r.cka <= 1.0 + 1e-9
        assert r.cka_low <= r.cka + 1e-9 and r.cka <= r.cka_high + 1e-9
    assert report.tuned_accuracy is not None and 0 <= report.tuned_accuracy <= 1
    assert report.chance == pytest.approx(1 / 3)


def test_exports_json_csv_and_html(tiny, tuned_tiny, color_folder, tmp_path):
    report = compare(tiny, tuned_tiny, color_folder, n_boot=100, probes=False)
    d = json.loads(report.to_json())
    assert [r["name"] for r in d["layers"]] == [r.name for r in report.layers]
    assert {"cka", "cka_low", "cka_high", "weight_change", "probe_acc"} <= set(d["layers"][0])
    assert d["recommendation"]["guide"]["size"] in ("small", "large") and "code" in d["recommendation"]
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert [r["name"] for r in rows] == [r.name for r in report.layers]
    written = report.save(tmp_path / "r" / "report.json")
    assert [p.name for p in written] == ["report.json", "report.html", "report.csv"]
    html = written[1].read_text()
    assert "<svg" in html and "Recommendation" in html and "blocks.4.0" in html
    assert json.loads(written[0].read_text())["base"]["fingerprint"] == tiny.fingerprint


def test_identical_models_read_cka_one_and_no_change(tiny, color_folder):
    report = compare(tiny, tiny, color_folder, n_boot=100, probes=False)
    assert all(r.cka == pytest.approx(1.0, abs=1e-6) for r in report.layers)
    assert all(r.weight_change in (None, 0.0) for r in report.layers)
    assert any("identical" in w for w in report.warnings)


def test_other_architecture_is_refused(tiny, tmp_path, color_folder):
    other = load_model("timm:test_resnet:untrained", device="cpu")
    with pytest.raises(CompareError, match="not the same architecture"):
        compare(tiny, other, color_folder)
    # A checkpoint of another architecture, forced onto the base's: the loader says it does not fit.
    from safetensors.torch import save_file

    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in other.module.state_dict().items()}, str(path))
    with pytest.raises(ExplorerError):
        load_model(str(path), arch=tiny.arch)


def test_unusable_data_is_refused(tiny, tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    with pytest.raises(ExplorerError):
        compare(tiny, tiny, tmp_path)


def _rows(names: list[str], cka: list[float], probe: list[float]) -> list[LayerComparison]:
    return [
        LayerComparison(
            name=n,
            index=i,
            type="",
            stage=0,
            channels=None,
            params=1 if n != "global_pool" else 0,
            cka=c,
            cka_low=c - 0.01,
            cka_high=min(1.0, c + 0.01),
            weight_change=0.01,
            probe_acc=p,
            new_head=n == "classifier",
        )
        for i, (n, c, p) in enumerate(zip(names, cka, probe, strict=True))
    ]


def test_recommendation_is_the_deepest_block_before_similarity_drops(tiny):
    names = [r.name for r in ladder(tiny)]  # conv_stem … blocks.4.0, conv_head, global_pool, classifier
    cka = [1.0, 0.99, 0.97, 0.95, 0.80, 0.6, 0.4, 0.3, 0.2]
    probe = [0.4, 0.5, 0.7, 0.9, 0.85, 0.7, 0.6, 0.6, 0.6]
    rec = recommend(tiny, _rows(names, cka, probe), n_images=3000, n_classes=3, tuned_accuracy=0.95, chance=1 / 3)
    assert rec.freeze_after == "blocks.2.0" and "blocks.3.0" in rec.reason
    assert (rec.guide.size, rec.guide.similarity) == ("large", "different")
    assert rec.trainable + rec.non_trainable == rec.total and rec.non_trainable > 0
    assert "blocks.2.0" in rec.code or "blocks.2" in rec.code
    # Little data and ImageNet-like top features that match the fine-tuned accuracy: a linear head suffices.
    probe_top = [0.4, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.94, 0.94]
    rec = recommend(tiny, _rows(names, cka, probe_top), n_images=150, n_classes=3, tuned_accuracy=0.95, chance=1 / 3)
    assert (rec.guide.size, rec.guide.similarity) == ("small", "similar")
    assert rec.freeze_after == "global_pool" and "linear classifier" in rec.reason
    # Everything changed from the first block: train all.
    rec = recommend(tiny, _rows(names, [0.5] * 9, probe), n_images=3000, n_classes=3, tuned_accuracy=None, chance=0.3)
    assert rec.freeze_after is None and rec.non_trainable == 0


def test_report_json_is_finite_or_null(tiny, color_folder):
    report: ComparisonReport = compare(tiny, tiny, color_folder, n_boot=0, probes=False)
    text = report.to_json()
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.slow
def test_science_fine_tuning_changes_late_layers_more_than_early_ones(bundled, tmp_path):
    """Yosinski 2014 / Neyshabur 2020 / Raghu 2019 on real data: the bundled model fine-tuned on digits."""
    t0 = time.perf_counter()
    before = fingerprint(bundled.module)
    # Every layer trainable (a freeze would make early CKA 1 by construction); 600 digits, 2 epochs at 96 px.
    settings = FinetuneSettings(
        freeze_after=None,
        epochs=2,
        input_size=96,
        max_images=600,
        batch_size=32,
        lr=3e-3,
        backbone_lr=1e-3,
        val_fraction=0.0,
    )
    result = finetune(bundled, "demo:digits", settings, out=tmp_path / "digits.safetensors")
    t1 = time.perf_counter()
    tuned = load_model(str(result.checkpoint), device=bundled.device)
    report = compare(bundled, tuned, "demo:digits", max_images=600, n_boot=200, probe_folds=3)
    t2 = time.perf_counter()
    print(f"\nscience check: fine-tune {t1 - t0:.0f} s, compare {t2 - t1:.0f} s ({report.seconds})")
    assert fingerprint(bundled.module) == before
    assert report.tuned_accuracy > 0.5  # it learned the task (on its training images; chance 0.10)
    body = [r for r in report.layers if r.name.startswith(("conv_stem", "blocks", "conv_head"))]
    third = len(body) // 3
    first, last = body[:third], body[-third:]
    cka_first = np.mean([r.cka for r in first])
    cka_last = np.mean([r.cka for r in last])
    wc_first = np.mean([r.weight_change for r in first])
    wc_last = np.mean([r.weight_change for r in last])
    print(
        f"CKA first third {cka_first:.3f} vs last {cka_last:.3f}; weight change {wc_first:.5f} vs {wc_last:.5f}; "
        f"tuned accuracy {report.tuned_accuracy:.2f}"
    )
    assert cka_first > cka_last + 0.1
    assert np.mean([r.cka_low for r in first]) > np.mean([r.cka_high for r in last])  # beyond the intervals
    assert wc_last > 2 * wc_first
    middle = body[third:-third]
    assert all(math.isfinite(r.probe_acc) for r in middle)
    assert np.mean([r.probe_acc for r in middle]) > report.chance + 0.5  # far above chance (0.10)


def test_cli_compare_writes_json_html_and_csv(tuned_tiny, color_folder, tmp_path, capsys):
    from explorer.cli import main

    out = tmp_path / "rep" / "report.json"
    code = main(
        [
            "compare",
            "--tuned",
            tuned_tiny.spec,
            "--base",
            "timm:test_efficientnet:untrained",
            "--device",
            "cpu",
            "--data",
            str(color_folder),
            "--out",
            str(out),
            "--bootstrap",
            "100",
            "--folds",
            "3",
        ]
    )
    assert code == 0
    assert "recommended freeze point" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["layers"]][0] == "conv_stem" and "recommendation" in report
    assert out.with_suffix(".html").exists() and out.with_suffix(".csv").exists()
    assert (
        main(
            [
                "compare",
                "--tuned",
                tuned_tiny.spec,
                "--base",
                "timm:test_resnet:untrained",
                "--device",
                "cpu",
                "--data",
                str(color_folder),
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert "error:" in capsys.readouterr().err


def test_cross_excitation_plugin_measures_units_and_returns_same_seed_renders(tiny, tuned_tiny, color_folder):
    from explorer.transfer.crossexcite import as_plugin, cross_excitation

    same = cross_excitation(tiny, tiny, units=2, max_layers=3, steps=3, size=48)
    assert len(same.values) == 3
    assert any(math.isfinite(r) for ratios in same.per_unit.values() for r in ratios)
    for name, ratios in same.per_unit.items():  # identical models: the base picture *is* the unit's own
        assert all(r == pytest.approx(1.0) for r in ratios if math.isfinite(r)), name
        assert np.array_equal(same.renders[name]["base"], same.renders[name]["tuned"])
    report = compare(
        tiny,
        tuned_tiny,
        color_folder,
        n_boot=50,
        probes=False,
        cross_excitation=as_plugin(units=2, max_layers=2, steps=3, size=48),
    )
    measured = {r.name: r.cross_excitation for r in report.layers if r.cross_excitation is not None}
    assert len(measured) == 2 and set(measured) == set(report.renders)
    first = next(iter(report.renders.values()))
    assert first["base"].shape == (len(first["units"]), 48, 48, 3) and first["base"].dtype == np.uint8
    assert report.to_html().count("<img") == 2 * sum(len(r["units"]) for r in report.renders.values())
    assert "renders" not in json.loads(report.to_json())


def test_cka_minibatches_do_not_depend_on_the_forward_batch_size(tiny, tuned_tiny, color_folder):
    a = compare(tiny, tuned_tiny, color_folder, batch_size=5, cka_batch=8, n_boot=50, probes=False)
    b = compare(tiny, tuned_tiny, color_folder, batch_size=36, cka_batch=8, n_boot=50, probes=False)
    assert a.settings["cka_batch"] == 8
    for ra, rb in zip(a.layers, b.layers, strict=True):
        assert ra.cka == pytest.approx(rb.cka, abs=1e-4)
