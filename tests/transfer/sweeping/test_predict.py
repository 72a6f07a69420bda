"""The instant freeze prediction: estimators on data with known truths, the rule, the pass, the CLI; (slow) digits.

Known truths: Gaussian class clusters are separable and the same features with shuffled labels are not; LogME's
evidence is the log density of the labels under the Gaussian N(0, β⁻¹I + α⁻¹FFᵀ) and its maximum is a maximum; a
global scale of the features changes neither LogME nor Fisher's ratio.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Dataset

import explorer.models
from explorer.cli import main
from explorer.models import LoadedModel
from explorer.runtime import torch_threads
from explorer.transfer.sweeping.predict import (
    ESTIMATORS,
    FINETUNE_PER_CLASS,
    PredictError,
    centroid_accuracy,
    fisher_ratio,
    knn_accuracy,
    log_evidence,
    logme,
    max_evidence,
    predict_freeze,
    predict_option,
    predict_settings,
    probe_accuracy,
    score,
)
from explorer.transfer.sweeping.sweep_tasks import auto_points
from explorer.transfer.training.finetune import training_data


def clusters(
    n_per: int = 40, classes: int = 3, dim: int = 16, gap: float = 4.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, one per class, `gap` standard deviations apart along random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    centres *= gap / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(classes), n_per)
    x = centres[y] + rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def shuffled(y: np.ndarray, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).permutation(y)


# --------------------------------------------------------------------------- the estimators


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_scores_separable_classes_above_shuffled_labels(estimator: str) -> None:
    x, y = clusters()
    good, bad = score(estimator, x, y), score(estimator, x, shuffled(y))
    assert good > bad
    assert score(estimator, x, y) == good  # deterministic (folds seeded)


@pytest.mark.parametrize("fn", [probe_accuracy, knn_accuracy, centroid_accuracy])
def test_accuracy_estimators_read_near_one_when_separable_and_near_chance_when_shuffled(
    fn: Callable[[np.ndarray, np.ndarray], float],
) -> None:
    x, y = clusters(n_per=50)
    assert fn(x, y) >= 0.9
    assert fn(x, shuffled(y)) <= 0.55  # chance is 1/3; 150 images leave room for luck, not for 0.9


def test_estimators_rank_a_more_separable_layer_higher() -> None:
    near, y = clusters(gap=1.5, seed=3)
    far, _ = clusters(gap=5.0, seed=3)
    for estimator in ESTIMATORS:
        assert score(estimator, far, y) > score(estimator, near, y), estimator


def test_logme_evidence_is_the_gaussian_log_density_of_the_labels() -> None:
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    for n, d in ((30, 8), (12, 20)):  # more images than features, and fewer
        f = rng.normal(size=(n, d))
        t = (rng.random(n) < 0.4).astype(float)
        for alpha, beta in ((0.5, 2.0), (3.0, 0.7)):
            cov = np.eye(n) / beta + f @ f.T / alpha
            want = multivariate_normal(np.zeros(n), cov).logpdf(t)
            assert log_evidence(f, t, alpha, beta) == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_logme_maximises_the_evidence_over_alpha_and_beta() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(60, 10))
    t = f @ rng.normal(size=10) * 0.3 + rng.normal(size=60)
    value, alpha, beta = max_evidence(f, t)
    assert value == pytest.approx(log_evidence(f, t, alpha, beta))
    for a, b in ((alpha * 1.2, beta), (alpha / 1.2, beta), (alpha, beta * 1.2), (alpha, beta / 1.2)):
        assert log_evidence(f, t, a, b) < value


def test_logme_and_fisher_ignore_a_global_scale_of_the_features() -> None:
    x, y = clusters()
    assert logme(100 * x, y) == pytest.approx(logme(x, y), abs=1e-6)
    assert fisher_ratio(100 * x, y) == pytest.approx(fisher_ratio(x, y), rel=1e-6)


def test_logme_is_finite_with_more_features_than_images() -> None:
    x, y = clusters(n_per=10, dim=200)  # 30 images, 200 features: the features can fit the labels exactly
    value = logme(x, y)
    assert np.isfinite(value) and value > logme(x, shuffled(y))


def test_knn_leaves_the_image_itself_out() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))  # noise: every image is its own nearest neighbour if it is not left out
    y = np.arange(60) % 2
    assert knn_accuracy(x, y, k=1) < 0.8


# --------------------------------------------------------------------------- the rule


POINTS = ["none", "a", "b", "c"]


def test_prediction_is_the_best_scoring_point_linear_with_little_data() -> None:
    p = predict_option(POINTS, {"a": 0.5, "b": 0.9, "c": 0.7}, "probe", images_per_class=30, chance=0.1)
    assert (p.point, p.route, p.estimator, p.weak) == ("b", "linear", "probe", False)
    assert "b" in p.reason and "90.0%" in p.reason and p.reason.count(".") >= 1


def test_ties_go_to_the_cheaper_linear_classifier_then_the_deeper_point() -> None:
    scores = {"a": 0.9, "b": 0.9, "c": 0.9}
    assert predict_option(POINTS, scores, "probe", features={"a": 64, "b": 32, "c": 32}).point == "c"
    assert predict_option(POINTS, scores, "probe", features={"a": 16, "b": 32, "c": 32}).point == "a"


def test_lots_of_data_fine_tunes_after_the_point_and_chance_level_is_flagged() -> None:
    p = predict_option(POINTS, {"a": 0.2, "b": 0.1, "c": 0.1}, "knn", images_per_class=FINETUNE_PER_CLASS)
    assert (p.point, p.route) == ("a", "finetune")
    weak = predict_option(POINTS, {"a": 0.12, "b": 0.1, "c": 0.1}, "knn", chance=0.1)
    assert weak.weak and "chance" in weak.reason
    assert not predict_option(POINTS, {"a": -3.0, "b": -2.0, "c": -1.0}, "logme", chance=0.5).weak


def test_pixels_as_good_as_the_features_somewhere_mean_train_every_layer() -> None:
    scores = {"a": 0.6, "b": 0.95, "c": 0.8}
    p = predict_option(POINTS, scores, "probe", pixels=0.7, images_per_class=30)
    assert (p.point, p.route) == ("none", "finetune")
    assert "pixels" in p.reason and "1 of 3" in p.reason
    q = predict_option(POINTS, scores, "probe", pixels=0.5, images_per_class=30)  # below every point
    assert (q.point, q.route) == ("b", "linear")


def test_a_missing_score_is_one_sentence() -> None:
    with pytest.raises(PredictError, match="c"):
        predict_option(POINTS, {"a": 0.5, "b": float("nan")}, "probe")


# --------------------------------------------------------------------------- the pass


class Recording(Dataset):
    """A 3-class image dataset (class = dominant colour) that records which images were read."""

    def __init__(self, per_class: int = 12) -> None:
        self.classes = ["red", "green", "blue"]
        self.targets = [c for c in range(3) for _ in range(per_class)]
        self.read: set[int] = set()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        self.read.add(i)
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 90, size=(40, 40, 3))
        arr[..., self.targets[i]] += 150
        return Image.fromarray(arr.astype(np.uint8)), self.targets[i]


def test_predict_reads_only_the_training_part_of_the_sweeps_split_and_scores_the_sweeps_points(
    tiny: LoadedModel,
) -> None:
    data = Recording()
    with torch_threads(1):
        report = predict_freeze(tiny, data, input_size=32, seed=3)
    _, _, split = training_data(data, predict_settings(input_size=32, seed=3))
    assert data.read and data.read <= set(split.train) and not data.read & set(split.heldout)
    assert report.points == auto_points(tiny)
    assert [r.layer for r in report.layers] == [p for p in report.points if p != "none"]
    assert all(set(r.scores) == set(ESTIMATORS) and r.features > 0 for r in report.layers)
    assert report.prediction.point in report.points and report.prediction.route in ("linear", "finetune")
    assert set(report.predictions) == set(ESTIMATORS)
    again = predict_freeze(tiny, Recording(), input_size=32, seed=3)
    assert again.to_dict()["layers"] == report.to_dict()["layers"]  # deterministic for a seed


def test_predict_refuses_an_unknown_estimator_in_one_sentence(tiny: LoadedModel, color_folder: Path) -> None:
    with pytest.raises(PredictError, match="Unknown estimator"):
        predict_freeze(tiny, color_folder, input_size=32, estimators=["probe", "magic"])


# --------------------------------------------------------------------------- the command


@pytest.fixture
def serve_tiny(monkeypatch: pytest.MonkeyPatch, tiny: LoadedModel) -> None:
    """The CLI's model loader answers the tiny test model for its spec (no second load)."""
    real = explorer.models.load_model

    def load(spec: str = explorer.models.DEFAULT_SPEC, **kwargs: Any) -> LoadedModel:
        return tiny if spec == "tiny" else real(spec, **kwargs)

    monkeypatch.setattr(explorer.models, "load_model", load)


def test_cli_writes_the_prediction_json_with_the_documented_keys(
    serve_tiny: None, color_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub" / "p.json"
    argv = ["predict-freeze", "--data", str(color_folder), "--model", "tiny", "--input-size", "32", "--out", str(out)]
    with torch_threads(1):
        rc = main(argv)
    assert rc == 0
    d = json.loads(out.read_text())
    assert set(d["prediction"]) >= {"point", "route", "reason", "estimator"}
    assert d["prediction"]["route"] in ("linear", "finetune") and d["prediction"]["reason"].endswith(".")
    assert d["layers"] and all("layer" in row and set(row["scores"]) == set(ESTIMATORS) for row in d["layers"])
    assert isinstance(d["seconds"], float) and d["seconds"] > 0
    assert set(d["pixels"]) == set(ESTIMATORS)  # the raw-pixel baseline, scored by every estimator
    printed = capsys.readouterr().out
    assert "predicted:" in printed and d["prediction"]["point"] in printed


@pytest.mark.parametrize("case", ["missing folder", "bad model", "bad out", "one class"])
def test_cli_bad_input_is_one_sentence(
    case: str, serve_tiny: None, color_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "one" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "a" / "x.png")
    data, model, out = str(color_folder), "tiny", str(tmp_path / "p.json")
    if case == "missing folder":
        data = str(tmp_path / "nowhere")
    elif case == "bad model":
        model = "bundled:no_such_net"
    elif case == "bad out":
        out = str(tmp_path / "p.txt")
    elif case == "one class":
        data = str(tmp_path / "one")
    rc = main(["predict-freeze", "--data", data, "--model", model, "--input-size", "32", "--out", out])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert {"missing folder": "nowhere", "bad model": "no_such_net", "bad out": ".json", "one class": "class"}[
        case
    ] in lines[0]


# --------------------------------------------------------------------------- the science (slow)


@pytest.mark.slow
def test_the_digits_prediction_measures_at_least_95_percent_when_the_sweep_trains_it(bundled: LoadedModel) -> None:
    """The issue's done-when: predict on demo:digits at 64 px, then let the sweep measure that one option (same
    split seed; the prediction read only the training part of its split)."""
    from explorer.transfer.sweeping.sweep import sweep, sweep_settings

    pred = predict_freeze(bundled, "demo:digits", input_size=64)
    p = pred.prediction
    report = sweep(bundled, "demo:digits", points=[p.point], routes=[p.route], settings=sweep_settings(input_size=64))
    option = report.option(p.point, p.route)
    assert option is not None
    assert option.accuracy >= 0.95, (p, option)
    assert pred.seconds < 120  # the 60 s on 2 idle cores, with room for a shared machine


def test_what_the_app_says_of_its_estimator_is_the_measured_table() -> None:
    """The page says 'within 2 points of the best measured option in N of M': the figures of the committed
    benchmark (benchmarks/bench_predict.py), for the estimator the app uses, not numbers typed by hand."""
    from explorer.transfer.sweeping.predict import DEFAULT_ESTIMATOR, MEASURED_CASES, MEASURED_WITHIN

    table = json.loads((Path(__file__).resolve().parents[3] / "benchmarks/results/predict.json").read_text())
    assert table["default_estimator"] == DEFAULT_ESTIMATOR and table["margin"] == 0.02
    mine = table["summary"]["estimators"][DEFAULT_ESTIMATOR]
    assert (mine["within_margin"], mine["cases"]) == (MEASURED_WITHIN, MEASURED_CASES)
    assert mine["within_margin"] == max(e["within_margin"] for e in table["summary"]["estimators"].values())
