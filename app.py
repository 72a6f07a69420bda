"""Layer Explorer, the Streamlit app: `streamlit run app.py`. A router only; pages live in explorer/ui/pages/."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin while Streamlit waits

import streamlit as st  # noqa: E402

from explorer.ui.common import current_model, model_indicator, show_error, show_notice  # noqa: E402
from explorer.ui.pages import page  # noqa: E402

st.set_page_config(page_title="Layer Explorer", page_icon=":material/layers:", layout="wide")

# One line per page: page(module name in explorer/ui/pages/, title, icon).
PAGES = [
    page("model", "Model", ":material/account_tree:", default=True),
    page("attribution", "Attribution", ":material/gradient:"),
    page("progression", "Progression", ":material/timeline:"),
    page("layer", "Layer", ":material/grid_view:"),
    page("unit", "Unit", ":material/center_focus_strong:"),
    page("finetune", "Fine-tune", ":material/model_training:"),
    page("compare", "Compare", ":material/compare:"),
]

nav = st.navigation(PAGES, position="sidebar", expanded=True)

with st.sidebar:
    st.markdown("### :material/layers: Layer Explorer")
    try:
        model_indicator(current_model())
    except Exception as exc:  # the Model page still lets the user pick another model
        show_error(exc)

show_notice()  # e.g. a link whose model could not be opened
nav.run()
