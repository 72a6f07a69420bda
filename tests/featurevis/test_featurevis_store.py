"""Cached renders (hits are byte-identical, damage is recomputed, only misses render), stages, sheets, CLI."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import explorer.cli as cli
from explorer import featurevis as fv
from explorer.cache import Cache
from explorer.errors import ExplorerError
from explorer.featurevis.presets import get_preset
from explorer.featurevis.sheet import contact_sheet, labelled_rows
from explorer.featurevis.stages import STAGES, stage_map
from explorer.featurevis.store import cache_keys, lookup, render_cached
from explorer.layers import hook_count
from explorer.models import LoadedModel

render_mod = importlib.import_module("explorer.featurevis.render")
store_mod = importlib.import_module("explorer.featurevis.store")
commands = importlib.import_module("explorer.commands.featurevis")


def tiny_model(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4),
    ).eval()  # fmt: skip
    return LoadedModel.wrap(
        net,
        spec="test:tiny",
        input_size=(32, 32),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        class_names=list("abcd"),
        resize_size=36,
    )


SMALL = get_preset("classic", steps=6, size=20).replace(transforms={"pad": 2, "jitter": 3, "jitter2": 2})


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def counted(monkeypatch):
    """Count the images that actually get rendered."""
    real = store_mod.render
    rendered: list[int] = []

    def spy(model, objectives, *args, **kwargs):
        rendered.append(len(objectives))
        return real(model, objectives, *args, **kwargs)

    monkeypatch.setattr(store_mod, "render", spy)
    return rendered


def test_hit_returns_identical_bytes_without_rendering(tmp_path, counted):
    model, cache = tiny_model(), Cache(tmp_path)
    objs = [fv.channel("2", c) for c in (0, 5)]
    first = render_cached(model, objs, SMALL, seed=1, cache=cache)
    assert counted == [2] and not first.hits.any()
    second = render_cached(model, objs, SMALL, seed=1, cache=cache)
    assert counted == [2] and second.hits.all()
    assert second.png == first.png
    assert np.array_equal(second.images, first.images)
    assert np.allclose(second.final, first.final, atol=1e-4)
    assert hook_count(model.module) == 0


def test_a_corrupted_entry_is_recomputed(tmp_path, counted):
    model, cache = tiny_model(), Cache(tmp_path)
    objs = [fv.channel("2", c) for c in (0, 5)]
    first = render_cached(model, objs, SMALL, cache=cache)
    png_path = cache.paths("featurevis", first.keys[1])[0]
    png_path.write_bytes(png_path.read_bytes()[: len(first.png[1]) // 2])  # a half-written file
    again = render_cached(model, objs, SMALL, cache=cache)
    assert counted == [2, 1]  # only the damaged one rendered again
    assert list(again.hits) == [True, False]
    assert again.png == first.png  # deterministic: the recomputed image is the same
    assert cache.get("featurevis", first.keys[1]) is not None  # and the entry is whole again


def test_only_misses_render_and_match_a_full_render(tmp_path, counted):
    model, cache = tiny_model(), Cache(tmp_path)
    objs = [fv.channel("2", c) for c in range(4)]
    render_cached(model, objs[1:3], SMALL, cache=cache)
    previews = []
    mixed = render_cached(model, objs, SMALL, cache=cache, progress=lambda d, t, p: previews.append(p))
    assert counted == [2, 2] and list(mixed.hits) == [False, True, True, False]
    full = fv.render(model, objs, SMALL)
    assert np.abs(mixed.images.astype(int) - full.images.astype(int)).max() <= 1
    indices = {i for p in previews if p is not None for i in p.indices}
    assert indices == {0, 3}  # previews name positions in the caller's list


def test_keys_separate_models_presets_seeds_and_objectives(tmp_path):
    a, b = tiny_model(0), tiny_model(1)
    obj = [fv.channel("2", 0)]
    base = cache_keys(a, obj, SMALL, 0)[0]
    others = {
        cache_keys(b, obj, SMALL, 0)[0],
        cache_keys(a, obj, SMALL.replace(lr=0.06), 0)[0],
        cache_keys(a, obj, SMALL, 1)[0],
        cache_keys(a, [fv.neuron("2", 0)], SMALL, 0)[0],
        cache_keys(a, [fv.channel("2", 1)], SMALL, 0)[0],
    }
    assert len(others | {base}) == 6
    assert cache_keys(a, obj, SMALL.replace(preview_every_s=9.0), 0)[0] == base  # not part of the pixels
    two = cache_keys(a, obj * 2, SMALL, 0)
    assert two[0] == base and two[1] != base  # a repeated objective is a different image
    assert lookup(a, obj, SMALL, cache=Cache(tmp_path)) == [None]


def test_diversity_groups_are_cached_whole(tmp_path, counted):
    model, cache = tiny_model(), Cache(tmp_path)
    group = fv.diverse(fv.channel("2", 1), "2", n=3, weight=5.0)
    first = render_cached(model, group, SMALL, cache=cache)
    cache.paths("featurevis", first.keys[0])[0].unlink()
    again = render_cached(model, group, SMALL, cache=cache)
    assert counted == [3, 3]  # the group is coupled: a missing member re-renders all of it
    assert again.png == first.png


# --------------------------------------------------------------------------- stages and sheets


def test_stage_map_of_the_bundled_model(bundled):
    sm = stage_map(bundled)
    assert [s.name for s in sm.stages] == list(STAGES)
    blocks = [b for s in sm.stages for b in s.blocks]
    assert blocks[0] == "conv_stem" and "global_pool" not in blocks and "classifier" not in blocks
    assert len(blocks) == len(set(blocks))  # each block in one stage, in execution order
    assert sm.stage_of("blocks.1.1") == "edges" and sm.stage_of("blocks.2.1") == "textures"
    assert sm.stage_of("blocks.3.2") == "patterns"
    assert sm.stage_of("blocks.5.3") == "parts"
    assert sm.stage_of("blocks.6.0") == "objects"
    assert all(s.representative in s.blocks for s in sm.stages)
    assert "relative depth" in sm.note
    assert all(f"{s.name} {s.representative}" in sm.note for s in sm.stages)  # the note names what is shown


def test_stage_map_of_a_shallow_network_still_names_five_stages():
    sm = stage_map(tiny_model())
    assert [s.name for s in sm.stages] == list(STAGES) and all(s.blocks for s in sm.stages)


def test_sheets_have_the_expected_geometry():
    imgs = [np.full((20, 20, 3), i * 30, dtype=np.uint8) for i in range(5)]
    sheet = contact_sheet(imgs, [str(i) for i in range(5)], cols=3, gap=2)
    assert sheet.width == 3 * 22 + 2 and sheet.height > 2 * 22
    assert sheet.getpixel((2 + 22 + 5, 2 + 5)) == (30, 30, 30)  # second tile
    rows = labelled_rows([("edges", imgs[:2]), ("objects", imgs[2:])], tile=20)
    assert rows.height == 2 * 24 + 4


# --------------------------------------------------------------------------- CLI


def test_parse_units():
    assert commands.parse_units("0-3") == [0, 1, 2, 3]
    assert commands.parse_units("2,7,13") == [2, 7, 13]
    assert commands.parse_units("5, 0-1,5") == [0, 1, 5]
    for bad in ("a", "3-1", "1-", ""):
        with pytest.raises(ExplorerError):
            commands.parse_units(bad)


@pytest.fixture
def cli_model(monkeypatch, tmp_path):
    model = tiny_model()
    monkeypatch.setattr(commands, "load_model_arg", lambda args: model)
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    return model


def test_cli_render_writes_one_png_per_unit_and_a_sheet(cli_model, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["render", "--layer", "2", "--channels", "0-2,7", "--steps", "4", "--size", "24", "--out", str(out)]
    assert cli.main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["2-0.png", "2-1.png", "2-2.png", "2-7.png", "2-sheet.png"]
    with Image.open(out / "2-7.png") as im:
        assert im.size == (24, 24) and im.mode == "RGB"
    assert "4 rendered" in capsys.readouterr().out
    assert cli.main(argv) == 0  # second time: from the cache
    assert "4 from the cache" in capsys.readouterr().out


def test_cli_render_diversity_names_and_errors(cli_model, tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["render", "--layer", "2", "--channels", "1", "--objective", "diversity", "--steps", "3", "--size", "20"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["2-1-0.png", "2-1-1.png", "2-1-2.png", "2-1-3.png", "2-sheet.png"]
    capsys.readouterr()
    assert cli.main(["render", "--layer", "2", "--channels", "12", "--out", str(out)]) == 2
    assert "has 12 units" in capsys.readouterr().err
    assert cli.main(["render", "--layer", "nope", "--channels", "0", "--out", str(out)]) == 2
    assert "no layer" in capsys.readouterr().err


def test_cli_atlas_fills_the_cache(cli_model, tmp_path, capsys):
    argv = ["atlas", "--per-layer", "2", "--steps", "3", "--size", "20", "--preset", "fast", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "layer" in out.splitlines()[0] and len(out.strip().splitlines()) == 1 + 2  # blocks "0" and "2"
    pngs = list((tmp_path / "cache" / "featurevis").rglob("*.png"))
    assert len(pngs) == 2 * 2
    assert cli.main(argv) == 0
    assert all(line.split()[2] == "2" for line in capsys.readouterr().out.strip().splitlines()[1:])


# --------------------------------------------------------------------------- planning a progressive render


def test_plan_shows_hits_at_once_and_rerenders_a_diversity_group_whole(tmp_path):
    model, cache = tiny_model(), Cache(tmp_path)
    objs = [fv.channel("2", 0), fv.channel("2", 1), *fv.diverse(fv.channel("2", 3), "2", 3)]
    plan = store_mod.plan_render(model, objs, SMALL, 0, cache=cache)
    assert plan.hits == {} and plan.renders == 5 and [b for b, _ in plan.todo] == [[0, 1, 2, 3, 4]]
    render_cached(model, objs, SMALL, seed=0, cache=cache)
    assert store_mod.plan_render(model, objs, SMALL, 0, cache=cache).complete
    # Lose one image of the diversity group: the whole group (3 images) is rendered again, the rest are hits.
    key = cache_keys(model, objs, SMALL, 0)[3]
    cache.paths(store_mod.KIND, key)[0].unlink()
    plan = store_mod.plan_render(model, objs, SMALL, 0, cache=cache)
    assert sorted(plan.hits) == [0, 1] and plan.renders == 3
    assert store_mod.cached_mask(model, objs, SMALL, 0, cache=cache) == [True, True, True, False, True]


def test_store_batches_never_split_a_group_and_bound_cpu_batches():
    model = tiny_model()
    objs = [fv.channel("2", u) for u in range(7)] + fv.diverse(fv.channel("2", 0), "2", 4)
    batches = store_mod.store_batches(model, objs)
    assert sorted(i for b in batches for i in b) == list(range(11))
    assert all(len(b) <= store_mod.STORE_BATCH_CPU for b in batches)
    group = set(range(7, 11))
    assert any(group <= set(b) for b in batches)  # the four diversity images stay together
