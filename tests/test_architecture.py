"""The house rules that the source itself can be checked for (docs/architecture.md): read with `ast`, nothing run."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "explorer"


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        out[name] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return out


MODULES = _modules()


def _imports(name: str, path: Path, tree: ast.Module) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None) for every import anywhere in the file."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full, None) if full in MODULES else (base, a.name))
    return out


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, (path, tree) in MODULES.items():
        for target, _ in _imports(name, path, tree):
            if target in MODULES and target != name:
                edges.setdefault(name, set()).add(target)
    return edges


def test_no_import_circle_among_modules():
    edges = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert circles == []


# The documented layer order (docs/architecture.md), lowest first; an import may only point to its own rank or below.
RANK = {
    "errors": 0, "runtime": 0,
    "cache": 1, "layers": 1, "models": 1, "data": 1, "jobs": 1,
    "featurevis": 2, "attribution": 2, "exemplars": 2,
    "transfer": 3,
    "trust": 4, "distributed": 4,
    "commands": 5, "cli": 5, "ui": 5, "__main__": 5,
}  # fmt: skip


def _part(module: str) -> str:
    return module.split(".")[1]


def test_every_part_of_the_package_has_a_place_in_the_layer_order():
    assert sorted({_part(n) for n in MODULES if n != "explorer"} - set(RANK)) == []


def test_imports_only_point_down_the_layer_order():
    """Imports inside functions count too: they are the ones that hide an upward dependency."""
    found = [
        f"{name} -> {target}"
        for name, (path, tree) in MODULES.items()
        if name != "explorer"  # the package __init__ re-exports, lazily
        for target, _ in _imports(name, path, tree)
        if target.startswith("explorer.") and RANK.get(_part(target), -1) > RANK[_part(name)]
    ]
    assert found == []


def test_pages_never_import_pages():
    found = [
        f"{a} -> {b}"
        for a, targets in _edges().items()
        for b in targets
        if a.startswith("explorer.ui.pages.") and b.startswith("explorer.ui.pages.")
    ]
    assert found == []


def test_no_private_name_is_imported_from_another_module():
    found = [
        f"{name} <- {module}.{what}"
        for name, (path, tree) in MODULES.items()
        for module, what in _imports(name, path, tree)
        if what and what.startswith("_") and not what.startswith("__") and module in MODULES and module != name
    ]
    assert found == []


def test_streamlit_only_in_the_ui_package():
    found = [
        name
        for name, (path, tree) in MODULES.items()
        if not name.startswith("explorer.ui")
        and any(target.split(".")[0] == "streamlit" for target, _ in _imports(name, path, tree))
    ]
    assert found == []


def test_every_torch_load_refuses_pickled_code():
    found = []
    for name, (_, tree) in MODULES.items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
                and not any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
            ):
                found.append(f"{name}:{node.lineno}")
    assert found == []


def test_every_package_says_what_it_owns():
    missing = [
        name for name, (path, tree) in MODULES.items() if path.name == "__init__.py" and not ast.get_docstring(tree)
    ]
    assert missing == []


# An import inside a function says why it is not at the top of its module: an optional dependency, a start-up cost,
# or an import cycle, in a comment on its line or on the line just above its group of import lines.
REASONS = ("optional dependency", "start-up cost", "cycle")


def unexplained_imports(source: str) -> list[int]:
    """Line numbers of the imports inside functions of `source` that no comment explains (see REASONS)."""
    tree = ast.parse(source)
    comments = {
        tok.start[0]: tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    starts = {n.end_lineno: n.lineno for n in imports}  # last line of an import -> its first line
    inside = {
        n.lineno: n
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }

    def says_why(line: int) -> bool:
        return any(reason in comments.get(line, "") for reason in REASONS)

    found = []
    for line, node in sorted(inside.items()):
        first = line
        while first - 1 in starts:  # up through the contiguous import lines above it
            first = starts[first - 1]
        own = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        if not (any(says_why(n) for n in own) or says_why(first - 1)):
            found.append(line)
    return found


def test_imports_inside_functions_say_why():
    found = [
        f"{path.relative_to(ROOT).as_posix()}:{line}"
        for path, _ in MODULES.values()
        for line in unexplained_imports(path.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_the_import_check_reports_an_import_that_does_not_say_why():
    source = (
        "import os\n"
        "\n"
        "def plain():\n"
        "    import json\n"  # line 4: no reason given
        "    return json\n"
        "\n"
        "def explained():\n"
        "    import ray  # optional dependency: the Ray back end\n"
        "    # start-up cost: both take seconds to import\n"
        "    import timm\n"
        "    import torchvision\n"
        "    return ray, timm, torchvision\n"
        "\n"
        "def apart():\n"
        "    # cycle: a.b imports this module\n"
        "    import a.b\n"
        "\n"
        "    import c\n"  # line 18: a blank line ends the group the comment explains
        "    return a.b, c\n"
    )
    assert unexplained_imports(source) == [4, 18]
