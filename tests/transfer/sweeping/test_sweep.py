"""The freeze sweep: tasks, the shared prefix pass, resuming, bad input, the choice; (slow) the science on digits."""

from __future__ import annotations

import html
import json
import pickle
import re

import numpy as np
import pytest
import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.layers import hook_count, ladder
from explorer.models import LoadedModel, fingerprint
from explorer.models.freeze import freeze_summary
from explorer.transfer.reporting.report_html import render_sweep_html
from explorer.transfer.sweeping.sweep import (
    SweepError,
    images_to_resolve,
    load_sweep,
    mismatch,
    sweep,
    sweep_settings,
)
from explorer.transfer.sweeping.sweep_report import choose, make_options
from explorer.transfer.sweeping.sweep_tasks import (
    SweepContext,
    SweepTask,
    auto_points,
    build_prefix,
    in_process,
    run_sweep_task,
)

POINTS = ["none", "blocks.2.0", "global_pool"]


FAST = {"seeds": 1, "evaluation": "holdout", "min_steps": 2}  # the tests' budget: one seed, the split, few steps


def _settings(**kw: object) -> object:
    return sweep_settings(1, **{"input_size": 32, "batch_size": 8, "val_fraction": 0.25, **kw})


@pytest.fixture(scope="module")
def tiny_sweep(tiny, color_folder):
    before = fingerprint(tiny.module)
    report = sweep(tiny, color_folder, points=POINTS, settings=_settings(), **FAST)
    assert fingerprint(tiny.module) == before and hook_count(tiny.module) == 0 and not tiny.module.training
    return report


def test_auto_points_are_found_once_per_structure(tiny, monkeypatch):
    import explorer.transfer.sweeping.sweep_tasks as tasks

    calls = []
    real = tasks.choose_points
    monkeypatch.setattr(tasks, "choose_points", lambda m: calls.append(1) or real(m))
    first = auto_points(tiny)
    assert auto_points(tiny) == first and len(calls) <= 1  # asked again: remembered (or already, by another test)
    before = len(calls)
    extra = nn.Linear(2, 2)
    tiny.module.add_module("probe_extra", extra)  # the structure changed in place: found again
    try:
        auto_points(tiny)
        assert len(calls) == before + 1
    finally:
        del tiny.module.probe_extra


def test_auto_points_spread_over_the_parameters_stage_ends_and_cuts_of_the_largest_stage(bundled):
    points = auto_points(bundled)
    rows = {r.name: r for r in ladder(bundled)}
    names = list(rows)
    assert 6 <= len(points) <= 8 and points == ["none", *sorted(points[1:], key=names.index)]
    assert points[0] == "none" and points[-1] == "global_pool"  # train everything … head only
    body = names[: names.index("global_pool") + 1]
    total = sum(rows[n].params for n in body)
    frozen = {n: sum(rows[m].params for m in body[: body.index(n) + 1]) / total for n in body}
    spatial = [rows[n] for n in body if rows[n].has_map]
    stages = sorted({r.stage for r in spatial})
    ends = {st: [r.name for r in spatial if r.stage == st][-1] for st in stages}
    kept = [ends[st] for st in stages[:-1] if frozen[ends[st]] >= 0.01]
    assert [p for p in points if p in ends.values()] == kept  # stage ends that freeze ≥ 1 % (not the last)
    assert frozen["blocks.1.1"] < 0.01 and "blocks.1.1" not in points  # the stem's stages: 'none' in all but name
    cuts = [p for p in points[1:-1] if p not in ends.values()]
    biggest = max(stages, key=lambda st: sum(r.params for r in spatial if r.stage == st))
    assert cuts and all(rows[c].stage == biggest for c in cuts)  # cut into equal parameter parts
    share = [
        sum(rows[n].params for n in body if rows[n].stage == biggest and names.index(n) <= names.index(c)) for c in cuts
    ]
    whole = sum(r.params for r in spatial if r.stage == biggest)
    assert all(abs(v / whole - (i + 1) / (len(cuts) + 1)) < 0.2 for i, v in enumerate(share))


def test_every_option_is_measured_with_its_interval_and_cost(tiny_sweep, tiny):
    opts = {(o.point, o.route): o for o in tiny_sweep.options}
    assert set(opts) == {(p, r) for p in POINTS for r in ("finetune", "linear")} - {("none", "linear")}
    for o in tiny_sweep.options:
        assert o.low <= o.accuracy <= o.high and o.heldout == 9 and o.seconds > 0 and o.images_per_second > 0
    for p in POINTS:  # the fine-tune route trains exactly what freezing there leaves trainable
        point = None if p == "none" else p
        assert opts[(p, "finetune")].trainable == freeze_summary(tiny, point, num_classes=3).trainable
    channels = {r.name: r.channels for r in ladder(tiny)}
    assert opts[("blocks.2.0", "linear")].trainable == channels["blocks.2.0"] * 3 + 3  # C×K weights + K biases
    assert tiny_sweep.complete and tiny_sweep.data["heldout_images"] == 9
    assert tiny_sweep.evaluation == "held-out split" and tiny_sweep.identity["base_fingerprint"] == tiny.fingerprint
    assert tiny_sweep.identity["input_size"] == 32 and tiny_sweep.identity["images"] == 36
    assert {o.status for o in tiny_sweep.options} <= {"best", "equivalent", "worse", "cannot place", "not converged"}
    html = render_sweep_html(tiny_sweep)
    assert "<svg" in html and "margin" in html and "<script" not in html
    assert tiny_sweep.to_csv().splitlines()[0].startswith("point,route,accuracy")


def _sweep_table_numbers(page: str) -> list[str]:
    body = page.split("<table class='layers'>")[1].split("</table>")[0].split("</tr>", 1)[1]
    return re.findall(r"\d[\d.,]*", body)


def test_the_sweep_html_and_csv_speak_the_readers_language(tiny_sweep):
    """`translate` (the app passes its localize) writes the sweep page's headings, table headers and verdicts, the
    choice's reason and how it was decided, and the CSV's header row, in the reader's language; numbers stay."""
    from explorer.ui.messages import localize

    mark = lambda s: f"«{s}»"  # noqa: E731
    english, marked = render_sweep_html(tiny_sweep), render_sweep_html(tiny_sweep, translate=mark)
    assert "«" not in english and "<h2>Accuracy at each freeze point</h2>" in english
    assert "<h2>«Accuracy at each freeze point»</h2>" in marked and "<th>«verdict»</th>" in marked
    assert html.escape(mark(tiny_sweep.choice.reason)) in marked
    assert html.escape(mark(f"Decision: {tiny_sweep.choice.test}.")) in marked
    assert _sweep_table_numbers(marked) == _sweep_table_numbers(english)
    portuguese = render_sweep_html(tiny_sweep, translate=lambda s: localize(s, "pt-BR"))
    assert "Onde congelar: a varredura medida" in portuguese and "<th>veredito</th>" in portuguese
    assert "Where to freeze" not in portuguese and "Decision:" not in portuguese and "Decisão:" in portuguese
    assert _sweep_table_numbers(portuguese) == _sweep_table_numbers(english)
    lines = tiny_sweep.to_csv().splitlines()
    header = ",".join(mark(k) for k in lines[0].split(","))
    assert tiny_sweep.to_csv(translate=mark).splitlines() == [header, *lines[1:]]
    pt = tiny_sweep.to_csv(translate=lambda s: localize(s, "pt-BR")).splitlines()
    assert pt[1:] == lines[1:] and pt[0].startswith("ponto,rota,acurácia,")


def test_the_cached_prefix_trains_exactly_what_a_full_forward_trains(tiny, color_folder):
    """A point's fine-tune on cached prefix outputs equals the same fine-tune run through the whole network."""
    from explorer.transfer.sweeping.prefix import prefix_layer
    from explorer.transfer.sweeping.sweep_tasks import check_cuts
    from explorer.transfer.training.finetune import training_data

    s = _settings()
    dataset, classes, split = training_data(color_folder, s)
    layers = {p: prefix_layer(tiny.module, p, tiny.input_size) for p in POINTS[1:]}
    x = torch.rand(2, 3, 32, 32)
    ctx = SweepContext(tiny, dataset, classes, split, s, layers, cut_ok=check_cuts(tiny, POINTS, layers, x))
    assert all(ctx.cut_ok.values())
    ctx.cache = build_prefix(ctx)
    assert {"blocks.2.0", "global_pool"} <= set(ctx.cache.outputs) and ctx.cache.inputs is not None
    task = SweepTask("blocks.2.0", "finetune", 0)
    cached = run_sweep_task(task, ctx)
    ctx.cache.outputs.pop("blocks.2.0")
    ctx.cache.inputs = None  # no cache at all: images through the full network every epoch
    full = run_sweep_task(task, ctx)
    assert cached["cached"] and not full["cached"]
    assert cached["correct"] == full["correct"] and cached["trainable"] == full["trainable"]
    assert cached["epochs"] == full["epochs"]


def test_the_context_travels_to_another_worker_and_gives_the_same_result(tiny, color_folder, tmp_path):
    """What a Ray runner needs: a picklable context (its shared pass rebuilt there) and a pure task function."""
    seen: list[str] = []

    def remote(tasks, context, on_done):
        for task in tasks:
            copy = pickle.loads(pickle.dumps(context))
            assert copy.cache is None
            seen.append(task.key)
            on_done(task, run_sweep_task(task, copy))

    local = sweep(tiny, color_folder, points=["global_pool"], settings=_settings(), **FAST)
    other = sweep(tiny, color_folder, points=["global_pool"], settings=_settings(), runner=remote, **FAST)
    assert seen == ["finetune@global_pool#0", "linear@global_pool#0"]
    assert [o.accuracy for o in other.options] == [o.accuracy for o in local.options]


def test_an_interrupted_sweep_keeps_finished_tasks_and_the_rerun_skips_them(tiny, color_folder, tmp_path):
    out = tmp_path / "s" / "sweep.json"
    ran: list[str] = []

    def dies_after_two(tasks, context, on_done):
        for task in tasks[:2]:
            on_done(task, run_sweep_task(task, context))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(tiny, color_folder, points=POINTS, settings=_settings(), out=out, runner=dies_after_two, **FAST)
    saved = json.loads(out.read_text())
    assert list(saved["tasks"]) == ["finetune@none#0", "finetune@blocks.2.0#0"]
    assert not list(out.parent.glob(".*tmp"))  # atomic writes leave no temporaries

    def counting(tasks, context, on_done):
        ran.extend(t.key for t in tasks)
        in_process(tasks, context, on_done)

    report = sweep(tiny, color_folder, points=POINTS, settings=_settings(), out=out, runner=counting, **FAST)
    assert "finetune@none#0" not in ran and "finetune@blocks.2.0#0" not in ran and len(ran) == 3
    assert report.complete and len(report.options) == 5
    assert load_sweep(out).to_json() == report.to_json()
    assert out.with_suffix(".csv").exists() and out.with_suffix(".html").exists()
    with pytest.raises(SweepError, match="other settings"):  # another budget must not reuse these results
        sweep(tiny, color_folder, points=POINTS, settings=_settings(lr=0.1), out=out, **FAST)


def test_bad_input_gets_one_clear_sentence(tiny, color_folder, tmp_path):
    from PIL import Image

    with pytest.raises(SweepError, match="not a layer of the model's ladder"):
        sweep(tiny, color_folder, points=["none", "blocks.9.9"], settings=_settings())
    with pytest.raises(ExplorerError, match="nothing to train"):
        sweep(tiny, color_folder, points=["classifier"], settings=_settings())
    with pytest.raises(SweepError, match="Unknown sweep route"):
        sweep(tiny, color_folder, points=POINTS, routes=("finetune", "knn"), settings=_settings())
    with pytest.raises(SweepError, match="margin"):
        sweep(tiny, color_folder, points=POINTS, settings=_settings(), margin=2.0)
    with pytest.raises(SweepError, match="Seeds"):
        sweep(tiny, color_folder, points=POINTS, settings=_settings(), seeds=0)
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(one / "only" / f"{i}.png")
    with pytest.raises(ExplorerError, match="two classes|one sub-folder"):
        sweep(tiny, one, settings=_settings())
    mlp = LoadedModel.wrap(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 3)),
        input_size=(32, 32),
        class_names=["blue", "green", "red"],
    )
    with pytest.raises(SweepError, match="no layer with a spatial or token output"):
        sweep(mlp, color_folder, points=["none", "1"], settings=_settings())
    with pytest.raises(SweepError, match=r"\.json"):
        sweep(tiny, color_folder, points=POINTS, settings=_settings(), out=tmp_path / "x.csv")


def _tasks(accs: dict[str, list], trainable: dict[str, int], converged: dict[str, bool] | None = None) -> dict:
    """Task results as the runner writes them; a value that is a list of arrays is one array per seed."""
    out = {}
    for k, v in accs.items():
        runs = v if isinstance(v, list) else [v]
        for s, bits in enumerate(runs):
            out[f"{k}#{s}"] = {
                "accuracy": float(np.mean(bits)),
                "correct": "".join("1" if c else "0" for c in bits),
                "trainable": trainable[k],
                "seconds": 1.0,
                "images_per_second": 10.0,
                "converged": (converged or {}).get(k, True),
            }
    return out


def _correlated(rng, n: int, base: np.ndarray, accuracy: float, phi: float = 0.25) -> np.ndarray:
    """Correctness with a given accuracy whose errors share about `phi` with `base`'s (as options' errors do)."""
    share = rng.random(n) < phi
    own = rng.random(n) < accuracy
    return np.where(share, base, own)


def test_the_choice_is_the_cheapest_option_within_the_margin_never_one_merely_not_found_worse():
    rng = np.random.default_rng(0)
    n = 1000
    best = rng.random(n) < 0.95
    same = best.copy()
    same[np.flatnonzero(same)[:3]] = False  # 3 images worse: 0.3 points, a tight interval → equivalent
    worse = _correlated(rng, n, best, 0.86)  # 9 points worse → worse
    accs = {"finetune@none": best, "linear@b": same, "linear@a": worse}
    options = make_options(_tasks(accs, {"finetune@none": 1000, "linear@b": 50, "linear@a": 10}), ["none", "a", "b"])
    choice = choose(options, [i % 10 for i in range(n)], chance=0.1)
    by = {o.key: o for o in options}
    assert by["linear@b"].status == "equivalent" and by["linear@b"].loss_high < 0.02
    assert by["linear@a"].status == "worse" and by["linear@a"].loss_low > 0.02
    assert (choice.point, choice.route) == ("b", "linear") and "within 2 points of the best" in choice.reason
    assert "loss 0.3 [" in choice.reason and choice.test_accuracy is not None and "half" in choice.test_note
    # The case: 59 % against 68 % on 120 images, a McNemar p of 0.07: never "as good" now.
    n = 120
    top = rng.random(n) < 0.68
    low = _correlated(rng, n, top, 0.59)
    options = make_options(_tasks({"finetune@b": top, "finetune@c": low}, {"finetune@b": 900, "finetune@c": 100}), [])
    choice = choose(options, [i % 6 for i in range(n)], chance=1 / 6)
    assert choice.point == "b" and {o.key: o.status for o in options}["finetune@c"] in ("cannot place", "worse")
    # An option that did not converge is shown, never ranked.
    options = make_options(
        _tasks({"finetune@b": top, "finetune@c": top}, {"finetune@b": 900, "finetune@c": 10}, {"finetune@c": False}),
        [],
    )
    choice = choose(options, [i % 6 for i in range(n)], chance=1 / 6)
    assert choice.point == "b" and {o.key: o.status for o in options}["finetune@c"] == "not converged"
    # Nothing learned: chance plus a margin, not just chance.
    guess = rng.random(1000) < 0.53  # 2 classes: above chance (p < 0.05), not above chance plus a margin (55 %)
    options = make_options(_tasks({"finetune@none": guess}, {"finetune@none": 1}), ["none"])
    c = choose(options, [i % 2 for i in range(1000)], chance=0.5)
    assert c.point is None and "chance plus a margin" in c.withheld and c.try_next


def test_seeds_are_a_level_of_their_own_not_more_images():
    """Two seeds that disagree widen the loss interval; stacked as images they would narrow it."""
    from explorer.transfer.sweeping.stats import loss_bounds

    rng = np.random.default_rng(3)
    n = 300
    a = [rng.random(n) < 0.80, rng.random(n) < 0.80]
    steady = [rng.random(n) < 0.80, rng.random(n) < 0.80]
    shaky = [rng.random(n) < 0.72, rng.random(n) < 0.88]  # the same mean, 16 points apart by seed
    calm = loss_bounds([np.stack(a), np.stack(steady)])
    wild = loss_bounds([np.stack(a), np.stack(shaky)])
    assert wild.high.max() - wild.loss.max() > calm.high.max() - calm.loss.max()
    stacked = loss_bounds([np.concatenate(a)[None], np.concatenate(shaky)[None]])  # seeds × images as images
    assert wild.high.max() - wild.loss.max() > stacked.high.max() - stacked.loss.max()
    tasks = _tasks({"finetune@none": shaky}, {"finetune@none": 5})
    (opt,) = make_options(tasks, ["none"])
    assert opt.seeds == 2 and opt.seed_sd == pytest.approx(np.std([s.mean() for s in shaky], ddof=1))
    assert opt.matrix().shape == (2, n)


def test_small_data_is_cross_validated_and_every_image_scored_once(tiny, color_folder):
    """36 images, 9 held out: too few to resolve 2 points, so every image is scored once, out of fold."""
    assert images_to_resolve(0.9, 0.02) > 9 and images_to_resolve(0.99, 0.02) < images_to_resolve(0.7, 0.02)
    report = sweep(
        tiny, color_folder, points=["global_pool"], routes=("linear",), settings=_settings(), seeds=1, min_steps=2
    )
    assert report.evaluation == "5-fold cross-validation" and report.data["scored_images"] == 36
    assert all(o.heldout == 36 for o in report.options)


def test_a_sweep_belongs_to_its_data_model_and_size(tiny_sweep, tiny):
    ident = tiny_sweep.identity
    same = {"base_fingerprint": tiny.fingerprint, "data_sha256": ident["data_sha256"], "input_size": 32}
    assert mismatch(tiny_sweep, **same) is None
    assert "another base model" in mismatch(tiny_sweep, **{**same, "base_fingerprint": "0" * 16})
    assert "other images" in mismatch(tiny_sweep, **{**same, "data_sha256": "f" * 64})
    assert "32 px" in mismatch(tiny_sweep, **{**same, "input_size": 64})
    old = type(tiny_sweep).from_dict({**tiny_sweep.to_dict(), "identity": {}})
    assert "older version" in mismatch(old, **same)


def test_cli_sweep_writes_json_csv_html_and_refuses_a_bad_point(color_folder, tmp_path, capsys):
    from explorer.cli import main

    out = tmp_path / "cli" / "sweep.json"
    args = [
        "sweep",
        "--model",
        "timm:test_efficientnet:untrained",
        "--device",
        "cpu",
        "--data",
        str(color_folder),
        "--points",
        "none,global_pool",
        "--epochs",
        "1",
        "--input-size",
        "32",
        "--batch-size",
        "8",
        "--val-fraction",
        "0.25",
    ]
    assert main([*args, "--seeds", "1", "--evaluation", "holdout", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "decision: non-inferiority with a margin of 2 points" in printed and "global_pool" in printed
    assert json.loads(out.read_text())["report"]["options"] and out.with_suffix(".html").exists()
    assert main([*args[:-6], "--points", "none,blocks.99", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blocks.99" in err and "Traceback" not in err


@pytest.mark.slow
def test_science_the_sweep_on_digits_chooses_within_the_margin_and_the_comparison_uses_it(bundled, tmp_path):
    """Measure the outcome: the default sweep on real data (demo:digits; its own 64 px), then the comparison's CKA
    prediction against it: they agree within one stage, or the report says they disagree and why."""
    from explorer.models import load_model
    from explorer.transfer.comparison.compare import compare
    from explorer.transfer.training.finetune import FinetuneSettings, finetune

    report = sweep(bundled, "demo:digits", out=tmp_path / "sweep.json")
    best, chosen = report.best, report.chosen
    print("\n" + "\n".join(f"{o.key}: {o.accuracy:.3f} {o.status} {o.loss_high:.3f}" for o in report.options))
    print(report.choice.reason, report.choice.test_accuracy, report.seconds)
    assert report.settings["input_size"] == 64 and report.evaluation == "held-out split"
    assert chosen is not None and best is not None and report.choice.withheld is None
    assert chosen is best or chosen.loss_high < report.choice.margin  # within the margin, bounded
    assert best.accuracy > 0.9 and report.choice.test_accuracy is not None and report.choice.test_accuracy > 0.9
    assert all(o.converged for o in report.options)
    head = {o.route: o for o in report.options if o.point == report.options[-1].point}
    assert abs(head["finetune"].accuracy - head["linear"].accuracy) < 0.04  # the same parameters, the same result
    run = finetune(bundled, "demo:digits", FinetuneSettings(input_size=64), out=tmp_path / "ft.safetensors")
    tuned = load_model(str(run.checkpoint), device=bundled.device)
    cmp = compare(bundled, tuned, "demo:digits", max_images=None, probe_folds=3, sweep=report)
    rec = cmp.recommendation
    print(rec.agreement)
    assert rec.source == "sweep" and rec.freeze_after == (None if chosen.point == "none" else chosen.point)
    assert "agree within one stage" in rec.agreement or ("disagree" in rec.agreement and "because" in rec.agreement)


def test_the_linear_routes_code_trains_exactly_the_parameters_the_sweep_counted(tiny_sweep, tiny):
    """The page shows this code for a linear recommendation: it must run and train what the sweep measured."""
    import copy

    from explorer.transfer.sweeping.prefix import feature_extractor_code

    option = tiny_sweep.option("blocks.2.0", "linear")
    scope = {"model": copy.deepcopy(tiny.module)}
    exec(feature_extractor_code(tiny, "blocks.2.0", 3), scope)  # the user's copy-paste
    clf = scope["classifier"]
    trainable = sum(p.numel() for p in clf.parameters() if p.requires_grad)
    assert trainable == option.trainable
    clf.train()
    logits = clf(torch.rand(4, 3, 32, 32))
    assert logits.shape == (4, 3) and logits.requires_grad


@pytest.mark.parametrize(("classes", "opens_at", "stays_shut_at"), [(2, 0.60, 0.538), (100, 0.15, 0.019)])
def test_the_gate_asks_whether_the_task_was_learned_not_just_above_chance(classes, opens_at, stays_shut_at):
    """At 1,000 images, 'above chance' alone opened at 53.8 % for 2 classes and 1.9 % for 100: not learning."""
    from explorer.transfer.advice.gate import floor, learned_task
    from explorer.transfer.sweeping.stats import above_chance

    chance = 1 / classes
    assert above_chance(round(stays_shut_at * 1000), 1000, chance) < 0.05  # the old bar: passed
    assert not learned_task(round(stays_shut_at * 1000), 1000, chance).open
    assert learned_task(round(opens_at * 1000), 1000, chance).open
    assert floor(chance) == pytest.approx(chance + 0.1 * (1 - chance))
    # On generated data: labels unrelated to the features give a shut gate; learnable ones an open one.
    rng = np.random.default_rng(classes)
    x = rng.normal(size=(1000, 16))
    y_random = rng.integers(0, classes, 1000)
    from explorer.transfer.comparison.probes import linear_probe

    shut = linear_probe(x, y_random, folds=3)
    assert shut is not None and not learned_task(round(shut.accuracy * 1000), 1000, chance).open
