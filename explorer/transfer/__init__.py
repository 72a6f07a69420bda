"""Transfer analysis: fine-tune with a freeze point, measure where to freeze, and explain it with the representation.

Five sub-packages, one concept each (freezing itself lives in :mod:`explorer.models.freeze`):

- ``training``: fine-tune a copy of a model with a new head (``settings``, ``trainer``, ``optim``, ``finetune``),
  checkpoints with the held-out split that `load_model` reopens alone (``checkpoints``, ``heldout``), ``resume`` of a
  killed run, the registry of runs the app trains in the background (``runs``), ``costs`` and the ``linear_head``.
- ``comparison``: base against tuned on held-out images block by block (``compare``, assembled by ``assemble``):
  ``cka`` with jackknife intervals, ``weights`` (weight and BatchNorm-statistic change and the hybrids that tell them
  apart), ``probes`` on ``pooling``-ed features, ``crossexcite`` (same-seed renders in both).
- ``sweeping``: the ground truth, held-out accuracy and cost at several freeze points by two routes (``sweep``), as
  independent tasks (``sweep_tasks``) sharing one pass of the frozen prefix (``prefix``), decided by a
  non-inferiority rule (``sweep_report``, ``stats``); ``predict`` is the instant prediction scored against it.
- ``advice``: ``recommend`` turns sweep and measurements into advice, behind a ``gate`` (no advice from a model that
  has not learned) and with the classic 2×2 ``guide``.
- ``reporting``: the report's data classes, JSON and CSV (``report``) and the one-page HTML (``report_html``).

This package re-exports what the app and the CLI use; import a sub-module directly for anything else.
"""

from explorer.models.freeze import (
    FreezeError,
    FreezeSummary,
    apply_freeze,
    freeze_code,
    freeze_summary,
    freeze_table,
    frozen_modules,
    head_name,
)
from explorer.transfer.advice.guide import GuideCell
from explorer.transfer.advice.recommend import recommend, with_sweep
from explorer.transfer.comparison.compare import CompareError, check_comparable, compare
from explorer.transfer.reporting.report import ComparisonReport, LayerComparison, Recommendation, chart_series
from explorer.transfer.sweeping.sweep import (
    SweepError,
    SweepReport,
    SweepTask,
    load_sweep,
    run_sweep_task,
    sweep,
    sweep_settings,
)
from explorer.transfer.training.checkpoints import CheckpointError, save_checkpoint
from explorer.transfer.training.finetune import FinetuneError, FinetuneResult, FinetuneSettings, finetune
from explorer.transfer.training.heldout import HeldOut, Split
from explorer.transfer.training.resume import can_resume, resume

__all__ = [
    "CheckpointError",
    "CompareError",
    "ComparisonReport",
    "FinetuneError",
    "FinetuneResult",
    "FinetuneSettings",
    "FreezeError",
    "FreezeSummary",
    "GuideCell",
    "HeldOut",
    "LayerComparison",
    "Recommendation",
    "Split",
    "SweepError",
    "SweepReport",
    "SweepTask",
    "apply_freeze",
    "chart_series",
    "check_comparable",
    "compare",
    "finetune",
    "freeze_code",
    "freeze_summary",
    "freeze_table",
    "frozen_modules",
    "head_name",
    "load_sweep",
    "recommend",
    "resume",
    "can_resume",
    "with_sweep",
    "run_sweep_task",
    "save_checkpoint",
    "sweep",
    "sweep_settings",
]
