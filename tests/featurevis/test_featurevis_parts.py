"""The engine's parts: objective arithmetic, token grids, parameterizations, transforms, spectrum, optimisers."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from explorer import featurevis as fv
from explorer.featurevis.colour import COLOR_CORRELATION
from explorer.featurevis.objectives import Context
from explorer.featurevis.optim import Adam, NAdam
from explorer.featurevis.param import FFTParam, MacoParam, ParamError, image_generator, make_param
from explorer.featurevis.spectrum import SpectrumError, compute_spectrum, natural_spectrum
from explorer.featurevis.transforms import Augment, TransformSpec, classic_theta, wrap_sample
from explorer.layers import to_nchw


def _ctx(**acts: torch.Tensor) -> Context:
    return Context(acts, [acts], 0)


ACTS = {"a": torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4) / 10, "b": torch.randn(2, 5, 2, 2)}


# --------------------------------------------------------------------------- objectives


def test_channel_neuron_layer_values():
    ctx = _ctx(**ACTS)
    a = ACTS["a"]
    assert torch.allclose(fv.channel("a", 1).evaluate(ctx), a[:, 1].mean((-1, -2)))
    assert torch.allclose(fv.neuron("a", 2).evaluate(ctx), a[:, 2, 2, 2])
    assert torch.allclose(fv.neuron("a", 2, x=0, y=3).evaluate(ctx), a[:, 2, 3, 0])
    assert torch.allclose(fv.layer("a").evaluate(ctx), a.pow(2).mean((1, 2, 3)))
    assert torch.allclose(fv.negative("a", 1).evaluate(ctx), -a[:, 1].mean((-1, -2)))


def test_arithmetic_composes_values_layers_and_keys():
    ctx = _ctx(**ACTS)
    c, n = fv.channel("a", 0), fv.neuron("b", 3)
    combos = {
        "sum": (c + n, c.evaluate(ctx) + n.evaluate(ctx)),
        "diff": (c - n, c.evaluate(ctx) - n.evaluate(ctx)),
        "scaled": (2.5 * c - n * 0.5, 2.5 * c.evaluate(ctx) - 0.5 * n.evaluate(ctx)),
        "neg": (-c, -c.evaluate(ctx)),
        "div": (c / 4, c.evaluate(ctx) / 4),
        "const": (c + 1, c.evaluate(ctx) + 1),
        "rsub": (1 - c, 1 - c.evaluate(ctx)),
        "builtin_sum": (sum([c, n]), c.evaluate(ctx) + n.evaluate(ctx)),
    }
    for name, (obj, expected) in combos.items():
        assert torch.allclose(obj.evaluate(ctx), expected), name
    assert (c + n).layers == ("a", "b") and (c + c).layers == ("a",)
    assert (c + n).key != (n + c).key and (c + n).key == (fv.channel("a", 0) + fv.neuron("b", 3)).key
    assert (2 * c).key != (3 * c).key
    assert (2 * (3 * c)).key == (6 * c).key
    assert not (c + n).coupled and (c - fv.diversity("a")).coupled
    with pytest.raises(TypeError):
        c * c  # noqa: B018 — only numbers scale objectives


def test_keys_identify_kind_layer_and_unit():
    keys = {
        fv.channel("a", 1).key, fv.channel("a", 2).key, fv.channel("b", 1).key, fv.neuron("a", 1).key,
        fv.negative("a", 1).key, fv.class_logit(1).key, fv.layer("a").key, fv.direction("a", [1, 0, 0]).key,
        fv.direction("a", [0, 1, 0]).key,
    }  # fmt: skip
    assert len(keys) == 9


def test_direction_is_the_projection_on_the_unit_vector():
    ctx = _ctx(**ACTS)
    v = torch.tensor([3.0, 0.0, 4.0])
    expected = (ACTS["a"] * (v / 5).view(1, 3, 1, 1)).sum(1).mean((-1, -2))
    assert torch.allclose(fv.direction("a", v).evaluate(ctx), expected)
    with pytest.raises(fv.ObjectiveError):
        fv.direction("a", [0, 0, 0])
    with pytest.raises(fv.ObjectiveError, match="has 3 channels"):
        fv.direction("a", [1.0] * 4).evaluate(ctx)


def test_diversity_sums_to_lucents_objective_and_prefers_different_images():
    torch.manual_seed(0)
    acts = [{"a": torch.rand(1, 4, 5, 5)} for _ in range(3)]
    d = fv.diversity("a")
    per_image = torch.stack([d.evaluate(Context(acts[i], acts, i))[0] for i in range(3)])
    flat = torch.cat([a["a"] for a in acts]).flatten(2)
    grams = torch.nn.functional.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
    lucent = -sum((grams[i] * grams[j]).sum() for i in range(3) for j in range(3) if i != j) / 3
    assert torch.allclose(per_image.sum(), lucent)
    same = [{"a": acts[0]["a"].clone()} for _ in range(3)]
    assert d.evaluate(Context(same[0], same, 0)) < d.evaluate(Context(acts[0], acts, 0))


def test_for_unit_vocabulary():
    assert [o.key for o in fv.for_unit("channel", "a", 3)] == [fv.channel("a", 3).key]
    div = fv.for_unit("diversity", "a", 3, n_diverse=4)
    assert len(div) == 4 and len({o.key for o in div}) == 1 and div[0].coupled
    with pytest.raises(fv.ObjectiveError):
        fv.for_unit("bogus", "a", 0)


def test_as_grid_handles_cnn_vit_nhwc_and_vectors():
    nchw = torch.randn(2, 8, 5, 5)
    assert to_nchw(nchw) is nchw
    nhwc = torch.randn(2, 5, 5, 8)
    assert torch.equal(to_nchw(nhwc), nhwc.permute(0, 3, 1, 2))
    tokens = torch.randn(2, 1 + 16, 8)  # class token + 4×4 patches
    grid = to_nchw(tokens)
    assert grid.shape == (2, 8, 4, 4)
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])
    assert to_nchw(torch.randn(2, 10)).shape == (2, 10, 1, 1)


# --------------------------------------------------------------------------- parameterizations


def test_generators_depend_on_seed_and_key_only():
    a = torch.rand(4, generator=image_generator(0, "channel(x:1)#0"))
    assert torch.equal(a, torch.rand(4, generator=image_generator(0, "channel(x:1)#0")))
    assert not torch.equal(a, torch.rand(4, generator=image_generator(1, "channel(x:1)#0")))
    assert not torch.equal(a, torch.rand(4, generator=image_generator(0, "channel(x:1)#1")))


@pytest.mark.parametrize("kind", ["fft", "pixel", "maco"])
def test_params_give_images_in_range_and_differentiable(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path))
    gens = [image_generator(0, f"k{i}") for i in range(2)]
    p = make_param(kind, 2, 32, gens, torch.device("cpu"))
    img = p()
    assert img.shape == (2, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    (g,) = torch.autograd.grad(img[0].mean(), p.parameters())
    assert g.abs().sum() > 0
    assert g[1].abs().sum() == 0  # images do not leak into each other (MACO standardises per image)


def test_fft_param_matches_lucents_formula():
    gens = [image_generator(0, "x")]
    p = FFTParam(1, 16, gens, torch.device("cpu"), decay_power=1.0)
    fy = np.fft.fftfreq(16)[:, None]
    fx = np.fft.rfftfreq(16)[None, :]
    scale = 1 / np.maximum(np.sqrt(fx**2 + fy**2), 1 / 16)
    assert np.allclose(p.scale[0, 0, :, :, 0].numpy(), scale)
    steep = FFTParam(1, 16, gens, torch.device("cpu"), decay_power=1.5)
    assert np.allclose(steep.scale[0, 0, :, :, 0].numpy(), scale**1.5)


def test_maco_keeps_the_magnitude_spectrum():
    mag = torch.rand(3, 16, 9, dtype=torch.float64) + 0.5
    p = MacoParam(1, 16, [image_generator(0, "m")], torch.device("cpu"), magnitude=mag.float())
    with torch.no_grad():
        p.phase.add_(torch.randn_like(p.phase))  # whatever the phase becomes …
        image = p().double()  # … the image the parameterization draws, undone step by step:
    z = torch.logit(image.clamp(1e-6, 1 - 1e-6)) / p.gain  # the sigmoid
    inv = torch.as_tensor(np.linalg.inv(COLOR_CORRELATION), dtype=torch.float64)
    x = torch.einsum("nchw,dc->ndhw", z, inv)  # the colour recorrelation
    ratio = torch.fft.rfft2(x[0]).abs()[:, 1:8, 1:8] / mag[:, 1:8, 1:8]
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), rtol=1e-3)  # one scale (the standardisation) for all
    with pytest.raises(ParamError):
        MacoParam(1, 20, [image_generator(0, "m")], torch.device("cpu"), magnitude=mag.float())


def test_spectrum_is_computed_locally_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        arr = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
    spec = natural_spectrum(24, folder)
    assert spec.shape == (3, 24, 13) and torch.isfinite(spec).all() and (spec >= 0).all()
    assert list((tmp_path / "cache" / "spectra").rglob("*.npy"))
    direct = compute_spectrum(sorted(folder.iterdir()), 24)
    assert torch.allclose(spec, direct)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpectrumError, match="has none"):
        natural_spectrum(24, empty)


def test_natural_images_have_falling_spectrum(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path))
    spec = natural_spectrum(32)  # the shipped sample photographs
    low, high = spec[:, 1:3, 1:3].mean(), spec[:, 12:16, 12:16].mean()
    assert low > 5 * high


# --------------------------------------------------------------------------- transforms


def test_classic_theta_is_identity_without_randomness():
    spec = TransformSpec(pad=0, jitter=1, scales=(1.0,), angles=(0.0,), jitter2=1)
    theta = classic_theta(torch.rand(6), spec, 32)
    assert torch.allclose(theta, torch.eye(2, 3), atol=1e-6)
    spec = TransformSpec(pad=8, jitter=1, scales=(1.0,), angles=(0.0,), jitter2=1)
    assert torch.allclose(classic_theta(torch.rand(6), spec, 32)[:, :2], torch.eye(2) * 48 / 32)


def test_classic_theta_scales_and_rotates():
    spec = TransformSpec(pad=0, jitter=1, scales=(2.0,), angles=(90.0,), jitter2=1)
    theta = classic_theta(torch.zeros(6), spec, 16)
    assert torch.allclose(theta[:, :2], torch.tensor([[0.0, 0.5], [-0.5, 0.0]]), atol=1e-6)


def test_augment_gives_each_image_its_own_draw_and_is_reproducible():
    images = torch.rand(1, 3, 24, 24).expand(3, -1, -1, -1).contiguous()

    def run(keys: list[str]) -> torch.Tensor:
        aug = Augment(
            TransformSpec(), [image_generator(0, k) for k in keys], (32, 32), lambda x: x, torch.device("cpu")
        )
        return aug(images[: len(keys)])

    out = run(["a", "b", "c"])
    assert out.shape == (3, 3, 32, 32)
    assert not torch.allclose(out[0], out[1])  # same picture, different jitter/scale/angle
    assert torch.equal(run(["a", "b", "c"]), out)
    assert torch.equal(run(["b"])[0], out[1])  # an image's draw does not depend on its neighbours


def test_augment_is_differentiable_and_fills_with_grey():
    img = torch.zeros(1, 3, 16, 16, requires_grad=True)
    spec = TransformSpec(pad=16, jitter=1, scales=(1.0,), angles=(0.0,), jitter2=1)
    aug = Augment(spec, [image_generator(0, "x")], (48, 48), lambda x: x, torch.device("cpu"))
    out = aug(img)
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), 0.5))  # the padding reads as 0.5
    assert out[0, :, 24, 24].abs().max() < 1e-6  # the image sits in the middle
    (g,) = torch.autograd.grad(out.sum(), img)
    assert g.abs().sum() > 0


def test_wrap_reads_the_image_as_a_torus():
    img = torch.rand(1, 3, 8, 8)
    eye = torch.eye(2, 3)[None]
    grid = torch.nn.functional.affine_grid(eye, [1, 3, 8, 8], align_corners=False)
    assert torch.allclose(wrap_sample(img, grid), img, atol=1e-6)  # identity is the image
    assert torch.allclose(wrap_sample(img, grid + 2.0), img, atol=1e-5)  # one whole period further: the same
    one_px = torch.tensor([2 / 8, 0.0])  # one pixel to the right: column j reads column j+1, the last the first
    assert torch.allclose(wrap_sample(img, grid + one_px), img.roll(-1, dims=3), atol=1e-5)
    half = wrap_sample(img, grid + one_px / 2)[..., -1]  # half a pixel past the last column: half of the first
    assert torch.allclose(half, (img[..., -1] + img[..., 0]) / 2, atol=1e-5)


def test_wrap_shows_no_pad_and_rolls_only_images_that_may_move():
    img = torch.zeros(3, 3, 16, 16, requires_grad=True)
    spec = TransformSpec(pad=16, jitter=1, scales=(1.0,), angles=(0.0,), jitter2=1, wrap=True, roll=1.0)
    gens = [image_generator(0, k) for k in "abc"]
    aug = Augment(spec, gens, (48, 48), lambda x: x, torch.device("cpu"), shift=[True, False, True])
    out = aug(img)
    assert out.abs().max() < 1e-6  # the padding is more of the image (zeros here), never the grey fill
    (g,) = torch.autograd.grad(out.sum(), img)
    assert torch.allclose(g, torch.full_like(g, g.mean()), rtol=1e-4)  # every pixel seen equally: no border
    shifts = torch.stack([aug.thetas(16)[:, :, 2] for _ in range(200)])  # (draws, images, 2)
    assert torch.allclose(shifts[:, 1], torch.zeros(200, 2))  # the neuron's image stays put (no jitter here)
    assert shifts[:, 0].abs().max() > 0.8 and shifts[:, 2].std() > 0.4  # the others roll over the whole period
    plain = Augment(replace(spec, roll=0.0), gens, (48, 48), lambda x: x, torch.device("cpu"))
    assert torch.allclose(plain.thetas(16)[:, :, 2], torch.zeros(3, 2))


def test_the_fast_preset_wraps_and_rolls_and_classic_stays_lucents():
    from explorer.featurevis.presets import CLASSIC, FAST

    assert FAST.transforms.wrap and FAST.transforms.roll == 1.0 and FAST.transforms.roll_stride == 8
    assert not CLASSIC.transforms.wrap and CLASSIC.transforms.roll == 0.0 and CLASSIC.transforms.fill == 0.5


def test_crops_make_copies_with_noise():
    spec = TransformSpec(kind="crops", crops=3, box=(0.4, 0.6), noise=0.1)
    gens = [image_generator(0, k) for k in "ab"]
    aug = Augment(spec, gens, (20, 20), lambda x: x, torch.device("cpu"))
    out = aug(torch.full((2, 3, 40, 40), 0.5))
    assert out.shape == (6, 3, 20, 20) and aug.copies == 3
    assert 0.05 < float((out - 0.5).std()) < 0.2  # grey in, grey plus noise out
    assert not torch.allclose(out[0], out[1])


# --------------------------------------------------------------------------- optimisers


@pytest.mark.parametrize(("ours", "name", "lr"), [(Adam, "Adam", 0.05), (NAdam, "NAdam", 1.0)])
def test_optimisers_match_torch(ours, name, lr):
    torch.manual_seed(0)
    start = torch.randn(5, 4)
    a = start.clone().requires_grad_(True)
    b = start.clone().requires_grad_(True)
    mine, theirs = ours([a], lr), getattr(torch.optim, name)([b], lr=lr)
    for step in range(6):
        target = torch.full((5, 4), math.sin(step))
        (ga,) = torch.autograd.grad(((a - target) ** 2).sum(), [a])
        mine.step([ga])
        theirs.zero_grad()
        ((b - target) ** 2).sum().backward()
        theirs.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_a_larger_image_is_low_passed_before_the_model_sees_it():
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float()
    img = checker.expand(1, 3, 64, 64).contiguous()  # pixel-level checkerboard, 4× the model's view
    spec = TransformSpec(pad=0, jitter=1, scales=(1.0,), angles=(0.0,), jitter2=1)
    small = Augment(spec, [image_generator(0, "x")], (16, 16), lambda x: x, torch.device("cpu"))(img)
    assert float((small - 0.5).abs().max()) < 0.05  # averaged to grey, not aliased into a pattern
    same = Augment(spec, [image_generator(0, "x")], (64, 64), lambda x: x, torch.device("cpu"))(img)
    assert float((same - 0.5).abs().max()) > 0.4  # at 1:1 the detail reaches the model
