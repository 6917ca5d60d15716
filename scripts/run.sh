#!/usr/bin/env bash
# Starts the action server, the Rasa server and the web chat server, prints where to chat,
# restarts the action server when it exits, and stops all three (by their process ids) when
# Rasa or the web server exits, or on Ctrl-C. `make cluster` (scripts/cluster.sh) runs several.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RASA_PORT=${RASA_PORT:-5005}
ACTION_PORT=5055  # endpoints.yml points here
WEB_PORT=${WEB_PORT:-8080}
# The page tells the widget where Rasa is; Rasa accepts socket.io only from the page's origins.
export WEB_PORT RASA_SOCKET_URL=${RASA_SOCKET_URL:-http://localhost:${RASA_PORT}}
export WEB_ALLOWED_ORIGINS=${WEB_ALLOWED_ORIGINS:-http://localhost:${WEB_PORT},http://127.0.0.1:${WEB_PORT}}
mkdir -p var

# Secrets: ACTION_SERVER_TOKEN (Rasa -> action server), VERIFICATION_SECRET (signs the
# verified-terminal marker) and WEB_SESSION_SECRET (signs web-chat session ids).
source scripts/secrets.sh
load_secrets ACTION_SERVER_TOKEN VERIFICATION_SECRET WEB_SESSION_SECRET

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

# The action server listens on 127.0.0.1 (ACTION_SERVER_HOST) and answers only with the token.
# It is started again when it exits; meanwhile the bot answers with the apology.
keep_action_server() {
  local child
  trap 'kill "$child" 2>/dev/null; exit 0' TERM
  while true; do
    "$BIN/python" -m actions.server --port "$ACTION_PORT" >>var/actions.log 2>&1 &
    child=$!
    wait "$child" || true
    echo "$(date '+%F %T') the action server exited; starting it again" >>var/actions.log
    sleep 1
  done
}
: >var/actions.log
keep_action_server &
pids+=($!)
# The WeChat channel (/webhooks/wechat/webhook) is on when WECHAT_TOKEN is set; see README.
CREDENTIALS=credentials.yml
if [ -n "${WECHAT_TOKEN:-}" ]; then
  CREDENTIALS=credentials.wechat.yml
  export WECHAT_APPSECRET="${WECHAT_APPSECRET:-}"  # optional; Rasa refuses an unset ${VAR}
fi
"$BIN/rasa" run --model models/lakala.tar.gz --endpoints endpoints.yml \
  --credentials "$CREDENTIALS" --port "$RASA_PORT" >var/rasa.log 2>&1 &
pids+=($!)
"$BIN/python" scripts/web_server.py >var/web.log 2>&1 &
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
wait_for "http://localhost:${WEB_PORT}/" web "${pids[2]}"

if [ -n "${REST_JWT_SECRET:-}" ]; then REST_MODE="a JWT for the sender is required"
elif [ "${REST_OPEN:-}" = "1" ]; then REST_MODE="open to anyone: REST_OPEN=1, for development only"
else REST_MODE="this machine only; set REST_JWT_SECRET to expose it"; fi
cat <<MSG
拉卡拉客服助手 is running.
  Chat:   http://localhost:${WEB_PORT}/
  REST:   curl -s localhost:${RASA_PORT}/webhooks/rest/webhook -d '{"sender":"me","message":"押金能退吗"}'
          (${REST_MODE})
  Logs:   var/rasa.log, var/actions.log, var/web.log
Press Ctrl-C to stop.
MSG
if [ -n "${WECHAT_TOKEN:-}" ]; then
  echo "  WeChat: http://<public host>:${RASA_PORT}/webhooks/wechat/webhook (公众号 server URL)"
fi
wait -n "${pids[@]}"
