"""`cache info|prune|clear`: what the disk cache holds, and making room in it. The work is in `explorer.cache`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from explorer.cache import USER_DATA_DIRS, CacheError, cache_root, cache_summary, clear, parse_gb, prune
from explorer.cli import EXIT_USER, print_json, print_table


def register(subparsers: Any) -> None:
    """Add the `cache` command with its `info`, `prune` and `clear` subcommands."""
    p = subparsers.add_parser(
        "cache",
        help="disk cache: size per kind, evict to the bound, clear",
        description="The disk cache holds derived entries (renders, attributions, dataset-example scans: "
        "recomputed when missing, evicted least recently used past LAYER_EXPLORER_CACHE_MAX_GB) and user data "
        "(uploads, runs, datasets, demo: never evicted). LAYER_EXPLORER_CACHE sets its folder.",
    )
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    q = sub.add_parser("info", help="size and entries per kind, the bound and the folder")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("prune", help="evict least recently used derived entries down to the bound")
    q.add_argument("--max-gb", type=_gb, default=None, metavar="X", help="bound in GB (default: the configured one)")
    q.set_defaults(func=cmd_prune)

    q = sub.add_parser("clear", help="remove every derived entry (with --all --yes, user data too)")
    q.add_argument("--all", action="store_true", help="also remove uploads, runs, datasets and demo data")
    q.add_argument("--yes", action="store_true", help="confirm --all (user data cannot be recomputed)")
    q.set_defaults(func=cmd_clear)


def _gb(text: str) -> int:
    try:
        return parse_gb(text, "--max-gb")
    except CacheError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size_text(n: int) -> str:
    """Bytes as a short decimal figure (kB, MB, GB), the unit the bound is given in."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def cmd_info(args: argparse.Namespace) -> int:
    """Print one row per top-level folder of the cache, then the totals against the bound."""
    s = cache_summary()
    if args.json:
        print_json(
            {
                "root": str(s.root),
                "max_bytes": s.max_bytes,
                "derived_bytes": s.derived_bytes,
                "user_data_bytes": s.total("user data"),
                "other_bytes": s.total("other"),
                "kinds": [vars(k) for k in s.kinds],
            }
        )
        return 0
    print(f"cache folder: {s.root}")
    rows = [
        {
            "folder": k.name,
            "category": k.category,
            "entries": k.entries,
            "incomplete": k.incomplete,
            "size": size_text(k.bytes),
        }
        for k in s.kinds
    ]
    print_table(rows)
    share = f" ({s.derived_bytes / s.max_bytes:.0%})" if s.max_bytes else ""
    print(
        f"derived: {size_text(s.derived_bytes)} of the {size_text(s.max_bytes)} bound{share}"
        f"{' — over the bound: run `cache prune`' if s.over_bound else ''}; "
        f"user data: {size_text(s.total('user data'))} (never evicted); other: {size_text(s.total('other'))}"
    )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Evict least recently used derived entries until they fit the bound and say what was freed."""
    r = prune(max_bytes=args.max_gb)
    print(
        f"evicted {r.evicted:,} entries and {r.loose_removed:,} leftover files, freed {size_text(r.freed_bytes)}; "
        f"derived entries now {size_text(r.remaining_bytes)} of {size_text(r.max_bytes)}."
    )
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    """Remove derived entries; with --all (and --yes) user data too; --all without --yes touches nothing."""
    if args.all and not args.yes:
        print(
            f"error: --all also deletes user data under {cache_root()} ({', '.join(USER_DATA_DIRS)}), which cannot "
            "be recomputed; add --yes to confirm.",
            file=sys.stderr,
        )
        return EXIT_USER
    r = clear(user_data=args.all)
    extra = f" and the folders {', '.join(r.user_dirs)}" if r.user_dirs else ""
    print(
        f"removed {r.entries:,} derived entries, {r.loose_removed:,} leftover files{extra}; "
        f"freed {size_text(r.freed_bytes)}."
    )
    return 0
