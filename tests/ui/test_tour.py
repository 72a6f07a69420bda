"""The guided tour and the two languages: every key in both catalogues, the tour walked page by page, the switch."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
import streamlit as st

import explorer.ui.tour as tour
from explorer.ui.i18n import LANGUAGES, catalogue

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_key_exists_in_every_language_with_the_same_fields():
    en = catalogue("en")
    for lang in LANGUAGES:
        other = catalogue(lang)
        assert set(other) == set(en), f"{lang}: missing {set(en) - set(other)}, extra {set(other) - set(en)}"
        for key, text in other.items():
            assert text.strip(), f"{lang}:{key} is empty"
            assert _fields(text) == _fields(en[key]), f"{lang}:{key} fills other fields than English"
    assert catalogue("pt-BR")["tour.next"] != en["tour.next"]  # really translated


def test_every_key_the_code_asks_for_is_in_the_catalogue():
    used: set[str] = set()
    for path in (ROOT / "explorer" / "ui").rglob("*.py"):
        used |= set(re.findall(r'\bt\("([a-z0-9_.]+)"', path.read_text(encoding="utf-8")))
        pages = re.findall(r'\bpage_intro\("([a-z]+)"\)', path.read_text(encoding="utf-8"))
        used |= {f"page.{name}.{part}" for name in pages for part in ("lead", "help")}
    used |= {f"tour.step{i}.{part}" for i in range(1, len(tour.STEPS) + 1) for part in ("title", "body")}
    assert used and used <= set(catalogue("en")), sorted(used - set(catalogue("en")))


def test_every_page_but_the_start_page_has_its_help_in_both_languages():
    pages = {p.stem for p in (ROOT / "explorer" / "ui" / "pages").glob("*.py")} - {"__init__", "start"}
    for page in pages:
        text = (ROOT / "explorer" / "ui" / "pages" / f"{page}.py").read_text(encoding="utf-8")
        assert f'page_intro("{page}")' in text, f"the {page} page shows no help"
        for lang in LANGUAGES:
            assert catalogue(lang)[f"page.{page}.help"].count("- ") >= 2, f"{lang}: the {page} page's help is thin"


@pytest.mark.parametrize("lang", ["pt-BR", "en"])
def test_a_page_opened_in_portuguese_explains_itself_in_portuguese(app_on, lang):
    at = app_on("model", timeout=300, lang=lang).run()
    assert not at.exception
    lead = catalogue(lang)["page.model.lead"]
    assert lead in [c.value for c in at.caption]
    helps = [e for e in at.expander if e.label == catalogue(lang)["help.title"]]
    assert len(helps) == 1 and [m.value for m in helps[0].markdown] == [catalogue(lang)["page.model.help"]]


@pytest.fixture
def quick_steps(monkeypatch):
    """The tour's pages render with 2 optimisation steps at 32 px here (the tour itself uses the fast preset)."""
    quick = [tour.Step(s.page, s.title, {**s.query, "steps": "2", "size": "32"}) for s in tour.STEPS]
    monkeypatch.setattr(tour, "STEPS", quick)
    return quick


def _caption(at) -> str:
    """The tour box's text: above the page in the main area (a phone keeps the sidebar closed), not in the sidebar."""
    assert not [m for m in at.sidebar.markdown if "tour" in m.value.lower()]
    return " ".join(m.value for m in at.main.markdown)


def test_start_page_opens_the_tour_on_the_progression_page(app_on, quick_steps):
    at = app_on("start", timeout=300).run()
    assert [x.value for x in at.title] == ["Start here"] and not at.exception
    assert len([b for b in at.button if b.key and b.key.startswith("start_step_")]) == len(tour.STEPS)
    at.button(key="start_tour").click().run()
    assert [x.value for x in at.title] == ["Progression"] and not at.exception
    assert at.query_params["tour"] == "1"
    assert catalogue("en")["tour.step1.title"] in _caption(at)
    assert "Tour · step 1 of 6" in " ".join(c.value for c in at.main.caption)


@pytest.mark.slow  # renders on every page of the tour
def test_next_walks_every_step_of_the_tour_and_back_returns(app_on, quick_steps):
    at = app_on("start", timeout=600).run()
    at.button(key="start_tour").click().run()
    seen = []
    for step in range(1, len(tour.STEPS) + 1):
        assert not at.exception, (step, at.exception)
        assert at.query_params["tour"] == str(step)
        assert catalogue("en")[f"tour.step{step}.title"] in _caption(at)
        seen.append(at.title[0].value)
        if step < len(tour.STEPS):
            at.button(key="tour_next").click().run()
    assert seen == [s.title for s in tour.STEPS]
    assert not any(b.key == "tour_next" for b in at.button)  # the last step has no Next
    at.button(key="tour_back").click().run()
    assert at.query_params["tour"] == str(len(tour.STEPS) - 1)


def test_a_link_in_portuguese_opens_the_tour_in_portuguese_and_the_switch_changes_it(app_on, quick_steps):
    at = app_on("start", timeout=300, lang="pt-BR").run()
    assert [x.value for x in at.title] == ["Comece aqui"]
    assert "Começar o tour" in [b.label for b in at.button]
    at.button(key="start_tour").click().run()
    assert catalogue("pt-BR")["tour.step1.title"] in _caption(at)
    at.sidebar.button_group(key="lang").set_value("en").run()  # the sidebar's language switch
    assert catalogue("en")["tour.step1.title"] in _caption(at)


def test_the_fourth_step_quotes_this_machines_measured_costs(app_on, quick_steps, monkeypatch):
    measured = {"point": "blocks.3.2", "trainable": "1,234", "total": "3,371,048", "share": "37", "batch": 16,
                "size": 64, "t_all": "0.50", "t_frozen": "0.20", "speedup": "2.5"}  # fmt: skip
    monkeypatch.setattr(tour, "training_costs", lambda: measured)
    at = app_on("finetune", timeout=300, tour="4", data="demo:digits").run()
    text = _caption(at)
    assert "1,234 of 3,371,048 parameters" in text and "0.20 s instead of 0.50 s" in text


def _tour_counts(text: str) -> tuple[str, str]:
    found = re.search(r"leaves ([\d,]+) of ([\d,]+) parameters", text)
    assert found, text
    return found.group(1), found.group(2)


def test_the_fourth_step_counts_the_parameters_as_the_page_below_it(app_on, bundled, monkeypatch):
    from explorer.models.freeze import freeze_summary
    from explorer.ui.i18n import number

    times = {"batch": 16, "size": 64, "steps": 3, "t_all": 0.5, "t_frozen": 0.2, "measured": 0.0}
    monkeypatch.setattr(tour, "measured_step_times", lambda model: times)
    at = app_on("finetune", timeout=300, tour="4", **tour.STEPS[3].query).run()
    assert not at.exception
    trainable, total = _tour_counts(_caption(at))
    page = " ".join(c.value for c in at.caption)
    assert f"**{trainable}** trainable" in page and f"**{total}** total parameters" in page, (trainable, total, page)
    # the new head for the demo's 10 digits, not the 1000-class ImageNet head
    assert total != number(freeze_summary(bundled, tour.FREEZE_POINT).total)
    assert tour.demo_classes() == 10


def test_a_second_visit_quotes_the_first_measurement(app_on, monkeypatch):
    from explorer.transfer.training import costs

    calls: list[str | None] = []

    def timed(model, freeze_after, *, batch=16, size=64, steps=3):
        calls.append(freeze_after)
        seconds = [0.5, 0.2, 0.9, 0.1][len(calls) - 1]  # a busy machine: a second measurement would differ
        return costs.StepCost(freeze_after, seconds, 1, 2, batch, size)

    monkeypatch.setattr(costs, "training_step_cost", timed)
    texts = []
    for _ in range(2):  # a second session after a restart (the in-memory cache forgotten)
        st.cache_data.clear()
        at = app_on("finetune", timeout=300, tour="4", **tour.STEPS[3].query).run()
        assert not at.exception
        texts.append(_caption(at))
    assert calls == [None, tour.FREEZE_POINT]  # measured once
    assert "one training step on 16 images of 64 px takes 0.20 s instead of 0.50 s" in texts[0]
    assert texts[0] == texts[1]
