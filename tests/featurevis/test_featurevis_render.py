"""The render loop on a tiny hand-built CNN: it optimises, stops early, leaves no trace, and is reproducible."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from explorer import featurevis as fv
from explorer.featurevis.objectives import Context
from explorer.featurevis.presets import get_preset
from explorer.layers import anatomy, capture, forward_until, hook_count, to_nchw
from explorer.models import LoadedModel
from explorer.runtime import torch_threads


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


class Spy(nn.Module):
    """Counts forwards of the layers after conv2 (to prove the truncated forward stops)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def tiny_model() -> LoadedModel:
    torch.manual_seed(0)
    net = TinyNet().eval()
    return LoadedModel.wrap(
        net,
        spec="test:tiny",
        input_size=(32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=[f"c{i}" for i in range(5)],
        resize_size=36,
    )


render_mod = importlib.import_module("explorer.featurevis.render")  # the module, not the function it exports


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny_model()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: thread start-up costs more than the work, badly so on a busy machine."""
    with torch_threads(1):
        yield


SMALL = get_preset("classic", steps=12, size=24).replace(transforms={"pad": 2, "jitter": 3, "jitter2": 2})


def test_objective_increases_over_steps(model):
    objs = [fv.channel("conv2", c) for c in range(4)] + [fv.neuron("act1", 2), fv.layer("conv2")]
    res = fv.render(model, objs, SMALL.replace(steps=30, lr=0.1), seed=0)
    assert res.curves.shape == (6, 30)
    first, last = res.curves[:, :3].mean(1), res.curves[:, -3:].mean(1)
    assert np.all(last > first), (first, last)


def test_negative_lowers_the_channel(model):
    res = fv.render(model, [fv.negative("conv2", 1), fv.channel("conv2", 1)], SMALL.replace(steps=30, lr=0.1))
    neg, pos = res.curves
    assert neg[-3:].mean() > neg[:3].mean()  # the negative objective rises, i.e. the channel falls
    assert -neg[-1] < pos[-1]


def test_result_shapes_and_types(model):
    res = fv.render(model, fv.channel("conv1", 0), SMALL)
    assert res.images.shape == (1, 24, 24, 3) and res.images.dtype == np.uint8
    assert res.params["preset"] == "classic" and res.params["steps"] == 12 and res.params["size"] == 24
    assert res.curves.dtype == np.float32


def test_truncated_forward_gives_the_same_activations_as_the_full_forward(model):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        with capture(model.module, ["conv1", "act2"]) as cap:
            model.module(x)
        trunc = forward_until(model.module, ["conv1", "act2"], x)
    for name in ("conv1", "act2"):
        assert torch.equal(trunc[name], cap.activations[name])
    # the objective the render optimises is the one computed on the full forward
    obj = fv.channel("act2", 3)
    ctx = Context({"act2": to_nchw(trunc["act2"])[:1]}, [], 0)
    full = cap.activations["act2"][0, 3].mean()
    assert torch.allclose(obj.evaluate(ctx)[0], full)


def test_forward_stops_at_the_deepest_needed_layer():
    m = tiny_model()
    spy = Spy()
    m.module.pool = nn.Sequential(spy, nn.AdaptiveAvgPool2d(1))
    anatomy(m)  # the layouts are traced once per model (a whole forward, at two sizes); the steps stop early
    spy.calls = 0
    fv.render(m, [fv.channel("conv1", 0), fv.channel("act1", 1)], SMALL.replace(steps=3))
    assert spy.calls == 0
    fv.render(m, [fv.class_logit(2)], SMALL.replace(steps=3))
    assert spy.calls == 3


def test_no_hooks_and_no_parameter_grads_after_render(model):
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    fv.render(model, [fv.channel("conv2", 0), fv.class_logit(1)], SMALL.replace(steps=3))
    assert hook_count(model.module) == 0
    assert all(p.grad is None for p in model.module.parameters())
    assert all(p.requires_grad for p in model.module.parameters())  # untouched
    assert not model.module.training
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())


def test_no_hooks_after_an_exception_mid_render(model):
    calls = []

    def boom(done: int, total: int, preview: object) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        fv.render(model, [fv.channel("conv2", 0)], SMALL, progress=boom)
    assert hook_count(model.module) == 0
    with pytest.raises(fv.ObjectiveError, match="no unit 99"):
        fv.render(model, [fv.channel("conv2", 99)], SMALL)
    assert hook_count(model.module) == 0


def test_same_seed_same_image_other_seed_other_image(model):
    objs = [fv.channel("conv2", 5)]
    a = fv.render(model, objs, SMALL, seed=7)
    b = fv.render(model, objs, SMALL, seed=7)
    c = fv.render(model, objs, SMALL, seed=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.curves, b.curves)
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("preset", ["classic", "maco", "fast"])
def test_a_unit_in_a_batch_equals_the_unit_alone(model, preset, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path))
    p = get_preset(preset, steps=8, size=24)
    if preset == "maco":
        p = p.replace(transforms={"crops": 2})
    objs = [fv.channel("conv2", c) for c in (0, 3, 5, 9)]
    batch = fv.render(model, objs, p, seed=3, batch_size=4)
    alone = fv.render(model, [objs[2]], p, seed=3)
    assert np.abs(batch.images[2].astype(int) - alone.images[0].astype(int)).max() <= 1
    assert np.allclose(batch.curves[2], alone.curves[0], rtol=1e-4, atol=1e-5)
    # and the batch size never changes the result
    split = fv.render(model, objs, p, seed=3, batch_size=3)
    assert np.abs(split.images.astype(int) - batch.images.astype(int)).max() <= 1


def test_only_early_layers_without_a_fixed_position_are_rolled(model):
    layouts = render_mod.check_layers(model, [fv.channel("conv1", 0), fv.channel("conv2", 0)])
    roll = render_mod.may_roll
    assert roll(model, fv.channel("conv1", 0), layouts, 2)  # 32 → 16: 2× smaller
    assert not roll(model, fv.channel("conv2", 0), layouts, 2)  # 4× smaller: a deeper layer keeps its place
    assert roll(model, fv.channel("conv2", 0), layouts, 4) and roll(model, fv.channel("conv2", 0), layouts, 0)
    assert not roll(model, fv.neuron("conv1", 0), layouts, 0)  # a neuron looks at one place: never
    assert not roll(model, -fv.neuron("conv1", 0) + fv.channel("conv1", 1), layouts, 0)
    assert roll(model, fv.channel("conv1", 0) - 1e2 * fv.diversity("conv1"), layouts, 2)  # styles move freely


def test_repeated_objectives_get_different_images(model):
    res = fv.render(model, [fv.channel("conv2", 0)] * 2, SMALL)
    assert not np.array_equal(res.images[0], res.images[1])


def test_diversity_group_stays_together_and_pushes_images_apart(model):
    obj = fv.channel("conv2", 4)
    p = SMALL.replace(steps=25, lr=0.1)
    plain = fv.render(model, [obj] * 3, p, seed=1)
    diverse = fv.render(model, fv.diverse(obj, "conv2", n=3, weight=10.0), p, seed=1, batch_size=1)
    assert diverse.batch_size == 1  # the group was not split although the batch size is 1

    def spread(images: np.ndarray) -> float:
        x = images.reshape(len(images), -1).astype(float)
        return float(np.mean([np.abs(x[i] - x[j]).mean() for i in range(3) for j in range(i + 1, 3)]))

    assert spread(diverse.images) > spread(plain.images)


def test_progress_counts_and_previews(model):
    seen: list[tuple[int, int, object]] = []
    fv.render(
        model, [fv.channel("conv2", c) for c in range(3)], SMALL, batch_size=2, progress=lambda *a: seen.append(a)
    )
    dones = [d for d, _, _ in seen]
    assert dones == sorted(dones) and dones[-1] == seen[-1][1] == 3 * 12
    previews = [p for _, _, p in seen if p is not None]
    assert previews[0].step == 1  # the first preview comes after the first step
    covered = sorted(i for p in previews if p.step == p.steps for i in p.indices)
    assert covered == [0, 1, 2]
    assert previews[0].images.shape[1:] == (24, 24, 3) and previews[0].images.dtype == np.uint8


def test_out_of_memory_halves_the_batch_and_continues(model, monkeypatch):
    real = render_mod._render_batch
    sizes: list[int] = []

    def flaky(m, objectives, *args, **kwargs):
        sizes.append(len(objectives))
        if len(objectives) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(m, objectives, *args, **kwargs)

    monkeypatch.setattr(render_mod, "_render_batch", flaky)
    objs = [fv.channel("conv2", c) for c in range(5)]
    res = fv.render(model, objs, SMALL, batch_size=8)
    assert sizes[0] == 5 and max(sizes[1:]) <= 2 and res.batch_size == 2
    monkeypatch.setattr(render_mod, "_render_batch", real)
    ref = fv.render(model, objs, SMALL, batch_size=8)
    assert np.abs(res.images.astype(int) - ref.images.astype(int)).max() <= 1


def test_out_of_memory_at_one_image_is_a_clear_error(model, monkeypatch):
    def always(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(render_mod, "_render_batch", always)
    with pytest.raises(fv.RenderError, match="Out of GPU memory"):
        fv.render(model, [fv.channel("conv2", 0)] * 2, SMALL)


def test_bad_requests_raise_explorer_errors(model):
    with pytest.raises(fv.RenderError):
        fv.render(model, [], SMALL)
    with pytest.raises(fv.ObjectiveError):
        fv.render(model, [fv.neuron("conv2", 0, x=50, y=0)], SMALL)
    from explorer.errors import ExplorerError

    with pytest.raises(ExplorerError, match="Unknown preset"):
        fv.render(model, [fv.channel("conv2", 0)], "nope")
    with pytest.raises(ExplorerError, match="no layer"):
        fv.render(model, [fv.channel("conv9", 0)], SMALL)


def test_pixel_param_and_direction_objective(model):
    v = torch.zeros(16)
    v[[2, 5]] = 1.0
    res = fv.render(model, [fv.direction("conv2", v)], SMALL.replace(param="pixel", steps=25, lr=0.05))
    assert res.curves[0, -3:].mean() > res.curves[0, :3].mean()


class TokenNet(nn.Module):
    """A ViT-like toy: patchify, a class token, a 'block' that returns (N, 1 + 4·4, D) tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 8, stride=8)
        self.cls = nn.Parameter(torch.zeros(1, 1, 6))
        self.block = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = self.block(torch.cat([self.cls.expand(len(t), -1, -1), t], 1))
        return self.head(t[:, 0])


def test_token_outputs_are_rendered_on_their_grid():
    torch.manual_seed(0)
    net = TokenNet().eval()
    m = LoadedModel.wrap(
        net, spec="t", input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, class_names=["a", "b", "c"], resize_size=32
    )
    res = fv.render(m, [fv.neuron("block", 1), fv.channel("block", 4)], SMALL.replace(steps=20, lr=0.1))
    assert np.all(res.curves[:, -3:].mean(1) > res.curves[:, :3].mean(1))
