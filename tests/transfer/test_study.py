"""The comparison study service (explorer.transfer.study) that the Compare page and the CLI both call: opening a
fine-tuned model against its base, storing and finding comparisons, and attaching a sweep only when it fits."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from explorer.models import load_model
from explorer.transfer.comparison.compare import CompareError
from explorer.transfer.study import Study, forget_reports, open_pair, tuned_arch_hint
from explorer.transfer.training.checkpoints import save_checkpoint


def _open(spec: str, arch: str | None):
    return load_model(spec, arch=arch, device="cpu")


@pytest.fixture
def checkpoints(tiny, tmp_path):
    """The tiny model's weights, slightly changed, as a checkpoint with our metadata and as a bare state dict."""
    module = copy.deepcopy(tiny.module)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.01)
    meta = {"arch": tiny.arch, "base_spec": tiny.spec, "class_names": [f"c{i}" for i in range(10)]}
    named = save_checkpoint(module, tmp_path / "named.safetensors", meta)
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(bare))
    return named, bare


def test_a_checkpoint_that_names_its_base_opens_with_it(tiny, checkpoints):
    named, _ = checkpoints
    base, tuned = open_pair(str(named), open_model=_open)
    assert base.spec == tiny.spec and base.fingerprint == tiny.fingerprint
    assert tuned.fingerprint != base.fingerprint and tuned.arch == tiny.arch


def test_a_bare_state_dict_needs_its_base_and_then_takes_its_architecture(tiny, checkpoints):
    _, bare = checkpoints
    with pytest.raises(CompareError, match="carries no metadata naming its base model"):
        open_pair(str(bare), open_model=_open)
    assert tuned_arch_hint(bare, tiny) == tiny.arch
    base, tuned = open_pair(str(bare), open_model=_open, base=tiny)
    assert base is tiny and tuned.arch == tiny.arch and tuned.fingerprint != tiny.fingerprint


def test_a_comparison_is_stored_once_and_found_by_a_new_process(tiny, checkpoints, color_folder, monkeypatch, tmp_path):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    named, _ = checkpoints
    base, tuned = open_pair(str(named), open_model=_open)
    study = Study(base, "colours", color_folder)
    settings = {"max_images": 16, "input_size": 32, "probes": False, "probe_folds": 3, "seed": 0}
    assert study.stored_comparison(tuned, settings) is None
    report = study.compare(tuned, settings)
    assert report.data["source"] == "colours"
    forget_reports()  # a new process: only the disk copy remains
    again = Study(base, "colours", color_folder).stored_comparison(tuned, settings)
    assert again is not None and again.to_dict() == report.to_dict()
    other = {**settings, "max_images": 12}
    assert study.stored_comparison(tuned, other) is None  # another setting is another comparison


def test_a_sweep_of_other_images_is_refused_with_a_reason_not_applied(tiny, checkpoints, color_folder, monkeypatch):
    """`decide` attaches a stored sweep only when it was measured on the same model, files and input size."""
    from explorer.transfer import study as study_module

    named, _ = checkpoints
    base, tuned = open_pair(str(named), open_model=_open)
    study = Study(base, "colours", color_folder)
    report = study.compare(tuned, {"max_images": 16, "input_size": 32, "probes": False, "probe_folds": 3, "seed": 0})
    cfg = {"epochs": 1, "input": 32, "images": 0}
    assert study.decide(report, cfg) == (report, None)  # no sweep: the report as it is, nothing to say
    measured = type("Sweep", (), {"complete": True})()
    monkeypatch.setattr(study_module, "get_sweep", lambda path: measured)
    monkeypatch.setattr(study_module, "mismatch", lambda sweep, **kw: "It was measured on other images.")
    decided, why = study.decide(report, cfg, files_sha256=lambda: "abc")
    assert decided is report and why == "It was measured on other images."
    attached = dataclasses.replace(report)
    monkeypatch.setattr(study_module, "mismatch", lambda sweep, **kw: None)
    monkeypatch.setattr(study_module, "with_sweep", lambda r, s, b: attached)
    assert study.decide(report, cfg, files_sha256=lambda: "abc") == (attached, None)
