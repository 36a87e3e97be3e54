#!/usr/bin/env bash
# Makes (once) the virtual environment with Prefect 1 that tests/prefect1 drive: .cache/prefect1-venv, or $1.
# A no-op while its stamp matches requirements.txt; remade when the requirements change.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../.cache/prefect1-venv}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp="$venv/.requirements"
if [ -x "$venv/bin/prefect" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$here/requirements.txt"; then
  exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
"$venv/bin/prefect" version >/dev/null
cp "$here/requirements.txt" "$stamp"
