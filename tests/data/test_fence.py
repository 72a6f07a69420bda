"""The shared server's fence (explorer.data.fence): nothing outside the shared folders is even looked at, and a
missing path cannot be told from a forbidden one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from explorer.data.fence import DATA_ROOTS_VAR, FenceError, data_roots, fence, refusal
from explorer.models import parse_spec


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Shared: tmp/shared (cats/, links out, a file); outside: tmp/secret with a checkpoint and a class folder."""
    shared, secret = tmp_path / "shared", tmp_path / "secret"
    (shared / "cats").mkdir(parents=True)
    (shared / "notes.txt").write_text("x")
    (secret / "dogs").mkdir(parents=True)
    (secret / "model.pt").write_bytes(b"x")
    (shared / "link-out").symlink_to(secret, target_is_directory=True)
    (shared / "file-out.pt").symlink_to(secret / "model.pt")
    monkeypatch.setenv(DATA_ROOTS_VAR, str(shared))
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    return shared, secret


class Touches:
    """Every path handed to os.stat / os.lstat / os.listdir / os.scandir / open while active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        for name in ("stat", "lstat", "listdir", "scandir", "readlink"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._spy(real))

    def _spy(self, real):
        def spy(path=".", *args, **kwargs):
            self.paths.append(os.fsdecode(path) if not isinstance(path, int) else f"fd:{path}")
            return real(path, *args, **kwargs)

        return spy

    def outside(self, roots: list[Path]) -> list[str]:
        """Touched paths that are neither under a root nor one of a root's own parent folders."""
        ancestors = {str(p) for r in roots for p in [r, *r.parents]}
        return [p for p in self.paths if p not in ancestors and not any(Path(p).is_relative_to(r) for r in roots)]


TRICKS = [
    "/",
    "/etc",
    "/etc/passwd",
    "/proc/self/environ",
    "..",
    "~",
    "~/.ssh/id_rsa",
    "{shared}/../secret/model.pt",
    "{shared}/cats/../../secret",
    "{secret}/dogs",
]


@pytest.mark.parametrize("trick", TRICKS)
def test_a_path_outside_the_shared_folders_never_reaches_the_file_system(server, monkeypatch, trick):
    shared, secret = server
    roots = data_roots()
    text = trick.format(shared=shared, secret=secret)
    touches = Touches(monkeypatch)
    for kind in ("any", "dir", "file"):
        with pytest.raises(FenceError) as info:
            fence(text, "The folder", kind, roots=roots)  # type: ignore[arg-type]
        assert str(info.value) == refusal(text, "The folder")
    assert touches.paths == []  # not one stat, lstat, listdir or scandir


def test_links_that_leave_the_shared_folders_are_refused_after_reading_only_inside(server, monkeypatch):
    shared, _ = server
    roots = data_roots()
    touches = Touches(monkeypatch)
    for text in (f"{shared}/link-out", f"{shared}/link-out/model.pt", f"{shared}/file-out.pt"):
        with pytest.raises(FenceError) as info:
            fence(text, "The folder", roots=roots)
        assert str(info.value) == refusal(text, "The folder")
    assert touches.outside(roots) == []


def _same(a: str, b: str, text_a: str, text_b: str) -> bool:
    return a.replace(repr(text_a), "PATH") == b.replace(repr(text_b), "PATH")


@pytest.mark.parametrize(
    ("existing", "missing"),
    [
        ("/etc", "/etc-that-is-not-there"),
        ("/etc/passwd", "/etc/no-such-file"),
        ("{secret}/model.pt", "{secret}/other.pt"),
        ("{secret}/dogs", "{secret}/cats"),
        ("{shared}/link-out/dogs", "{shared}/link-out/birds"),
        ("{secret}/dogs", "{shared}/birds"),  # a missing folder inside says what a forbidden one outside says
    ],
)
def test_existing_and_missing_forbidden_paths_get_the_same_answer(server, existing, missing):
    shared, secret = server
    a, b = (t.format(shared=shared, secret=secret) for t in (existing, missing))
    answers = []
    for text in (a, b):
        with pytest.raises(FenceError) as info:
            fence(text, "The folder", "file" if text.endswith(".pt") or "passwd" in text else "dir")
        answers.append(str(info.value))
    assert _same(answers[0], answers[1], a, b), answers
    assert "\n" not in answers[0] and "outside the folders this server shares" in answers[0]


def test_paths_inside_are_resolved_and_checked_for_their_kind(server):
    shared, _ = server
    assert fence(f"{shared}/cats/../cats", kind="dir") == (shared / "cats").resolve()
    assert fence(shared / "not-yet.pt") == (shared / "not-yet.pt").resolve()  # "any": the caller reports it
    with pytest.raises(FenceError, match="is a file, not a folder"):
        fence(shared / "notes.txt", kind="dir")
    with pytest.raises(FenceError, match="is a folder"):
        fence(shared / "cats", kind="file")
    (shared / "inner").symlink_to(shared / "cats")  # a link that stays inside is followed
    assert fence(f"{shared}/inner", kind="dir") == (shared / "cats").resolve()
    (shared / "loop").symlink_to(shared / "loop")
    with pytest.raises(FenceError, match="cannot be opened"):
        fence(shared / "loop")


def test_relative_paths_are_read_from_the_working_folder(server, monkeypatch):
    shared, _ = server
    monkeypatch.chdir(shared)
    assert fence("cats", kind="dir") == (shared / "cats").resolve()
    with pytest.raises(FenceError):
        fence("../secret", kind="dir")


def test_the_cache_is_always_shared_and_the_working_folder_only_by_default(server, tmp_path, monkeypatch):
    (tmp_path / "cache" / "runs").mkdir(parents=True)
    assert fence(tmp_path / "cache" / "runs", kind="dir") == (tmp_path / "cache" / "runs").resolve()
    monkeypatch.chdir(tmp_path / "secret")
    with pytest.raises(FenceError):  # the operator's list replaces the working folder
        fence("dogs", kind="dir")
    monkeypatch.delenv(DATA_ROOTS_VAR)
    assert fence("dogs", kind="dir") == (tmp_path / "secret" / "dogs").resolve()


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b", "x" * 5000])
def test_absurd_text_is_refused_before_anything_else(server, monkeypatch, bad):
    touches = Touches(monkeypatch)
    with pytest.raises(FenceError, match="not a valid path|characters long"):
        fence(bad, roots=[Path("/nowhere")])
    assert touches.paths == []


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("bundled:efficientnet_lite0", "bundled"),
        ("torchvision:resnet18:untrained", "torchvision"),
        ("/etc/passwd", "file"),
        ("runs/x.safetensors", "file"),
        ("./model", "file"),
        ("~/m.pt", "file"),
        ("model.ckpt", "file"),
    ],
)
def test_a_model_spec_is_classified_from_its_text_alone(monkeypatch, spec, kind):
    touches = Touches(monkeypatch)
    assert parse_spec(spec)[0] == kind
    assert touches.paths == []
