"""Rasa-server-side extensions: channels that never answer with silence, the SQL
tracker store, typed button titles understood as clicks (typed_buttons.py), fixes for
hot spots found by profiling (speedups.py), and messages handled in arrival order, a few
at a time (admission.py), and log lines with digit runs masked (actions/log_masking.py)."""
from actions import log_masking
from lakala_server import admission, speedups, typed_buttons

log_masking.install()  # no digit run a merchant typed reaches a log line in clear
speedups.install()
typed_buttons.install()
admission.install()
