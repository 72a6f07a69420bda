"""Train this classifier: the linear route fitted for real and saved in the layout of the code the page shows."""

from __future__ import annotations

import copy

import pytest
import torch

from explorer.data import TransformedView, eval_transform, open_dataset
from explorer.errors import ExplorerError
from explorer.transfer.sweeping.prefix import feature_extractor_code
from explorer.transfer.training.linear_head import train_classifier


def test_the_saved_classifier_makes_the_pages_code_predict_as_the_fitted_one(tiny, color_folder):
    from safetensors.torch import load

    trained = train_classifier(tiny, color_folder, "blocks.2.0", input_size=32)
    assert trained.images == 36 and trained.classes == ["blue", "green", "red"]
    assert 0.0 <= trained.accuracy <= 1.0 and trained.metadata["base_fingerprint"] == tiny.fingerprint
    scope = {"model": copy.deepcopy(tiny.module)}
    exec(feature_extractor_code(tiny, "blocks.2.0", 3), scope)  # the code the page shows, as a user runs it
    clf = scope["classifier"]
    missing, unexpected = clf.load_state_dict(load(trained.to_bytes()), strict=False)
    assert not unexpected and all(k.startswith("backbone.") or k.endswith("num_batches_tracked") for k in missing)
    clf.eval()
    ds = open_dataset(color_folder)
    view = TransformedView(ds, list(range(36)), eval_transform(tiny, 32)[0])
    x = torch.stack([view[i][0] for i in range(36)])
    y = torch.tensor([view[i][1] for i in range(36)])
    with torch.no_grad():
        pred = clf(x).argmax(1)
    # The colour task is easy: the saved classifier, run through the page's code, gets the training images right.
    assert (pred == y).float().mean() >= 0.9


def test_bad_data_gets_one_sentence(tiny, tmp_path):
    from PIL import Image

    (tmp_path / "only").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "only" / f"{i}.png")
    with pytest.raises(ExplorerError):
        train_classifier(tiny, tmp_path, "blocks.2.0", input_size=32)
