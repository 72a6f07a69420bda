"""What a fine-tune does: every setting, its default, and the check that turns a bad value into one sentence.

The defaults were chosen by measurement, not folklore (docs/benchmarks.md, "Fine-tuning defaults"): on
demo:digits at 64 px, training every layer with them reaches the best frozen-feature probe's accuracy in a few
minutes on two CPU cores. What matters most there: a backbone learning rate close to the head's (a pretrained
ImageNet network must move far to read 8×8 digits), a short linear warm-up so the random new head does not
scramble the pretrained layers in the first steps, and keeping the best epoch by held-out loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from explorer.data import AUGMENTS
from explorer.errors import ExplorerError
from explorer.transfer.training.optim import SCHEDULES

BN_MODES = ("train", "frozen")


def suggested_input_size(model_size: int, data_side: int | None, *, fixed: bool = False) -> int:
    """The image size a fine-tune should start from: the data's own size (rounded up to a multiple of 16, at least
    32) when it is smaller than the model's, since upscaling 8×8 digits to 224 px costs 12× the compute for nothing;
    the model's size when the model takes no other (a ViT) or the data's size is unknown."""
    if fixed or not data_side:
        return int(model_size)
    return int(min(model_size, max(32, -(-int(data_side) // 16) * 16)))


class FinetuneError(ExplorerError):
    """A fine-tuning setting or dataset that cannot work, phrased for the user."""


@dataclass
class FinetuneSettings:
    """What a fine-tune does; the defaults suit a few hundred to a few thousand images on a pretrained CNN."""

    freeze_after: str | None = None  # a ladder layer: it and everything before it stay frozen; None trains all
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-3  # the new head
    backbone_lr: float = 1e-3  # trainable pretrained layers
    weight_decay: float = 0.01  # weights only: never BatchNorm parameters or biases
    warmup: float = 0.1  # fraction of all steps spent ramping the learning rate up from near zero
    schedule: str = "cosine"  # after the warm-up; or "constant"
    augment: str = "light"  # "none", "light" (random crop 80–100 %, slight colour jitter), "light+flip"
    val_fraction: float = 0.2  # held out per class: never trained on; chooses the best epoch, measures accuracy
    input_size: int | None = None  # train at this square size instead of the model's (e.g. 128 for speed)
    max_images: int | None = None  # use a stratified random subset of the dataset (quick runs)
    label_smoothing: float = 0.0
    bn: str = "train"  # "train": trainable BatchNorms re-estimate their statistics; "frozen": keep the base's
    keep_best: bool = True  # end with the epoch of lowest held-out loss (and save that one)
    patience: int | None = 2  # stop after this many epochs without a better held-out loss (None: never)
    seed: int = 0
    num_workers: int = 0

    def check(self) -> None:
        """Raise FinetuneError for a value that cannot work."""
        if self.epochs < 1 or self.batch_size < 1:
            raise FinetuneError("Epochs and batch size must be at least 1.")
        if not (self.lr > 0 and self.backbone_lr > 0 and self.weight_decay >= 0):
            raise FinetuneError(
                "Learning rates must be positive and weight decay non-negative (to train only the head, freeze "
                "after the last layer before it instead of a zero learning rate)."
            )
        if not 0.0 <= self.warmup < 1.0:
            raise FinetuneError("The warm-up is a fraction of the training steps, in [0, 1).")
        if self.schedule not in SCHEDULES:
            raise FinetuneError(f"Unknown schedule {self.schedule!r}: use cosine or constant.")
        if self.augment not in AUGMENTS:
            raise FinetuneError(f"Unknown augmentation {self.augment!r}: use none, light or light+flip.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise FinetuneError("The validation fraction must be in [0, 1).")
        if self.input_size is not None and not 32 <= self.input_size <= 1024:
            raise FinetuneError("The input size must be between 32 and 1024 pixels.")
        if self.bn not in BN_MODES:
            raise FinetuneError(f"Unknown BatchNorm mode {self.bn!r}: use train or frozen.")
        if self.patience is not None and self.patience < 1:
            raise FinetuneError("Patience must be at least 1 epoch (or None to never stop early).")
