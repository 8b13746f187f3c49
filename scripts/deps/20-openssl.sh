#!/usr/bin/env bash
# openssl generates the RSA key of the GCP service-account test (ring, the
# store's signer, cannot generate RSA keys). Installed from Debian if missing.
set -euo pipefail
command -v openssl >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # A fresh machine may have empty package lists: update once, then retry.
  apt-get install -y --no-install-recommends openssl >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y --no-install-recommends openssl >/dev/null; }
else
  echo "openssl is missing: install the Debian package 'openssl'" >&2
fi
