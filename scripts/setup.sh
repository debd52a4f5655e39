#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with tlcore, its plugins
# and the test tools, at the pinned versions in constraints.txt. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# uv installs the ~2 GB torch stack in seconds where pip takes minutes.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.4"

packages=(-e ".[dev]")
for plugin in plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] && packages+=(-e "$plugin")
done
.venv/bin/python -m uv pip install --quiet --python .venv/bin/python \
    --constraint constraints.txt "${packages[@]}"
