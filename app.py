"""Layer Explorer, the Streamlit app: `streamlit run app.py`. A router only: explorer/ui/shell.py draws the app."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin while Streamlit waits

from explorer.ui.shell import run_app  # noqa: E402

run_app()
