"""The family matrix: one model of every torchvision classification family and three timm families, each through
every capability of the app, with random weights. `python -m tests.models.families_table` runs it and writes
docs/families.md; `tests/models/test_families.py` runs the same cells under pytest.

A cell either works (✓) or gives one clear reason (an ExplorerError's one sentence); anything else is a bug and
is recorded as "unexpected". Inputs are small where the model allows (64–128 px); fixed-size models (ViT, Swin
v1 in timm, MaxViT) run at their own size.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"

TORCHVISION = (
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet", "inception_v3",
    "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "resnet18", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11", "vit_b_16", "wide_resnet50_2",
)  # fmt: skip
TIMM = ("deit_tiny_patch16_224", "convnext_atto", "efficientnet_b0")
SPECS = tuple(f"torchvision:{n}:untrained" for n in TORCHVISION) + tuple(f"timm:{n}:untrained" for n in TIMM)
CAPABILITIES = ("ladder", "render", "attribution", "examples", "finetune", "compare")
SLOW = ("finetune", "compare")  # the slow half: a training step and a 16-image comparison
SMALL_SIZES = (64, 96, 128)


@dataclass
class Cell:
    """One capability on one family: ok, or the reason it does not apply, and how long it took."""

    ok: bool
    detail: str  # what it showed (ok) or the reason (not ok)
    seconds: float
    unexpected: bool = False  # an exception that is not an ExplorerError: a bug

    def text(self) -> str:
        if self.ok:
            return f"✓ {self.detail} ({self.seconds:.1f} s)" if self.detail else f"✓ ({self.seconds:.1f} s)"
        return ("unexpected: " if self.unexpected else "") + self.detail.replace("|", "/")


def family_name(spec: str) -> str:
    kind, name, _ = spec.split(":")
    return f"{name} ({kind})"


# --------------------------------------------------------------------------- data


def make_data(root: Path) -> tuple[Path, Path]:
    """An 8-image folder for dataset examples (the sample photos plus colour squares) and a 3-class colour folder
    (8 images per class, 48 px) for fine-tuning and comparing."""
    rng = np.random.default_rng(0)
    examples, classes = root / "examples", root / "classes"
    examples.mkdir(parents=True, exist_ok=True)
    photos = sorted(ASSETS.glob("*.jpg"))[:5]
    for p in photos:
        Image.open(p).convert("RGB").resize((160, 160)).save(examples / f"{p.stem}.png")
    for c, name in enumerate(["red", "green", "blue"]):
        (classes / name).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            arr = rng.integers(0, 90, size=(48, 48, 3))
            arr[..., c] += 150
            Image.fromarray(arr.astype(np.uint8)).save(classes / name / f"{i:02d}.png")
            if i == 0 and len(list(examples.iterdir())) < 8:
                Image.fromarray(arr.astype(np.uint8)).save(examples / f"{name}.png")
    return examples, classes


# --------------------------------------------------------------------------- the model at a small size


def small(model: Any) -> Any:
    """The model at the smallest of 64/96/128 px it runs at (a copy of the LoadedModel sharing the module), or
    as it is when it takes only its own size."""
    from explorer.errors import ExplorerError
    from explorer.layers import anatomy, fixed_input_size

    if fixed_input_size(model) is not None:
        return model
    for s in SMALL_SIZES:
        candidate = dataclasses.replace(model, input_size=(s, s), resize_size=round(s / 0.875))
        try:
            anatomy(candidate)
        except ExplorerError:
            continue
        return candidate
    return model


def middle_block(model: Any) -> str:
    """The representative block of the 'patterns' stage: a mid-depth block with a grid."""
    from explorer.featurevis import stage_map

    stages = stage_map(model)
    if not stages.stages:
        from explorer.errors import ExplorerError

        raise ExplorerError("The model has no block with a spatial output.")
    return stages.representatives()["patterns"]


# --------------------------------------------------------------------------- the capabilities


def cap_ladder(ctx: dict[str, Any]) -> str:
    from explorer.layers import ladder

    model = ctx["model"]
    blocks = ladder(model, "blocks")
    full = ladder(model, "full")
    maps = [r for r in blocks if r.has_map]
    kinds = sorted({r.layout.kind for r in maps if r.layout is not None})
    ctx["layer"] = middle_block(model)
    return f"{len(blocks)} blocks ({len(maps)} with a map: {'/'.join(kinds)}), {len(full)} layers"


def cap_render(ctx: dict[str, Any]) -> str:
    from explorer import featurevis as fv

    model, layer = ctx["model"], ctx["layer"]
    preset = fv.get_preset("fast").replace(steps=2, size=48, model_size=model.input_size[0], preview_every_s=60.0)
    res = fv.render(model, [fv.channel(layer, 0), fv.channel(layer, 1)], preset)
    if not np.isfinite(res.curves).all():
        raise AssertionError(f"non-finite objective values on {layer}")
    return f"{layer}"


def cap_attribution(ctx: dict[str, Any]) -> str:
    from explorer.attribution import attribute

    model = ctx["model"]
    res = attribute(model, ASSETS / "chelsea.jpg", "all", "gradcam")
    for name in res.layers:
        if not torch.isfinite(res.maps[name]).all():
            raise AssertionError(f"non-finite Grad-CAM map at {name}")
    return f"{len(res.layers)} blocks"


def cap_examples(ctx: dict[str, Any]) -> str:
    from explorer.exemplars import dataset_examples

    model, layer = ctx["model"], ctx["layer"]
    ex = dataset_examples(model, ctx["examples"], [layer], k=2, cache=False)[layer]
    if ex.images_used != 8:
        raise AssertionError(f"{ex.images_used} of 8 images used")
    ex.patches(model, 0)
    return f"{ex.grid[0]}×{ex.grid[1]}, {ex.rf.kind} box {ex.rf.size[0]} px"


def cap_finetune(ctx: dict[str, Any]) -> str:
    from explorer.transfer import FinetuneSettings, finetune

    model, layer = ctx["model"], ctx["layer"]
    size = None if model.input_size == ctx["native"].input_size else model.input_size[0]
    settings = FinetuneSettings(
        freeze_after=layer, epochs=1, batch_size=8, max_images=10, input_size=size, augment="none"
    )
    run = finetune(model, ctx["classes"], settings)
    if len(run.steps) != 1:
        raise AssertionError(f"{len(run.steps)} training steps instead of 1")
    ctx["tuned"] = run.to_loaded_model(model)
    return f"frozen after {layer}, {run.metadata['parameters']['trainable']:,} trainable"


def cap_compare(ctx: dict[str, Any]) -> str:
    from explorer.transfer import compare

    if "tuned" not in ctx:
        from explorer.errors import ExplorerError

        raise ExplorerError("No fine-tuned model to compare (the fine-tune did not run).")
    model = ctx["model"]
    size = None if model.input_size == ctx["native"].input_size else model.input_size[0]
    tuned = ctx["tuned"]
    report = compare(model, tuned, ctx["classes"], max_images=16, batch_size=8, probes=False,
                     input_size=size)  # fmt: skip
    finite = [r for r in report.layers if r.cka is not None and np.isfinite(r.cka)]
    if not finite:
        raise AssertionError("no layer has a finite CKA")
    return f"CKA on {len(finite)} blocks"


RUNNERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "ladder": cap_ladder,
    "render": cap_render,
    "attribution": cap_attribution,
    "examples": cap_examples,
    "finetune": cap_finetune,
    "compare": cap_compare,
}


def run_cell(capability: str, ctx: dict[str, Any]) -> Cell:
    """One capability, timed; an ExplorerError is a reason, anything else is unexpected."""
    from explorer.errors import ExplorerError

    t0 = time.perf_counter()
    try:
        detail = RUNNERS[capability](ctx)
    except ExplorerError as exc:
        return Cell(False, str(exc), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - recorded as a bug, with its first line
        lines = traceback.format_exception_only(type(exc), exc)
        return Cell(False, lines[-1].strip(), time.perf_counter() - t0, unexpected=True)
    return Cell(True, detail, time.perf_counter() - t0)


def run_family(spec: str, data: tuple[Path, Path], capabilities: tuple[str, ...] = CAPABILITIES) -> dict[str, Cell]:
    """Every capability on one family, in order (later cells use what earlier ones found: the layer, the tuned
    model). A model that does not load fills every cell with the reason."""
    from explorer.errors import ExplorerError
    from explorer.models import load_model

    t0 = time.perf_counter()
    try:
        native = load_model(spec, device="cpu")
    except ExplorerError as exc:
        return {c: Cell(False, str(exc), time.perf_counter() - t0) for c in capabilities}
    ctx: dict[str, Any] = {"native": native, "examples": data[0], "classes": data[1]}
    ctx["model"] = small(native)
    out: dict[str, Cell] = {"load": Cell(True, f"{ctx['model'].input_size[0]} px", time.perf_counter() - t0)}
    for cap in capabilities:
        if cap != "ladder" and "layer" not in ctx and cap in ("render", "examples", "finetune"):
            out[cap] = Cell(False, "No layer to use: the ladder did not run.", 0.0)
            continue
        out[cap] = run_cell(cap, ctx)
    return out


# --------------------------------------------------------------------------- the table


def table(results: dict[str, dict[str, Cell]]) -> str:
    """docs/families.md: the matrix as Markdown."""
    caps = ["load", *CAPABILITIES]
    lines = [
        "# Model families × capabilities",
        "",
        "Generated by `python -m tests.models.families_table` (the same cells as `tests/models/test_families.py`). "
        "Every model has random weights (`NAME:untrained`: no weights can be downloaded here), so the cells say "
        "whether each capability *runs* on the family, not what it shows. A cell is ✓ (what it covered, and the "
        "seconds it took on a shared 2-core CPU) or the one-sentence reason the app gives.",
        "",
        "Settings: input 64–128 px where the model takes other sizes (the `load` column), its own size otherwise; "
        "render = 2 steps of the fast preset on the representative block of the *patterns* stage; attribution = "
        "one-pass Grad-CAM on every block with a map (`all`); examples = 8 images, top 2; finetune = one training "
        "step on 8 images of 3 classes, frozen after the same block; compare = 16 images, no probes.",
        "",
        "| family | " + " | ".join(caps) + " |",
        "|" + "---|" * (len(caps) + 1),
    ]
    for spec, cells in results.items():
        row = [cells[c].text() if c in cells else "—" for c in caps]
        lines.append(f"| {family_name(spec)} | " + " | ".join(row) + " |")
    total = sum(c.seconds for cells in results.values() for c in cells.values())
    lines += ["", f"Total: {total:.0f} s for {len(results)} families.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every family (or those named on the command line) and write docs/families.md."""
    args = argv if argv is not None else sys.argv[1:]
    specs = [s for s in SPECS if not args or any(a in s for a in args)]
    torch.set_num_threads(2)
    results: dict[str, dict[str, Cell]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ.setdefault("LAYER_EXPLORER_CACHE", str(Path(tmp) / "cache"))
        data = make_data(Path(tmp))
        for spec in specs:
            results[spec] = run_family(spec, data)
            cells = results[spec]
            print(family_name(spec), " | ".join(f"{c}: {cells[c].text()}" for c in cells), flush=True)
    out = ROOT / "docs" / "families.md"
    if not args:
        out.write_text(table(results))
        print(f"wrote {out}")
    bad = [(s, c) for s, cells in results.items() for c, cell in cells.items() if cell.unexpected]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
