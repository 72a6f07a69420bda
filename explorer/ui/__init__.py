"""Streamlit pages and widgets: thin, they call `explorer.*` and never the reverse."""
