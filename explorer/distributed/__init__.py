"""The Ray back end: whole-network atlas renders (and, later, freeze sweeps) spread over GPUs and machines.

Ray is optional. This package imports without it; asking for a Ray feature without it raises `RayMissing`
("pip install -r requirements-ray.txt"), and everything also runs in this process (`ray=None`, the default of
the CLI). The layer is small and general:

- a `Task` is a plain, picklable description: a handler `kind`, its `args`, a progress `channel` and a `cost`;
- a `Pool` holds Ray actors (`Worker`) that load the model once (`ModelSource`: a spec, or a checkpoint path
  every node can read; its fingerprint is checked on each worker): one per GPU with ``num_gpus=1``, fractions of
  a GPU, or CPU workers where there is none;
- `map_tasks` / `Pool.map` keep every worker busy, rerun a task whose worker died on another one (and start a
  new worker in its place), hand each result to `on_result` as it arrives, and report progress in channels across
  the cluster through one callback ``progress(done, total, info)``;
- `atlas` is the first client: (layer × channel chunk) tasks whose images the driver writes into the
  content-addressed cache, so reruns render only what is missing.

How a sweep plugs in (issue 11; not implemented here): write a handler
``run_point(model, args, report) -> dict`` in ``explorer/transfer/sweep.py`` that fine-tunes a *copy* of `model`
at ``args["point"]`` by ``args["route"]`` with ``args["seed"]`` (data as a spec or a path every node reads),
calls ``report(epoch, epochs)``, and returns a small dict of metrics; add ``"sweep.point":
"explorer.transfer.sweep:run_point"`` to `KINDS` (or use that path as the kind); then::

    tasks = [Task("sweep.point", {"point": p, "route": r, "seed": s, "data": "demo:digits", "settings": {...}},
                  channel=f"{r} {p}", cost=epochs) for p in points for r in routes for s in seeds]
    out = map_tasks(tasks, base, ray="auto", on_result=store_in_cache)   # ray=None: the same, in this process
    metrics = out.results                                                # in task order
"""

from explorer.distributed.atlas_job import AtlasReport, atlas
from explorer.distributed.atlas_tasks import CPU_CHUNK, AtlasPlan, atlas_layers, plan_atlas
from explorer.distributed.cluster import WorkerShape, connect, worker_shape
from explorer.distributed.errors import INSTALL_HINT, DistributedError, RayMissing, require_ray
from explorer.distributed.pool import MapResult, Pool, map_tasks, run_local
from explorer.distributed.progress import ProgressInfo, RunProgress
from explorer.distributed.tasks import KINDS, Handler, Task, TaskReport, resolve, run_task
from explorer.distributed.worker import ModelSource, Worker, WorkerInfo

__all__ = [
    "CPU_CHUNK",
    "INSTALL_HINT",
    "KINDS",
    "AtlasPlan",
    "AtlasReport",
    "DistributedError",
    "Handler",
    "MapResult",
    "ModelSource",
    "Pool",
    "ProgressInfo",
    "RayMissing",
    "RunProgress",
    "Task",
    "TaskReport",
    "Worker",
    "WorkerInfo",
    "WorkerShape",
    "atlas",
    "atlas_layers",
    "connect",
    "map_tasks",
    "plan_atlas",
    "require_ray",
    "resolve",
    "run_local",
    "run_task",
    "worker_shape",
]
