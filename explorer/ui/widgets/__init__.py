"""Widgets and figures shared by several pages, so that no page imports another: image tiles and progressive
renders (``gallery``), layer pickers (``layers``), the image picker (``images``), the dataset chooser
(``dataset_panel``) and plotly figures (``figures``)."""
