#!/usr/bin/env bash
# `make wechat-demo`: the bot with its WeChat channel on made-up settings, and the WeChat
# simulator in this terminal, so the channel can be tried without a WeChat account.
# Answers slower than WeChat's 5 seconds arrive as [客服消息] from the simulator's stand-in
# for WeChat's API. Leave with :quit or Ctrl-D; the servers stop with it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RASA_PORT=${RASA_PORT:-5005}
API_PORT=${WECHAT_DEMO_API_PORT:-5057}
# Transfers to the simulated 客服 (:agent, :switch, :close in the simulator) unless turned off.
export WECHAT_HANDOFF=${WECHAT_HANDOFF:-1}
mkdir -p var

# Random settings for this run only; the simulator reads the same ones from the environment.
eval "$("$BIN/python" -c 'from lakala_server.wechat.simulator import demo_settings
for name, value in demo_settings().items(): print(f"export {name}={value}")')"
export WECHAT_API_BASE="http://127.0.0.1:${API_PORT}"

bash scripts/run.sh >var/wechat-demo.log 2>&1 &
run_pid=$!
trap 'kill "$run_pid" 2>/dev/null || true; wait "$run_pid" 2>/dev/null || true' EXIT

echo "Starting the bot with its WeChat channel (log: var/wechat-demo.log) ..."
for _ in $(seq 1 360); do
  curl -fsS "http://localhost:${RASA_PORT}/webhooks/wechat/" >/dev/null 2>&1 && break
  kill -0 "$run_pid" 2>/dev/null || { tail -n 20 var/wechat-demo.log; exit 1; }
  if curl -fsS "http://localhost:${RASA_PORT}/" >/dev/null 2>&1; then
    echo "The bot started without its WeChat channel: scripts/run.sh must use credentials.wechat.yml"
    echo "when WECHAT_TOKEN is set."; exit 1
  fi
  sleep 0.5
done
"$BIN/python" -m lakala_server.wechat.simulator --url "http://localhost:${RASA_PORT}/webhooks/wechat/webhook" \
  --api-port "$API_PORT"
