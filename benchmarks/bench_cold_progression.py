"""The compute floor of the load test's cold check: N users each asking for a new Progression at once.

    python benchmarks/bench_cold_progression.py              # 8 users, bundled EfficientNet-Lite0, fast preset
    python benchmarks/bench_cold_progression.py --users 4 --per-stage 4

In this process, with no server and no browser, it times the rendering a Progression page asks for (the first
`--per-stage` units of each stage's representative block, one render per row, fast preset, as the page does):

* one user: the rows of one Progression;
* N users one after the other: N Progressions with N seeds (what the server's fair queue runs);
* N users batched: each row rendered once for all N users together (N × per-stage images in one call, batch as
  large as the row; the users' images told apart by their units here, which costs the same as by their seeds).

The load test's target is "a cold Progression for N users within 4× one user's time". Whatever the server does,
the last user cannot finish before the N users' rendering is done, so N-users-time / one-user-time is a floor on
that ratio, before any page, network or browser cost; it is printed for both schedules.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.featurevis import channel, render  # noqa: E402
from explorer.featurevis.stages import stage_map  # noqa: E402
from explorer.models import LoadedModel, load_model  # noqa: E402


def rows_of(model: LoadedModel) -> list[str]:
    return [s.representative for s in stage_map(model).stages]


def one_user(model: LoadedModel, rows: list[str], per_stage: int, seed: int) -> float:
    start = time.perf_counter()
    for layer in rows:
        render(model, [channel(layer, u) for u in range(per_stage)], "fast", seed=seed)
    return time.perf_counter() - start


def batched(model: LoadedModel, rows: list[str], per_stage: int, users: int) -> float:
    start = time.perf_counter()
    for layer in rows:
        n = per_stage * users
        render(model, [channel(layer, u) for u in range(n)], "fast", seed=0, batch_size=n)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--per-stage", type=int, default=2, help="units per stage (the load test's link: 2)")
    ap.add_argument("--model", default="bundled:efficientnet_lite0")
    a = ap.parse_args(argv)
    model = load_model(a.model)
    rows = rows_of(model)
    one_user(model, rows[:1], 1, seed=999)  # warm-up: kernels, allocator
    single = one_user(model, rows, a.per_stage, seed=1000)
    serial = sum(one_user(model, rows, a.per_stage, seed=1001 + k) for k in range(a.users))
    together = batched(model, rows, a.per_stage, a.users)
    print(f"{a.model} · fast preset · {len(rows)} rows × {a.per_stage} units · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads · {platform.processor() or platform.machine()}")  # fmt: skip
    print(f"one user:                 {single:6.2f} s")
    print(f"{a.users} users one by one:     {serial:6.2f} s  → floor of the ratio {serial / single:.2f}")
    print(f"{a.users} users batched by row: {together:6.2f} s  → floor of the ratio {together / single:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
