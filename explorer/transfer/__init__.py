"""Transfer analysis: fine-tune with a freeze point, measure where to freeze, and explain it with the representation.

``freeze`` decides which modules a freeze point leaves alone (parameters and BatchNorm statistics), counts them and
writes the PyTorch that freezes there; ``finetune`` trains a copy of a model with a new head (``settings``,
``trainer``, ``optim``) and saves checkpoints (``checkpoints``) with the held-out split (``heldout``) that
`load_model` reopens alone, and ``resume`` continues a run whose process was killed from the resume state saved
beside its checkpoint; ``runs`` is the registry of fine-tune runs the app lists and trains in the background.
``sweep`` is the ground truth: held-out accuracy and cost at several freeze points by two routes (fine-tune after
the point; linear classifier on it), as independent tasks (``sweep_tasks``) sharing one pass of the frozen prefix
(``prefix``), chosen by a paired test (``sweep_report``, ``stats``). ``compare`` measures base against tuned on
held-out images block by block — ``cka`` (representation similarity with jackknife intervals), ``weights`` (weight
and BatchNorm-statistic change, and the hybrids that tell them apart), ``probes`` (linear probes on the base
features), ``crossexcite`` (same-seed renders in both) — and ``recommend`` turns sweep and measurements into advice,
behind a ``gate`` (no advice from a model that has not learned) and with the classic 2×2 ``guide``; ``report`` and
``report_html`` export it as JSON, CSV and HTML.
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
from explorer.transfer.checkpoints import CheckpointError, save_checkpoint
from explorer.transfer.compare import CompareError, check_comparable, compare
from explorer.transfer.finetune import FinetuneError, FinetuneResult, FinetuneSettings, finetune
from explorer.transfer.guide import GuideCell
from explorer.transfer.heldout import HeldOut, Split
from explorer.transfer.recommend import recommend, with_sweep
from explorer.transfer.report import ComparisonReport, LayerComparison, Recommendation, chart_series
from explorer.transfer.resume import can_resume, resume
from explorer.transfer.sweep import (
    SweepError,
    SweepReport,
    SweepTask,
    load_sweep,
    run_sweep_task,
    sweep,
    sweep_settings,
)

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
