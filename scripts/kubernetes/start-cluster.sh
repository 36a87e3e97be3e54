#!/usr/bin/env bash
# Start a single-node Kubernetes cluster on this machine, on loopback only, from the binaries build.sh made:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet running pods through the local dockerd
# (dockershim). Everything it makes (certificates, tokens, etcd data, kubelet state, logs) lives under DIR.
# Waits until the node is Ready and the `default` ServiceAccount (with its token) exists, so pods can be created.
#
# Writes:  DIR/kubeconfig    admin kubeconfig (token of a system:masters user)
#          DIR/cluster.env   KEY=value lines: KUBECONFIG, KUBECTL, BATON_K8S_API_URL, BATON_K8S_API_PORT, ...
#          DIR/pids          "name pid" per started process (read by stop-cluster.sh)
#          DIR/logs/*.log    one log per process
# Pods must use hostNetwork: true (there is no network plugin) and local images (imagePullPolicy: Never or
# IfNotPresent with an image already in `docker images`); nothing can be pulled here.
# One cluster per dockerd at a time: a kubelet removes the pod containers it does not know about.
#
# Usage: scripts/kubernetes/start-cluster.sh DIR
# env:   BATON_K8S_CACHE          where build.sh put bin/ (default /var/cache/baton-kubernetes)
#        BATON_K8S_START_TIMEOUT  seconds to wait for the cluster (default 180)
#        BATON_K8S_SERVICE_CIDR   Service ClusterIP range (default 127.0.100.0/24: kept on loopback, so a pod that
#                                 dials a ClusterIP by mistake sends nothing off this machine)
set -eEuo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
cache="${BATON_K8S_CACHE:-/var/cache/baton-kubernetes}"
bin="$cache/bin"
timeout_s="${BATON_K8S_START_TIMEOUT:-180}"
service_cidr="${BATON_K8S_SERVICE_CIDR:-127.0.100.0/24}"
node_name=127.0.0.1   # an IP as the node name: the kubelet then reports it as the node address without a lookup
pause_image=baton-k8s-pause:1
# The kubelet's built-in ECR credential provider asks the AWS SDK for credentials at start, whose default chain
# queries the EC2 metadata address 169.254.169.254: the SDK skips that query with this set (no traffic off loopback).
export AWS_EC2_METADATA_DISABLED=true
t0=$SECONDS
elapsed() { echo "$((SECONDS - t0)) s"; }

for b in etcd openssl curl docker; do
  command -v "$b" >/dev/null || { echo "start-cluster: $b not found (run scripts/kubernetes/build.sh)" >&2; exit 1; }
done
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl pause; do
  [ -x "$bin/$b" ] || { echo "start-cluster: $bin/$b missing: run scripts/kubernetes/build.sh first" >&2; exit 1; }
done
# (Zombies do not count: a stopped kubelet may wait a while for init to reap it.)
kubelets="$(ps -C kubelet -o pid=,stat= | awk '$2 !~ /^Z/ {printf "%s ", $1}' || true)"
if [ -n "$kubelets" ]; then
  echo "start-cluster: a kubelet is already running (pid $kubelets): only one cluster per dockerd;" \
       "stop it first (stop-cluster.sh ITS_DIR)" >&2
  exit 1
fi

mkdir -p "$1"
dir="$(cd "$1" && pwd)"
if [ -s "$dir/pids" ]; then
  echo "start-cluster: $dir/pids exists: a cluster was started in $dir; stop-cluster.sh it first" >&2
  exit 1
fi
pki="$dir/pki" logs="$dir/logs"
mkdir -p "$pki" "$logs" "$dir/etcd" "$dir/kubelet" "$dir/dockershim"
chmod 700 "$pki" "$dir/etcd"
: >"$dir/pids"

# Whatever makes this script fail stops what it started (the EXIT trap); ERR names the failing command.
trap 'echo "start-cluster: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
# shellcheck disable=SC2154  # rc is assigned inside the trap
trap 'rc=$?; if [ $rc -ne 0 ] && [ -s "$dir/pids" ]; then "$here/stop-cluster.sh" "$dir" >&2 || true; fi' EXIT
fail() {  # fail MESSAGE [LOG]: print the message and the log's tail, exit 1 (the EXIT trap stops the cluster)
  echo "start-cluster: $1 (after $(elapsed))" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then
    echo "--- last lines of $2" >&2
    tail -n 25 "$2" >&2
  fi
  exit 1
}

# ---- docker and the pause image ----------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  "$here/../docker/start-dockerd.sh"
fi
docker_driver="$(docker info --format '{{.CgroupDriver}}')"
if ! docker image inspect "$pause_image" >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  cp "$bin/pause" "$tmp/pause"
  tar -C "$tmp" -c pause | docker import -c 'ENTRYPOINT ["/pause"]' - "$pause_image" >/dev/null
  rm -rf "$tmp"
  echo "start-cluster: imported the pod sandbox image $pause_image"
fi

# ---- ports: free ones on 127.0.0.1 ---------------------------------------------------------------------------------
read -r etcd_port etcd_peer_port api_port kubelet_port kubelet_healthz_port < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

# ---- certificates, keys and tokens (openssl) --------------------------------------------------------------------
first_service_ip="$(python3 -c "import ipaddress,sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))" "$service_cidr")"
cat >"$pki/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }
# cert NAME SUBJECT EXTENSIONS: NAME.key + NAME.crt signed by the CA
cert() {
  newkey "$pki/$1.key"
  openssl req -new -config "$pki/openssl.cnf" -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
  printf '%b\n' "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n$3" \
    >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 \
    -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}
newkey "$pki/ca.key"
openssl req -x509 -new -config "$pki/openssl.cnf" -extensions ca -key "$pki/ca.key" -subj "/CN=baton-kubernetes-ca" \
  -days 3650 -out "$pki/ca.crt"
cert apiserver "/CN=kube-apiserver" "extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:$first_service_ip, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage = clientAuth"
cert kubelet "/CN=$node_name" "extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost"
newkey "$pki/sa.key"
openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

token() { openssl rand -hex 24; }
admin_token="$(token)" kubelet_token="$(token)" cm_token="$(token)" scheduler_token="$(token)"
# token,user,uid,"groups": the users the default RBAC roles are bound to
cat >"$pki/tokens.csv" <<EOF
$admin_token,admin,admin,"system:masters"
$kubelet_token,system:node:$node_name,kubelet,"system:nodes"
$cm_token,system:kube-controller-manager,kube-controller-manager
$scheduler_token,system:kube-scheduler,kube-scheduler
EOF
chmod 600 "$pki/tokens.csv"

api_url="https://127.0.0.1:$api_port"
ca_data="$(base64 -w0 "$pki/ca.crt")"
kubeconfig() {  # kubeconfig FILE USER TOKEN
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: baton
  cluster:
    server: $api_url
    certificate-authority-data: $ca_data
users:
- name: $2
  user:
    token: $3
contexts:
- name: baton
  context:
    cluster: baton
    user: $2
    namespace: default
current-context: baton
EOF
  chmod 600 "$1"
}
kubeconfig "$dir/kubeconfig" admin "$admin_token"
kubeconfig "$dir/kubelet.kubeconfig" "system:node:$node_name" "$kubelet_token"
kubeconfig "$dir/controller-manager.kubeconfig" system:kube-controller-manager "$cm_token"
kubeconfig "$dir/scheduler.kubeconfig" system:kube-scheduler "$scheduler_token"
echo "start-cluster: certificates and tokens ready ($(elapsed))"

# ---- processes ----------------------------------------------------------------------------------------------------
launch() {  # launch NAME COMMAND...: run in its own session, log to DIR/logs/NAME.log, record the pid
  local name="$1"; shift
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$dir/pids"
}
alive() { kill -0 "$(awk -v n="$1" '$1 == n {print $2}' "$dir/pids")" 2>/dev/null; }
wait_for() {  # wait_for NAME DESCRIPTION COMMAND...: poll COMMAND until it succeeds; fail if NAME dies or time runs out
  local name="$1" what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    alive "$name" || fail "$name exited while waiting for $what" "$logs/$name.log"
    [ $((SECONDS - t0)) -lt "$timeout_s" ] || fail "timed out after ${timeout_s} s waiting for $what" "$logs/$name.log"
    sleep 0.25
  done
}

launch etcd etcd --name baton --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "baton=http://127.0.0.1:$etcd_peer_port" --initial-cluster-state new \
  --snapshot-count 10000 --quota-backend-bytes $((2 * 1024 * 1024 * 1024))
wait_for etcd "etcd health" sh -c "curl -fsS http://127.0.0.1:$etcd_port/health | grep -q '\"health\":\"true\"'"
echo "start-cluster: etcd ready on 127.0.0.1:$etcd_port ($(elapsed))"

launch kube-apiserver "$bin/kube-apiserver" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" --insecure-port=0 \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range="$service_cidr" --endpoint-reconciler-type=none \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --allow-privileged=true --profiling=false --v=1
wait_for kube-apiserver "kube-apiserver /readyz" \
  curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $admin_token" "$api_url/readyz"
echo "start-cluster: kube-apiserver ready on $api_url ($(elapsed))"

launch kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$dir/controller-manager.kubeconfig" --leader-elect=false --port=0 --secure-port=0 \
  --use-service-account-credentials=true --service-account-private-key-file="$pki/sa.key" \
  --root-ca-file="$pki/ca.crt" --service-cluster-ip-range="$service_cidr" --profiling=false --v=1
launch kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig="$dir/scheduler.kubeconfig" --leader-elect=false --port=0 --secure-port=0 --profiling=false --v=1

# The dockershim socket path must fit a unix socket address (108 bytes).
shim_sock="$dir/dockershim/dockershim.sock"
[ ${#shim_sock} -lt 100 ] || shim_sock="/tmp/baton-k8s-dockershim-$(echo "$dir" | md5sum | cut -c1-12).sock"
cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: $docker_driver
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
makeIPTablesUtilChains: false
hairpinMode: none
volumePluginDir: $dir/kubelet/volume-plugins
# Never delete images of the shared dockerd (the project's images live there too) and evict only when nearly full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
# Check the node's status every 2 s instead of 10 s (it is sent only on a change or every 5 min): Ready comes sooner.
nodeStatusUpdateFrequency: 2s
EOF
launch kubelet "$bin/kubelet" \
  --config="$dir/kubelet/config.yaml" --kubeconfig="$dir/kubelet.kubeconfig" \
  --hostname-override="$node_name" --root-dir="$dir/kubelet" --cert-dir="$dir/kubelet/pki" \
  --container-runtime=docker --pod-infra-container-image="$pause_image" \
  --experimental-dockershim-root-directory="$dir/dockershim" --container-runtime-endpoint="unix://$shim_sock" \
  --oom-score-adj=0 --v=1

kubectl=("$bin/kubectl" --kubeconfig "$dir/kubeconfig")
node_ready() {
  [ "$("${kubectl[@]}" get node "$node_name" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
default_sa_ready() {  # the ServiceAccount admission plugin of 1.20 refuses pods until the account has its token
  [ -n "$("${kubectl[@]}" -n default get serviceaccount default -o 'jsonpath={.secrets[0].name}' 2>/dev/null)" ]
}
wait_for kubelet "node $node_name Ready" node_ready
echo "start-cluster: node $node_name Ready ($(elapsed))"
wait_for kube-controller-manager "the default ServiceAccount and its token" default_sa_ready
for p in kube-scheduler kube-controller-manager; do alive "$p" || fail "$p exited" "$logs/$p.log"; done

# KEY=value lines (no quoting needed: no value has spaces): `set -a; . DIR/cluster.env; set +a` in a shell.
cat >"$dir/cluster.env" <<EOF
KUBECONFIG=$dir/kubeconfig
KUBECTL=$bin/kubectl
BATON_K8S_API_URL=$api_url
BATON_K8S_API_PORT=$api_port
BATON_K8S_CA_FILE=$pki/ca.crt
BATON_K8S_TOKEN=$admin_token
BATON_K8S_NODE=$node_name
BATON_K8S_ETCD_URL=http://127.0.0.1:$etcd_port
EOF
echo "start-cluster: ready in $(elapsed): KUBECONFIG=$dir/kubeconfig, kubectl: $bin/kubectl"
