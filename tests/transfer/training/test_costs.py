"""Training costs measured on this machine: freezing a prefix skips its backward and trains fewer parameters."""

from __future__ import annotations

from explorer.models.freeze import freeze_summary
from explorer.transfer.training.costs import training_step_cost


def test_freezing_half_the_network_trains_fewer_parameters_and_costs_less_time(bundled):
    flags = [p.requires_grad for p in bundled.module.parameters()]
    weights = {k: v.clone() for k, v in bundled.module.state_dict().items()}
    full = training_step_cost(bundled, None, batch=8, size=64, steps=3)
    frozen = training_step_cost(bundled, "blocks.5.3", batch=8, size=64, steps=3)
    assert full.trainable == full.total == sum(p.numel() for p in bundled.module.parameters())
    assert frozen.trainable == freeze_summary(bundled, "blocks.5.3").trainable < full.trainable
    assert frozen.seconds < full.seconds  # no backward through the frozen blocks
    # the shared model is untouched: same flags, same weights and statistics, still in eval mode
    assert [p.requires_grad for p in bundled.module.parameters()] == flags and not bundled.module.training
    assert all((v == weights[k]).all() for k, v in bundled.module.state_dict().items())
