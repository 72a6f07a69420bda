"""What a freeze sweep measured, the option it recommends, and the exports (JSON, CSV, HTML).

Each (point, route) is an :class:`SweepOption`: held-out accuracy with a 95 % interval (Wilson over the held-out
images; over seeds when there are several, never narrower than Wilson), trainable parameters, seconds, images/s.
The recommendation is the *cheapest option that is statistically indistinguishable from the best*: fewest
trainable parameters, then least time, among the options that the exact McNemar test on the same held-out images
does not find worse than the most accurate one (p ≥ 0.05). McNemar, not overlapping intervals: both options are
scored on the very same images, and the test uses exactly the images on which they disagree. "Not found worse"
is not "proved equal": with few held-out images every option passes, so below
:data:`~explorer.transfer.gate.MIN_IMAGES_TO_DECIDE` images no option is recommended.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from explorer.transfer.gate import ALPHA_CHANCE, too_few
from explorer.transfer.stats import above_chance, mcnemar, seed_interval, wilson

ALPHA = 0.05  # the McNemar test's level: options with p below it are worse than the best
JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]


@dataclass
class SweepOption:
    """One (point, route): held-out accuracy with its interval, and what it costs."""

    point: str
    route: str
    accuracy: float
    low: float
    high: float
    heldout: int  # held-out images per seed
    seeds: int
    trainable: int
    seconds: float
    images_per_second: float
    p_vs_best: float = 1.0  # exact McNemar test against the best option (1.0 for the best itself)
    only_this: int = 0  # held-out images (× seeds) only this option got right, against the best
    only_best: int = 0
    indistinguishable: bool = True  # not found worse than the best
    correct: str = field(default="", repr=False)  # '0'/'1' per held-out image, seed after seed (the paired tests)

    @property
    def key(self) -> str:
        return f"{self.route}@{self.point}"

    @property
    def label(self) -> str:
        what = "train every layer" if self.point == "none" else f"freeze up to {self.point}"
        return f"{what} (fine-tune)" if self.route == "finetune" else f"linear classifier on {self.point}"


@dataclass
class SweepChoice:
    """The recommended option (None when withheld), why, and the test that made the call."""

    point: str | None
    route: str | None
    reason: str
    test: str
    withheld: str | None = None  # why nothing is recommended
    try_next: list[str] = field(default_factory=list)


@dataclass
class SweepReport:
    """A sweep's options in depth order, its choice, and how it was run."""

    base: dict[str, str]
    data: dict[str, JSONValue]
    settings: dict[str, JSONValue]
    options: list[SweepOption]
    choice: SweepChoice
    chance: float
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    complete: bool = True  # False: stopped before every task ran (rerun with the same output to finish)

    def option(self, point: str, route: str) -> SweepOption | None:
        return next((o for o in self.options if o.point == point and o.route == route), None)

    @property
    def best(self) -> SweepOption | None:
        return max(self.options, key=lambda o: (o.accuracy, -o.trainable), default=None)

    @property
    def chosen(self) -> SweepOption | None:
        if self.choice.point is None or self.choice.route is None:
            return None
        return self.option(self.choice.point, self.choice.route)

    def to_dict(self) -> dict[str, JSONValue]:
        from explorer.transfer.checkpoints import json_safe

        return json_safe(asdict(self))

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, JSONValue]) -> SweepReport:
        opts = [SweepOption(**o) for o in d["options"]]  # type: ignore[arg-type, union-attr]
        rest = {k: v for k, v in d.items() if k in {f for f in cls.__dataclass_fields__} - {"options", "choice"}}
        return cls(options=opts, choice=SweepChoice(**d["choice"]), **rest)  # type: ignore[arg-type]

    def rows(self) -> list[dict[str, JSONValue]]:
        """One flat dict per option (the CSV and the page's table)."""
        return [
            {
                "point": o.point,
                "route": o.route,
                "accuracy": o.accuracy,
                "low": o.low,
                "high": o.high,
                "heldout": o.heldout,
                "seeds": o.seeds,
                "trainable": o.trainable,
                "seconds": o.seconds,
                "images_per_second": o.images_per_second,
                "p_vs_best": o.p_vs_best,
                "indistinguishable": o.indistinguishable,
            }
            for o in self.options
        ]

    def to_csv(self) -> str:
        buf = io.StringIO()
        rows = self.rows()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["point"])
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


# --------------------------------------------------------------------------- options and the choice


def _number(v: JSONValue) -> float:
    """A number read back from a task result (JSON): `float(v)`, for the JSON values that can be one."""
    if isinstance(v, (int, float, str)):
        return float(v)
    raise TypeError(f"not a number: {v!r}")


def _integer(v: JSONValue) -> int:
    """A whole number read back from a task result (JSON): `int(v)`, for the JSON values that can be one."""
    if isinstance(v, (int, float, str)):
        return int(v)
    raise TypeError(f"not a number: {v!r}")


def _pool(results: list[dict[str, JSONValue]]) -> tuple[list[float], np.ndarray]:
    accs = [_number(r["accuracy"]) for r in results]
    bits = np.array([c == "1" for r in results for c in str(r["correct"])], dtype=bool)
    return accs, bits


def make_options(
    tasks: dict[str, dict[str, JSONValue]], order: list[str]
) -> tuple[list[SweepOption], dict[str, np.ndarray]]:
    """Aggregate task results (keys 'route@point#seed') into options, points in `order`; with each option's
    per-image correctness over its seeds (for the paired test)."""
    groups: dict[tuple[str, str], list[tuple[int, dict[str, JSONValue]]]] = {}
    for key, res in tasks.items():
        rp, _, seed = key.rpartition("#")
        route, _, point = rp.partition("@")
        groups.setdefault((point, route), []).append((int(seed), res))
    out, bits_of = [], {}
    for (point, route), items in groups.items():
        results = [r for _, r in sorted(items, key=lambda t: t[0])]
        accs, bits = _pool(results)
        n = len(str(results[0]["correct"]))
        low, high = seed_interval(accs, int(bits.sum()), bits.size) if len(accs) > 1 else wilson(int(bits.sum()), n)
        out.append(
            SweepOption(
                point,
                route,
                float(np.mean(accs)),
                low,
                high,
                n,
                len(accs),
                _integer(results[0]["trainable"]),
                float(np.mean([_number(r["seconds"]) for r in results])),
                float(np.mean([_number(r["images_per_second"]) for r in results])),
            )
        )
        bits_of[out[-1].key] = bits
        out[-1].correct = "".join("1" if b else "0" for b in bits)
    rank = {p: i for i, p in enumerate(order)}
    return sorted(out, key=lambda o: (rank.get(o.point, len(rank)), o.route)), bits_of


def choose(options: list[SweepOption], bits: dict[str, np.ndarray], chance: float) -> SweepChoice:
    """Mark each option against the best (exact McNemar test) and pick the cheapest not found worse."""
    test = (
        f"exact McNemar test on the same held-out images (paired by seed) against the most accurate option; "
        f"options with p < {ALPHA} are worse, the cheapest of the rest is chosen"
    )
    if not options:
        return SweepChoice(None, None, "No option was measured.", test, "No option was measured.")
    best = max(options, key=lambda o: (o.accuracy, -o.trainable))
    b_bits = bits[best.key]
    for o in options:
        m = min(bits[o.key].size, b_bits.size)  # the seeds both have
        t = mcnemar(bits[o.key][:m], b_bits[:m])
        o.p_vs_best, o.only_this, o.only_best = (1.0, 0, 0) if o is best else (t.p_value, t.only_a, t.only_b)
        o.indistinguishable = o is best or t.p_value >= ALPHA
    gate = too_few(best.heldout)
    if not gate.open:
        return SweepChoice(None, None, gate.reason, test, gate.reason, gate.try_next)
    k = int(round(best.accuracy * best.heldout))
    p = above_chance(k, best.heldout, chance)
    if not p < ALPHA_CHANCE:
        why = (
            f"No option learned the task: the best, {best.label}, scores {100 * best.accuracy:.0f} % on "
            f"{best.heldout} held-out images, not significantly above chance ({100 * chance:.0f} %, p = {p:.2g})."
        )
        return SweepChoice(None, None, why, test, why, ["Check the data (one sub-folder per class), or train longer."])
    pick = min((o for o in options if o.indistinguishable), key=lambda o: (o.trainable, o.seconds))
    return SweepChoice(pick.point, pick.route, _reason(pick, best, options), test)


def _reason(pick: SweepOption, best: SweepOption, options: list[SweepOption]) -> str:
    acc = f"{100 * pick.accuracy:.1f} % [{100 * pick.low:.1f}, {100 * pick.high:.1f}]"
    label = pick.label[0].upper() + pick.label[1:]
    text = f"{label}: {acc} on {pick.heldout} held-out images with {pick.trainable:,} trainable parameters"
    if pick is best:
        text += ", the most accurate option"
    else:
        text += (
            f"; the most accurate option, {best.label}, scores {100 * best.accuracy:.1f} % "
            f"({best.trainable:,} trainable), and the exact McNemar test on the same images does not tell them "
            f"apart (p = {pick.p_vs_best:.2f}: {pick.only_this} images only this one got right, "
            f"{pick.only_best} only the best)"
        )
    worse = [o for o in options if not o.indistinguishable]
    text += f". {len(worse)} of {len(options)} options are significantly worse than the best." if worse else "."
    return text
