"""The engine's sentences in the reader's language.

The engine (everything outside ``ui/``) writes its user-facing sentences in English: the message of every
:class:`~explorer.errors.ExplorerError` it raises, and the sentences it hands to a page (a sweep's reason, an advice's
caveats, a model's description), marked with :func:`explorer.errors.msg`. Those sentences are also stored (a sweep
report on disk keeps its reason), so the app translates the *finished sentence*, the way gettext translates by the
English text itself:

* :func:`extract` reads the engine's source and lists every such sentence as a template: the f-string with each
  field written as its expression (``"The folder {shown(text)!r} has no images."``);
* each language has a catalogue ``locales/messages/<lang>/*.json`` mapping an English template to its translation,
  which uses the same fields in any order;
* :func:`localize` finds the template a sentence was made from (each template compiled to a pattern, the most
  specific first), translates the values of its fields in turn (a field often holds another sentence) and writes the
  translation; a field with a number format (``{acc:.1f}``, ``{n:,}``) is rewritten in the language's marks. A text
  made of several sentences is translated sentence by sentence; a sentence with a capital first letter that only a
  lower-case template matches (a label said at a sentence's start) is translated and capitalised; a sentence no
  template matches stays English.

``tests/ui/test_messages.py`` checks both ways that every template has a translation with the same fields and every
translation a template, and that each template comes back from its own sentence.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from babel.numbers import format_decimal

from explorer.ui.i18n import DEFAULT, LOCALES, babel_locale, language

ENGINE = Path(__file__).resolve().parents[1]
MESSAGES = LOCALES / "messages"
SKIPPED = ("commands", "cli.py", "__main__.py")  # the command line speaks English
BUILTIN_ERRORS = {
    "ValueError", "TypeError", "KeyError", "RuntimeError", "OSError", "IndexError", "AttributeError",
    "NotImplementedError", "FileNotFoundError", "AssertionError", "LookupError", "PermissionError",
}  # fmt: skip
FIELD = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")
NUMBER = re.compile(r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
QUOTED = r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"  # a field written with !r: a quoted Python string
ONE_SENTENCE = r"((?:(?![.!?]\s).)+?)"  # any other field: text that does not end a sentence
MAX_DEPTH = 4


# ---------------------------------------------------------------------------------------------------- extraction


def extract(root: Path = ENGINE) -> dict[str, list[str]]:
    """Every user-facing sentence template of the engine → where it is written (``path:line``).

    A template is the first argument of ``raise SomethingError(...)`` (an error of the project, not a built-in one)
    or of ``msg(...)``, when it is a string or an f-string (both branches of a conditional); a template with no
    words outside its fields (``f"{exc}"``) is left out, since it says nothing of its own."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIPPED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            arg = _message_argument(node)
            if arg is None:
                continue
            for template in _templates(arg):
                if re.search(r"[A-Za-z]{2}", FIELD.sub(" ", template)):
                    found.setdefault(template, []).append(f"{rel.as_posix()}:{arg.lineno}")
    return found


def _message_argument(node: ast.AST) -> ast.expr | None:
    call = node.exc if isinstance(node, ast.Raise) else node
    if not isinstance(call, ast.Call) or not call.args:
        return None
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if isinstance(node, ast.Raise) and name.endswith("Error") and name not in BUILTIN_ERRORS:
        return call.args[0]
    if not isinstance(node, ast.Raise) and name == "msg":
        return call.args[0]
    return None


def _templates(node: ast.expr) -> list[str]:
    if isinstance(node, ast.IfExp):
        return [*_templates(node.body), *_templates(node.orelse)]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [_literal(node.value)]
    if isinstance(node, ast.JoinedStr):
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                parts.append(_literal(str(part.value)))
            elif isinstance(part, ast.FormattedValue):
                parts.append("{" + field_name(part) + "}")
        return ["".join(parts)]
    return []


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def field_name(part: ast.FormattedValue) -> str:
    """A field as a template writes it: its expression, ``!r``/``!s`` and format spec kept (braces dropped)."""
    name = ast.unparse(part.value)
    if part.conversion in (ord("r"), ord("s"), ord("a")):
        name += "!" + chr(part.conversion)
    if isinstance(part.format_spec, ast.JoinedStr):
        spec = "".join(str(v.value) for v in part.format_spec.values if isinstance(v, ast.Constant))
        name += ":" + spec
    return name.replace("{", "").replace("}", "")


def fields(template: str) -> list[str]:
    """The fields of a template, in order."""
    return [m.group(1) for m in FIELD.finditer(template) if m.group(1) is not None]


# ---------------------------------------------------------------------------------------------------- catalogues


def catalogue(lang: str) -> dict[str, str]:
    """English template → translation, for `lang` (all its files, read once per process)."""
    return dict(_catalogue(lang))


@cache
def _catalogue(lang: str) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for path in sorted((MESSAGES / lang).glob("*.json")):
        out.update(json.loads(path.read_text(encoding="utf-8")))
    return tuple(out.items())


@dataclass(frozen=True)
class Entry:
    pattern: re.Pattern[str]
    fields: tuple[str, ...]
    translation: str
    anchor: str  # the template's longest literal piece: a sentence without it cannot match
    full_stop: bool  # the template ends a sentence (a quoted one may come without its full stop)


@cache
def _entries(lang: str) -> tuple[Entry, ...]:
    entries = []
    for template, translation in _catalogue(lang):
        regex, anchor, literal = [], "", 0
        for piece, field in _pieces(template):
            if field is None:
                regex.append(re.escape(piece))
                literal += len(piece)
                anchor = max(anchor, piece, key=len)
            else:
                regex.append(QUOTED if field.endswith("!r") else ONE_SENTENCE)
        if regex and regex[-1].endswith(r"\."):  # a sentence quoted without its full stop (``brief``) matches too
            regex[-1] += "?"
        pattern = re.compile("".join(regex), re.DOTALL)
        entry = Entry(pattern, tuple(fields(template)), translation, anchor.rstrip("."), template.endswith("."))
        entries.append((literal, entry))
    return tuple(e for _, e in sorted(entries, key=lambda pair: -pair[0]))


def _pieces(template: str) -> Iterator[tuple[str, str | None]]:
    pos = 0
    for m in FIELD.finditer(template):
        if m.start() > pos:
            yield template[pos : m.start()], None
        if m.group(1) is None:
            yield m.group(0)[0], None
        else:
            yield "", m.group(1)
        pos = m.end()
    if pos < len(template):
        yield template[pos:], None


# ---------------------------------------------------------------------------------------------------- translating


def localize(text: str, lang: str | None = None) -> str:
    """`text`, an English sentence of the engine (or several), in `lang` (default: the session's language).
    A sentence no catalogue template matches is returned as it is."""
    lang = lang or language()
    if lang == DEFAULT or not text or not _catalogue(lang):
        return text
    return _localize(text, lang, 0)


@lru_cache(maxsize=4096)
def _localize(text: str, lang: str, depth: int) -> str:
    whole = _match(text, lang, depth)
    if whole is None and text[:1].isupper():  # "Freeze up to …" said at a sentence's start: the template's words
        lowered = _match(text[0].lower() + text[1:], lang, depth)
        whole = lowered[0].upper() + lowered[1:] if lowered else None
    if whole is not None:
        return whole
    pieces = SENTENCE_END.split(text)
    if len(pieces) == 1:
        return text
    out, i = [], 0
    while i < len(pieces):
        for j in range(len(pieces), i, -1):
            found = _match(" ".join(pieces[i:j]), lang, depth)
            if found is not None:
                out.append(found)
                i = j
                break
        else:
            out.append(pieces[i])
            i += 1
    return " ".join(out)


def _match(text: str, lang: str, depth: int) -> str | None:
    for entry in _entries(lang):
        if entry.anchor not in text:
            continue
        m = entry.pattern.fullmatch(text)
        if m is None:
            continue
        out = entry.translation
        for name, value in zip(entry.fields, m.groups(), strict=True):
            out = out.replace("{" + name + "}", _value(name, value, lang, depth))
        out = out.replace("{{", "{").replace("}}", "}")
        return out.rstrip(".") if entry.full_stop and not text.endswith(".") else out
    return None


def _value(name: str, value: str, lang: str, depth: int) -> str:
    spec = name.rsplit(":", 1)[1] if ":" in name and not name.endswith("]") else ""
    if spec and spec[-1:] in ("f", "%", ",", "d", "g", "e") and NUMBER.fullmatch(value.strip()):
        return number_in(value, lang)
    if depth < MAX_DEPTH and " " in value.strip() and re.search(r"[A-Za-z]{2}", value):
        return _localize(value, lang, depth + 1)
    return value


def number_in(value: str, lang: str) -> str:
    """A number written the English way (``4,398,024``, ``92.0``, ``12.5%``) in the marks of `lang`."""
    text = value.strip()
    percent = text.endswith("%")
    digits = text.rstrip("%").replace(",", "").replace("−", "-")
    decimals = len(digits.split(".", 1)[1]) if "." in digits else 0
    pattern = "#,##0" + ("." + "0" * decimals if decimals else "")
    out = format_decimal(float(digits), format=pattern, locale=babel_locale(lang))
    return ("+" if text.startswith("+") else "") + out + ("%" if percent else "")
