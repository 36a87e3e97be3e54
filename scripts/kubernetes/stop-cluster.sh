#!/usr/bin/env bash
# Stop a cluster that start-cluster.sh started in DIR: the processes listed in DIR/pids (kubelet first, etcd last),
# then the pods' docker containers (names k8s_*: only a kubelet makes them, and one cluster runs per dockerd), then
# the mounts the kubelet left under DIR (secret volumes are tmpfs), then the pods' logs in /var/log/pods. DIR itself
# is kept (the components' logs); `rm -rf DIR` works afterwards. Safe to run twice, and on a half-started cluster.
#
# Usage: scripts/kubernetes/stop-cluster.sh DIR      env: BATON_K8S_STOP_TIMEOUT (default 20 s per process)
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir="$(cd "$1" 2>/dev/null && pwd)" || { echo "stop-cluster: no directory $1" >&2; exit 1; }
stop_timeout="${BATON_K8S_STOP_TIMEOUT:-20}"
t0=$SECONDS

is_ours() {  # is_ours PID: a live, non-zombie process whose command line mentions DIR (so not a reused pid)
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ] || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$dir"
}

if [ -f "$dir/pids" ]; then
  for name in kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
    for pid in $(awk -v n="$name" '$1 == n {print $2}' "$dir/pids"); do
      is_ours "$pid" || continue
      kill -TERM "$pid" 2>/dev/null
      for _ in $(seq $((stop_timeout * 10))); do
        is_ours "$pid" || break
        sleep 0.1
      done
      if is_ours "$pid"; then
        echo "stop-cluster: $name (pid $pid) ignored SIGTERM for ${stop_timeout} s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null
      fi
      echo "stop-cluster: stopped $name (pid $pid)"
    done
  done
  mv -f "$dir/pids" "$dir/pids.stopped"
fi

if docker info >/dev/null 2>&1; then
  containers="$(docker ps -aq --filter 'name=^/k8s_')"
  if [ -n "$containers" ]; then
    # shellcheck disable=SC2086
    docker rm -f -v $containers >/dev/null && echo "stop-cluster: removed $(echo $containers | wc -w) pod container(s)"
  fi
fi

# Mounts under DIR, deepest first (secret and emptyDir volumes of pods the kubelet did not clean up).
awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "stop-cluster: could not unmount $m" >&2
done
# The kubelet keeps pod logs in /var/log/pods/NAMESPACE_NAME_UID (a fixed path in 1.20), with links to them in
# /var/log/containers: remove those of this cluster's pods (the UIDs under DIR/kubelet/pods).
if [ -d "$dir/kubelet/pods" ]; then
  for pod_dir in "$dir"/kubelet/pods/*/; do
    [ -d "$pod_dir" ] || continue
    uid="$(basename "$pod_dir")"
    rm -rf /var/log/pods/*_"$uid"
    find /var/log/containers -maxdepth 1 -type l -lname "/var/log/pods/*_$uid/*" -delete 2>/dev/null
  done
fi
rm -f "/tmp/baton-k8s-dockershim-$(echo "$dir" | md5sum | cut -c1-12).sock"
echo "stop-cluster: done in $((SECONDS - t0)) s"
