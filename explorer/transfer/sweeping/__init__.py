"""The measured freeze sweep and its statistics, the shared frozen prefix, and the instant prediction scored against
it."""
