"""The errors of the Ray back end, and the one place that imports Ray (so the package imports without it)."""

from __future__ import annotations

from typing import Any

from explorer.errors import ExplorerError, msg

INSTALL_HINT = "pip install -r requirements-ray.txt"


class DistributedError(ExplorerError):
    """A distributed run that cannot go on (no cluster, workers that cannot load the model, a task that keeps dying)."""


class RayMissing(DistributedError):
    """Ray was asked for but is not installed."""


def require_ray() -> Any:
    """The `ray` module, or RayMissing with the install command when it is not installed."""
    try:
        import ray  # optional dependency: the Ray back end (requirements-ray.txt)
    except ImportError:
        missing = msg(f"Ray is not installed: {INSTALL_HINT} (or run without --ray, in this process).")
        raise RayMissing(missing) from None
    return ray
