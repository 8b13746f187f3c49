#!/usr/bin/env bash
# moto's server mode for the AWS Secrets Manager store tests (`moto_server`).
set -euo pipefail
venv="${SESAME_TOOLS:?}/venv"
if [ ! -x "$venv/bin/moto_server" ]; then
  "$venv/bin/pip" install --quiet "moto[server]>=5.0"
fi
"$venv/bin/python" -c 'import moto; print("moto", moto.__version__)'
