"""The app in two languages: the catalogues (every key used, markup kept, no "excitar"), the locale's numbers (Babel),
and every page of this suite opened with ``?lang=pt-BR`` showing no sentence of the English catalogue."""

from __future__ import annotations

import copy
import json
import re
import string
import time
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
import torch
from google.protobuf.json_format import MessageToDict
from streamlit.testing.v1 import AppTest
from uiapp import Renders, app_on, run_metadata

import explorer.ui.i18n as i18n
import explorer.ui.messages as messages
import explorer.ui.shell as shell
import explorer.ui.tour as tour
from explorer.data.demos import DEMO_DATASETS
from explorer.transfer.training import runs
from explorer.transfer.training.checkpoints import save_checkpoint
from explorer.ui.i18n import (
    catalogue,
    number,
    percent,
    plotly_separators,
    seconds,
    short_number,
)

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "explorer" / "ui"
TINY = {"preset": "fast", "steps": "2", "size": "32"}


@pytest.fixture(scope="module", autouse=True)
def _streamlit_caches():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --------------------------------------------------------------------------- the locale's numbers


@pytest.mark.parametrize(
    ("lang", "expected"),
    [
        ("en", ["1,234,567", "92.5 %", "0.13 s", "4.40 M", "12.3 k", "512", "0.50", "3 %", "—"]),
        ("pt-BR", ["1.234.567", "92,5 %", "0,13 s", "4,40 M", "12,3 k", "512", "0,50", "3 %", "—"]),
    ],
)
def test_numbers_percentages_and_durations_follow_the_language(lang, expected):
    got = [
        number(1234567, lang=lang),
        percent(0.925, 1, lang=lang),
        seconds(0.1314, lang=lang),
        short_number(4_398_024, lang=lang),
        short_number(12_345, lang=lang),
        short_number(512, lang=lang),
        number(0.5, 2, lang=lang),
        percent(0.0312, lang=lang),
        number(float("nan"), lang=lang),
    ]
    assert got == expected


def test_numbers_edge_cases():
    assert number(-0.001, 2, lang="pt-BR") == "0,00"  # no "-0,00"
    assert number(-1234.5, 1, lang="pt-BR") == "-1.234,5"
    assert number(0.125, lang="en") == "0.125" and number(7.0, lang="en") == "7"
    assert number(float("inf"), lang="en") == "∞"
    assert plotly_separators("en") == ".," and plotly_separators("pt-BR") == ",."


# --------------------------------------------------------------------------- the catalogues


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_catalogues_have_the_same_keys_fields_and_markup():
    en, pt = catalogue("en"), catalogue("pt-BR")
    assert set(en) == set(pt), (sorted(set(en) - set(pt)), sorted(set(pt) - set(en)))
    for key, text in en.items():
        assert _fields(pt[key]) == _fields(text), key
        for mark in ("**", "`", "\n- ", "](#"):  # bold, code, list items and links survive the translation
            assert pt[key].count(mark) == text.count(mark), (key, mark)
    differs = [k for k in en if en[k] != pt[k]]
    assert len(differs) > 0.9 * len(en), "most texts must really be translated"


def test_portuguese_uses_the_fields_words():
    pt = catalogue("pt-BR")
    assert not [k for k, v in pt.items() if "excit" in v.lower()], "a unit is 'ativada', never 'excitada'"
    text = " ".join(pt.values()).lower()
    for term in ("ajuste fino", "camada", "congel", "acurácia", "conexão residual", "ativ"):
        assert term in text, term
    assert pt["nav.finetune"] == "Ajuste fino" and pt["finetune.title"] == "Ajuste fino"


def test_every_key_of_the_catalogue_is_used_by_the_code():
    """No stale key: each one is written in the code as a literal (or built as the tour's steps and the pages'
    help are)."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in UI.rglob("*.py"))
    literals = set(re.findall(r'"([a-z0-9_]+(?:\.[a-z0-9_]+)+)"', source))
    intros = set(re.findall(r'page_intro\("([a-z]+)"\)', source))
    built = {f"page.{name}.{part}" for name in intros for part in ("lead", "help")}
    built |= {f"tour.step{i}.{part}" for i in range(1, len(tour.STEPS) + 1) for part in ("title", "body")}
    unused = sorted(set(catalogue("en")) - literals - built)
    assert not unused, unused


def test_the_demo_descriptions_in_the_catalogue_are_the_data_modules():
    en = catalogue("en")
    for name, description in DEMO_DATASETS.items():
        assert en[f"data.demo.{name}"] == description, name


# --------------------------------------------------------------------------- pages rendered in Portuguese


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def page_text(at: AppTest) -> str:
    """Every string of every element and block on the page (labels, help, options, captions, chart specs, …), but
    code: the PyTorch snippets are Python, their comments written by explorer.transfer."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if getattr(node, "type", None) == "code":
            return
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.extend(_strings(MessageToDict(proto)))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    return "\n\x00\n".join(out)


def fragments(lang: str, min_words: int = 3) -> dict[str, str]:
    """Pieces of the catalogue's texts that must not (English) or may (Portuguese) be on a page: the literal parts
    between `{fields}` with at least `min_words` words, when the English and Portuguese texts differ → their key."""
    en, other = catalogue("en"), catalogue("pt-BR")
    source = en if lang == "en" else other
    out: dict[str, str] = {}
    for key, text in source.items():
        if en[key] == other[key]:
            continue
        for literal, *_ in string.Formatter().parse(text):
            piece = literal.strip(" .,;:·()")
            if len(re.findall(r"[A-Za-zÀ-ÿ]{2,}", piece)) >= min_words:
                out[piece] = key
    return out


def engine_fragments(min_words: int = 3) -> dict[str, str]:
    """Pieces of the engine's English sentences (`explorer.ui.messages`' templates, cut at their fields) with at
    least `min_words` words → their template."""
    out: dict[str, str] = {}
    for template in messages.catalogue("pt-BR"):
        for literal in messages.FIELD.sub("\x00", template).split("\x00"):
            piece = literal.strip(" .,;:·()")
            if len(re.findall(r"[A-Za-z]{2,}", piece)) >= min_words:
                out[piece] = f"engine {template[:50]!r}"
    return out


def english_left(at: AppTest) -> list[str]:
    """Pieces of the app's catalogue and of the engine's sentences the page shows in English (one whose Portuguese
    piece is the same text is not counted)."""
    text = page_text(at)
    pt_text = " ".join([*catalogue("pt-BR").values(), *messages.catalogue("pt-BR").values()])
    return sorted(
        f"{key}: {piece!r}"
        for piece, key in {**engine_fragments(), **fragments("en")}.items()
        if piece in text and piece not in pt_text
    )


def portuguese_shown(at: AppTest) -> int:
    text = page_text(at)
    return sum(piece in text for piece in fragments("pt-BR"))


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _fake_run(name: str) -> None:
    """A finished run in the runs folder, as the fine-tuner leaves one (for the runs table and the run panel)."""
    folder = runs.runs_dir() / name
    folder.mkdir(parents=True)
    meta = {"base_spec": "bundled:efficientnet_lite0", "base_fingerprint": "f" * 8, "class_names": ["a", "b"],
            "freeze_after": "blocks.3.2", "best_epoch": 2, "data": {"source": "demo:shapes"},
            "metrics": {"epoch": 2, "val_acc": 0.925, "val_loss": 0.25, "train_acc": 0.97}}  # fmt: skip
    save_checkpoint(torch.nn.Linear(2, 2), folder / f"{name}.safetensors", meta)
    (folder / runs.RUN_RECORD).write_text(json.dumps({"name": name, "created": time.time(), "status": "stopped"}))


PAGES = {  # page → its URL's settings, and whether the feature visualizations render (faked here)
    "start": ({}, False),
    "model": ({}, False),
    "progression": ({"per_stage": "2", **TINY}, True),
    "layer": ({"layer": "blocks.1.0", **TINY}, True),
    "layer-kernels": ({"layer": "conv_stem", **TINY}, True),
    "unit": ({"layer": "blocks.0.0", "unit": "1", **TINY}, True),
    "finetune": ({"data": "demo:shapes", "freeze": "blocks.3.2"}, False),
    "compare": ({}, False),  # a first visit: no fine-tuned model yet, the demo and the sweep on the demo digits
    "attribution": ({}, False),  # Grad-CAM of the sample image, every block, and the trust panels' buttons
}


@pytest.mark.parametrize("name", list(PAGES))
def test_a_page_opened_in_portuguese_shows_no_english_sentence_of_the_catalogue(name, monkeypatch):
    query, renders = PAGES[name]
    if renders:
        Renders(monkeypatch, fake=True)
    if name == "finetune":
        _fake_run("shapes-blocks.3.2-20240506-070809")
    at = app_on(name.split("-")[0], timeout=300, lang="pt-BR", **query).run()
    if name == "finetune":  # open the run: its metrics, actions and resume line
        at.selectbox(key="ft_run_pick").set_value("shapes-blocks.3.2-20240506-070809").run()
    _ok(at)
    assert not english_left(at), english_left(at)
    assert portuguese_shown(at) >= 3  # the walk does see the page's text
    titles = [x.value for x in at.title]
    assert (
        titles
        and titles[0]
        == {
            "start": "Comece aqui",
            "model": "Modelo",
            "progression": "Progressão",
            "layer": "Camada",
            "unit": "Unidade",
            "finetune": "Ajuste fino",
            "compare": "Comparar",
            "attribution": "Atribuição",
        }[name.split("-")[0]]
    )


def test_the_same_walk_finds_the_english_sentences_on_an_english_page():
    """The check above can fail: in English the same walk finds the catalogue's sentences on the Model page."""
    at = app_on("model", timeout=300).run()
    _ok(at)
    assert len(english_left(at)) >= 10, english_left(at)
    assert portuguese_shown(at) == 0


def test_the_sidebar_navigation_is_in_portuguese(monkeypatch):
    titles: list[list[str]] = []
    navigation = st.navigation

    def recording(pages, **kw):
        titles.append([p.title for p in pages])
        return navigation(pages, **kw)

    monkeypatch.setattr(st, "navigation", recording)
    at = app_on("start", timeout=120, lang="pt-BR").run()
    _ok(at)
    pt = catalogue("pt-BR")
    expected = [pt[f"nav.{name}"] for name, _, _ in shell.PAGES]
    assert titles and titles[-1][: len(expected)] == expected
    assert "Ajuste fino" in expected and "Modelo" in expected
    at.sidebar.button_group(key="lang").set_value("en").run()
    assert titles[-1][: len(expected)] == [title for _, title, _ in shell.PAGES]  # the English titles


def test_widget_state_survives_a_language_switch():
    at = app_on("model", timeout=300, lang="pt-BR").run()
    at.radio(key="pick_source").set_value("torchvision").run()
    at.toggle(key="ladder_full").set_value(True).run()
    assert at.radio(key="pick_source").label == "Origem"
    at.sidebar.button_group(key="lang").set_value("en").run()
    _ok(at)
    assert at.radio(key="pick_source").label == "Source" and at.radio(key="pick_source").value == "torchvision"
    assert at.toggle(key="ladder_full").value is True
    assert at.title[0].value == "Model"


def test_the_tours_measured_costs_are_written_for_the_language(monkeypatch):
    raw = {"point": "blocks.3.2", "trainable": 1234, "total": 3371048, "batch": 16, "size": 64, "t_all": 0.5,
           "t_frozen": 0.2}  # fmt: skip
    monkeypatch.setattr(tour, "_costs", lambda model, key: raw)
    at = app_on("finetune", timeout=300, tour="4", data="demo:digits", lang="pt-BR").run()
    text = " ".join(m.value for m in at.main.markdown)
    assert "1.234 de 3.371.048 parâmetros" in text and "0,20 s em vez de 0,50 s" in text and "2,5×" in text


def test_the_compare_page_with_a_comparison_is_in_portuguese(bundled, monkeypatch):
    """The comparison's page in Portuguese: the chart, the freeze panel (table, counts, advice, 2×2 guide), the
    sweep's button, the trust section and the exports; numbers with the decimal comma."""
    # AppTest re-formats a select box's options (format_func) in the test's own thread, outside the session, where
    # the language would be English and the shown label not found: the whole process speaks Portuguese here.
    monkeypatch.setattr(i18n, "language", lambda: "pt-BR")
    meta = run_metadata(bundled, metrics={"epoch": 1, "val_acc": 0.5}, settings={}, data={"source": "demo:shapes"})
    folder = runs.runs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tuned = copy.deepcopy(bundled.module)
    with torch.no_grad():
        for p in tuned.parameters():
            p.mul_(1.05)
    save_checkpoint(tuned, folder / "t1.safetensors", meta)
    query = {"tuned": "t1", "images": "32", "input": "64", "probes": "0"}
    at = app_on("compare", timeout=300, lang="pt-BR", **query)
    at.session_state["cmp_show"] = []  # the layer view's sections render feature visualizations: not here
    at.run()
    _ok(at)
    at.button(key="cmp_run").click().run()
    _ok(at)
    evidence = next(e for e in at.expander if e.label == "Evidências e ressalvas")  # explorer.transfer's words
    engine = " ".join(m.value for m in evidence.markdown)
    assert engine and not any(piece in engine for piece in engine_fragments()), engine
    assert not english_left(at), english_left(at)
    assert at.button(key="fp_send").proto.label == "Ajuste fino com este ponto de congelamento"
    assert {m.label for m in at.metric} >= {"Parâmetros treináveis", "Total de parâmetros"}
    chart = json.loads(next(c for c in at.get("plotly_chart") if c.key == "cmp_chart").proto.spec)
    assert chart["layout"]["separators"] == ",." and "CKA base × ajustado" in {d.get("name") for d in chart["data"]}
    assert any(re.fullmatch(r"\d+,\d+ [Mk]", m.proto.body) for m in at.metric)  # "4,40 M"
    assert any(re.fullmatch(r"\d{1,3}(\.\d{3})+", m.proto.help) for m in at.metric)  # "3.371.048"


def _sentences(text: str) -> list[str]:
    """The sentences of a catalogue text, cut at its `{fields}` and full stops (markup stripped), of 3+ words."""
    out = []
    for literal, *_ in string.Formatter().parse(text):
        for piece in re.split(r"(?<=[.?!;:])\s+|\(|\)", literal):
            piece = piece.strip(" *.,;:·")
            if len(re.findall(r"[A-Za-z]{2,}", piece)) >= 3:
                out.append(piece)
    return out


def test_the_compare_pages_first_visit_offers_the_demo_in_portuguese():
    """No runs yet: the demo's box and button speak Portuguese, the digits counted with the Brazilian separator, and
    no sentence of the English box is on the page."""
    at = app_on("compare", timeout=300, lang="pt-BR").run()
    _ok(at)
    boxes = [i.value for i in at.info if "Primeira visita" in i.value]
    assert len(boxes) == 1, [i.value for i in at.info]
    assert boxes[0].startswith("**Primeira visita?** *Executar a demonstração* faz o ajuste fino do modelo atual")
    assert "1.797 dígitos manuscritos" in boxes[0]
    assert at.button(key="cmp_demo").proto.label == "Executar a demonstração"
    text = page_text(at)
    english = _sentences(catalogue("en")["compare.demo.first"]) + [catalogue("en")["compare.demo.run"]]
    assert len(english) >= 4 and not [s for s in english if s in text], [s for s in english if s in text]
    assert not english_left(at), english_left(at)


def test_the_gallerys_stop_resume_and_inactive_marks_come_from_the_catalogue(monkeypatch, bundled):
    """A stopped render of the Layer page says what is left and offers Resume in Portuguese; a unit that cannot be
    raised is marked in Portuguese with its final value written with the decimal comma."""
    from explorer.featurevis import channel
    from explorer.ui.widgets.gallery import RenderSettings, render_signature, stopped_key

    renders = Renders(monkeypatch, fake=True, dead=("channel(blocks.0.0:3)",))
    key = "layer_blocks.0.0_1"
    objs = [channel("blocks.0.0", u) for u in range(16)]
    at = app_on("layer", timeout=300, lang="pt-BR", layer="blocks.0.0", preset="fast", steps="16", size="32")
    at.session_state[stopped_key(key)] = render_signature(bundled, objs, RenderSettings("fast", 0, 16, 32))
    at.run()
    _ok(at)
    assert not renders.calls  # stopped: nothing renders
    stopped = [i.value for i in at.info if "16 de 16" in i.value]
    assert stopped == ["Parado: 16 de 16 imagens ainda não foram renderizadas."], [i.value for i in at.info]
    assert at.button(key=f"{key}_resume").proto.label == "Retomar"
    assert not english_left(at), english_left(at)
    at.button(key=f"{key}_resume").click().run()
    _ok(at)
    assert renders.images == 16
    assert [c.value for c in at.caption if "inativa" in c.value] == ["unidade 3 · inativa · 0,00"]
    marks = [m.value for m in at.markdown if "lx-tile-inactive" in m.value]
    assert len(marks) == 1 and "<b>inativa</b>" in marks[0]
    assert "o objetivo ficou em 0" in marks[0] and "valor final 0,00" in marks[0]
    assert not english_left(at), english_left(at)


def test_the_waiting_line_and_the_render_settings_are_written_for_the_language(monkeypatch):
    from explorer.ui.widgets.gallery import RenderSettings
    from explorer.ui.widgets.queue import waiting_text

    monkeypatch.setattr(i18n, "language", lambda: "pt-BR")
    assert waiting_text(1, 3.2) == "1 tarefa à frente da sua · esperando há 3 s"
    assert waiting_text(1234, 4.4) == "1.234 tarefas à frente da sua · esperando há 4 s"
    assert RenderSettings("fast", 7, 1024, 64).describe() == "fast · 1.024 passos · 64 px · semente 7"
    monkeypatch.setattr(i18n, "language", lambda: "en")
    assert waiting_text(1234, 4.4) == "1,234 jobs ahead of yours · waiting 4 s"
    assert RenderSettings("fast", 7, 1024, 64).describe() == "fast · 1,024 steps · 64 px · seed 7"
