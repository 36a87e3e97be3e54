#!/usr/bin/env bash
# Makes (once) the Docker image that runs Prefect 1 flows in tests/prefect1: baton-prefect1:1.4.1, or $1.
# Prefect 1's wheels are fetched on the host (the package index, cached in .cache/prefect1-wheels); the image is built
# from the local base python:3.11-slim (scripts/docker/base-image.sh) with no network inside the build.
# A no-op while an image of that tag exists, built from the same requirements.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
tag="${1:-baton-prefect1:1.4.1}"
base="${BATON_PREFECT1_BASE:-python:3.11-slim}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
digest="$(sha256sum "$here/requirements.txt" | cut -c1-16)"
if [ "$(docker image inspect --format '{{index .Config.Labels "io.baton.requirements"}}' "$tag" 2>/dev/null)" = "$digest" ]; then
  exit 0
fi
wheels="$root/.cache/prefect1-wheels"
mkdir -p "$wheels"
"$python" -m pip wheel --quiet --wheel-dir "$wheels" -r "$here/requirements.txt"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp -r "$wheels" "$context/wheels"
cp "$here/requirements.txt" "$context/requirements.txt"
cat > "$context/Dockerfile" <<DOCKERFILE
FROM $base
COPY wheels /tmp/wheels
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/prefect \\
 && /opt/prefect/bin/pip install --quiet --no-index --find-links /tmp/wheels -r /tmp/requirements.txt \\
 && rm -rf /tmp/wheels /root/.cache
ENV PATH=/opt/prefect/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL io.baton.requirements=$digest
DOCKERFILE
if ! docker build --quiet --network none --tag "$tag" "$context" >"$context/build.log" 2>&1; then
  cat "$context/build.log" >&2
  exit 1
fi
echo "image $tag: built ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%d MB", $1 / 1e6}'))"
