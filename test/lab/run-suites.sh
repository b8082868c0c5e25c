#!/usr/bin/env bash
# The lab suites (test/lab/suites/*.test.ts, real LVM) inside the lab guest: builds or reuses the guest,
# boots it and runs vitest with test/lab/vitest.lab.config.ts there. Extra arguments go to vitest
# (e.g. a file filter: `bash test/lab/run-suites.sh lvm`). Exit code: vitest's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
[ -d node_modules/vitest ] || { echo "lab: node_modules is missing: run scripts/ensure-host.sh (npm ci) first" >&2; exit 1; }
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done
exec bash "$here/run.sh" --timeout "${LAB_SUITES_TIMEOUT:-1800}" -- \
  "node node_modules/vitest/vitest.mjs run --config test/lab/vitest.lab.config.ts$args"
