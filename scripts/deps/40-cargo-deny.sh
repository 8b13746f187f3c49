#!/usr/bin/env bash
# cargo-deny for the supply-chain check in .ci/run (deny.toml: bans, licences
# and sources). Built from crates.io with its own lock file into the tools
# directory; nothing happens when that version is already there.
set -euo pipefail
tools="${SESAME_TOOLS:?}"
version="0.20.2"
if [ "$("$tools/bin/cargo-deny" --version 2>/dev/null)" = "cargo-deny $version" ]; then
  exit 0
fi
cargo install --locked --quiet --root "$tools" --version "$version" cargo-deny
"$tools/bin/cargo-deny" --version
