#!/usr/bin/env bash
# make cluster: PostgreSQL, Redis and nginx ready (scripts/services.sh), the secrets shared by
# every process, then scripts/cluster.py starts and supervises the replicas.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/secrets.sh
load_secrets ACTION_SERVER_TOKEN VERIFICATION_SECRET WEB_SESSION_SECRET LAKALA_DB_PASSWORD
bash scripts/services.sh
export TRACKER_DB_URL=${TRACKER_DB_URL:-postgresql://lakala:${LAKALA_DB_PASSWORD}@127.0.0.1:5432/lakala}
export TERMINAL_DB_URL=${TERMINAL_DB_URL:-$TRACKER_DB_URL}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
# The demo terminals (CONTRACT.md) go into an empty registry, as `make run` does.
export SEED_DEMO_TERMINALS=${SEED_DEMO_TERMINALS:-1}
exec .venv/bin/python scripts/cluster.py
