#!/usr/bin/env bash
# Runs Sesame's whole test suite on a fresh machine: installs what the tests
# need (each scripts/deps/*.sh installs one tool into .tools/, idempotently),
# puts it on PATH and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export SESAME_TOOLS="$root/.tools"
mkdir -p "$SESAME_TOOLS/bin"
export PATH="$SESAME_TOOLS/bin:$SESAME_TOOLS/venv/bin:$PATH"
for dep in scripts/deps/*.sh; do
  [ -e "$dep" ] || continue
  echo "== installing test dependency: $(basename "$dep" .sh)"
  bash "$dep"
done
# Tests that need an installed tool fail instead of skipping when this is set.
export SESAME_REQUIRE_TOOLS=1
if [ -z "${SESAME_E2E_KUBECONFIG:-}" ]; then
  echo "== end-to-end suites against a real API server skip: SESAME_E2E_KUBECONFIG is not set (docs/e2e.md)"
fi
if [ -z "${SESAME_E2E_NODE_KUBECONFIG:-}" ]; then
  echo "== the real-node suite skips: SESAME_E2E_NODE_KUBECONFIG is not set (docs/e2e.md)"
fi
cargo test --locked --lib --bins --tests "$@"
