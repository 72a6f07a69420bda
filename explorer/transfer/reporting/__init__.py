"""Exports of a comparison: the report's data classes, JSON and CSV, and the one-page HTML."""
