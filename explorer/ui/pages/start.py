"""The "Start here" page: what the app is for, the questions the tour answers, and its six stops."""

from __future__ import annotations

import streamlit as st

from explorer.ui.i18n import t
from explorer.ui.tour import STEPS, go_to, step_texts


def render() -> None:
    """The Start here page."""
    st.title(t("start.title"))
    st.markdown(t("start.intro"))
    st.caption(t("start.model"))
    if st.button(t("start.begin"), type="primary", icon=":material/play_arrow:", key="start_tour"):
        go_to(1)
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.subheader(t("start.steps"))
        for i, _ in enumerate(STEPS, 1):
            title, body = step_texts(i)
            with st.container(border=True):
                st.markdown(f"**{i}. {title}**")
                st.caption(body)
                if st.button(t("start.open"), key=f"start_step_{i}", icon=":material/arrow_forward:"):
                    go_to(i)
    with right:
        st.subheader(t("start.questions"))
        for q in ("start.q1", "start.q2", "start.q3", "start.q4"):
            st.markdown(f"- {t(q)}")
