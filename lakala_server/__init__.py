"""Rasa-server-side extensions: channels that never answer with silence, and the SQL tracker store."""
