#!/usr/bin/env bash
# Make the base image `python:3.11-slim` in the local Docker daemon when it is missing, without a registry:
# a minimal Debian bookworm with Python 3.11 and venv (mmdebstrap), imported with `docker import`.
# An existing image of that name (made here or pulled from a registry) is kept. Needs root (or user namespaces)
# for mmdebstrap, and a reachable Debian mirror (the host's apt sources).
#
# Usage: scripts/docker/base-image.sh [TAG]        (default python:3.11-slim)
set -euo pipefail

tag="${1:-python:3.11-slim}"
suite="${BATON_BASE_SUITE:-bookworm}"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag: already in the local daemon, kept"
  exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "base image $tag: missing, and mmdebstrap is not installed to make it (apt-get install mmdebstrap)" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "base image $tag: missing; building Debian $suite with python3 and python3-venv (mmdebstrap, ~30 s)"
start=$SECONDS
# Documentation, manual pages and translations are left out (dpkg path-exclude): nothing in a container reads them.
mmdebstrap --quiet --variant=essential --include=python3,python3-venv,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  "$suite" "$work/rootfs.tar"
echo "base image $tag: rootfs ready after $((SECONDS - start)) s, importing"
# An imported image has no configuration: give it the PATH and locale the official image has.
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$work/rootfs.tar" "$tag" >/dev/null
echo "base image $tag: imported after $((SECONDS - start)) s ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%d MB", $1 / 1e6}'))"
