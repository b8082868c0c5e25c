#!/usr/bin/env bash
# npm run demo: install what is missing, build, start the agent against the local RabbitMQ with a
# temp state dir, send it a ping and a snapshot.create (a QCOW2 file in a temp file pool), print
# every event it publishes, then stop it (SIGTERM) and clean up. Exits non-zero if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-host.sh
echo "== build"
npx tsc -p tsconfig.build.json

BROKER_URL="${DEMO_BROKER_URL:-${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}}"
HOST_ID="demo-$$"
WORK="$(mktemp -d /tmp/clvm-demo.XXXXXX)"
AGENT_PID=""
WATCH_PID=""

cleanup() {
  local status=$?
  [ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null || true
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
  fi
  # The per-host queue is the demo's own; the exchanges are the agent's standard topology.
  node --input-type=module -e "
    import { connect } from 'amqplib';
    const c = await connect(process.argv[1]); const ch = await c.createChannel();
    await ch.deleteQueue('clvm.agent.' + process.argv[2]); await c.close();
  " "$BROKER_URL" "$HOST_ID" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT INT TERM

HTTP_PORT="$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")"
mkdir -p "$WORK/state" "$WORK/store" "$WORK/pools/pool1"
qemu-img create -q -f qcow2 "$WORK/pools/pool1/vol-1.qcow2" 16M
qemu-io -f qcow2 -c 'write -q -P 0xab 0 1M' "$WORK/pools/pool1/vol-1.qcow2" >/dev/null

cat >"$WORK/agent.json" <<EOF
{
  "hostId": "$HOST_ID",
  "broker": { "urls": ["$BROKER_URL"] },
  "stateDir": "$WORK/state",
  "store": { "roots": ["$WORK/store"] },
  "pools": { "fileRoots": ["$WORK/pools"] },
  "limits": { "progressIntervalMs": 200, "shutdownGraceMs": 30000 },
  "http": { "host": "127.0.0.1", "port": $HTTP_PORT },
  "log": { "level": "warn" }
}
EOF
export AGENT_CONFIG="$WORK/agent.json"

echo "== start the agent (host id $HOST_ID, state in $WORK/state)"
node dist/main.js &
AGENT_PID=$!
# Ready = consumer registered on the host queue and publisher connected (GET /readyz answers 200).
node -e "
  const url = 'http://127.0.0.1:' + process.argv[1] + '/readyz';
  const until = Date.now() + 60000;
  (async () => {
    for (;;) {
      const r = await fetch(url).catch(() => undefined);
      if (r && r.status === 200) { console.log('agent ready: ' + url); return; }
      if (Date.now() > until) { console.error('agent not ready after 60 s'); process.exit(1); }
      await new Promise((res) => setTimeout(res, 200));
    }
  })();
" "$HTTP_PORT"

snapctl() { node dist/snapctl.js "$@"; }

# Print every event of this host while the demo runs (one line per event).
snapctl --host "$HOST_ID" --json watch >"$WORK/events.jsonl" 2>"$WORK/watch.err" &
WATCH_PID=$!

echo "== agent.ping"
snapctl --timeout 30 ping
echo "== snapshot.create of $WORK/pools/pool1/vol-1.qcow2"
# A real offline snapshot of the file volume into the store (the engine registered in src/main.ts).
snapctl --timeout 60 snapshot create \
  --volume "file:$WORK/pools/pool1/vol-1.qcow2" \
  --store-root "$WORK/store" --store-dir vol-1 --snapshot snap-1 || echo "(snapshot.create did not succeed: see its events below)"

sleep 1
echo "== events the agent published (topic exchange clvm.events, $HOST_ID.#)"
node --input-type=module -e "
  import { readFileSync } from 'node:fs';
  for (const line of readFileSync(process.argv[1], 'utf8').split('\n').filter(Boolean)) {
    const e = JSON.parse(line); const ev = e.event ?? e;
    const d = ev.data ?? {};
    const what = d.error ? d.error.code + ': ' + d.error.message
      : d.result ? JSON.stringify(d.result).slice(0, 160)
      : d.step ? d.step + ' ' + (d.percent ?? '') : '';
    console.log([ev.sequence, ev.type?.replace('io.clvm.snapshot-agent.', ''), ev.correlationid, what].join('  '));
  }
" "$WORK/events.jsonl"

echo "== stop the agent (SIGTERM: graceful)"
kill -TERM "$AGENT_PID"
wait "$AGENT_PID"
AGENT_PID=""
echo "== done"
