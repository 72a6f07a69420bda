"""docs/architecture.md's module table is generated from the tree and kept current: a module added, removed or
re-described without regenerating the table fails here."""

from __future__ import annotations

from architecture_table import BEGIN, DOC, END, rewritten, table


def test_the_module_table_is_the_trees():
    doc = DOC.read_text(encoding="utf-8")
    assert BEGIN in doc and END in doc
    assert rewritten(doc) == doc, "docs/architecture.md is stale: run `python -m tests.architecture_table`"


def test_the_table_names_every_module_and_would_notice_a_new_one(tmp_path, monkeypatch):
    import architecture_table as gen

    rows = table().splitlines()[2:]
    assert any(r.startswith("| `transfer/study.py` |") for r in rows)
    assert all(r.count("|") >= 3 for r in rows)
    package = tmp_path / "explorer"
    (package / "sub").mkdir(parents=True)
    (package / "errors.py").write_text('"""Errors. More."""\n')
    (package / "sub" / "new.py").write_text('"""A new concept: with a colon."""\nx = 1\n')
    monkeypatch.setattr(gen, "PACKAGE", package)
    assert table().splitlines()[2:] == ["| `errors.py` | Errors |", "| `sub/new.py` | A new concept: with a colon |"]
