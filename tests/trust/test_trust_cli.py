"""The trust commands: `sanity`, `faithfulness`, `cka-map`, `selectivity`, `fv-quality` write their JSON on a tiny
model, and problems the user can fix are one `error: …` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import explorer.models
from explorer.cli import main
from explorer.data import ASSETS_DIR
from explorer.models import LoadedModel

CHELSEA = str(ASSETS_DIR / "chelsea.jpg")
TINY = "timm:test_efficientnet:untrained"


@pytest.fixture
def use_tiny(monkeypatch: pytest.MonkeyPatch, tiny: LoadedModel) -> None:
    """Serve the tiny spec from the session's model instead of building it again."""
    real = explorer.models.load_model

    def load(spec: str = explorer.models.DEFAULT_SPEC, **kwargs: object) -> LoadedModel:
        return tiny if spec == TINY else real(spec, **kwargs)

    monkeypatch.setattr(explorer.models, "load_model", load)


def _read(path: Path) -> dict:
    text = path.read_text()
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_sanity_writes_spearman_and_ssim_per_method(tmp_path: Path, use_tiny: None, capsys) -> None:
    out = tmp_path / "s.json"
    args = ["sanity", "--image", CHELSEA, "--model", TINY, "--methods", "gradient,gradcam", "--out", str(out)]
    assert main(args) == 0
    data = _read(out)
    assert set(data["methods"]) == {"gradient", "gradcam"}
    assert data["steps"][0] == "original" and data["steps"][1] == "classifier" and data["steps"][-1] == "conv_stem"
    for rec in data["methods"].values():
        keys = set(rec)
        assert {k for k in keys if "spearman" in k} >= {"spearman", "top_spearman", "final_spearman"}
        assert {k for k in keys if "ssim" in k} >= {"ssim", "top_ssim", "final_ssim"}
        assert len(rec["spearman"]) == len(data["steps"]) and rec["spearman"][0] == pytest.approx(1.0)
    table = capsys.readouterr().out
    assert "gradcam" in table and "verdict" in table


def test_faithfulness_writes_areas_and_random_baselines(tmp_path: Path, use_tiny: None, color_folder: Path) -> None:
    out = tmp_path / "f.json"
    args = ["faithfulness", "--data", str(color_folder), "--model", TINY, "--method", "gradcam", "--layers",
            "blocks.3.0,conv_head", "--max-images", "3", "--steps", "4", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    data = _read(out)
    assert data["images"] == 3 and sorted(data["ranking"]) == ["blocks.3.0", "conv_head"]
    for rec in data["layers"].values():
        assert {"insertion", "deletion", "random_insertion", "random_deletion", "score"} <= set(rec)
    assert "smooth" in data["bias_note"]


def test_cka_map_of_a_model_with_itself(tmp_path: Path, use_tiny: None, color_folder: Path, capsys) -> None:
    out = tmp_path / "h.json"
    args = ["cka-map", "--a", TINY, "--b", TINY, "--data", str(color_folder), "--max-images", "24",
            "--permutations", "20", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    data = _read(out)
    raw, cal = np.asarray(data["raw"]), np.asarray(data["calibrated"])
    assert raw.shape == cal.shape == (len(data["a_layers"]), len(data["b_layers"]))
    assert np.allclose(np.diag(raw), 1.0, atol=1e-6) and np.allclose(np.diag(cal), 1.0, atol=1e-6)
    assert "diagonal" in capsys.readouterr().out


def test_selectivity_base_and_tuned(tmp_path: Path, use_tiny: None, color_folder: Path) -> None:
    out = tmp_path / "sel.json"
    args = ["selectivity", "--data", str(color_folder), "--model", TINY, "--tuned", TINY, "--layers",
            "blocks.1.0,global_pool", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    data = _read(out)
    assert set(data) == {"base", "tuned"}
    assert [r["layer"] for r in data["base"]["layers"]] == ["blocks.1.0", "global_pool"]
    assert data["base"]["classes"] == ["blue", "green", "red"]
    base, tuned = data["base"]["layers"][0], data["tuned"]["layers"][0]
    assert base["mean_selectivity"] == pytest.approx(tuned["mean_selectivity"])


def test_fv_quality_writes_flags(tmp_path: Path, use_tiny: None) -> None:
    out = tmp_path / "q.json"
    assert main(["fv-quality", "--model", TINY, "--layer", "blocks.1.0", "--channels", "0-1", "--out", str(out)]) == 0
    data = _read(out)
    assert [u["channel"] for u in data["units"]] == [0, 1]
    assert all(isinstance(u["flags"], list) for u in data["units"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sanity", "--image", CHELSEA, "--model", TINY, "--methods", "nope"], "Unknown attribution method"),
        (["sanity", "--image", "/no/such.jpg", "--model", TINY], "such.jpg"),
        (["faithfulness", "--data", "/no/such/folder", "--model", TINY], "does not exist"),
        (["cka-map", "--b", TINY, "--data", "demo:digits", "--alpha", "2"], "alpha"),
        (["selectivity", "--data", str(ASSETS_DIR), "--model", TINY], "sub-folder"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, use_tiny: None, capsys, args: list[str], needle: str) -> None:
    assert main([*args, "--out", str(tmp_path / "x.json")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert needle in line
    assert not (tmp_path / "x.json").exists()
