#!/usr/bin/env bash
# End-to-end check of the local cluster: start it, run a Job to completion and read its log, check that a Job whose
# image is missing (imagePullPolicy: Never) reports ErrImageNeverPull, stop it. Prints timings; exits non-zero on
# any failure. The cluster is stopped (and DIR removed, unless given) whatever happens.
#
# Usage: scripts/kubernetes/smoke-test.sh [DIR]     env: BATON_K8S_SMOKE_IMAGE (default python:3.11-slim)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
image="${BATON_K8S_SMOKE_IMAGE:-python:3.11-slim}"
if [ $# -ge 1 ]; then dir="$1"; keep=1; else dir="$(mktemp -d /tmp/baton-k8s-smoke.XXXXXX)"; keep=0; fi
cleanup() {
  "$here/stop-cluster.sh" "$dir" >/dev/null || true
  [ "$keep" = 1 ] || rm -rf "$dir"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f s", b - a}'; }

"$here/build.sh"
t=$(now)
"$here/start-cluster.sh" "$dir"
echo "smoke: cluster started in $(since "$t")"
set -a; . "$dir/cluster.env"; set +a
k() { "$KUBECTL" "$@"; }

job() {  # job NAME IMAGE COMMAND-JSON
  cat <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: $1}
spec:
  backoffLimit: 0
  template:
    spec:
      hostNetwork: true
      restartPolicy: Never
      containers:
      - name: main
        image: $2
        imagePullPolicy: Never
        command: $3
EOF
}

# 1. A Job that prints a line. `python3`, not `python`: the python:3.11-slim that scripts/docker/base-image.sh makes
#    has only python3 (the official image has both).
t=$(now)
job hello "$image" '["python3", "-c", "print(\"hello from a pod\")"]' | k apply -f -
k wait --for=condition=complete job/hello --timeout=120s
echo "smoke: job/hello Complete $(since "$t") after kubectl apply"
out="$(k logs job/hello)"
echo "smoke: kubectl logs job/hello: $out"
[ "$out" = "hello from a pod" ] || { echo "smoke: FAILED: unexpected log" >&2; exit 1; }

# 2. A Job whose image does not exist locally.
t=$(now)
job missing-image no-such-image:1 '["true"]' | k apply -f -
reason=""
for _ in $(seq 240); do
  reason="$(k get pods -l job-name=missing-image \
    -o 'jsonpath={.items[0].status.containerStatuses[0].state.waiting.reason}' 2>/dev/null || true)"
  [ "$reason" = ErrImageNeverPull ] && break
  sleep 0.25
done
echo "smoke: job/missing-image pod waiting reason: ${reason:-none} ($(since "$t") after kubectl apply)"
[ "$reason" = ErrImageNeverPull ] || { echo "smoke: FAILED: expected ErrImageNeverPull" >&2; exit 1; }
k get pods -o wide

t=$(now)
"$here/stop-cluster.sh" "$dir"
echo "smoke: cluster stopped in $(since "$t")"
echo "smoke: OK"
