"""The family matrix (`tests/models/families_table.py`) under pytest: one model of every torchvision classification
family and three timm families, random weights, through the ladder, a 2-step render, all-blocks attribution and dataset
examples on 8 images (the fast half), then a 1-step fine-tune and a 16-image compare (the slow half).

Every cell either works or gives one clear reason (an ExplorerError's single line); nothing is unexpected. The
fast half must work on every family.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torchvision.models as tvm
from families_table import CAPABILITIES, SLOW, SPECS, TORCHVISION, Cell, family_name, make_data, run_family

FAST_HALF = tuple(c for c in CAPABILITIES if c not in SLOW)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_data(tmp_path_factory.mktemp("families"))


def _clear(cells: dict[str, Cell]) -> None:
    for cap, cell in cells.items():
        assert not cell.unexpected, f"{cap}: {cell.detail}"
        if not cell.ok:
            assert cell.detail and "\n" not in cell.detail and "unexpected" not in cell.detail.lower(), cell.detail


def test_the_matrix_has_one_model_of_every_torchvision_classification_family() -> None:
    def family(name: str) -> str:  # the module that builds it: resnet (ResNet, ResNeXt, Wide ResNet), vgg, swin, …
        return tvm.get_model_builder(name).__module__.rsplit(".", 1)[-1]

    families = {family(n) for n in tvm.list_models(module=tvm)}
    assert {family(n) for n in TORCHVISION} == families
    assert len(families) == 17
    assert {s.split(":")[0] for s in SPECS} == {"torchvision", "timm"} and len(SPECS) == len(TORCHVISION) + 3


@pytest.mark.parametrize("spec", SPECS, ids=family_name)
def test_fast_half_works_on_every_family(spec: str, data: tuple[Path, Path]) -> None:
    cells = run_family(spec, data, FAST_HALF)
    _clear(cells)
    assert all(cells[c].ok for c in FAST_HALF), {c: cells[c].text() for c in FAST_HALF if not cells[c].ok}


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=family_name)
def test_slow_half_finetunes_and_compares_or_says_why(spec: str, data: tuple[Path, Path]) -> None:
    cells = run_family(spec, data, ("ladder", *SLOW))
    _clear(cells)
    assert cells["finetune"].ok, cells["finetune"].text()
