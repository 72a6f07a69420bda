"""The engine's sentences in Portuguese (issue 22 item 1): every template the engine writes has a translation with
the same fields, every translation a template, and each template's sentence comes back translated."""

from __future__ import annotations

import re

import pytest

from explorer.data.fence import FenceError, fence
from explorer.ui.i18n import LANGUAGES
from explorer.ui.messages import catalogue, extract, fields, localize, number_in

OTHER = [lang for lang in LANGUAGES if lang != "en"]
NUMERIC = re.compile(r":[^:]*[f%,dge]$")


@pytest.fixture(scope="module")
def templates() -> dict[str, list[str]]:
    return extract()


def test_the_engine_has_sentences_to_translate(templates):
    assert len(templates) > 200  # raises and msg() marks across the engine
    assert any(where[0].startswith("data/fence.py") for where in templates.values())


@pytest.mark.parametrize("lang", OTHER)
def test_every_template_has_a_translation_and_every_translation_a_template(templates, lang):
    table = catalogue(lang)
    missing = sorted(set(templates) - set(table))
    stale = sorted(set(table) - set(templates))
    assert not missing, f"{len(missing)} engine sentences have no {lang} translation, e.g. {missing[:5]}"
    assert not stale, f"{len(stale)} {lang} translations match no engine sentence, e.g. {stale[:5]}"
    wrong = [t for t, tr in table.items() if sorted(set(fields(t))) != sorted(set(fields(tr)))]
    assert not wrong, f"translations whose fields differ from the English: {wrong[:5]}"
    same = [t for t, tr in table.items() if tr == t and re.search(r"[a-z]{4} [a-z]{3}", t)]
    assert not same, f"translations left in English: {same[:5]}"


def _sample(name: str, i: int) -> str:
    if name.endswith("!r"):
        return f"'v{i}'"
    return "7" if NUMERIC.search(name) else f"v{i}"


@pytest.mark.parametrize("lang", OTHER)
def test_each_sentence_comes_back_translated_by_its_own_template(templates, lang):
    """A template's sentence (fields filled with plain tokens) is translated by that template, not by another
    that happens to match it too, and the tokens land in the translation's fields."""
    table = catalogue(lang)
    wrong = []
    for template in templates:
        names = list(dict.fromkeys(fields(template)))
        values = {name: _sample(name, i) for i, name in enumerate(names)}
        english, expected = template, table.get(template, template)
        for name, value in values.items():
            english = english.replace("{" + name + "}", value)
            expected = expected.replace("{" + name + "}", value)
        english = english.replace("{{", "{").replace("}}", "}")
        expected = expected.replace("{{", "{").replace("}}", "}")
        if localize(english, lang) != expected:
            wrong.append((template, localize(english, lang)))
    assert not wrong, f"{len(wrong)} sentences come back wrong, e.g. {wrong[:3]}"


def test_a_refused_path_reads_in_portuguese_with_the_path_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_DATA_ROOTS", str(tmp_path))
    with pytest.raises(FenceError) as info:
        fence("/etc/passwd", "file")
    english = str(info.value)
    text = localize(english, "pt-BR")
    assert "'/etc/passwd'" in text
    assert text != english and "cannot be opened" not in text and "does not exist" not in text
    assert localize(english, "en") == english


def test_numbers_take_the_languages_marks():
    assert number_in("4,398,024", "pt-BR") == "4.398.024"
    assert number_in("92.0", "pt-BR") == "92,0"
    assert number_in("12.5%", "pt-BR") == "12,5%"
    assert number_in("3", "pt-BR") == "3"
    assert number_in("+5.0", "pt-BR") == "+5,0" and number_in("-0.3", "pt-BR") == "-0,3"


def test_an_unknown_sentence_stays_as_it_is():
    text = "A sentence the engine never wrote, with blocks.2.1 in it."
    assert localize(text, "pt-BR") == text


def test_a_label_said_at_a_sentences_start_is_translated_by_its_lower_case_template():
    from explorer.transfer.sweeping.sweep_report import SweepOption

    option = SweepOption("blocks.2.1", "finetune", 0.9, 0.8, 0.95, 100, 1, 1000, 1.0, 10.0)
    label, title = localize(option.label, "pt-BR"), localize(option.title, "pt-BR")
    assert label != option.label and title == label[0].upper() + label[1:]
    assert localize("Freeze", "pt-BR") == "Freeze"  # nothing matches: left as it is
