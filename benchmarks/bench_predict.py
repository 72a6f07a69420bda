"""The instant freeze prediction scored against the measured sweep, on data sets of different kinds (issue 21).

    python benchmarks/bench_predict.py [--sets digits,textures240,textures600,shapes,photos,digits_full]
        [--seeds 0,1,2] [--evaluation auto|holdout|cv] [--sweep-seeds auto|N] [--saved]
        [--work /tmp/predict_bench] [--threads N] [--out benchmarks/results/predict.json] [--md docs/science.md]

For every data set and split seed, in one process with the bundled model at 64 px:

1. ``predict_freeze`` (every estimator, the default sample) on the training part of the split the sweep makes
   with the same seed, held-out fraction and ``max_images``: the images the sweep measures on are never read.
2. ``sweep`` with the sweep's own defaults (``sweep_settings(input_size=64, max_images=…, seed=…)``) but
   ``evaluation=--evaluation`` and ``seeds=--sweep-seeds``: every auto point by both routes. Saved under --work and
   resumed from there, so a rerun (or a run interrupted by a busy machine) only computes what is missing; with
   --saved, only the saved sweeps are read (nothing is trained).
3. Per estimator: the measured held-out accuracy of the option it predicts, against the best option's (the gap, and
   whether it is within the sweep's 2-point margin); Spearman's ρ between its per-point scores and the measured
   accuracies across the points, per route; its seconds. Scored the same way for reference: each estimator's rule
   with its raw-pixel check switched the other way (the ablation: the check was tried after the first digits
   sweep, and is off in the shipped rule, ``PIXEL_CHECK``), and two fixed rules, "head only, linear" (the
   textbook feature extractor) and "train everything" (fine-tune after 'none').

The estimator that is most often within 2 points of the best (ties: the smaller mean gap, then the higher mean ρ
of the linear route) is the winner; ``explorer.transfer.sweeping.predict.DEFAULT_ESTIMATOR`` is set from it by hand.
Writes the results as JSON (--out) and the tables as markdown into --md, between the markers
``<!-- predict:begin -->`` and ``<!-- predict:end -->`` (appended with them when the file has none).

Data sets: ``digits`` (demo:digits, a stratified 600 of its 1,797 images), ``textures240`` and ``textures600``
(generated oriented noise textures, 6 classes), ``shapes`` (300 generated shapes, 3 classes), ``photos`` (300
crops of scikit-image's sample photographs, 6 classes), ``digits_full`` (all 1,797 digits: the issue's done-when).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

SIZE = 64
MARGIN = 0.02  # the sweep's non-inferiority margin (DESIGN §6): "within 2 points of the best"
SETS: dict[str, tuple[str, int | None]] = {  # name → (demo:NAME or generated kind, images)
    "digits": ("demo:digits", 600),
    "textures240": ("textures", 240),
    "textures600": ("textures", 600),
    "shapes": ("shapes", 300),
    "photos": ("photos", 300),
    "digits_full": ("demo:digits", None),
}
BASELINES = {"head only, linear": "head", "train everything": "none"}


def data_of(name: str, work: Path) -> tuple[str, int | None]:
    """The data argument and max_images of a set (generated folders are written once under `work`)."""
    from explorer.data.synthetic import generated_folder

    kind, images = SETS[name]
    if kind.startswith("demo:"):
        return kind, images
    assert images is not None
    folder, done = work / "data" / name, work / "data" / f"{name}.done"  # the marker outside the image folder
    if not done.exists():
        generated_folder(kind, folder, images, seed=0)
        done.write_text("")
    return str(folder), None


def measured(
    base: Any, data: str, max_images: int | None, seed: int, out: Path, *, evaluation: str, seeds: str, saved: bool
) -> dict[str, Any]:
    """The measured sweep's report as a dict, with its format and "task_seconds" (the training time of all its
    tasks, whichever run measured them): read from `out` with `saved` (any sweep format with report.options), else
    run with the sweep's defaults but `evaluation` and `seeds` (resumed from `out`; restarted if the sweep's format
    moved on since it was written)."""
    if not saved:
        run_sweep(base, data, max_images, seed, out, evaluation=evaluation, seeds=seeds)
    record = json.loads(out.read_text())
    tasks = record.get("tasks") or {}
    seconds = sum(float(t.get("seconds", 0.0)) for t in tasks.values())
    return {**record["report"], "format": record.get("format"), "task_seconds": seconds}


def run_sweep(
    base: Any, data: str, max_images: int | None, seed: int, out: Path, *, evaluation: str, seeds: str
) -> None:
    """Measure (or resume) the sweep, saved at `out`."""
    from explorer.transfer.sweeping.sweep import SweepError, sweep, sweep_settings

    settings = sweep_settings(input_size=SIZE, max_images=max_images, seed=seed)
    kw: dict[str, Any] = {"evaluation": evaluation, "seeds": seeds if seeds == "auto" else int(seeds)}
    try:
        sweep(base, data, settings=settings, out=out, **kw)
    except SweepError as exc:
        if not out.exists() or "other settings" not in str(exc):
            raise
        print(f"  {out.name}: saved with other sweep settings; measuring again", flush=True)
        out.unlink()
        sweep(base, data, settings=settings, out=out, **kw)


class Measured:
    """The options of a sweep report dict: accuracy of (point, route), the best (ties: fewer trainable), the choice."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.options = {(o["point"], o["route"]): o for o in report["options"]}
        self.best = max(report["options"], key=lambda o: (o["accuracy"], -o["trainable"]))
        c = report.get("choice") or {}
        self.chosen = self.options.get((c.get("point"), c.get("route")))

    def accuracy(self, point: str, route: str) -> float | None:
        o = self.options.get((point, route))
        return None if o is None else float(o["accuracy"])


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's ρ (None when either side is constant or has < 3 values)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return round(float(spearmanr(x, y).statistic), 3)


def option_row(m: Measured, point: str, route: str) -> dict[str, Any]:
    """One predicted option's measured accuracy and its gap to the best (None if the sweep has no such option)."""
    acc = m.accuracy(point, route)
    gap = None if acc is None else round(float(m.best["accuracy"]) - acc, 4)
    return {
        "point": point,
        "route": route,
        "accuracy": None if acc is None else round(acc, 4),
        "gap": gap,
        "within_margin": gap is not None and gap <= MARGIN + 1e-9,
    }


def other_rule(pred: Any, name: str) -> Any:
    """The option estimator `name` predicts by the shipped rule with the raw-pixel check switched the other way
    (the ablation: on when ``PIXEL_CHECK`` is off, off when it is on)."""
    from explorer.transfer.sweeping.predict import PIXEL_CHECK, predict_option

    return predict_option(
        pred.points,
        pred.scores(name),
        name,
        features={r.layer: r.features for r in pred.layers},
        images_per_class=pred.data["training_images"] / max(pred.data["classes"], 1),
        chance=pred.data["chance"],
        pixels=None if PIXEL_CHECK else pred.pixels[name],
    )


def score_case(pred: Any, m: Measured) -> dict[str, Any]:
    """Every estimator's (and baseline's) predicted option against the measured sweep."""
    body = [p for p in pred.points if p != "none"]
    case: dict[str, Any] = {"estimators": {}, "baselines": {}, "other_rule": {}}
    for name, p in pred.predictions.items():
        q = other_rule(pred, name)
        case["other_rule"][name] = option_row(m, q.point, q.route)
        row = option_row(m, p.point, p.route)
        scores = pred.scores(name)
        for route in ("linear", "finetune"):
            pts = [q for q in body if m.accuracy(q, route) is not None]
            row[f"rho_{route}"] = spearman([scores[q] for q in pts], [m.accuracy(q, route) or 0.0 for q in pts])
        row["seconds"] = round(pred.timing.get(name, 0.0), 3)
        case["estimators"][name] = row
    for text, which in BASELINES.items():
        case["baselines"][text] = (
            option_row(m, body[-1], "linear") if which == "head" else option_row(m, "none", "finetune")
        )
    return case


def summary(cases: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Per estimator (key "estimators") or baseline: how often within the margin, mean gap, mean ρ, seconds."""
    names = list(dict.fromkeys(n for c in cases for n in c[key]))
    out = {}
    for n in names:
        rows = [c[key][n] for c in cases if n in c[key]]
        gaps = [r["gap"] for r in rows if r["gap"] is not None]
        entry: dict[str, Any] = {
            "cases": len(rows),
            "within_margin": sum(bool(r["within_margin"]) for r in rows),
            "mean_gap": round(sum(gaps) / len(gaps), 4) if gaps else None,
            "worst_gap": round(max(gaps), 4) if gaps else None,
        }
        for route in ("linear", "finetune"):
            rhos = [r[f"rho_{route}"] for r in rows if r.get(f"rho_{route}") is not None]
            if key == "estimators":
                entry[f"mean_rho_{route}"] = round(sum(rhos) / len(rhos), 3) if rhos else None
        if key == "estimators":
            entry["seconds"] = round(sum(r["seconds"] for r in rows), 2)
        out[n] = entry
    return out


def winner(table: dict[str, dict[str, Any]]) -> str:
    """Most often within the margin; then the smaller mean gap; then the higher mean ρ (linear route)."""
    return max(
        table,
        key=lambda n: (
            table[n]["within_margin"],
            -(table[n]["mean_gap"] if table[n]["mean_gap"] is not None else 1.0),
            table[n]["mean_rho_linear"] or -1.0,
        ),
    )


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def label(point: str, route: str) -> str:
    return f"{route} @ {point}"


def sweep_text(result: dict[str, Any]) -> str:
    """How the measured sweeps were run, from the run's arguments and the formats of the sweeps it read."""
    formats = sorted({str(c.get("sweep_format")) for c in result["cases"]})
    scored = sorted({str(c.get("evaluation")) for c in result["cases"]})
    how = result["sweep"]
    if how["saved"]:
        where = f"sweeps saved earlier (format {', '.join(formats)})"
    else:
        where = (
            f"`sweep_settings(input_size={SIZE}, max_images=…, seed=…)`, evaluation={how['evaluation']}, "
            f"seeds={how['seeds']} (format {', '.join(formats)})"
        )
    return f"{where}, scored on: {', '.join(scored)}"


def markdown(result: dict[str, Any], command: str) -> str:
    """The tables for docs/science.md."""
    est = result["summary"]["estimators"]
    base = result["summary"]["baselines"]
    names = list(est)
    lines = [
        "## 5. Predicting the freeze point before training (issue 21)",
        "",
        "    " + command,
        "",
        f"Bundled EfficientNet-Lite0 at {SIZE} px on the CPU machine ({result['machine']}), one process; each "
        "prediction reads only the training part of the split that the sweep with the same seed measures on. "
        f"The sweep: {sweep_text(result)}, every auto point by both routes. "
        "Accuracies are measured percentages; *gap* is the best option's accuracy minus the "
        f"predicted option's, in points; *within* counts cases with a gap ≤ {100 * MARGIN:.0f} points (the "
        "sweep's margin). ρ: Spearman's rank correlation between an estimator's per-point scores and the "
        "measured accuracies of the same points, per route (5 points; the fine-tune route's 'none' has no score).",
        "",
        "**Summary** (all cases):",
        "",
        "| estimator | within 2 points | mean gap | worst gap | mean ρ linear | mean ρ fine-tune | seconds (all) |",
        "|---|---|---|---|---|---|---|",
    ]
    n_cases = len(result["cases"])
    for n in names:
        e = est[n]
        star = " **(default)**" if n == result["winner"] else ""
        lines.append(
            f"| {n}{star} | {e['within_margin']}/{n_cases} | {pct(e['mean_gap'])} | {pct(e['worst_gap'])} | "
            f"{e['mean_rho_linear'] if e['mean_rho_linear'] is not None else '–'} | "
            f"{e['mean_rho_finetune'] if e['mean_rho_finetune'] is not None else '–'} | {e['seconds']} |"
        )
    other = "no pixel check" if result["pixel_check"] else "with the pixel check"
    for n, e in result["summary"]["other_rule"].items():
        lines.append(
            f"| *{n}, {other}* | {e['within_margin']}/{n_cases} | {pct(e['mean_gap'])} | {pct(e['worst_gap'])} | | | |"
        )
    for n, e in base.items():
        lines.append(
            f"| *rule: {n}* | {e['within_margin']}/{n_cases} | {pct(e['mean_gap'])} | {pct(e['worst_gap'])} | | | |"
        )
    lines += [
        "",
        "**Per data set and split seed**: the best measured option, the sweep's own choice, and each estimator's "
        "predicted option with its measured accuracy (gap in points):",
        "",
        "| data set | seed | images | best option | sweep's choice | "
        + " | ".join(names)
        + " | predict s | sweep tasks s |",
        "|---|---|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for c in result["cases"]:
        b = c["best"]
        ch = c["chosen"]
        chosen = "–" if ch is None else f"{label(ch['point'], ch['route'])} {pct(ch['accuracy'])}"
        cells = []
        for n in names:
            r = c["estimators"][n]
            cells.append(f"{label(r['point'], r['route'])} {pct(r['accuracy'])} ({pct(r['gap'])})")
        lines.append(
            f"| {c['set']} | {c['seed']} | {c['images']} | {label(b['point'], b['route'])} {pct(b['accuracy'])} | "
            f"{chosen} | " + " | ".join(cells) + f" | {c['predict_seconds']} | {c['sweep_seconds']} |"
        )
    lines += [
        "",
        "**Rank correlation per case** (ρ linear / ρ fine-tune):",
        "",
        "| data set | seed | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for c in result["cases"]:
        cells = []
        for n in names:
            r = c["estimators"][n]
            a, f = r["rho_linear"], r["rho_finetune"]
            cells.append(f"{'–' if a is None else a} / {'–' if f is None else f}")
        lines.append(f"| {c['set']} | {c['seed']} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


BEGIN, END = "<!-- predict:begin -->", "<!-- predict:end -->"


def write_section(path: Path, text: str) -> None:
    """Put `text` between the markers in `path` (the rest of the file untouched), or append it with them."""
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block + "\n"
    path.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="digits,textures240,textures600,shapes,photos,digits_full")
    ap.add_argument("--seeds", default="0", help="split seeds, e.g. 0,1,2 (digits_full: the first only)")
    ap.add_argument(
        "--evaluation",
        default="auto",
        choices=["auto", "holdout", "cv"],
        help="the sweep's evaluation (default its own, auto; holdout scores on images the prediction never read)",
    )
    ap.add_argument("--sweep-seeds", default="auto", help="the sweep's training seeds per option (default auto)")
    ap.add_argument("--saved", action="store_true", help="score against the sweeps saved under --work only (run none)")
    ap.add_argument("--work", default="/tmp/predict_bench", help="generated data and the sweeps (resumed)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict.json"))
    ap.add_argument("--md", default=str(ROOT / "docs" / "science.md"))
    args = ap.parse_args()

    import torch

    from explorer.models import load_model
    from explorer.transfer.sweeping.predict import DEFAULT_ESTIMATOR, PIXEL_CHECK, predict_freeze

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise SystemExit(f"unknown set(s) {', '.join(unknown)}: use {', '.join(SETS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    base = load_model(device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load {os.getloadavg()[0]:.2f}", flush=True)
    cases = []
    for name in sets:
        data, max_images = data_of(name, work)
        for seed in seeds[:1] if name == "digits_full" else seeds:
            t0 = time.perf_counter()
            pred = predict_freeze(base, data, input_size=SIZE, max_images=max_images, seed=seed)
            t_pred = time.perf_counter() - t0
            load_pred = os.getloadavg()[0]
            path = work / f"sweep_{name}_{seed}.json"
            if args.saved and not path.exists():
                print(f"{name} seed {seed}: no saved sweep {path}; skipped", flush=True)
                continue
            report = measured(
                base,
                data,
                max_images,
                seed,
                path,
                evaluation=args.evaluation,
                seeds=args.sweep_seeds,
                saved=args.saved,
            )
            m = Measured(report)
            best, chosen = m.best, m.chosen
            case = {
                "set": name,
                "seed": seed,
                "images": pred.data["training_images"] + pred.data["heldout_untouched"],
                "classes": pred.data["classes"],
                "heldout": pred.data["heldout_untouched"],
                "sweep_format": report.get("format"),
                "evaluation": (report.get("settings") or {}).get("evaluation", "held-out split"),
                "best": {k: best[k] for k in ("point", "route", "accuracy")},
                "chosen": None if chosen is None else {k: chosen[k] for k in ("point", "route", "accuracy")},
                "options": [
                    {k: o.get(k) for k in ("point", "route", "accuracy", "trainable", "converged", "status")}
                    for o in report["options"]
                ],
                "scores": [{"layer": r.layer, **{k: round(v, 5) for k, v in r.scores.items()}} for r in pred.layers],
                "predict_seconds": round(t_pred, 1),
                "predict_timing": {k: round(v, 2) for k, v in pred.timing.items()},
                "sweep_seconds": round(float(report["task_seconds"]), 1),  # training time of its tasks
                "sweep_complete": report.get("complete"),
                "load_average": round(load_pred, 2),
                **score_case(pred, m),
            }
            cases.append(case)
            print(
                f"{name} seed {seed}: best {label(best['point'], best['route'])} {pct(best['accuracy'])}; "
                + "; ".join(
                    f"{n} {label(r['point'], r['route'])} {pct(r['accuracy'])}" for n, r in case["estimators"].items()
                )
                + f"; predict {t_pred:.1f} s, sweep {case['sweep_seconds']} s",
                flush=True,
            )
    table = summary(cases, "estimators")
    result: dict[str, Any] = {
        "command": "python benchmarks/bench_predict.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads",
        "model": base.spec,
        "sweep": {"evaluation": args.evaluation, "seeds": args.sweep_seeds, "saved": args.saved},
        "input_size": SIZE,
        "margin": MARGIN,
        "pixel_check": PIXEL_CHECK,
        "default_estimator": DEFAULT_ESTIMATOR,
        "cases": cases,
        "summary": {
            "estimators": table,
            "other_rule": summary(cases, "other_rule"),
            "baselines": summary(cases, "baselines"),
        },
        "winner": winner(table),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    write_section(Path(args.md), markdown(result, result["command"].strip()))
    print(json.dumps(result["summary"], indent=1))
    print(f"winner: {result['winner']}; wrote {out} and {args.md}")


if __name__ == "__main__":
    main()
