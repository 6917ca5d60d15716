"""Rasa-server-side extensions: channels that never answer with silence, the SQL
tracker store, typed button titles understood as clicks (typed_buttons.py), and fixes for
hot spots found by profiling (speedups.py)."""
from lakala_server import speedups, typed_buttons

speedups.install()
typed_buttons.install()
