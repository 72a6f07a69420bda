"""The one atomic-write helper: a reader sees the old file or the new one, and a failed write leaves no trace."""

from __future__ import annotations

import os
import threading

import pytest

from explorer import runtime
from explorer.runtime import atomic_write
from explorer.transfer.training.checkpoints import remove_stale_temps


def test_atomic_write_creates_the_folder_and_writes_text_as_utf8(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "note.json"
    atomic_write(target, "ativação ✓")
    assert target.read_bytes() == "ativação ✓".encode()
    assert not list(target.parent.glob(".*.tmp"))


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "run.json"
    target.write_bytes(b"old")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runtime.os, "replace", refuse)
    with pytest.raises(OSError):
        atomic_write(target, b"new", durable=True)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_temporary_names_its_writer_so_only_a_dead_writers_leftover_is_cleaned(tmp_path, monkeypatch) -> None:
    seen: list[str] = []
    real = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(os.path.basename(src))
        real(src, dst)

    monkeypatch.setattr(runtime.os, "replace", spy)
    atomic_write(tmp_path / "x.safetensors", b"1")
    assert seen == [f".x.safetensors.{os.getpid()}.{threading.get_ident()}.tmp"]
    (tmp_path / seen[0]).write_bytes(b"a write in progress, by this live process")
    assert remove_stale_temps(tmp_path) == []
