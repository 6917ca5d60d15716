#!/usr/bin/env bash
# Starts the action server and the Rasa server, prints where to chat, and stops
# both (by their process ids) when either exits or on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RASA_PORT=${RASA_PORT:-5005}
ACTION_PORT=5055  # endpoints.yml points here
mkdir -p var

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

"$BIN/rasa" run actions --actions actions --port "$ACTION_PORT" >var/actions.log 2>&1 &
pids+=($!)
"$BIN/rasa" run --model models/lakala.tar.gz --endpoints endpoints.yml \
  --credentials credentials.yml --port "$RASA_PORT" >var/rasa.log 2>&1 &
pids+=($!)

wait_for() {  # url name pid
  for _ in $(seq 1 240); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    kill -0 "$3" 2>/dev/null || { echo "$2 failed to start; see var/${2}.log"; return 1; }
    sleep 0.5
  done
  echo "$2 did not answer within 2 minutes; see var/${2}.log"; return 1
}
wait_for "http://localhost:${ACTION_PORT}/health" actions "${pids[0]}"
wait_for "http://localhost:${RASA_PORT}/" rasa "${pids[1]}"

cat <<MSG
拉卡拉客服助手 is running.
  REST:   curl -s localhost:${RASA_PORT}/webhooks/rest/webhook -d '{"sender":"me","message":"押金能退吗"}'
  Logs:   var/rasa.log, var/actions.log
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
