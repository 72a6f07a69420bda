"""The gate: no freeze advice from a model that has not learned the task, nor from too few images to decide.

Advice is only as good as the model it reads. A tuned model whose held-out accuracy is not significantly above
chance plus a margin (:func:`floor`; one-sided exact binomial test, p < 0.01), or that stays far below what a
linear classifier on the *base* features already reaches (below half-way from chance to the best probe), has not
learned the task: its CKA says how training failed, not where to freeze. Below :data:`MIN_IMAGES_TO_DECIDE`
held-out images a comparison shows its intervals but chooses no point (the sweep cross-validates instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from explorer.errors import msg
from explorer.transfer.sweeping.stats import above_chance

MIN_IMAGES_TO_DECIDE = 100  # held-out images below which intervals are shown but nothing is decided
ALPHA_CHANCE = 0.01  # significance level of "above chance"
CHANCE_MARGIN = 0.1  # "learned the task" means significantly above chance plus this share of the way to 100 %


@dataclass
class Gate:
    """Whether advice may be given; when not, why and what to try, in plain sentences."""

    open: bool
    reason: str = ""
    try_next: list[str] = field(default_factory=list)


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def too_few(n: int, heldout: bool = True) -> Gate:
    """Closed when `n` images (held-out ones, or else every image compared) are too few to decide."""
    if n >= MIN_IMAGES_TO_DECIDE:
        return Gate(True)
    return Gate(
        False,
        msg(
            f"Too few images to decide: {n} held-out images (at least {MIN_IMAGES_TO_DECIDE} are needed for the "
            "intervals to tell freeze points apart); the measurements are shown with their intervals."
        )
        if heldout
        else msg(
            f"Too few images to decide: {n} images compared (at least {MIN_IMAGES_TO_DECIDE} are needed for the "
            "intervals to tell freeze points apart); the measurements are shown with their intervals."
        ),
        [msg("Use a dataset with more images per class, or a larger held-out fraction when fine-tuning.")],
    )


def floor(chance: float) -> float:
    """The accuracy a model must beat (significantly) to count as having learned the task: chance plus a margin.

    Above chance alone is not learning: at 1,000 held-out images it is reached at 53.8 % for 2 classes and 1.9 %
    for 100. The margin scales with what is left to learn: chance + 10 % of (1 − chance), i.e. 55 % for 2 classes,
    10.9 % for 100."""
    return chance + CHANCE_MARGIN * (1.0 - chance)


def learned_task(correct: int, n: int, chance: float) -> Gate:
    """Closed unless the best option's `correct` of `n` is significantly (one-sided exact binomial, p < 0.01) above
    `floor(chance)`."""
    if n <= 0:
        return Gate(False, msg("Nothing was scored."), [msg("Use more images.")])
    bar = floor(chance)
    p = above_chance(correct, n, bar)
    if p < ALPHA_CHANCE:
        return Gate(True)
    return Gate(
        False,
        msg(
            f"No option learned the task: the best option scores {_pct(correct / n)} on {n} images, not significantly "
            f"above chance plus a margin ({_pct(chance)} + 10 % of the rest = {_pct(bar)}; exact binomial test "
            f"p = {p:.2g})."
        ),
        [msg("Check the data (one sub-folder per class), use more images, or train longer (--epochs).")],
    )


def learned(correct: int, n: int, chance: float, best_probe: float | None) -> Gate:
    """Closed when `correct` of `n` held-out images is not significantly above `chance`, or far below the best probe."""
    if n <= 0:
        return Gate(
            False,
            msg("The tuned model could not be scored on held-out images of its own classes."),
            [msg("Compare on the data it was fine-tuned on (same classes), so its accuracy can be measured.")],
        )
    acc = correct / n
    p = above_chance(correct, n, floor(chance))
    tries = [
        msg("Fine-tune for more epochs, or with a higher learning rate for the pretrained layers."),
        msg("Check the data: one sub-folder per class, and enough images in each."),
        msg("Run the freeze sweep: it measures every freeze point by itself, without this model."),
    ]
    if not p < ALPHA_CHANCE:
        return Gate(
            False,
            msg(
                f"The tuned model has not learned the task: {_pct(acc)} on {n} held-out images is not significantly "
                f"above chance plus a margin ({_pct(chance)} + 10 % of the rest = {_pct(floor(chance))}; exact "
                f"binomial test p = {p:.2g}), so no freeze point is read from it."
            ),
            tries,
        )
    if best_probe is not None and math.isfinite(best_probe) and acc < chance + 0.5 * (best_probe - chance):
        return Gate(
            False,
            msg(
                f"The tuned model has not learned the task well enough to read advice from: {_pct(acc)} on {n} "
                f"held-out images, while a linear classifier on the base model's own features already reaches "
                f"{_pct(best_probe)} (chance {_pct(chance)})."
            ),
            tries,
        )
    return Gate(True)
