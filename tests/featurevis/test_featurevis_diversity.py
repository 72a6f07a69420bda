"""The feature distance behind the Unit page's diversity caption (explorer/featurevis/distance.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.errors import ExplorerError
from explorer.featurevis import channel, diversity, render
from explorer.featurevis.distance import NEAR_IDENTICAL, feature_distance, pairwise_cosine_distance

LAYER = "blocks.3.0"


def _noise(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _stripes(vertical: bool, size: int = 64) -> np.ndarray:
    x = (np.arange(size) // 4 % 2 * 255).astype(np.uint8)
    grid = np.tile(x, (size, 1)) if vertical else np.tile(x[:, None], (1, size))
    return np.repeat(grid[..., None], 3, axis=2)


def test_pairwise_cosine_distance_is_zero_on_the_diagonal_and_one_for_orthogonal_rows():
    d = pairwise_cosine_distance(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]))
    assert d.shape == (3, 3) and np.allclose(np.diag(d), 0.0) and np.allclose(d, d.T)
    assert d[0, 1] == pytest.approx(0.0, abs=1e-9) and d[0, 2] == pytest.approx(1.0)


def test_identical_images_are_at_distance_zero_and_different_ones_are_not(bundled):
    same = feature_distance(bundled, [_noise(0)] * 4, LAYER)
    assert same.mean == pytest.approx(0.0, abs=1e-5) and same.near_identical
    assert same.pairwise.shape == (4, 4)
    different = feature_distance(
        bundled, [_stripes(True), _stripes(False), _noise(1), np.full((64, 64, 3), 200, np.uint8)], LAYER
    )
    assert different.mean > 2 * NEAR_IDENTICAL and not different.near_identical, different.mean
    gram = feature_distance(bundled, [_stripes(True), _stripes(False)], LAYER, kind="gram")
    assert gram.kind == "gram" and gram.mean > 0.0


def test_bad_inputs_are_one_clear_error(bundled):
    with pytest.raises(ExplorerError, match="Unknown distance"):
        feature_distance(bundled, [_noise(0)], LAYER, kind="style")
    with pytest.raises(ExplorerError, match="No images"):
        feature_distance(bundled, [], LAYER)
    with pytest.raises(ExplorerError, match=r"\(height, width, 3\)"):
        feature_distance(bundled, [np.zeros((8, 8))], LAYER)


def test_adding_the_diversity_term_pushes_renders_apart(bundled):
    """The Unit page's objective (channel + w·diversity) makes the four images differ; without it they do not."""
    plain = render(bundled, [channel(LAYER, 5)] * 4, "fast", seed=0, steps=16, size=48)
    pushed = render(bundled, [channel(LAYER, 5) + 10.0 * diversity(LAYER)] * 4, "fast", seed=0, steps=16, size=48)
    d_plain = feature_distance(bundled, list(plain.images), LAYER).mean
    d_pushed = feature_distance(bundled, list(pushed.images), LAYER).mean
    assert d_pushed > max(3 * d_plain, NEAR_IDENTICAL), (d_plain, d_pushed)
