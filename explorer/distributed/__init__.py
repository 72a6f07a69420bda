"""The Ray back end: whole-network atlas renders and freeze sweeps spread over GPUs and machines.

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
  content-addressed cache, so reruns render only what is missing;
- `ray_sweep_runner` is the second: the freeze sweep's (point, route, seed) tasks (``"sweep.task"``) on the same
  pool, for ``explorer.transfer.sweeping.sweep.sweep(..., runner=ray_sweep_runner("auto"))`` or ``python -m explorer
  sweep
  … --ray auto``. The sweep's data goes once into Ray's object store (an image folder as its file paths: every
  node reads it at the same path); each worker rebuilds the sweep's context on its first task and keeps it, so the
  frozen prefixes' outputs are computed once per worker and reused by its next tasks; each result returns to the
  driver as a plain dict and is written to the sweep's resume file there as it arrives::

    from explorer.distributed import ray_sweep_runner
    report = sweep(model, "demo:digits", settings=s, out="sweep.json", runner=ray_sweep_runner("auto", workers=4))
"""

from explorer.distributed.atlas_job import AtlasReport, atlas
from explorer.distributed.atlas_tasks import CPU_CHUNK, AtlasPlan, atlas_layers, plan_atlas
from explorer.distributed.cluster import WorkerShape, connect, worker_shape
from explorer.distributed.errors import INSTALL_HINT, DistributedError, RayMissing, require_ray
from explorer.distributed.pool import MapResult, Pool, map_tasks, run_local
from explorer.distributed.progress import ProgressInfo, RunProgress
from explorer.distributed.sweep_job import RaySweepRunner, ray_sweep_runner
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
    "RaySweepRunner",
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
    "ray_sweep_runner",
    "require_ray",
    "resolve",
    "run_local",
    "run_task",
    "worker_shape",
]
