"""Connecting to a Ray cluster and deciding how many workers of which kind it holds.

``auto`` joins the cluster this machine already belongs to (``$RAY_ADDRESS`` or the last ``ray start``) and
otherwise starts a local one with every CPU and GPU here; ``local`` always starts a fresh local one; anything else
is a cluster address (``HOST:6379`` or ``ray://HOST:10001``). Every node must be able to import ``explorer``
(install this project on each node, or pass ``runtime_env={"working_dir": ...}``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from explorer.distributed.errors import DistributedError, require_ray


def connect(address: str = "auto", runtime_env: dict[str, Any] | None = None) -> bool:
    """Join (or start) the Ray cluster `address` names; True when this call did, False when already connected."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    target = None if address in ("", "auto") else address
    try:
        ray.init(
            address=target, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
            logging_level=logging.WARNING,
        )  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(
            f"Could not join the Ray cluster at {address} ({first}); start one with `ray start --head` or use "
            f"--ray auto."
        ) from None
    return True


@dataclass(frozen=True)
class WorkerShape:
    """How many workers to start and what each asks Ray for."""

    device: str  # cpu | cuda
    count: int
    num_cpus: float
    num_gpus: float

    def options(self) -> dict[str, Any]:
        """Ray actor options: the resources, and no automatic restart (the scheduler replaces dead workers)."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_restarts": 0, "max_concurrency": 1}


def worker_shape(
    device: str = "auto", workers: int | None = None, cpus_per_worker: int = 1, gpus_per_worker: float = 1.0
) -> WorkerShape:
    """One worker per GPU (or per `gpus_per_worker` of one) when the cluster has GPUs, else one per CPU core(s).

    `device` auto picks CUDA when the cluster has a GPU. By default as many workers as the resources that are free
    now allow (other jobs keep theirs); an explicit `workers` is capped by what the cluster holds, and those that
    do not fit yet wait for resources.
    """
    ray = require_ray()
    if cpus_per_worker < 1:
        raise DistributedError(f"Each worker needs at least one CPU, not {cpus_per_worker}.")
    if not 0 < gpus_per_worker <= 1:
        raise DistributedError(f"GPUs per worker must be in (0, 1] (0.5: two share a GPU), not {gpus_per_worker}.")
    if workers is not None and workers < 1:
        raise DistributedError(f"Ask for at least one worker, not {workers}.")
    total, free = ray.cluster_resources(), ray.available_resources()
    gpus = float(total.get("GPU", 0))
    kind = ("cuda" if gpus >= gpus_per_worker else "cpu") if device in ("auto", "", None) else device
    if kind not in ("cpu", "cuda"):
        raise DistributedError(f"Ray workers run on cpu or cuda, not {kind}.")
    if kind == "cuda" and gpus < gpus_per_worker:
        raise DistributedError("CUDA workers were asked for but the Ray cluster has no GPU; use --device cpu.")
    resource, per = ("GPU", gpus_per_worker) if kind == "cuda" else ("CPU", float(cpus_per_worker))
    fit = int(float(total.get(resource, 0)) / per + 1e-9)
    if fit < 1:
        raise DistributedError(f"A worker asks for {per:g} {resource}; the Ray cluster has {total.get(resource, 0):g}.")
    count = min(workers, fit) if workers else int(float(free.get(resource, 0)) / per + 1e-9)
    if count < 1:
        raise DistributedError(
            f"No {resource} of the Ray cluster is free now (other jobs hold them); --workers N waits for them."
        )
    if kind == "cuda":
        return WorkerShape("cuda", count, cpus_per_worker if total.get("CPU", 0) else 0, gpus_per_worker)
    return WorkerShape("cpu", count, cpus_per_worker, 0)
