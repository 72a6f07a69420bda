"""Advice from the measurements: the recommendation, its gate and the 2x2 guide."""
