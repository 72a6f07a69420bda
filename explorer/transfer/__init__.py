"""Transfer analysis: fine-tune with a freeze point, compare the tuned model with its base, and advise where to freeze.

``freeze`` decides which modules a freeze point leaves alone (parameters and BatchNorm statistics), counts them and
writes the PyTorch that freezes there; ``finetune`` trains a copy of a model with a new head and saves checkpoints
(``checkpoints``) that `load_model` reopens alone; ``runs`` is the registry of fine-tune runs the app lists and
trains in the background; ``compare`` measures base against tuned block by block — ``cka`` (representation
similarity), ``probes`` (linear probes on the base features), ``crossexcite`` (same-seed renders in both) — and
``recommend`` turns the measurements into the freeze advice that ``report`` exports as JSON, CSV and HTML.
"""

from explorer.transfer.checkpoints import CheckpointError, save_checkpoint
from explorer.transfer.compare import CompareError, check_comparable, compare
from explorer.transfer.finetune import FinetuneError, FinetuneResult, FinetuneSettings, finetune
from explorer.transfer.freeze import (
    FreezeError,
    FreezeSummary,
    apply_freeze,
    freeze_code,
    freeze_summary,
    freeze_table,
    frozen_modules,
    head_name,
)
from explorer.transfer.recommend import GuideCell, Recommendation, recommend
from explorer.transfer.report import ComparisonReport, LayerComparison

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
    "LayerComparison",
    "Recommendation",
    "apply_freeze",
    "check_comparable",
    "compare",
    "finetune",
    "freeze_code",
    "freeze_summary",
    "freeze_table",
    "frozen_modules",
    "head_name",
    "recommend",
    "save_checkpoint",
]
