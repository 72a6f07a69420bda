"""The optimisation loop: many objectives rendered at once, one image each, in one batch.

Why it is faster than the usual loop: the forward stops at the deepest layer the objectives read
(`explorer.layers.forward_until`), all images share each forward, the transforms are one resampling per image,
gradients are taken with `torch.autograd.grad` for the image parameters only (no weight gradients, nothing
written to the shared model), BatchNorms are folded into their convolutions in a render-only copy
(`explorer.featurevis.fold`), and the input is channels-last. On CUDA the forward runs under bf16 autocast; on
a CPU with native bf16 (AVX512-BF16 / AMX) it does too when the deepest layer read is at most 16× smaller than
the input (early and middle blocks, where bf16 halves the step time here; for late blocks it is slower), decided
from the first step's output shape so a render's numerics depend only on the model and its layers.

Each image is seeded from (seed, its objective's key, its occurrence), never from its batch position, so an
image is the same whether rendered alone or among 64 others, and a cache can fill in only the missing ones.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from explorer.errors import ExplorerError, msg
from explorer.featurevis.fold import render_network
from explorer.featurevis.objectives import Channel, Context, Objective
from explorer.featurevis.optim import make_optimizer
from explorer.featurevis.param import image_generator, make_param, to_uint8
from explorer.featurevis.presets import Preset, get_preset
from explorer.featurevis.transforms import Augment
from explorer.layers import Layout, fixed_input_size, forward_until, layout_of
from explorer.models import LoadedModel
from explorer.runtime import Progress


class RenderError(ExplorerError):
    """A render that cannot run (no objectives, out of memory even one image at a time)."""


@dataclass
class Preview:
    """Images so far, for a progress callback: `images[i]` belongs to objective `indices[i]`."""

    images: np.ndarray  # (n, H, W, 3) uint8
    indices: list[int]
    step: int  # steps done for these images
    steps: int


@dataclass
class RenderResult:
    """One image per objective and each objective's value at every step."""

    images: np.ndarray  # (N, H, W, 3) uint8
    curves: np.ndarray  # (N, steps) float32: objective value (mean over crops) at each step, before its update
    params: dict[str, Any]
    objectives: list[Objective] = field(default_factory=list)
    seconds: float = 0.0
    batch_size: int = 0

    @property
    def final(self) -> np.ndarray:
        """The last value of each curve."""
        return self.curves[:, -1] if self.curves.size else np.zeros(len(self.images), dtype=np.float32)


def image_keys(objectives: Sequence[Objective]) -> list[str]:
    """The seed key of each image: its objective's key and how many times that key came before it."""
    seen: dict[str, int] = {}
    keys = []
    for obj in objectives:
        k = seen.get(obj.key, 0)
        seen[obj.key] = k + 1
        keys.append(f"{obj.key}#{k}")
    return keys


def groups_of(objectives: Sequence[Objective]) -> list[list[int]]:
    """Images that must share a batch: all images of one coupled key together, every other image alone."""
    by_key: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, obj in enumerate(objectives):
        if obj.coupled:
            if obj.key not in by_key:
                by_key[obj.key] = []
                out.append(by_key[obj.key])
            by_key[obj.key].append(i)
        else:
            out.append([i])
    return out


def pack_groups(groups: list[list[int]], batch_size: int) -> list[list[int]]:
    """Pack whole groups into batches of at most `batch_size` (a larger group gets a batch of its own)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for g in groups:
        if current and len(current) + len(g) > batch_size:
            chunks.append(current)
            current = []
        current = current + g
    if current:
        chunks.append(current)
    return chunks


CPU_BATCH = 4  # per image, batches of 4 ran 3–15 % faster than 8 on an early block here (maps stay in cache)
MODEL_OUTPUT = msg("the model output")  # what a message calls the layer "" (the logits)


def default_batch_size(device: torch.device, n: int) -> int:
    """CUDA: everything at once (halved on out-of-memory). CPU: small batches, which run faster per image there."""
    return n if device.type == "cuda" else min(n, CPU_BATCH)


def _channel_values(objectives: Sequence[Objective], grids: dict[str, torch.Tensor], copies: int) -> torch.Tensor:
    """The common case, all plain channel objectives on one layer: one gather instead of n small ops."""
    first = objectives[0]
    assert isinstance(first, Channel)
    g = grids[first.layer]
    unit_list = [o.unit for o in objectives]  # type: ignore[attr-defined]
    units = torch.tensor(unit_list, device=g.device)
    if max(unit_list) >= g.shape[1]:
        bad = next(o for o in objectives if o.unit >= g.shape[1])  # type: ignore[attr-defined]
        bad.evaluate(Context({first.layer: g[:1]}, [], 0))  # raises the ObjectiveError naming the unit
    rows = torch.arange(len(objectives) * copies, device=g.device)
    picked = g[rows, units.repeat_interleave(copies)]  # (n·copies, H, W)
    return picked.mean(dim=(-2, -1)).view(len(objectives), copies).mean(1)


def _evaluate(objectives: Sequence[Objective], grids: dict[str, torch.Tensor], copies: int) -> torch.Tensor:
    """Each image's objective value (mean over its copies): (n,)."""
    n = len(objectives)
    if all(type(o) is Channel and o.layer == objectives[0].layer for o in objectives):  # type: ignore[attr-defined]
        return _channel_values(objectives, grids, copies)
    per_image = [{} for _ in range(n)]  # type: list[dict[str, torch.Tensor]]
    for name, g in grids.items():
        for i, a in enumerate(g.view(n, copies, *g.shape[1:]).unbind(0)):
            per_image[i][name] = a
    members: dict[str, list[int]] = {}
    for i, obj in enumerate(objectives):
        if obj.coupled:
            members.setdefault(obj.key, []).append(i)
    values = []
    for i, obj in enumerate(objectives):
        if obj.coupled:
            group = members[obj.key]
            ctx = Context(per_image[i], [per_image[j] for j in group], group.index(i))
        else:
            ctx = Context(per_image[i], [per_image[i]], 0)
        values.append(obj.evaluate(ctx).float().mean())
    return torch.stack(values)


CPU_BF16_MAX_STRIDE = 16  # bf16 autocast on CPU for layers at most this many times smaller than the input


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively ($LAYER_EXPLORER_CPU_BF16=0/1 overrides)."""
    forced = os.environ.get("LAYER_EXPLORER_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(device: torch.device, input_hw: Sequence[int], layer_hw: Sequence[int] | None) -> bool:
    """bf16 autocast for this forward: always on CUDA; on CPU for early/middle layers when the CPU has bf16."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or layer_hw is None or not cpu_bf16_supported():
        return False
    stride = max(input_hw[0] / max(layer_hw[0], 1), input_hw[1] / max(layer_hw[1], 1))
    return stride <= CPU_BF16_MAX_STRIDE


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on `device` when `enabled`, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


class _Reporter:
    """Turns steps into progress calls, with previews at the first step, then every `every_s` seconds, then last."""

    def __init__(self, progress: Progress | None, total: int, every_s: float) -> None:
        self.progress, self.total, self.every_s = progress, total, every_s
        self.last = 0.0

    def __call__(self, done: int, make_preview: Callable[[], Preview], step: int, steps: int) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        preview = None
        if step == 1 or step == steps or now - self.last >= self.every_s:
            preview = make_preview()
            self.last = now
        self.progress(done, self.total, preview)


def _render_batch(
    model: LoadedModel,
    objectives: Sequence[Objective],
    keys: Sequence[str],
    positions: list[int],
    preset: Preset,
    seed: int,
    report: Callable[[int, Callable[[], Preview], int], None],
) -> tuple[np.ndarray, np.ndarray]:
    device = model.device
    n = len(objectives)
    gens = [image_generator(seed, k) for k in keys]
    param = make_param(
        preset.param, n, preset.size, gens, device, decay_power=preset.decay_power, decorrelate=preset.decorrelate,
        sd=preset.sd, spectrum_folder=preset.spectrum_folder, maco_gain=preset.maco_gain,
    )  # fmt: skip
    layouts = check_layers(model, objectives)
    shift = [may_roll(model, o, layouts, preset.transforms.roll_stride) for o in objectives]
    augment = Augment(preset.transforms, gens, model_input_size(model, preset), model.normalize, device, shift)
    params = param.parameters()
    opt = make_optimizer(preset.optimizer, params, preset.lr)
    layers = list(layouts)
    bf16 = device.type == "cuda"  # on CPU decided after the first step, from the deepest layer's size
    net = render_network(model, layers)  # BatchNorms folded into their convolutions (explorer.featurevis.fold)
    history: list[torch.Tensor] = []  # kept on the device: no host sync per step

    def preview(step: int) -> Callable[[], Preview]:
        def make() -> Preview:
            with torch.no_grad():
                return Preview(to_uint8(param()), list(positions), step, preset.steps)

        return make

    for step in range(preset.steps):
        x = augment(param()).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            outs = forward_until(net, layers, x)
        grids = {name: layouts[name].to_grid(outs[name]).float() for name in layers}
        if step == 0 and device.type != "cuda":
            smallest = min(grids.values(), key=lambda g: g.shape[-2] * g.shape[-1])
            bf16 = use_bf16(device, x.shape[-2:], smallest.shape[-2:])
        values = _evaluate(objectives, grids, augment.copies)
        opt.step(torch.autograd.grad(-values.sum(), params))
        history.append(values.detach())
        report(step + 1, preview(step + 1), step + 1)
    with torch.no_grad():
        return to_uint8(param()), torch.stack(history, 1).float().cpu().numpy()


def may_roll(model: LoadedModel, objective: Objective, layouts: dict[str, Layout], max_stride: int) -> bool:
    """Whether the transforms may shift this objective's image at random over the whole period (when the preset
    rolls): not for one that reads a fixed position (a neuron), and with `max_stride` > 0 only when every layer it
    reads is at most that many times smaller than the model's input (small receptive fields: a texture)."""
    if objective.positional:
        return False
    if max_stride <= 0:
        return True
    size = max(model.input_size)
    for name in objective.layers:
        grid = layouts[name].grid
        if grid is None or size / max(grid) > max_stride:
            return False
    return True


def model_input_size(model: LoadedModel, preset: Preset) -> tuple[int, int]:
    """The size the network sees: the preset's smaller input (fast) when the model takes other sizes, else its own
    (a ViT or Swin always sees its size: the transforms pad, jitter and crop to it)."""
    if preset.model_size and fixed_input_size(model) is None:
        return preset.model_size, preset.model_size
    return int(model.input_size[0]), int(model.input_size[1])


def check_layers(model: LoadedModel, objectives: Sequence[Objective]) -> dict[str, Layout]:
    """The layout of every layer the objectives read, or a RenderError in one sentence: a layer with no channels
    on a grid, or a position-based objective (neuron, diversity) on a layer without a map."""
    layers = list(dict.fromkeys(name for obj in objectives for name in obj.layers))
    if not layers:
        raise RenderError("The objectives read no layer.")
    layouts = {name: layout_of(model, name) for name in layers}
    for name, lay in layouts.items():
        if lay.kind == "none":
            raise RenderError(f"Cannot visualise it: {lay.problem(name or MODEL_OUTPUT)}")
    for obj in objectives:
        for name in obj.grid_layers:
            if not layouts[name].has_map:
                raise RenderError(
                    f"{obj.label} needs positions on a spatial map, and {name or MODEL_OUTPUT} has none "
                    f"({layouts[name].describe()}); use the channel objective there."
                )
    return layouts


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def render(
    model: LoadedModel,
    objectives: Objective | Sequence[Objective],
    preset: str | Preset = "classic",
    seed: int = 0,
    steps: int | None = None,
    size: int | None = None,
    progress: Progress | None = None,
    batch_size: int | None = None,
) -> RenderResult:
    """Render one image per objective, all in shared batches; see the module docstring for what makes it fast.

    `progress(done, total, preview)` counts image-steps; `preview` is a `Preview` at the first step, about every
    `preset.preview_every_s` seconds, and at the end of each batch, else None. On CUDA out-of-memory the batch
    is halved and the render goes on (the images do not depend on the batch size).
    """
    objs = [objectives] if isinstance(objectives, Objective) else list(objectives)
    if not objs:
        raise RenderError("Nothing to render: give at least one objective.")
    p = get_preset(preset, steps=steps, size=size)
    start = time.perf_counter()
    keys = image_keys(objs)
    bs = max(1, batch_size or default_batch_size(model.device, len(objs)))
    images: list[np.ndarray | None] = [None] * len(objs)
    curves = np.zeros((len(objs), p.steps), dtype=np.float32)
    reporter = _Reporter(progress, len(objs) * p.steps, p.preview_every_s)
    pending = groups_of(objs)
    finished = 0
    with torch.enable_grad():
        while pending:
            chunk = pack_groups(pending, bs)[0]
            taken = set(chunk)

            def report(
                s: int, make: Callable[[], Preview], step: int, _n: int = len(chunk), _f: int = finished
            ) -> None:
                reporter(_f + s * _n, make, step, p.steps)

            try:
                imgs, cur = _render_batch(
                    model, [objs[i] for i in chunk], [keys[i] for i in chunk], chunk, p, seed, report
                )  # fmt: skip
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                if any(set(g) == taken for g in pending):  # one image, or one group that cannot be split
                    raise RenderError("Out of GPU memory even for the smallest batch: try a smaller size.") from exc
                torch.cuda.empty_cache()
                bs = max(1, len(chunk) // 2)
                continue
            for j, i in enumerate(chunk):
                images[i] = imgs[j]
                curves[i] = cur[j]
            finished += len(chunk) * p.steps
            pending = [g for g in pending if g[0] not in taken]
    params = {"preset": p.name, "seed": int(seed), **p.cache_params()}
    return RenderResult(
        images=np.stack(images),  # type: ignore[arg-type]
        curves=curves,
        params=params,
        objectives=objs,
        seconds=time.perf_counter() - start,
        batch_size=bs,
    )
