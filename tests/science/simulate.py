"""Simulated sweeps with known truths: options of given true accuracies whose errors are correlated, as measured
between real options (phi about 0.2–0.3), scored on the same images; what the decision rule picks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explorer.transfer.sweeping.sweep_report import SweepOption, choose


def correlated_correctness(
    rng: np.random.Generator, accuracies: list[float], n: int, phi: float, seeds: int = 1
) -> list[np.ndarray]:
    """(seeds × n) correctness per option: each image has a shared difficulty; an option is right on an image
    when a mix of that difficulty and its own noise falls under its accuracy's quantile (a Gaussian copula, whose
    latent correlation `phi` gives error correlations of the same order)."""
    from scipy.stats import norm

    shared = rng.standard_normal(n)
    out = []
    for acc in accuracies:
        rows = []
        for _ in range(seeds):
            latent = np.sqrt(phi) * shared + np.sqrt(1 - phi) * rng.standard_normal(n)
            rows.append(latent < norm.ppf(acc))
        out.append(np.stack(rows))
    return out


@dataclass
class Outcome:
    picked_worse: float  # share of runs whose pick is truly more than `by` below the true best
    claimed_wrongly: float  # share of runs that called a cheaper option within the margin while it was `by` worse
    withheld: float
    argmax_worse: float  # the same share for "always the observed most accurate": the floor set by noise alone


def run(
    accuracies: list[float],
    trainable: list[int],
    n: int,
    *,
    runs: int = 200,
    phi: float = 0.25,
    margin: float = 0.02,
    by: float = 0.04,
    seed: int = 0,
) -> Outcome:
    rng = np.random.default_rng(seed)
    truth = np.asarray(accuracies)
    bad = truth < truth.max() - by
    worse = claimed = withheld = floor = 0
    labels = [i % 5 for i in range(n)]
    for _ in range(runs):
        rows = correlated_correctness(rng, accuracies, n, phi)
        options = [
            SweepOption(
                f"p{i}",
                "finetune",
                float(r.mean()),
                0.0,
                1.0,
                n,
                1,
                t,
                1.0,
                1.0,
                seed_accuracies=[float(r.mean())],
                correct="".join("1" if b else "0" for b in r[0]),
            )  # fmt: skip
            for i, (r, t) in enumerate(zip(rows, trainable, strict=True))
        ]
        floor += bool(bad[int(np.argmax([o.accuracy for o in options]))])
        choice = choose(options, labels, chance=0.2, margin=margin)
        if choice.point is None:
            withheld += 1
            continue
        i = int(choice.point[1:])
        worse += bool(bad[i])
        pick = options[i]
        claimed += bool(bad[i] and pick.status == "equivalent")
    return Outcome(worse / runs, claimed / runs, withheld / runs, floor / runs)
