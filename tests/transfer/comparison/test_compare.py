"""Per-layer comparison: records in depth order, one pass per model, held-out images, BatchNorm apart from weights,
weight change that means something, the gate, the advice, exports."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re

import numpy as np
import pytest
import torch

from explorer.errors import ExplorerError
from explorer.layers import hook_count, ladder
from explorer.models import fingerprint, load_model
from explorer.transfer.advice.recommend import bn_explanation, recommend, with_sweep
from explorer.transfer.comparison.compare import CompareError, compare
from explorer.transfer.reporting.report import ComparisonReport, LayerComparison, chart_series
from explorer.transfer.reporting.report_html import render_html, save_report
from explorer.transfer.training.finetune import FinetuneSettings, finetune


@pytest.fixture(scope="module")
def tuned_tiny(tiny, color_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "tiny.safetensors"
    settings = FinetuneSettings(epochs=2, input_size=32, batch_size=8, lr=5e-3, backbone_lr=5e-3, val_fraction=0.25)
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
        report = compare(tiny, tuned_tiny, color_folder, probe_folds=3, progress=lambda d, t, p: seen.append((d, t)))
    finally:
        for c in counters:
            c.handle.remove()
    assert [r.name for r in report.layers] == [r.name for r in ladder(tiny)]
    assert [r.index for r in report.layers] == list(range(len(report.layers)))
    assert report.data["images_used"] == 9 == report.heldout["images"]  # the fine-tune's held-out images only
    assert report.heldout["status"] == "heldout"
    assert [c.images() for c in counters] == [9, 9]  # every image once through each model
    assert hook_count(tiny.module) == 0 and hook_count(tuned_tiny.module) == 0
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    head = report.layer("classifier")
    assert head.new_head and head.weight_change is None
    body = [r for r in report.layers if r.weight_change is not None]
    assert all(r.weight_change > 0 for r in body)
    assert all(len(r.weight_change_channels) == (r.channels or 0) for r in body if r.name.startswith("blocks"))
    for r in report.layers:
        assert -0.5 <= r.cka <= 1.0 + 1e-9
        assert r.cka_low <= r.cka + 1e-9 and r.cka <= r.cka_high + 1e-9
        assert len(r.cka_halves) == 0  # 9 images: too few to split in two and still have an interval
    assert report.tuned_accuracy is not None and 0 <= report.tuned_accuracy <= 1
    assert report.chance == pytest.approx(1 / 3)
    assert report.recommendation.source == "withheld" and "Too few images" in report.recommendation.reason


def test_exports_json_csv_and_html(tiny, tuned_tiny, color_folder, tmp_path):
    report = compare(tiny, tuned_tiny, color_folder, probes=False)
    d = json.loads(report.to_json())
    assert [r["name"] for r in d["layers"]] == [r.name for r in report.layers]
    assert {"cka", "cka_low", "cka_high", "weight_change", "probe_acc"} <= set(d["layers"][0])
    assert d["recommendation"]["guide"]["size"] in ("small", "large") and "code" in d["recommendation"]
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert [r["name"] for r in rows] == [r.name for r in report.layers]
    written = save_report(report, tmp_path / "r" / "report.json")
    assert [p.name for p in written] == ["report.json", "report.html", "report.csv"]
    html = written[1].read_text()
    assert "<svg" in html and "Too few images to decide" in html and "blocks.4.0" in html and "2×2 guide" in html
    assert json.loads(written[0].read_text())["base"]["fingerprint"] == tiny.fingerprint


def _layer_table_numbers(page: str) -> list[str]:
    body = page.split("<table class='layers'>")[1].split("</table>")[0].split("</tr>", 1)[1]
    return re.findall(r"\d[\d.,]*", body)


def test_the_html_and_csv_exports_speak_the_readers_language(tiny, tuned_tiny, color_folder):
    """`translate` (the app passes its localize) writes the page's headings, table headers, advice and notes and the
    CSV's header row in the reader's language; the table's numbers and the CSV's values stay as they are."""
    from explorer.ui.messages import localize

    report = compare(tiny, tuned_tiny, color_folder, probes=False)
    mark = lambda s: f"«{s}»"  # noqa: E731
    english, marked = render_html(report), render_html(report, translate=mark)
    assert "«" not in english and "<h1>Before and after fine-tuning, layer by layer</h1>" in english
    assert "<h1>«Before and after fine-tuning, layer by layer»</h1>" in marked and "<th>«layer»</th>" in marked
    assert html.escape(mark(report.recommendation.reason)) in marked and "<th>«little data»</th>" in marked
    assert all(html.escape(mark(e)) in marked for e in report.recommendation.evidence)
    assert _layer_table_numbers(marked) == _layer_table_numbers(english)
    portuguese = render_html(report, translate=lambda s: localize(s, "pt-BR"))
    assert "Antes e depois do ajuste fino, camada por camada" in portuguese and "<th>camada</th>" in portuguese
    assert "Before and after" not in portuguese and "Too few images" not in portuguese and "Evidence" not in portuguese
    assert "Poucas imagens para decidir" in portuguese
    assert _layer_table_numbers(portuguese) == _layer_table_numbers(english)
    lines = report.to_csv().splitlines()
    header = ",".join(mark(k) for k in lines[0].split(","))
    assert report.to_csv(translate=mark).splitlines() == [header, *lines[1:]]
    pt = report.to_csv(translate=lambda s: localize(s, "pt-BR")).splitlines()
    assert pt[1:] == lines[1:] and pt[0].startswith("nome,índice,tipo,") and "cka_low" not in pt[0]


def test_identical_models_read_cka_one_and_no_change(tiny, color_folder):
    report = compare(tiny, tiny, color_folder, probes=False)
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


def test_report_json_is_finite_or_null(tiny, color_folder):
    report: ComparisonReport = compare(tiny, tiny, color_folder, probes=False)
    text = report.to_json()
    assert "NaN" not in text and "Infinity" not in text


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
            "--folds",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "held out" in printed and "2x2 guide" in printed
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
    from explorer.transfer.comparison.crossexcite import as_plugin, cross_excitation

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
        probes=False,
        cross_excitation=as_plugin(units=2, max_layers=2, steps=3, size=48),
    )
    measured = {r.name: r.cross_excitation for r in report.layers if r.cross_excitation is not None}
    assert len(measured) == 2 and set(measured) == set(report.renders)
    first = next(iter(report.renders.values()))
    assert first["base"].shape == (len(first["units"]), 48, 48, 3) and first["base"].dtype == np.uint8
    assert render_html(report).count("<img") == 2 * sum(len(r["units"]) for r in report.renders.values())
    assert "renders" not in json.loads(report.to_json())


def test_cka_does_not_depend_on_the_forward_batch_size(tiny, tuned_tiny, color_folder):
    a = compare(tiny, tuned_tiny, color_folder, batch_size=2, probes=False)
    b = compare(tiny, tuned_tiny, color_folder, batch_size=36, probes=False)
    for ra, rb in zip(a.layers, b.layers, strict=True):
        assert ra.cka == pytest.approx(rb.cka, abs=1e-4) and ra.cka_low == pytest.approx(rb.cka_low, abs=1e-4)


# --------------------------------------------------------------------------- held-out images by default


def test_other_data_and_an_unknown_split_are_said_plainly(tiny, tuned_tiny, color_folder, tmp_path):
    import dataclasses
    import shutil

    same = tmp_path / "same"
    shutil.copytree(color_folder, same)  # the same files elsewhere: recognised by the file list, held-out still
    assert compare(tiny, tuned_tiny, same, probes=False).heldout["status"] == "heldout"
    other = tmp_path / "other"
    shutil.copytree(color_folder, other)
    (other / "red" / "00.png").unlink()
    report = compare(tiny, tuned_tiny, other, probes=False)
    assert report.heldout["status"] == "different" and report.data["images_used"] == 35
    assert report.tuned_accuracy is not None and any("not the tuning data" in w for w in report.warnings)
    meta = {k: v for k, v in tuned_tiny.metadata.items() if k != "split"}
    no_split = dataclasses.replace(tuned_tiny, metadata=meta)  # an older checkpoint: which images it trained on?
    report = compare(tiny, no_split, color_folder, probes=False)
    assert report.heldout["status"] == "unknown" and report.tuned_accuracy is None
    assert "not reported" in report.heldout["note"]
    assert report.recommendation.source == "withheld"


# --------------------------------------------------------------------------- BatchNorm apart from weights


class _Block(torch.nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(cout)
        self.act = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _small_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        _Block(3, 8), _Block(8, 8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3)
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics as if estimated on some data
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _wrap(module: torch.nn.Module, metadata: dict | None = None):
    from explorer.models import LoadedModel

    return LoadedModel.wrap(module, input_size=(32, 32), class_names=["blue", "green", "red"], metadata=metadata)


def test_batchnorm_statistics_and_weights_are_told_apart_on_a_model_where_the_answer_is_known(color_folder):
    import copy

    base = _wrap(_small_net(0))
    stats_only = copy.deepcopy(base.module)  # only the first block's BatchNorm statistics change
    with torch.no_grad():
        bn = stats_only[0].bn
        bn.running_mean.add_(torch.linspace(-2, 2, 8))
        bn.running_var.mul_(torch.logspace(-1, 1, 8))
    report = compare(base, _wrap(stats_only), color_folder, probes=False)
    first, second = report.layer("0"), report.layer("1")
    assert first.weight_rms == 0 and first.bn_shift > 0.5 and second.bn_shift == 0
    for r in (first, second):
        assert r.cka_weights == pytest.approx(1.0, abs=1e-9)  # tuned weights are the base's: identical
        assert r.cka_stats == pytest.approx(r.cka, abs=1e-9) and r.cka < 0.99  # the statistics did it all
    assert bn_explanation(report.layers).startswith("BatchNorm statistics, not weights")
    assert any(e.startswith("BatchNorm statistics") for e in report.recommendation.evidence)

    weights_only = copy.deepcopy(base.module)  # only the second block's convolution changes
    with torch.no_grad():
        weights_only[1].conv.weight.add_(torch.randn_like(weights_only[1].conv.weight))
    report = compare(base, _wrap(weights_only), color_folder, probes=False)
    first, second = report.layer("0"), report.layer("1")
    assert first.cka == pytest.approx(1.0, abs=1e-9) and second.weight_rms > 0 and second.bn_shift == 0
    assert second.cka_stats == pytest.approx(1.0, abs=1e-9) and second.cka_weights == pytest.approx(second.cka)
    assert second.cka < 0.99 and bn_explanation(report.layers).startswith("The weights, not the BatchNorm")


# --------------------------------------------------------------------------- weight change that means something


def test_equal_random_sign_updates_do_not_read_as_late_layers_changing_more(tiny, color_folder):
    """Adam-like steps: every parameter moves by ±ε. Relative change then tracks 1/RMS(W) (larger where weights
    are small); the absolute and per-step figures must read the same for every block, and the chart shows those."""
    import dataclasses

    module = copy_module(tiny.module)
    gen = torch.Generator().manual_seed(0)
    eps, budget = 1e-3, 0.25
    with torch.no_grad():
        for p in module.parameters():
            p.add_(eps * torch.randint(0, 2, p.shape, generator=gen).float().mul(2).sub(1))
    meta = {"optimizer": {"steps": 100, "body_lr_sum": budget, "head_lr_sum": budget}, "head": "classifier"}
    tuned = dataclasses.replace(tiny, module=module, fingerprint=fingerprint(module), metadata=meta)
    report = compare(tiny, tuned, color_folder, probes=False)
    body = [r for r in report.layers if r.weight_rms is not None]
    relative = [r.weight_change for r in body]
    assert max(relative) / min(relative) > 3  # the artefact the relative figure shows
    assert all(r.weight_rms == pytest.approx(eps, rel=1e-5) for r in body)
    assert all(r.weight_per_step == pytest.approx(eps / budget, rel=1e-5) for r in body)
    series = chart_series(report)
    drawn = [v for v in series.weight if v is not None]
    assert "step budget" in series.weight_label and max(drawn) / min(drawn) == pytest.approx(1.0, abs=1e-5)
    text = " ".join([report.recommendation.reason, *report.recommendation.evidence]).lower()
    assert "changed more" not in text and "more than early" not in text


def copy_module(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).eval()


# --------------------------------------------------------------------------- the advice from hand-made rows


def _rows(tiny, cka: list[float]) -> list[LayerComparison]:
    """Hand-made rows over the tiny model's ladder (conv_stem … global_pool, classifier)."""
    return [
        LayerComparison(
            name=r.name,
            index=i,
            type="",
            stage=r.stage,
            channels=4,
            params=r.params,
            cka=c,
            cka_low=c - 0.02,
            cka_high=min(1.0, c + 0.02),
            weight_change=0.01,
            new_head=r.name == "classifier",
        )
        for i, (r, c) in enumerate(zip(ladder(tiny), cka, strict=True))
    ]


CKA = [0.99, 0.98, 0.97, 0.8, 0.7, 0.6, 0.5, 0.5, float("nan")]  # unchanged up to blocks.1.0


def _probes(accs: dict[str, list[bool]]):
    from explorer.transfer.comparison.probes import ProbeResult

    return {n: ProbeResult(float(np.mean(v)), 0.0, 3, 0.1, 4, list(v)) for n, v in accs.items()}


def _recommend(tiny, layers, **kw):
    args = dict(
        n_images=300,
        n_classes=10,
        chance=0.1,
        tuned_correct=270,
        tuned_n=300,
        train_per_class=50.0,
        probes={},
        halves=["blocks.1.0", "blocks.1.0"],
    )
    return recommend(tiny, layers, **{**args, **kw})


def test_the_prediction_is_labelled_and_the_gate_withholds_it(tiny):
    layers = _rows(tiny, CKA)
    rec = _recommend(tiny, layers)
    assert rec.source == "prediction" and rec.freeze_after == "blocks.1.0" == rec.prediction
    assert rec.reason.startswith("Prediction from CKA") and "sweep" in rec.reason and rec.stable
    for kw, words in [
        (dict(tuned_correct=33), "not significantly above chance"),
        (dict(n_images=60), "Too few images to decide"),
        (dict(tuned_correct=None), "unknown"),
    ]:
        rec = _recommend(tiny, layers, **kw)
        assert rec.source == "withheld" and rec.freeze_after is None and words in rec.reason and rec.try_next
    far = _probes({"blocks.0.0": [True] * 95 + [False] * 5, "global_pool": [True] * 90 + [False] * 10})
    rec = _recommend(tiny, layers, tuned_correct=120, probes=far)  # 40 %: above chance, far below the probe (95 %)
    assert rec.source == "withheld" and "linear classifier on the base model's own features" in rec.reason
    rec = _recommend(tiny, layers, halves=["conv_stem", "blocks.3.0"])
    assert rec.stable is False and any(c.startswith("Unstable") for c in rec.caveats)


def test_the_guide_counts_training_images_and_compares_the_probes_on_the_same_images(tiny):
    layers = _rows(tiny, CKA)
    rng = np.random.default_rng(0)
    top = rng.random(300) < 0.80
    best = top | (rng.random(300) < 0.5)  # the middle layer is right wherever the top one is, and more
    rec = _recommend(tiny, layers, probes=_probes({"blocks.2.0": best, "global_pool": top}), train_per_class=40.0)
    g = rec.guide
    assert (g.size, g.similarity) == ("small", "different") and g.measurements["probe_gap_low"] > 0
    assert g.measurements["train_images_per_class"] == 40.0 and g.measurements["best_probe_layer"] == "blocks.2.0"
    same = _recommend(tiny, layers, probes=_probes({"blocks.2.0": top, "global_pool": top}), train_per_class=400.0)
    assert (same.guide.size, same.guide.similarity) == ("large", "similar")


# --------------------------------------------------------------------------- the gate on real fine-tunes


@pytest.fixture(scope="module")
def digits_runs(bundled):
    """A zero-step and a three-step fine-tune of the bundled model on 600 digits (120 held out), 64 px."""
    from explorer.transfer.training.finetune import FinetuneSettings, finetune

    s = FinetuneSettings(input_size=64, max_images=600)
    zero = finetune(bundled, "demo:digits", s, should_stop=lambda: True)
    steps: list[int] = []
    three = finetune(
        bundled,
        "demo:digits",
        s,
        should_stop=lambda: len(steps) >= 3,
        progress=lambda d, t, i: steps.append(d) if i.get("phase") == "train" else None,
    )
    assert len(zero.steps) == 0 and len(three.steps) == 3
    return {"zero": zero.to_loaded_model(bundled), "three": three.to_loaded_model(bundled)}


@pytest.mark.slow
@pytest.mark.parametrize("run", ["zero", "three"])
def test_no_freeze_point_from_a_model_that_has_not_learned(bundled, digits_runs, run):
    report = compare(bundled, digits_runs[run], "demo:digits", max_images=None, probe_folds=3, bn_parts=False)
    rec = report.recommendation
    print(f"\n{run}-step: tuned {report.tuned_accuracy:.2f} on {report.data['images_used']} held-out, {rec.reason}")
    assert report.heldout["status"] == "heldout" and report.data["images_used"] == 120
    assert rec.source == "withheld" and rec.freeze_after is None
    assert "has not learned" in rec.reason and rec.try_next


def test_with_a_sweep_the_guide_compares_its_linear_classifiers_trained_on_the_whole_split(tiny):
    from explorer.transfer.advice.guide import why
    from explorer.transfer.reporting.report import ComparisonReport
    from explorer.transfer.sweeping.sweep_report import SweepReport, choose, make_options

    rng = np.random.default_rng(3)
    best, top = rng.random(300) < 0.97, rng.random(300) < 0.85
    bits = {"linear@blocks.2.0": best, "linear@global_pool": top, "finetune@none": best}
    tasks = {
        f"{k}#0": {
            "accuracy": float(v.mean()),
            "correct": "".join("1" if c else "0" for c in v),
            "trainable": 10 if k.startswith("linear") else 99_000,
            "seconds": 1.0,
            "images_per_second": 1.0,
        }
        for k, v in bits.items()
    }
    options = make_options(tasks, ["none", "blocks.2.0", "global_pool"])
    sweep = SweepReport(
        base={},
        data={"images_per_class": 400.0},
        settings={},
        options=options,
        choice=choose(options, [i % 3 for i in range(300)], 0.1),
        chance=0.1,
    )
    layers = _rows(tiny, CKA)
    rec = _recommend(tiny, layers, probes=_probes({"blocks.2.0": top, "global_pool": top}))
    assert rec.guide.similarity == "similar"  # the probes (same folds) saw no difference
    report = ComparisonReport(
        base={}, tuned={}, data={"classes": list("abc")}, settings={}, layers=layers, recommendation=rec
    )
    measured = with_sweep(report, sweep, tiny).recommendation
    g = measured.guide
    assert (g.size, g.similarity) == ("large", "different") and g.measurements["top_probe_layer"] == "global_pool"
    assert g.measurements["probes_from"] == "the sweep's linear route" and g.measurements["probe_gap_low"] > 0
    assert "the sweep's linear route: best at blocks.2.0" in why(g)
