"""Feature visualization speed and quality: our `classic` preset against Lucent (torch-lucent), same process.

    python benchmarks/bench_featurevis.py                          # CPU suite: bundled EfficientNet-Lite0
    python benchmarks/bench_featurevis.py --steps 16 --channels 4  # a quick check that it runs
    python benchmarks/bench_featurevis.py --suite gpu              # torchvision ResNet-50 layer3, 64 ch, 224 px

For each layer it renders the same channels with both engines at the same image size, steps and transforms
(Lucent's `standard_transforms`; 128 px upsampled to the model input in the CPU suite), Lucent one channel at a
time as it is normally used, ours as one batched call. It prints seconds per channel for each, the ratio, the mean
final activation each reached (both measured the same way: the final image, untransformed, upsampled and
normalised, through the model), our time per optimisation step, and the floor: forward + backward of the network
truncated at that layer, alone, at the same batch and input size. It also times the `fast` preset's first preview.

Lucent is a benchmark-only dependency: `pip install -r benchmarks/requirements.txt` (torch-lucent with --no-deps;
it needs kornia and decorator). Lucent sees [0, 1] images: the model is wrapped with its own normalization.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer import featurevis as fv  # noqa: E402
from explorer.featurevis.fold import render_network  # noqa: E402
from explorer.featurevis.presets import get_preset  # noqa: E402
from explorer.layers import forward_until, hook_count, to_nchw  # noqa: E402
from explorer.models import LoadedModel, load_model  # noqa: E402

SUITES = {
    "cpu": {"model": "bundled:efficientnet_lite0", "layers": "blocks.1.1,blocks.3.2,blocks.6.0", "channels": 16,
            "size": 128, "steps": 128},
    "gpu": {"model": "torchvision:resnet50:untrained", "layers": "layer3", "channels": 64, "size": 224, "steps": 128},
}  # fmt: skip


def import_lucent():
    """Lucent 0.1.8 with the shims it needs against current kornia (benchmark-only; nothing in explorer/)."""
    try:
        import kornia
        import kornia.geometry.transform as kgt
    except ImportError as exc:
        raise SystemExit("Lucent needs kornia: pip install -r benchmarks/requirements.txt") from exc
    # kornia >= 0.7 moved these out of the top-level namespace that Lucent 0.1.8 calls.
    for name in ("get_rotation_matrix2d", "warp_affine"):
        if not hasattr(kornia, name):
            setattr(kornia, name, getattr(kgt, name))
    try:
        from lucent.optvis import objectives, param, render, transform
    except ImportError as exc:
        raise SystemExit("Lucent is missing: pip install -r benchmarks/requirements.txt") from exc
    return objectives, param, render, transform


class Normalized(nn.Module):
    """What Lucent renders through: [0, 1] images in, the model's own normalization, then the model."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.model = copy.deepcopy(model.module).eval()  # Lucent leaves hooks behind: keep them off ours
        self.register_buffer("mean", torch.tensor(model.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _clear_hooks(module: nn.Module) -> None:
    for m in module.modules():
        m._forward_hooks.clear()


def lucent_render(wrapped: Normalized, layer: str, channel: int, size: int, steps: int) -> np.ndarray:
    """One Lucent render with its defaults (FFT + decorrelation, Adam 0.05, standard_transforms)."""
    objectives, param, render, _ = import_lucent()
    name = "model_" + layer.replace(".", "_")
    images = render.render_vis(
        wrapped, objectives.channel(name, channel), param_f=lambda: param.image(size), thresholds=(steps,),
        preprocess=False, progress=False, show_image=False, fixed_image_size=None,
    )  # fmt: skip
    _clear_hooks(wrapped)  # Lucent never removes its hooks; clearing them keeps later calls comparable
    return np.clip(np.round(images[-1][0] * 255), 0, 255).astype(np.uint8)


@torch.no_grad()
def final_activation(model: LoadedModel, layer: str, channels: list[int], images: np.ndarray) -> np.ndarray:
    """Each image's channel mean: uint8 (N,H,W,3) → upsampled to the model input, normalised, no transforms."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(model.device)
    x = F.interpolate(x, size=model.input_size, mode="bilinear", align_corners=True)
    out = to_nchw(forward_until(model.module, layer, model.normalize(x))).float()
    return np.array([float(out[i, c].mean()) for i, c in enumerate(channels)])


def floor_step(
    model: LoadedModel, layer: str, batch: int, reps: int = 5, module: nn.Module | None = None
) -> tuple[float, bool]:
    """Seconds for forward + backward of the network truncated at `layer`, alone, at this batch and input size.

    Same numerics as the render loop: channels-last input, bf16 autocast where `use_bf16` picks it. `module`:
    another network to time the same way (the render's BatchNorm-folded copy).
    """
    from explorer.featurevis.render import autocast, use_bf16

    net = module if module is not None else model.module
    x = torch.randn(batch, 3, *model.input_size, device=model.device, requires_grad=True)
    with torch.no_grad():
        hw = to_nchw(forward_until(net, layer, x[:1])).shape[-2:]
    bf16 = use_bf16(model.device, model.input_size, hw)
    times = []
    for _ in range(reps + 1):
        _sync(model.device)
        t = time.perf_counter()
        with autocast(model.device, bf16):
            out = forward_until(net, layer, x.contiguous(memory_format=torch.channels_last))
        torch.autograd.grad(to_nchw(out).float()[:, 0].mean(), x)
        _sync(model.device)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:])), bf16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fast_first_preview(model: LoadedModel, layer: str, n: int) -> tuple[float, float]:
    """Seconds from the call to the first preview, and to the end, for the `fast` preset."""
    start = time.perf_counter()
    first: list[float] = []

    def progress(done: int, total: int, preview: object) -> None:
        if preview is not None and not first:
            first.append(time.perf_counter() - start)

    fv.render(model, [fv.channel(layer, c) for c in range(n)], "fast", progress=progress)
    return first[0], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=list(SUITES), default="cpu")
    ap.add_argument("--model", default=None, help="model spec (default: the suite's)")
    ap.add_argument("--layers", default=None, help="comma-separated layers (default: the suite's)")
    ap.add_argument("--channels", type=int, default=None, help="channels per layer (default: the suite's)")
    ap.add_argument("--lucent-channels", type=int, default=None, help="render only this many with Lucent (timing "
                    "is per channel; the activation comparison then uses those channels)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="our batch size (default: by device)")
    ap.add_argument("--device", default=None, help="cpu, cuda … (default: auto)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--skip-lucent", action="store_true")
    a = ap.parse_args()
    suite = SUITES[a.suite]
    if a.threads:
        torch.set_num_threads(a.threads)
    steps, size = a.steps or suite["steps"], a.size or suite["size"]
    n = a.channels or suite["channels"]
    model = load_model(a.model or suite["model"], device=a.device)
    preset = get_preset("classic", steps=steps, size=size)
    print(f"# {model.spec} on {model.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}); {n} channels, {size} px → "
          f"{model.input_size[0]} px, {steps} steps, classic transforms")  # fmt: skip
    if model.device.type == "cuda":
        print(f"# GPU: {torch.cuda.get_device_name(model.device)}")
    wrapped = None if a.skip_lucent else Normalized(model).to(model.device)
    header = (
        f"{'layer':<12} {'lucent s/ch':>11} {'ours s/ch':>9} {'speedup':>7} {'lucent act':>10} {'ours act':>8} "
        f"{'act ratio':>9} {'ours s/step':>11} {'floor s/step':>12} {'step/floor':>10} {'batch':>5} {'dtype':>5} "
        f"{'folded floor':>12}"
    )
    print(header)
    for layer in (a.layers or suite["layers"]).split(","):
        channels = list(range(n))
        objs = [fv.channel(layer, c) for c in channels]
        fv.render(model, objs[:1], preset.replace(steps=2))  # warm-up (allocator, kernels)
        _sync(model.device)
        t = time.perf_counter()
        ours = fv.render(model, objs, preset, seed=0, batch_size=a.batch_size)
        _sync(model.device)
        ours_s = (time.perf_counter() - t) / n
        assert hook_count(model.module) == 0
        batch = ours.batch_size
        n_batches = int(np.ceil(n / batch))
        ours_step = ours_s * n / n_batches / steps
        floor, bf16 = floor_step(model, layer, batch)
        folded, _ = floor_step(model, layer, batch, module=render_network(model, [layer]))
        ours_act = final_activation(model, layer, channels, ours.images)
        luc_s, luc_act = float("nan"), np.full(n, np.nan)
        if wrapped is not None:
            lc = channels[: a.lucent_channels or n]
            lucent_render(wrapped, layer, lc[0], size, 2)  # warm-up
            _sync(model.device)
            t = time.perf_counter()
            luc_imgs = np.stack([lucent_render(wrapped, layer, c, size, steps) for c in lc])
            _sync(model.device)
            luc_s = (time.perf_counter() - t) / len(lc)
            luc_act = final_activation(model, layer, lc, luc_imgs)
            ours_act = ours_act[: len(lc)]
        print(
            f"{layer:<12} {luc_s:>11.3f} {ours_s:>9.3f} {luc_s / ours_s:>6.2f}x {np.mean(luc_act):>10.3f} "
            f"{np.mean(ours_act):>8.3f} {np.mean(ours_act) / np.mean(luc_act):>9.2f} {ours_step:>11.3f} "
            f"{floor:>12.3f} {ours_step / floor:>10.2f} {batch:>5} {'bf16' if bf16 else 'fp32':>5} {folded:>12.3f}",
            flush=True,
        )
    if a.suite == "cpu":
        layer = (a.layers or suite["layers"]).split(",")[-1]
        first, total = fast_first_preview(model, layer, 6)
        print(f"fast preset, 6 units of {layer}: first preview after {first:.2f} s, done after {total:.1f} s")


if __name__ == "__main__":
    main()
