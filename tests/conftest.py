"""Shared fixtures. Several people add to this file: append, don't rewrite."""

from __future__ import annotations

import pytest

from explorer.models import LoadedModel, load_model


@pytest.fixture(scope="session")
def bundled() -> LoadedModel:
    """The bundled EfficientNet-Lite0 with its ImageNet weights (~3 s to load; shared, never mutate it)."""
    return load_model()
