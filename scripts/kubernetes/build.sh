#!/usr/bin/env bash
# Build a single-node Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl) from
# Debian's `kubernetes` source package, for the Kubernetes agent's tests. No registry ships Kubernetes server
# binaries and the network reaches only package registries, so: apt (deb-src) for the source, Debian's Go for the
# toolchain, the source's own vendor/ for the Go dependencies (nothing is downloaded by `go`).
#
# Three patches are applied, by this script, to the unpacked source (see README.md for why):
#   reflect2:     vendor/github.com/modern-go/reflect2 (v1.0.1, crashes under Go >= 1.18) is replaced by Debian's
#                 golang-github-modern-go-reflect2-dev (1.0.2).
#   sandbox-oom:  dockershim's pod sandbox oom_score_adj (-998) becomes 0: this sandbox refuses negative values.
#   guaranteed-oom: containers of Guaranteed (and critical) pods get oom_score_adj 0 instead of -997, same reason.
#
# Idempotent, and a fast no-op when the binaries and a matching stamp file are already in place.
#
# Usage: scripts/kubernetes/build.sh [--force]
# env:   BATON_K8S_CACHE   cache directory (default /var/cache/baton-kubernetes): bin/, src/, go-build/
#        BATON_K8S_VERSION Debian source version to build (default: the newest apt knows, or the one built)
#        BATON_K8S_NICE    nice level of the build (default 10)
set -euo pipefail

cache="${BATON_K8S_CACHE:-/var/cache/baton-kubernetes}"
bin="$cache/bin"
stamp="$bin/.stamp"
nice_level="${BATON_K8S_NICE:-10}"
force=0
[ "${1:-}" = "--force" ] && force=1

# Bump PATCHSET whenever a patch (or anything else changing the binaries) changes: the stamp then no longer matches.
PATCHSET="reflect2-debian-1.0.2,dockershim-sandbox-oom-adj-0,guaranteed-oom-adj-0,pause-static-1"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
# Build: Go, the reflect2 replacement, dpkg-source (apt-get source), make/rsync/jq used by hack/, gcc + libc for
# cgo (kubelet) and the static pause binary. Run: etcd, openssl (certificates), docker (dockershim).
BUILD_PACKAGES=(golang-go golang-github-modern-go-reflect2-dev dpkg-dev make rsync jq gcc libc6-dev)
RUN_PACKAGES=(etcd-server openssl curl)
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2

t_total=$SECONDS
step_start=0
step() { step_start=$SECONDS; echo "==> $*"; }
done_step() { echo "    ($((SECONDS - step_start)) s)"; }

stamp_ok() {  # the binaries are there and were built with the current patch set (and the pinned version, if any)
  [ -f "$stamp" ] || return 1
  grep -qxF "patches=$PATCHSET" "$stamp" || return 1
  if [ -n "${BATON_K8S_VERSION:-}" ]; then grep -qxF "kubernetes=$BATON_K8S_VERSION" "$stamp" || return 1; fi
  local b
  for b in "${BINARIES[@]}" pause; do [ -x "$bin/$b" ] || return 1; done
}

missing_packages() {  # prints those of "$@" that dpkg does not have installed
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

apt_install() {
  local missing
  missing="$(missing_packages "$@")"
  [ -z "$missing" ] && return 0
  echo "    apt-get install: $(echo $missing)"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null; }
}

# ---- fast path -------------------------------------------------------------------------------------------------
if [ "$force" = 0 ] && stamp_ok && [ -z "$(missing_packages "${RUN_PACKAGES[@]}")" ]; then
  echo "kubernetes: up to date in $bin ($(grep '^kubernetes=' "$stamp"); patches=$PATCHSET) [$((SECONDS - t_total)) s]"
  exit 0
fi

mkdir -p "$bin" "$cache/src"
exec 9>"$cache/.build.lock"
if ! flock -n 9; then
  echo "kubernetes: another build holds $cache/.build.lock; waiting"
  flock 9
fi

# ---- 1. packages -----------------------------------------------------------------------------------------------
step "apt: packages and the deb-src entry"
apt_install "${RUN_PACKAGES[@]}"
if [ "$force" = 1 ] || ! stamp_ok; then
  apt_install "${BUILD_PACKAGES[@]}"
  if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
    # deb-src beside the existing deb entries (same mirror and suite as the first deb822 / one-line entry).
    src_list=/etc/apt/sources.list.d/baton-kubernetes-src.sources
    uri="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | head -n1 | awk '{print $2}')"
    suite="$(grep -hs '^Suites:' /etc/apt/sources.list.d/*.sources | head -n1 | awk '{print $2}')"
    if [ -z "$uri" ]; then
      read -r _ uri suite _ < <(grep -hsE '^deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | grep -v '\[.*\]' | head -n1)
    fi
    uri="${uri:-http://deb.debian.org/debian}"
    suite="${suite:-$(. /etc/os-release && echo "$VERSION_CODENAME")}"
    echo "    adding $src_list (deb-src $uri $suite main) and running apt-get update"
    cat >"$src_list" <<EOF
# Added by baton scripts/kubernetes/build.sh: Debian source packages (apt-get source kubernetes).
Types: deb-src
URIs: $uri
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -q >/dev/null
  fi
fi
done_step
if [ "$force" = 0 ] && stamp_ok; then
  echo "kubernetes: up to date in $bin; installed missing runtime packages [$((SECONDS - t_total)) s]"
  exit 0
fi

version="${BATON_K8S_VERSION:-$(apt-cache showsrc kubernetes | awk '/^Version:/ {print $2}' | sort -V | tail -n1)}"
[ -n "$version" ] || { echo "kubernetes: apt knows no source package 'kubernetes'" >&2; exit 1; }
upstream="${version#*:}"; upstream="${upstream%-*}"            # 1.20.5+really1.20.2
src="$cache/src/kubernetes-$upstream"
go_version="$(go version | awk '{print $3}')"
echo "kubernetes: Debian source $version, $go_version, patches $PATCHSET"

# ---- 2. source -------------------------------------------------------------------------------------------------
step "source: apt-get source kubernetes=$version"
if [ -f "$src/.baton-source-ok" ] && [ "$(cat "$src/.baton-source-ok")" = "$version" ]; then
  echo "    already unpacked in $src"
else
  rm -rf "$src" "$cache/src/download"
  mkdir -p "$cache/src/download"
  # apt's _apt user cannot write here; the download then runs as root (a warning, not an error).
  (cd "$cache/src/download" && apt-get source -q "kubernetes=$version" 2>&1 | grep -v '^dpkg-source: info: applying' | tail -n 3)
  mv "$cache/src/download/kubernetes-$upstream" "$src"
  rm -rf "$cache/src/download"
  echo "$version" >"$src/.baton-source-ok"
fi
done_step

# ---- 3. patches (idempotent: each one checks its result) ------------------------------------------------------
step "patches"
vendored="$src/vendor/github.com/modern-go/reflect2"
[ -f "$REFLECT2_SRC/go_above_118.go" ] || { echo "no reflect2 >= 1.0.2 in $REFLECT2_SRC" >&2; exit 1; }
if [ ! -f "$vendored/go_above_118.go" ]; then
  # Only the Go files: vendor/modules.txt keeps naming v1.0.1 (Go does not check vendored files against it), and a
  # go.mod inside vendor/ would be a module boundary.
  find "$vendored" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) -delete
  cp "$REFLECT2_SRC"/*.go "$REFLECT2_SRC"/*.s "$vendored/"
  echo "    reflect2: vendored v1.0.1 replaced by Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
else
  echo "    reflect2: already replaced"
fi
sandbox_go="$src/pkg/kubelet/dockershim/docker_sandbox.go"
if grep -qE '^\s*defaultSandboxOOMAdj int = -998$' "$sandbox_go"; then
  sed -i -E 's/^(\s*defaultSandboxOOMAdj int = )-998$/\10 \/\/ baton: was -998; this sandbox refuses a negative oom_score_adj/' "$sandbox_go"
  echo "    dockershim: defaultSandboxOOMAdj -998 -> 0"
elif grep -qE '^\s*defaultSandboxOOMAdj int = 0 ' "$sandbox_go"; then
  echo "    dockershim: defaultSandboxOOMAdj already 0"
else
  echo "    dockershim: defaultSandboxOOMAdj not found in $sandbox_go: the source changed, fix this patch" >&2
  exit 1
fi
qos_go="$src/pkg/kubelet/qos/policy.go"
unpatched="$(grep -cE '^\s*return guaranteedOOMScoreAdj$' "$qos_go" || true)"
if [ "$unpatched" = 2 ]; then
  # Only the two returns: the constant itself also bounds Burstable scores (>= 1000 + it) and must stay -997.
  sed -i -E 's/^(\s*)return guaranteedOOMScoreAdj$/\1return 0 \/\/ baton: was guaranteedOOMScoreAdj (-997); this sandbox refuses a negative oom_score_adj/' "$qos_go"
  echo "    kubelet qos: Guaranteed/critical containers' oom_score_adj -997 -> 0"
elif [ "$unpatched" = 0 ] && [ "$(grep -c 'return 0 // baton: was guaranteedOOMScoreAdj' "$qos_go")" = 2 ]; then
  echo "    kubelet qos: Guaranteed oom_score_adj already 0"
else
  echo "    kubelet qos: 'return guaranteedOOMScoreAdj' not as expected in $qos_go: the source changed, fix this patch" >&2
  exit 1
fi
done_step

# ---- 4. build ---------------------------------------------------------------------------------------------------
export GOCACHE="$cache/go-build" GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on GOTOOLCHAIN=local
export HOME="${HOME:-/root}" KUBE_VERBOSE=0
rm -f "$stamp"
for b in "${BINARIES[@]}"; do
  step "build: $b"
  (cd "$src" && nice -n "$nice_level" make WHAT="cmd/$b" >"$cache/build-$b.log" 2>&1) || {
    echo "build of $b failed; last lines of $cache/build-$b.log:" >&2
    tail -n 40 "$cache/build-$b.log" >&2
    exit 1
  }
  install -m 0755 "$src/_output/bin/$b" "$bin/$b.new" && mv -f "$bin/$b.new" "$bin/$b"
  done_step
done

step "build: pause (static C binary for the pod sandbox image)"
cat >"$cache/src/pause.c" <<'EOF'
/* Pod sandbox ("pause") process: sleeps until a signal ends it. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; exit(0); }
int main(void) {
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  for (;;) pause();
}
EOF
gcc -O2 -static -o "$bin/pause.new" "$cache/src/pause.c" && strip "$bin/pause.new" && mv -f "$bin/pause.new" "$bin/pause"
done_step

{
  echo "kubernetes=$version"
  echo "patches=$PATCHSET"
  echo "go=$go_version"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$stamp"
echo "kubernetes: built into $bin ($("$bin/kubectl" version --client --short 2>/dev/null || true)) in $((SECONDS - t_total)) s"
