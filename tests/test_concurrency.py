"""Two app sessions at once on ONE shared model: each renders (featurevis, fast preset) and compares in its own
thread, as Streamlit runs sessions. Each gets exactly what it gets alone, and the shared model is left as it was:
no hooks, eval mode, the same weights and requires_grad flags, no gradients written into it.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import pytest
import torch

from explorer import featurevis as fv
from explorer.layers import hook_count, ladder
from explorer.models import LoadedModel, fingerprint, load_model
from explorer.transfer.comparison.compare import compare
from explorer.transfer.training.checkpoints import save_checkpoint


@pytest.fixture(scope="module")
def tuned(tiny, tmp_path_factory) -> LoadedModel:
    """The tiny model with every weight nudged (deeper layers more), saved and reopened like a fine-tuned run."""
    module = copy.deepcopy(tiny.module)
    gen = torch.Generator().manual_seed(1)
    params = list(module.parameters())
    with torch.no_grad():
        for i, p in enumerate(params):
            p.add_(torch.randn(p.shape, generator=gen) * (0.01 + 0.3 * i / len(params)) * float(p.float().std()))
    meta = {"arch": tiny.arch, "base_spec": tiny.spec, "base_fingerprint": tiny.fingerprint,
            "class_names": list(tiny.class_names), "input_size": list(tiny.input_size), "mean": list(tiny.mean),
            "std": list(tiny.std), "resize_size": tiny.resize_size}  # fmt: skip
    path = save_checkpoint(module, tmp_path_factory.mktemp("tuned") / "tuned.safetensors", meta)
    return load_model(str(path), device="cpu")


def _session(base: LoadedModel, tuned: LoadedModel, folder: Any, layer: str, units: list[int], seed: int) -> dict:
    """What one browser session does on the Compare page: same-seed renders of a layer's units, then compare."""
    objs = [fv.channel(layer, u) for u in units]
    renders = fv.render(base, objs, preset="fast", seed=seed, steps=4, size=32).images
    report = compare(base, tuned, folder, max_images=24, input_size=64, probe_folds=2, seed=seed)
    rows = [(r.name, r.cka, r.cka_low, r.cka_high, r.weight_change, r.probe_acc) for r in report.layers]
    return {"renders": renders, "rows": rows, "freeze": report.recommendation.freeze_after}


def _state(model: LoadedModel) -> tuple[Any, ...]:
    params = list(model.module.parameters())
    return (fingerprint(model.module), [p.requires_grad for p in params], model.module.training,
            any(p.grad is not None for p in params), hook_count(model.module))  # fmt: skip


def _same(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["renders"], b["renders"])
    assert a["freeze"] == b["freeze"]
    assert [r[0] for r in a["rows"]] == [r[0] for r in b["rows"]]
    for ra, rb in zip(a["rows"], b["rows"], strict=True):
        for x, y in zip(ra[1:], rb[1:], strict=True):
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-6, abs=1e-9, nan_ok=True), (ra, rb)


def test_two_sessions_render_and_compare_at_once_on_one_shared_model(tiny, tuned, color_folder):
    layers = [r.name for r in ladder(tiny, "blocks") if r.spatial is not None and (r.channels or 0) >= 4]
    jobs = [(layers[1], [0, 1, 2], 0), (layers[-1], [3, 1], 7)]  # different layers, units and seeds per session
    before = (_state(tiny), _state(tuned))
    serial = [_session(tiny, tuned, color_folder, *job) for job in jobs]

    results: list[dict | None] = [None, None]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = _session(tiny, tuned, color_folder, *jobs[i])
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"session-{i}") for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a session hung"
    if errors:
        raise errors[0]
    for got, alone in zip(results, serial, strict=True):
        _same(got, alone)  # type: ignore[arg-type]
    assert not np.array_equal(serial[0]["renders"][:2], serial[1]["renders"][:2])  # the sessions did differ
    assert (_state(tiny), _state(tuned)) == before
    assert hook_count(tiny.module) == 0 and hook_count(tuned.module) == 0
