"""The app around the pages: page config, navigation, the sidebar's model indicator and one-off notices.

`app.py` calls `run_app()`; tests call `run_app(default="compare")` through `AppTest.from_function` to open the app on
one page, exactly as a browser opening that page's URL would.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer.ui.errors import show_error
from explorer.ui.i18n import language_switch, t
from explorer.ui.pages import page
from explorer.ui.session import current_model, model_indicator, show_notice
from explorer.ui.tour import step_from_url, tour_panel

ICON = Path(__file__).resolve().parent / "icon.png"

# One line per page: (module name in explorer/ui/pages/, English title, icon), in the sidebar's order; the sidebar
# shows `title(name)`, the title in the session's language.
PAGES = [
    ("start", "Start here", ":material/school:"),
    ("model", "Model", ":material/account_tree:"),
    ("attribution", "Attribution", ":material/gradient:"),
    ("progression", "Progression", ":material/timeline:"),
    ("layer", "Layer", ":material/grid_view:"),
    ("unit", "Unit", ":material/center_focus_strong:"),
    ("finetune", "Fine-tune", ":material/model_training:"),
    ("compare", "Compare", ":material/compare:"),
]


def title(name: str) -> str:
    """The navigation title of the page `name`, in the session's language."""
    titles = {
        "start": t("nav.start"),
        "model": t("nav.model"),
        "attribution": t("nav.attribution"),
        "progression": t("nav.progression"),
        "layer": t("nav.layer"),
        "unit": t("nav.unit"),
        "finetune": t("nav.finetune"),
        "compare": t("nav.compare"),
    }
    return titles.get(name, name)


def run_app(default: str = "model") -> None:
    """Draw the whole app; `default` is the page shown at the root URL (the Model page for users)."""
    # A local icon: a :material/…: page icon makes every browser fetch the favicon from Google's font servers.
    st.set_page_config(page_title="Layer Explorer", page_icon=str(ICON), layout="wide")
    pages = [page(name, title(name), icon, default=name == default) for name, _, icon in PAGES]
    # The default page is served at the root; its own name still opens it (a link or bookmark to /model).
    pages += [page(name, title(name), icon, hidden=True) for name, _, icon in PAGES if name == default]
    nav = st.navigation(pages, position="sidebar", expanded=True)
    with st.sidebar:
        st.markdown("### :material/layers: Layer Explorer")
        language_switch()
        try:
            model_indicator(current_model())
        except Exception as exc:  # the Model page still lets the user pick another model
            show_error(exc)
    show_notice()  # e.g. a link whose model could not be opened
    step = step_from_url()
    if step is not None:  # above the page, not in the sidebar: a phone keeps the sidebar closed
        tour_panel(step)
    nav.run()
