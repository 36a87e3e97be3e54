#!/usr/bin/env bash
# Start the Docker daemon in the background when none answers (machines without systemd: CI containers, sandboxes),
# and wait until it does. Does nothing when `docker info` already works.
#
# Usage: scripts/docker/start-dockerd.sh     env: DOCKERD_LOG (default /var/log/dockerd.log),
#                                                  DOCKERD_WAIT_SECONDS (default 60)
set -euo pipefail

log="${DOCKERD_LOG:-/var/log/dockerd.log}"
wait_seconds="${DOCKERD_WAIT_SECONDS:-60}"
socket=/var/run/docker.sock

if docker info >/dev/null 2>&1; then
  echo "dockerd: already answering"
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "dockerd: not installed (apt-get install docker.io)" >&2
  exit 1
fi
# A daemon that died leaves its pid file behind, and a new one refuses to start while it exists. `kill -0` is not
# enough to call it alive: a killed daemon not yet reaped (a zombie) answers it, and its pid may be reused.
running_daemon() {  # running_daemon PID NAME: true when PID is a live (not zombie) process called NAME
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != "Z" ]
}
for entry in /var/run/docker.pid:dockerd /var/run/docker/containerd/containerd.pid:containerd; do
  pidfile="${entry%%:*}"
  if [ -f "$pidfile" ] && ! running_daemon "$(cat "$pidfile")" "${entry##*:}"; then
    echo "dockerd: removing stale $pidfile"
    rm -f "$pidfile"
  fi
done

echo "dockerd: starting in the background (log: $log)"
mkdir -p "$(dirname "$log")"
# setsid: the daemon outlives this script and is not in the caller's process group (no Ctrl-C, no SIGHUP).
setsid dockerd --host "unix://$socket" >>"$log" 2>&1 </dev/null &
pid=$!

for _ in $(seq "$((wait_seconds * 2))"); do
  if docker info >/dev/null 2>&1; then
    echo "dockerd: ready (pid $pid)"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "dockerd: exited before answering; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "dockerd: no answer after ${wait_seconds} s (pid $pid still running); last lines of $log:" >&2
tail -n 30 "$log" >&2
exit 1
