"""A Streamlit page as the frontend holds it: the tree of elements and blocks the ``delta`` messages build (addressed by
``metadata.delta_path``), pruned at the end of each run the way the frontend prunes it, its images, and its widgets
(ids, current values, and the ``WidgetState`` a change sends). Only ``streamlit.proto`` is used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamlit.proto.WidgetStates_pb2 import WidgetState


@dataclass
class Node:
    """One element or block of the page: its kind (an element's type, or "block"), its proto, and the run that
    sent it."""

    kind: str
    proto: Any
    run: int


def drop_below(tree: dict[tuple[int, ...], Node], path: tuple[int, ...]) -> None:
    n = len(path)
    for p in [p for p in tree if len(p) > n and p[:n] == path]:
        del tree[p]


def prune(tree: dict[tuple[int, ...], Node], run: int) -> None:
    """At the end of a run, what the frontend keeps: nodes this run sent, under blocks this run sent."""
    for p in sorted(tree, key=len):
        if p in tree and (tree[p].run != run or (len(p) > 2 and p[:-1] not in tree)):
            drop_below(tree, p)
            del tree[p]


def media_urls(tree: dict[tuple[int, ...], Node]) -> list[str]:
    """Every image URL on the page, in tree order."""
    out = []
    for p in sorted(tree):
        node = tree[p]
        if node.kind == "imgs":
            out += [im.url for im in node.proto.imgs.imgs if im.url]
    return out


def widget_id(tree: dict[tuple[int, ...], Node], key: str) -> tuple[str, Node]:
    """The id and node of the widget with user key `key` on the page (ids end with ``-<key>``)."""
    for node in tree.values():
        inner = getattr(node.proto, node.kind, None) if node.kind != "block" else None
        wid = getattr(inner, "id", "") if inner is not None else ""
        if isinstance(wid, str) and wid.endswith(f"-{key}"):
            return wid, node
    raise KeyError(f"no widget with key {key!r} on the page")


def widget_value(node: Node) -> Any:
    """A widget's current value as the frontend shows it (selectbox and radio: the option's label; number_input: a
    float; button group: the list of selected labels); None when it has none."""
    w = getattr(node.proto, node.kind)
    if node.kind in ("selectbox", "radio"):
        if w.set_value:
            return w.raw_value
        return w.options[w.default] if w.HasField("default") and w.default < len(w.options) else None
    if node.kind == "number_input":
        if w.set_value:
            return w.value if w.HasField("value") else None
        return w.default if w.HasField("default") else None
    if node.kind == "button_group":
        return list(w.raw_values) if w.set_value else [w.options[i].content for i in w.default]
    if node.kind == "checkbox":
        return w.value if w.set_value else w.default
    raise TypeError(f"{node.kind} widgets are not handled")


def widget_state(wid: str, kind: str, value: Any) -> WidgetState:
    """The WidgetState the frontend sends for a widget of this kind set to `value`."""
    state = WidgetState(id=wid)
    if kind in ("selectbox", "radio", "text_input"):
        state.string_value = str(value)
    elif kind == "number_input":
        state.double_value = float(value)
    elif kind in ("button_group", "multiselect"):
        state.string_array_value.data.extend(str(v) for v in value)
    elif kind == "checkbox":
        state.bool_value = bool(value)
    elif kind == "button":
        state.trigger_value = True
    else:
        raise TypeError(f"{kind} widgets are not handled")
    return state
