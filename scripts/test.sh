#!/usr/bin/env bash
# The whole test run: install what is missing, then lint, typecheck, build, unit, integration, lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-host.sh
export TEST_AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}"
# Each phase's start, with the seconds since the run began (SECONDS: bash's own clock), to see where time goes.
phase() { echo "== $1 (at ${SECONDS} s, $(date -u +%T) UTC)"; }

phase lint; npx biome check .
phase typecheck; npx tsc -p tsconfig.json --noEmit
phase build; npx tsc -p tsconfig.build.json
phase "unit + integration"; npx vitest run
if [ -f test/lab/run-suites.sh ]; then
  phase "lab (real LVM in a VM)"; bash test/lab/run-suites.sh
  # A sample of the power-cut matrix (one boot per cut; the full run is npm run test:powercut).
  phase "lab power cuts (sample)"; node --import tsx test/lab/powercut/run.ts --cuts 10 --seed 21 --out .lab-cache/powercut-sample.json
fi
phase done
