"""Shared fixtures. Several people add to this file: append, don't rewrite."""

from __future__ import annotations

import pytest

from explorer.models import LoadedModel, load_model


@pytest.fixture(scope="session")
def bundled() -> LoadedModel:
    """The bundled EfficientNet-Lite0 with its ImageNet weights (~3 s to load; shared, never mutate it)."""
    return load_model()


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    """timm's 356k-parameter test_efficientnet, untrained (BatchNorm, blocks, a Linear head): fast fine-tunes."""
    return load_model("timm:test_efficientnet:untrained", device="cpu")


@pytest.fixture(scope="session")
def color_folder(tmp_path_factory: pytest.TempPathFactory):
    """An image folder of 3 classes × 12 noisy 40×40 images whose class is its dominant colour (easy to learn)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("colors")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir()
        for i in range(12):
            arr = rng.integers(0, 90, size=(40, 40, 3))
            arr[..., c] += 150
            Image.fromarray(arr.astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster in this process for one test module (skipped without Ray)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster, tiny: LoadedModel):
    """Two CPU workers (one thread each) holding the module's `tiny` model, shared by its tests (their actors start
    on the first map)."""
    from explorer.distributed import Pool

    with Pool(tiny, "auto", device="cpu") as p:
        yield p
