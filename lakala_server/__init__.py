"""Rasa-server-side extensions: channels that never answer with silence, the SQL
tracker store, and fixes for hot spots found by profiling (speedups.py)."""
from lakala_server import speedups

speedups.install()
