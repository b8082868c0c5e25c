#!/usr/bin/env bash
# The whole test run: install what is missing, then lint, typecheck, build, unit, integration, lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-host.sh
export TEST_AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}"

echo "== lint"; npx biome check .
echo "== typecheck"; npx tsc -p tsconfig.json --noEmit
echo "== build"; npx tsc -p tsconfig.build.json
echo "== unit + integration"; npx vitest run
if [ -f test/lab/run-suites.sh ]; then
  echo "== lab (real LVM in a VM)"; bash test/lab/run-suites.sh
  # A sample of the power-cut matrix (one boot per cut; the full run is npm run test:powercut).
  echo "== lab power cuts (sample)"; node --import tsx test/lab/powercut/run.ts --cuts 10 --seed 21 --out .lab-cache/powercut-sample.json
fi
