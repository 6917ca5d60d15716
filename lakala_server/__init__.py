"""Rasa-server-side extensions: the channels (REST, web chat, WeChat) that never answer with
silence, the SQL tracker store, and the changes to Rasa's internals, which live in
lakala_server/patches and are installed when a channel's server starts, never on import."""
