#!/usr/bin/env bash
# make demo: an embedded API server and a local agent in the background, then register and run
# examples/hello.py and examples/parallel.py, show their states, logs and task runs, and stop what was started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
export BATON_HOME="$PWD/.demo"          # a throwaway home: the demo never touches ~/.baton
PORT="${BATON_DEMO_PORT:-4299}"
rm -rf "$BATON_HOME" && mkdir -p "$BATON_HOME"
unset BATON__API__URL BATON__API__KEY BATON__AGENT__LABELS BATON__AGENT__AGENT_ADDRESS

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "==> starting the API server on 127.0.0.1:$PORT (log: .demo/server.log)"
"$BIN/baton" server start --port "$PORT" >"$BATON_HOME/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$PORT/api/health" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/api/health" >/dev/null || { cat "$BATON_HOME/server.log"; exit 1; }
grep -h "first start" "$BATON_HOME/server.log" || true

# hello.py is registered with storage "api" and no labels; an agent with labels never takes unlabelled runs
# (Prefect 1's rule), so this agent leaves out its hostname label.
echo "==> starting a local agent (log: .demo/agent.log)"
"$BIN/baton" agent local start --name demo-agent --no-hostname-label >"$BATON_HOME/agent.log" 2>&1 &
pids+=($!)

echo "==> baton register examples/hello.py"
"$BIN/baton" register examples/hello.py

echo "==> baton run hello --param name=newcomer --watch"
"$BIN/baton" run hello --param name=newcomer --watch | tee "$BATON_HOME/run.out"
run_id="$(head -n 1 "$BATON_HOME/run.out" | grep -oE '[0-9a-f]{8}-[0-9a-f-]{27}' | head -n 1)"

echo "==> baton runs get $run_id"
"$BIN/baton" runs get "$run_id"
echo "==> baton runs logs $run_id"
"$BIN/baton" runs logs "$run_id"

echo "==> baton register examples/parallel.py; baton run parallel --watch (six tasks side by side on threads)"
"$BIN/baton" register examples/parallel.py
"$BIN/baton" run parallel --watch | tee "$BATON_HOME/parallel.out"
parallel_id="$(head -n 1 "$BATON_HOME/parallel.out" | grep -oE '[0-9a-f]{8}-[0-9a-f-]{27}' | head -n 1)"
echo "==> baton runs get $parallel_id"
"$BIN/baton" runs get "$parallel_id"
echo "==> done; stopping the agent and the server"
