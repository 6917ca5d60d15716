"""Rasa-server-side extensions: channels that never answer with silence, the SQL
tracker store, typed button titles understood as clicks (typed_buttons.py), fixes for
hot spots found by profiling (speedups.py), and messages handled in arrival order, a few
at a time (admission.py)."""
from lakala_server import admission, speedups, typed_buttons

speedups.install()
typed_buttons.install()
admission.install()
