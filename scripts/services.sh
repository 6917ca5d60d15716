#!/usr/bin/env bash
# PostgreSQL, Redis and nginx for `make cluster`. Installs what is missing from Debian's packages
# (as root, as `make chromium` does), starts what is not running, says what it did, and makes the
# cluster's database. Set TRACKER_DB_URL or REDIS_URL to use servers of your own instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/secrets.sh
load_secrets LAKALA_DB_PASSWORD
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -n "${REDIS_URL:-}" ] || command -v redis-server >/dev/null || missing+=(redis-server)
[ -n "${TRACKER_DB_URL:-}" ] || command -v psql >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then echo "make cluster needs ${missing[*]}; as root run: $cmd"; exit 1; fi
  echo "installing from Debian's packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive bash -c "$cmd" >/dev/null
fi

if [ -z "${REDIS_URL:-}" ] && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  mkdir -p var/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$PWD/var/redis" --logfile "$PWD/var/redis/redis.log"
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "started Redis on 127.0.0.1:6379 (log: var/redis/redis.log)"
fi

if [ -z "${TRACKER_DB_URL:-}" ]; then
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "PostgreSQL is not running on 127.0.0.1:5432; start it, or set TRACKER_DB_URL"; exit 1; }
    version=$(ls /etc/postgresql | sort -n | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.1; done
    echo "started PostgreSQL $version on 127.0.0.1:5432"
  fi
  # The cluster's own role and database, with the password from var/secrets.env.
  as_admin() {
    if psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
      psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"
    else
      runuser -u postgres -- psql -d postgres -v ON_ERROR_STOP=1 -qtA "$@"
    fi
  }
  if [ "$(as_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'lakala'")" != 1 ]; then
    as_admin -c "CREATE ROLE lakala LOGIN PASSWORD '${LAKALA_DB_PASSWORD}'"
    echo "created PostgreSQL role lakala"
  else
    as_admin -c "ALTER ROLE lakala PASSWORD '${LAKALA_DB_PASSWORD}'"
  fi
  if [ "$(as_admin -c "SELECT 1 FROM pg_database WHERE datname = 'lakala'")" != 1 ]; then
    as_admin -c "CREATE DATABASE lakala OWNER lakala"
    echo "created PostgreSQL database lakala"
  fi
fi
