// Memory of one agent process: RSS after start and after N commands (issue 13: ≤ 80 MB both).
//   npm run bench:memory -- [--count 10000] [--concurrency 32] [--node-flags "--max-semi-space-size=1"]
// Builds, starts `node [flags] dist/main.js` against the local broker with unique names, waits
// until ready and idle, reads VmRSS (and heap from /metrics), sends `count` agent.ping commands
// with `concurrency` outstanding, reads again 5 s and 30 s after the last answer. Environment
// variables (e.g. MALLOC_ARENA_MAX) pass through to the agent. Names and temp dirs are removed.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connect } from 'amqplib';
import type { AgentEvent } from '../src/protocol/index.js';
import { agentEnv, agentWorkDir, stopAndRemove, waitReady } from './agent-process.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const { values: args } = parseArgs({
  options: {
    count: { type: 'string', default: '10000' },
    concurrency: { type: 'string', default: '32' },
    'node-flags': { type: 'string', default: '' },
    url: { type: 'string', default: process.env.TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672' },
    'no-build': { type: 'boolean', default: false },
    /** Also write a heap snapshot of the agent after the commands (into the temp dir, path printed). */
    'heap-snapshot': { type: 'boolean', default: false },
  },
});
const count = Number(args.count);
const concurrency = Number(args.concurrency);
const nodeFlags = args['node-flags'].split(' ').filter((f) => f !== '');

interface Sample {
  rssMb: number;
  hwmMb: number;
  anonMb: number;
  fileMb: number;
  heapUsedMb: number;
  heapTotalMb: number;
}

async function sample(pid: number, port: number): Promise<Sample> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const gauge = (name: string) =>
    Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1] ?? Number.NaN);
  return {
    rssMb: kb('VmRSS') / 1024,
    hwmMb: kb('VmHWM') / 1024,
    anonMb: kb('RssAnon') / 1024,
    fileMb: kb('RssFile') / 1024,
    heapUsedMb: gauge('clvm_agent_nodejs_heap_size_used_bytes') / 1048576,
    heapTotalMb: gauge('clvm_agent_nodejs_heap_size_total_bytes') / 1048576,
  };
}

const settle = () => new Promise((r) => setTimeout(r, 5000));

async function main(): Promise<void> {
  const agent = await agentWorkDir('clvm13mem', args.url);
  const { suffix, work, port, config, configFile } = agent;
  if (!args['no-build'])
    execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  const snapshotFlags = args['heap-snapshot']
    ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${work}`]
    : [];
  const child: ChildProcess = spawn(
    process.execPath,
    [...nodeFlags, ...snapshotFlags, join(ROOT, 'dist/main.js')],
    {
      cwd: work,
      env: agentEnv(configFile),
      stdio: ['ignore', 'inherit', 'inherit'],
    },
  );
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const conn = await connect(args.url);
  try {
    await waitReady(port, child);
    await settle();
    const afterStart = await sample(child.pid!, port);

    const ch = await conn.createChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    await ch.bindQueue(queue, config.topology.eventsExchange, `${suffix}.agent.*`);
    const waiters = new Map<string, () => void>();
    await ch.consume(
      queue,
      (m) => {
        if (!m) return;
        const event = JSON.parse(m.content.toString()) as AgentEvent;
        if (/\.(succeeded|failed|rejected)$/.test(event.type)) waiters.get(event.correlationid)?.();
      },
      { noAck: true },
    );
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < count) {
          const id = `m-${next++}`;
          await new Promise<void>((resolve) => {
            waiters.set(id, () => {
              waiters.delete(id);
              resolve();
            });
            ch.publish(
              config.topology.commandsExchange,
              suffix,
              Buffer.from(JSON.stringify({ id, type: 'agent.ping', params: {} })),
              { messageId: id, contentType: 'application/json', persistent: true },
            );
          });
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    await settle();
    const afterCommands = await sample(child.pid!, port);
    // V8's memory reducer shrinks the heap once the process has been idle for a while.
    await new Promise((r) => setTimeout(r, 25_000));
    const afterIdle = await sample(child.pid!, port);
    if (args['heap-snapshot']) {
      child.kill('SIGUSR2');
      const keep = join(tmpdir(), `agent-${count}.heapsnapshot`);
      for (;;) {
        await new Promise((r) => setTimeout(r, 1000));
        const { readdir, rename, stat } = await import('node:fs/promises');
        const file = (await readdir(work)).find((f) => f.endsWith('.heapsnapshot'));
        if (!file) continue;
        const size = (await stat(join(work, file))).size;
        await new Promise((r) => setTimeout(r, 1000));
        if ((await stat(join(work, file))).size !== size) continue;
        await rename(join(work, file), keep);
        console.log(`heap snapshot: ${keep}`);
        break;
      }
    }
    const f = (n: number) => n.toFixed(1);
    const line = (s: Sample) =>
      `RSS ${f(s.rssMb)} MB (anon ${f(s.anonMb)}, file ${f(s.fileMb)}), heap used ${f(s.heapUsedMb)} / total ${f(s.heapTotalMb)} MB`;
    console.log(`node ${process.version} ${nodeFlags.join(' ')} dist/main.js`);
    console.log(`after start:           ${line(afterStart)}`);
    console.log(`after ${count} commands: ${line(afterCommands)}; peak RSS ${f(afterCommands.hwmMb)} MB`);
    console.log(`30 s later (idle):     ${line(afterIdle)}`);
    console.log(`(${Math.round(count / seconds)} commands/s at ${concurrency} outstanding)`);
    console.log(
      JSON.stringify({ node: process.version, nodeFlags, count, afterStart, afterCommands, afterIdle }),
    );
    await ch.close();
  } finally {
    await stopAndRemove(child, exited, conn, agent);
  }
}

await main();
