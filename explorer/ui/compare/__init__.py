"""The Compare page's parts: choosing the runs and data (``setup``), the per-session report store (``store``), the
clickable per-layer chart (``charts``), one layer up close (``layer``) and the freeze panel (``freeze_panel``)."""
