"""Helpers of the page tests: the app opened on one page for Streamlit's AppTest through its public API (no private
page hash), the metadata of a fine-tuned run of a model, and a counting (optionally fake) render engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import explorer.featurevis.store as store
from explorer.featurevis import Preview, RenderResult, get_preset, render


def _app(page: str) -> None:
    """The whole app opened on one page (AppTest runs this function's source as the app's script)."""
    from explorer.ui.shell import run_app

    run_app(default=page)


def app_on(page: str, /, *, timeout: float = 180, **query: str) -> AppTest:
    """An AppTest of the app opened on `page` (its url_path), with `query` in the URL, not yet run."""
    at = AppTest.from_function(_app, args=(page,), default_timeout=timeout)
    at.query_params.update(query)
    return at


def run_metadata(base: Any, **fields: Any) -> dict[str, Any]:
    """Checkpoint metadata of a run fine-tuned from `base` (as the fine-tuner writes it), with `fields` on top."""
    return {
        "arch": base.arch,
        "base_spec": base.spec,
        "base_fingerprint": base.fingerprint,
        "class_names": list(base.class_names),
        "input_size": list(base.input_size),
        "mean": list(base.mean),
        "std": list(base.std),
        "resize_size": base.resize_size,
        "freeze_after": None,
        **fields,
    }


def _texture(size: int, seed: int) -> np.ndarray:
    """A fake render's picture: noise, not a flat colour (a flat image is what an inactive unit leaves)."""
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


class Renders:
    """Counts the engine's render calls; `fake()` replaces the optimisation with flat images (value = step count)."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, fake: bool, fail_on: int | None = None, dead: tuple[str, ...] = ()
    ) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        self.fake = fake
        self.dead = set(dead)  # objective keys whose fake curve stays at 0
        monkeypatch.setattr(store, "render", self)

    def __call__(self, model, objectives, preset="classic", seed=0, steps=None, size=None, progress=None, **kw):
        self.calls.append([o.key for o in objectives])
        if len(self.calls) == self.fail_on:
            raise RuntimeError("render failed half-way")
        if not self.fake:
            return render(model, objectives, preset, seed=seed, steps=steps, size=size, progress=progress, **kw)
        p = get_preset(preset, steps=steps, size=size)
        n = len(objectives)
        images = np.stack([_texture(p.size, 37 * i + seed) for i in range(n)])
        if progress:
            progress(n, n * p.steps, Preview(images, list(range(n)), 1, p.steps))
        curves = np.tile(np.arange(1, p.steps + 1, dtype=np.float32), (n, 1))
        for i, obj in enumerate(objectives):
            if obj.key in self.dead:
                curves[i] = 0.0  # a unit nothing can raise
        return RenderResult(images, curves, {"preset": p.name, "seed": seed}, list(objectives))

    @property
    def images(self) -> int:
        return sum(len(c) for c in self.calls)
