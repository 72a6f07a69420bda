"""Fine-tuning: settings, optimiser, training loop, checkpoints and held-out split, resume, the run registry, costs and
the linear head."""
