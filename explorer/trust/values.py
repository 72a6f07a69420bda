"""JSON-ready numbers for the trust reports: floats rounded, NaN and infinities written as null (strict JSON)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(obj: Any, digits: int = 6) -> Any:
    """`obj` with every float rounded to `digits` significant places and every non-finite float as None; numpy
    scalars and arrays become Python numbers and lists; tuples become lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if not math.isfinite(x):
            return None
        return float(f"{x:.{digits}g}")
    return obj


def nan_mean(rows: Any, axis: int = 0) -> np.ndarray:
    """The mean ignoring NaN, NaN (without a warning) where a column has no finite value."""
    a = np.asarray(rows, dtype=np.float64)
    ok = np.isfinite(a)
    total = np.where(ok, a, 0.0).sum(axis)
    count = ok.sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
