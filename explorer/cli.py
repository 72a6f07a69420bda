"""`python -m explorer …`: the command line for headless and batch work.

Each feature adds its subcommands in its own module ``explorer/commands/<feature>.py`` exposing
``register(subparsers) -> None``; this file discovers them with pkgutil, parses, runs the chosen handler and turns
every problem the user can fix into one ``error: …`` line on stderr (exit 2), never a traceback.

Helpers for command modules: :func:`add_model_args`, :func:`load_model_arg`, :func:`progress_bar`,
:func:`print_table`, :func:`print_json`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence
from typing import IO, Any

from tqdm import tqdm

import explorer.commands as commands_pkg
import explorer.models
from explorer.errors import ExplorerError
from explorer.models import DEFAULT_SPEC
from explorer.runtime import Progress

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USER = 2
EXIT_INTERRUPTED = 130  # the shell convention for Ctrl-C


# --------------------------------------------------------------------------- helpers for command modules


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add --model, --arch and --device, the options every model-using command shares."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_SPEC,
        metavar="SPEC",
        help=f"bundled:NAME, torchvision:NAME[:untrained|:WEIGHTS], timm:NAME[:untrained] or a checkpoint path "
        f"(default {DEFAULT_SPEC})",
    )
    group.add_argument(
        "--arch", default=None, metavar="SPEC", help="architecture of a checkpoint that carries no metadata"
    )
    group.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run (default auto)"
    )


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1, with a plain message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_ray_args(p: argparse.ArgumentParser, what: str) -> argparse._ArgumentGroup:
    """The optional Ray group every scaled-out command shares: --ray ADDRESS and --workers N; `what` says what
    runs as a task. Returns the group, for a command's own Ray options."""
    ray = p.add_argument_group("Ray (optional)")
    ray.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help=f"run {what} on Ray: auto (this machine's cluster, else a new local one), local, or a cluster "
        "address; --device then picks the workers' device (pip install -r requirements-ray.txt)",
    )
    ray.add_argument("--workers", type=positive_int, default=None, help="Ray workers (default: 1 per GPU or CPU)")
    return ray


def load_model_arg(args: argparse.Namespace) -> Any:
    """The LoadedModel that the --model/--arch/--device options name."""
    device = getattr(args, "device", "auto")
    return explorer.models.load_model(
        getattr(args, "model", DEFAULT_SPEC) or DEFAULT_SPEC,
        arch=getattr(args, "arch", None),
        device=None if device in (None, "auto") else device,
    )


class _Bar:
    """A progress callback `(done, total, info)` drawing a tqdm bar on stderr; closes itself when done."""

    def __init__(self, desc: str, file: IO[str] | None = None) -> None:
        self.desc = desc
        self.file = file
        self._bar: Any = None

    def __call__(self, done: int, total: int, info: Any = None) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.desc, file=self.file or sys.stderr, leave=False, dynamic_ncols=True)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        self._bar.refresh()
        if total and done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _Lines:
    """A progress callback for logs, CI and pipes: one plain line at the start, every 10 %, and at the end."""

    def __init__(self, desc: str, file: IO[str] | None = None, step: float = 0.1) -> None:
        self.desc, self.file, self.step = desc, file, step
        self._next = 0.0
        self._started: float | None = None

    def __call__(self, done: int, total: int, info: Any = None) -> None:
        now = time.monotonic()
        if self._started is None:
            self._started = now
        frac = done / total if total else 1.0
        if frac + 1e-12 < self._next:
            return
        out = self.file or sys.stderr
        print(f"{self.desc}: {frac:.0%} ({done}/{total}) · {now - self._started:.0f} s", file=out, flush=True)
        self._next = 1.0 + 1.0 if frac >= 1.0 else (int(frac / self.step + 1e-9) + 1) * self.step


def progress_bar(desc: str, file: IO[str] | None = None) -> Progress:
    """A progress callback for long work on stderr (stdout stays clean for results): a tqdm bar in a terminal, a few
    plain lines (start, every 10 %, end) when stderr is a log file, a pipe or CI."""
    stream = file or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return _Bar(desc, file) if isatty is not None and isatty() else _Lines(desc, file)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], file: IO[str] | None = None) -> None:
    """Rows of dicts as aligned plain text: one header line, numbers right-aligned, None as blank."""
    out = file or sys.stdout
    if not rows:
        print("(nothing to show)", file=out)
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [
        all(
            isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
            for row in rows
            if row.get(c) is not None
        )
        for c in columns
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    print(line(columns), file=out)
    for r in cells:
        print(line(r), file=out)


def print_json(obj: Any, file: IO[str] | None = None) -> None:
    """Machine-readable output (``--json``): indented, UTF-8 kept readable."""
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str), file=file or sys.stdout)


# --------------------------------------------------------------------------- parser and entry point


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every discovered command registered."""
    parser = argparse.ArgumentParser(
        prog="python -m explorer",
        description="Layer Explorer: what every layer of a CNN learned, before and after fine-tuning.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{commands_pkg.__name__}.{info.name}")
        except Exception as exc:  # one broken command module must not take the others down
            print(f"warning: commands.{info.name} could not be loaded: {_one_line(exc)}", file=sys.stderr)
            continue
        register = getattr(mod, "register", None)
        if callable(register):
            register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return the exit code (0 ok, 2 user error, 1 unexpected, 130 interrupted)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    args_list = [a for a in args_list if a != "--debug"]  # accepted anywhere, not only before the command
    try:
        parser = build_parser()
        args = parser.parse_args(args_list)
        handler = getattr(args, "func", None)
        if handler is None:
            parser.print_usage(sys.stderr)
            return EXIT_USER
        result = handler(args)
        return int(result or EXIT_OK)
    except SystemExit as exc:  # --help, or a usage error that argparse already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USER)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ExplorerError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER
    except OSError as exc:  # a file the user named could not be read or written
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or _one_line(exc)}{where}", file=sys.stderr)
        return EXIT_USER
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(
            f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
