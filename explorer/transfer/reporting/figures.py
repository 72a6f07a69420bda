"""A number a sentence shows, written with a format spec so the app's translator rewrites it in the reader's marks.

``msg(f"CKA {figure(x):.2f}")`` reads ``CKA 0.93`` (``CKA n/a`` when `x` is None, NaN or infinite): the template keeps
the spec ``.2f``, so :mod:`explorer.ui.messages` writes ``CKA 0,93`` in Portuguese.
"""

from __future__ import annotations

import math


class Figure:
    """`value` formatted by the spec it is given (or by its own `spec` when it has one: the template's spec then only
    tells the translator the field is a number), or 'n/a' when it is missing or not finite."""

    __slots__ = ("spec", "value")

    def __init__(self, value: float | int | None, spec: str | None = None) -> None:
        self.value, self.spec = value, spec

    def __format__(self, spec: str) -> str:
        v = self.value
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "n/a"
        return format(v, self.spec if self.spec is not None else spec)


def figure(value: object) -> Figure:
    """`value` as a :class:`Figure` (anything that is not a number reads 'n/a')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Figure(None)
    return Figure(value)
