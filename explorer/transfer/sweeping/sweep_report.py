"""What a freeze sweep measured, the option it recommends, and the exports (JSON, CSV, HTML).

Each (point, route) is a :class:`SweepOption`: accuracy on images its training never saw (a held-out split, or
the out-of-fold predictions of k-fold cross-validation on small data) with a 95 % interval, its spread over seeds,
trainable parameters, seconds, images/s, and whether its training converged.

**The decision rule is non-inferiority with a stated margin** m (default 2 points): the recommendation is the
cheapest converged option whose upper 95 % bound on its loss against the best is below m; when none is, the most
accurate option. The bounds come from a bootstrap over the images (paired: every option is scored on the same
images) and over each option's seeds (hierarchically: seeds are a level of their own, never more images), and they
hold for every option at once (a studentised max-|t| critical value), which pays both for trying many options and
for the best being itself the winner of a selection. Each option is labelled *equivalent* (its whole interval is
within m of the best), *worse* (its whole interval is beyond m) or *cannot place* (the data cannot say which).
"Not found worse" is never read as "as good".

**The reported accuracy of the choice is not the one that chose it**: the evaluated images are cut into two
stratified halves; each half chooses by the same rule, and the other half scores its choice. Their mean is
``test_accuracy``, shown beside the choosing accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from explorer.errors import msg
from explorer.transfer.advice.gate import learned_task
from explorer.transfer.sweeping.stats import MARGIN, LossBounds, loss_bounds, seed_interval, wilson
from explorer.transfer.training.checkpoints import json_safe

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]
EQUIVALENT, WORSE, UNPLACED, BEST, UNCONVERGED = (
    msg("equivalent"), msg("worse"), msg("cannot place"), msg("best"), msg("not converged")
)  # fmt: skip  # statuses, marked: the HTML table shows them translated


@dataclass
class SweepOption:
    """One (point, route): accuracy on images its training never saw, with its interval, and what it costs."""

    point: str
    route: str
    accuracy: float  # mean over seeds
    low: float
    high: float
    heldout: int  # images it was scored on, per seed (held out, or every image once out of fold)
    seeds: int
    trainable: int
    seconds: float  # per seed, all folds together
    images_per_second: float
    seed_accuracies: list[float] = field(default_factory=list)
    epochs: float = 0.0  # mean epochs trained (0 for the linear route)
    converged: bool = True  # False: its loss stayed above ln K or its training accuracy near chance, even extended
    extended: bool = False  # its budget was doubled once because the first did not converge
    status: str = ""  # best, equivalent, worse, cannot place, not converged
    loss: float = 0.0  # accuracy of the best minus this one's (fractions)
    loss_low: float = 0.0
    loss_high: float = 0.0
    correct: str = field(default="", repr=False)  # '0'/'1' per scored image, seed after seed

    @property
    def key(self) -> str:
        return f"{self.route}@{self.point}"

    @property
    def label(self) -> str:
        if self.route != "finetune":
            return msg(f"linear classifier on {self.point}")
        return (
            msg("train every layer (fine-tune)")
            if self.point == "none"
            else msg(f"freeze up to {self.point} (fine-tune)")
        )

    @property
    def title(self) -> str:
        """The label as a sentence starts it (capitalised; the translator matches it by the label's template)."""
        label = self.label
        return label[:1].upper() + label[1:]

    @property
    def seed_sd(self) -> float:
        """Standard deviation of the accuracy across seeds (nan with one seed)."""
        return float(np.std(self.seed_accuracies, ddof=1)) if len(self.seed_accuracies) > 1 else float("nan")

    def matrix(self) -> np.ndarray:
        """Per-image correctness, one row per seed."""
        bits = np.frombuffer(self.correct.encode(), dtype=np.uint8) == ord("1")
        return bits.reshape(max(self.seeds, 1), -1)


@dataclass
class SweepChoice:
    """The recommended option (None when withheld), why, the rule that made the call and its held-apart check."""

    point: str | None
    route: str | None
    reason: str
    test: str
    withheld: str | None = None  # why nothing is recommended
    try_next: list[str] = field(default_factory=list)
    margin: float = MARGIN
    choice_accuracy: float | None = None  # the chosen option's accuracy on the images that chose it
    test_accuracy: float | None = None  # on images that took no part in choosing (cross-fit halves)
    test_note: str = ""


@dataclass
class SweepReport:
    """A sweep's options in depth order, its choice, how it was run, and what data and model it belongs to."""

    base: dict[str, str]
    data: dict[str, JSONValue]
    settings: dict[str, JSONValue]
    options: list[SweepOption]
    choice: SweepChoice
    chance: float
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    complete: bool = True  # False: stopped before every task ran (rerun with the same output to finish)
    identity: dict[str, JSONValue] = field(default_factory=dict)  # data signature, base fingerprint, input size
    evaluation: str = "held-out split"  # or "5-fold cross-validation"

    def option(self, point: str, route: str) -> SweepOption | None:
        return next((o for o in self.options if o.point == point and o.route == route), None)

    @property
    def best(self) -> SweepOption | None:
        """The decision rule's reference: the most accurate converged option (the first in sweep order among ties;
        breaking ties toward the cheaper one let a truly worse cheap option be picked more often in the simulation,
        tests/science: 43 % against a 31 % noise floor at 50 images)."""
        ruled = next((o for o in self.options if o.status == BEST), None)
        return ruled or max(self.options, key=lambda o: (o.accuracy, -o.trainable), default=None)

    @property
    def chosen(self) -> SweepOption | None:
        if self.choice.point is None or self.choice.route is None:
            return None
        return self.option(self.choice.point, self.choice.route)

    def to_dict(self) -> dict[str, JSONValue]:
        return json_safe(asdict(self))

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, JSONValue]) -> SweepReport:
        known = {f.name for f in fields(SweepOption)}
        opts = [SweepOption(**{k: v for k, v in o.items() if k in known}) for o in d["options"]]  # type: ignore[union-attr, arg-type]
        cknown = {f.name for f in fields(SweepChoice)}
        choice = SweepChoice(**{k: v for k, v in d["choice"].items() if k in cknown})  # type: ignore[union-attr, arg-type]
        rest = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)} - {"options", "choice"}}
        return cls(options=opts, choice=choice, **rest)  # type: ignore[arg-type]

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
                "seed_sd": o.seed_sd,
                "converged": o.converged,
                "loss_vs_best": o.loss,
                "loss_low": o.loss_low,
                "loss_high": o.loss_high,
                "status": o.status,
            }
            for o in self.options
        ]

    def to_csv(self, *, translate: Callable[[str], str] | None = None) -> str:
        """The rows as CSV; `translate` turns the header row's column names into the reader's language (None:
        English, the column keys themselves)."""
        buf = io.StringIO()
        rows = self.rows()
        keys = list(rows[0]) if rows else ["point"]
        csv.writer(buf).writerow([translate(k) for k in keys] if translate else keys)
        csv.DictWriter(buf, fieldnames=keys).writerows(rows)
        return buf.getvalue()


# The CSV's column names, marked for the translator (a download in another language translates its header row).
CSV_COLUMNS = (
    msg("point"), msg("route"), msg("accuracy"), msg("low"), msg("high"), msg("heldout"), msg("seeds"),
    msg("trainable"), msg("seconds"), msg("images_per_second"), msg("seed_sd"), msg("converged"),
    msg("loss_vs_best"), msg("loss_low"), msg("loss_high"), msg("status"),
)  # fmt: skip


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


def make_options(tasks: dict[str, dict[str, JSONValue]], order: list[str]) -> list[SweepOption]:
    """Aggregate task results (keys 'route@point#seed') into options, points in `order`, seeds in order."""
    groups: dict[tuple[str, str], list[tuple[int, dict[str, JSONValue]]]] = {}
    for key, res in tasks.items():
        rp, _, seed = key.rpartition("#")
        route, _, point = rp.partition("@")
        groups.setdefault((point, route), []).append((int(seed), res))
    out = []
    for (point, route), items in groups.items():
        results = [r for _, r in sorted(items, key=lambda t: t[0])]
        accs = [_number(r["accuracy"]) for r in results]
        bits = "".join(str(r["correct"]) for r in results)
        n = len(str(results[0]["correct"]))
        k = bits.count("1")
        low, high = seed_interval(accs, k, len(bits)) if len(accs) > 1 else wilson(k, n)
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
                seed_accuracies=accs,
                epochs=float(np.mean([_number(r.get("epochs", 0)) for r in results])),
                converged=all(bool(r.get("converged", True)) for r in results),
                extended=any(bool(r.get("extended", False)) for r in results),
                correct=bits,
            )
        )
    rank = {p: i for i, p in enumerate(order)}
    return sorted(out, key=lambda o: (rank.get(o.point, len(rank)), o.route))


def _pick(options: Sequence[SweepOption], bounds: LossBounds, margin: float) -> int:
    """Index of the cheapest option whose upper bound on its loss is below the margin; the best when none is."""
    ok = [i for i in range(len(options)) if i == bounds.best or bounds.high[i] < margin]
    return min(ok, key=lambda i: (options[i].trainable, options[i].seconds, -options[i].accuracy))


def halves(labels: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of the scored images, stratified by class (each class split as evenly as it can be)."""
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    first: list[int] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        first += idx[: (len(idx) + int(rng.integers(0, 2))) // 2].tolist()
    a = np.zeros(len(y), dtype=bool)
    a[first] = True
    return np.flatnonzero(a), np.flatnonzero(~a)


def _held_apart(
    options: Sequence[SweepOption], matrices: list[np.ndarray], labels: Sequence[int], margin: float, pick: int
) -> tuple[float | None, str]:
    """The choice's accuracy on images that took no part in choosing: each half chooses, the other half scores."""
    if len(labels) < 8:
        return None, msg("too few images to hold any apart")
    a, b = halves(labels)
    scores, picks = [], []
    for choose_on, score_on in ((a, b), (b, a)):
        i = _pick(options, loss_bounds([m[:, choose_on] for m in matrices]), margin)
        picks.append(i)
        scores.append(float(matrices[i][:, score_on].mean()))
    same = sum(i == pick for i in picks)
    agree = {2: msg("both halves chose it"), 1: msg("one half chose it"), 0: msg("neither half chose it")}[same]
    others = ", ".join(sorted({options[i].label for i in picks if i != pick}))
    note = (
        msg(
            f"each half of the {len(labels)} scored images chose by the same rule and the other half scored that "
            f"choice ({agree}; the other choice: {others})"
        )
        if others
        else msg(
            f"each half of the {len(labels)} scored images chose by the same rule and the other half scored that "
            f"choice ({agree})"
        )
    )
    return float(np.mean(scores)), note


def choose(options: list[SweepOption], labels: Sequence[int], chance: float, *, margin: float = MARGIN) -> SweepChoice:
    """Bound every converged option's loss against the best, label it, and pick the cheapest within the margin."""
    m = 100 * margin
    test = msg(
        f"non-inferiority with a margin of {m:g} points: the cheapest option whose upper 95 % bound on its loss "
        "against the best is below the margin, else the best; bounds from a paired bootstrap over images and seeds, "
        "simultaneous over all options"
    )
    for o in options:
        o.status = UNCONVERGED if not o.converged else ""
    ranked = [o for o in options if o.converged]
    if not ranked:
        why = msg("No option converged: every training stayed near chance or above the loss of a uniform guess.")
        tries = [msg("Check the data, or raise the budget (--epochs).")]
        return SweepChoice(None, None, why, test, why, tries, margin)
    matrices = [o.matrix() for o in ranked]
    bounds = loss_bounds(matrices)
    for i, o in enumerate(ranked):
        o.loss, o.loss_low, o.loss_high = float(bounds.loss[i]), float(bounds.low[i]), float(bounds.high[i])
        if i == bounds.best:
            o.status = BEST
        elif bounds.high[i] < margin:
            o.status = EQUIVALENT
        elif bounds.low[i] > margin:
            o.status = WORSE
        else:
            o.status = UNPLACED
    best = ranked[bounds.best]
    n = best.heldout
    gate = learned_task(int(round(best.accuracy * n)), n, chance)
    if not gate.open:
        return SweepChoice(None, None, gate.reason, test, gate.reason, gate.try_next, margin)
    i = _pick(ranked, bounds, margin)
    pick = ranked[i]
    test_acc, note = _held_apart(ranked, matrices, labels, margin, i)
    return SweepChoice(
        pick.point,
        pick.route,
        _reason(pick, best, options, margin, bounds.quantile),
        test,
        margin=margin,
        choice_accuracy=pick.accuracy,
        test_accuracy=test_acc,
        test_note=note,
    )


def _reason(pick: SweepOption, best: SweepOption, options: list[SweepOption], margin: float, q: float) -> str:
    """Why `pick` is the choice, sentence by sentence (each one the translator's template)."""
    m = 100 * margin
    if pick is not best:
        text = msg(
            f"{pick.title}: {100 * pick.accuracy:.1f} % [{100 * pick.low:.1f}, {100 * pick.high:.1f}] on "
            f"{pick.heldout} images with {pick.trainable:,} trainable parameters, within {m:g} points of the best, "
            f"{best.label} at {100 * best.accuracy:.1f} % ({best.trainable:,} trainable): loss {100 * pick.loss:.1f} "
            f"[{100 * pick.loss_low:.1f}, {100 * pick.loss_high:.1f}] points."
        )
    elif cheaper := [o for o in options if o.trainable < pick.trainable and o.status == UNPLACED]:
        text = (
            msg(
                f"{pick.title}: {100 * pick.accuracy:.1f} % [{100 * pick.low:.1f}, {100 * pick.high:.1f}] on "
                f"{pick.heldout} images with {pick.trainable:,} trainable parameters, the most accurate option; "
                f"1 cheaper option may be within {m:g} points of it, but the data cannot show it (more images would)."
            )
            if len(cheaper) == 1
            else msg(
                f"{pick.title}: {100 * pick.accuracy:.1f} % [{100 * pick.low:.1f}, {100 * pick.high:.1f}] on "
                f"{pick.heldout} images with {pick.trainable:,} trainable parameters, the most accurate option; "
                f"{len(cheaper)} cheaper options may be within {m:g} points of it, but the data cannot show it (more "
                "images would)."
            )
        )
    else:
        text = msg(
            f"{pick.title}: {100 * pick.accuracy:.1f} % [{100 * pick.low:.1f}, {100 * pick.high:.1f}] on "
            f"{pick.heldout} images with {pick.trainable:,} trainable parameters, the most accurate option."
        )
    eq, worse, unplaced, unconverged = (
        sum(o.status == s for o in options) for s in (EQUIVALENT, WORSE, UNPLACED, UNCONVERGED)
    )
    if unconverged:
        text += " " + msg(
            f"Of {len(options)} options: {eq} equivalent, {worse} worse, {unplaced} cannot place, {unconverged} not "
            "converged."
        )
    elif eq or worse or unplaced:
        text += " " + msg(f"Of {len(options)} options: {eq} equivalent, {worse} worse, {unplaced} cannot place.")
    if not math.isfinite(q):
        text += " " + msg("(A single option: nothing to compare.)")
    return text


def sweep_mismatch(
    report: SweepReport, *, base_fingerprint: str, data_sha256: str | None, input_size: int | None
) -> str | None:
    """Why `report` cannot be applied to a comparison of this base model, data and input size, in one sentence;
    None when it belongs to them."""
    ident = report.identity
    if not ident:
        return msg("This sweep was written by an older version and names no data, model or input size: run it again.")
    if ident.get("base_fingerprint") != base_fingerprint:
        return msg("This sweep measured another base model (its weights differ): run the sweep for this model.")
    if data_sha256 is not None and ident.get("data_sha256") not in (None, data_sha256):
        return msg("This sweep measured other images than this comparison's: run the sweep on these images.")
    if input_size is not None and ident.get("input_size") not in (None, input_size):
        return msg(
            f"This sweep measured at {ident.get('input_size')} px and this comparison runs at {input_size} px: "
            "sweep at the same size."
        )
    return None
