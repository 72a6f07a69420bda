"""Subcommands of `python -m explorer`, one module per feature.

A module here exposes ``register(subparsers) -> None``: it adds its parsers with ``subparsers.add_parser(...)`` and
sets ``func=handler`` (``handler(args) -> int | None``) with ``set_defaults``. `explorer/cli.py` finds every module
with pkgutil; helpers for handlers live there (add_model_args, load_model_arg, progress_bar, print_table).
"""
