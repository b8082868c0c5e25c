// Memory of one agent process: RSS after start and after N commands (issue 13: ≤ 80 MB both).
//   npm run bench:memory -- [--count 10000] [--concurrency 32] [--node-flags "--max-semi-space-size=1"]
// Builds, starts `node [flags] dist/main.js` against the local broker with unique names, waits
// until ready and idle, reads VmRSS (and heap from /metrics), sends `count` agent.ping commands
// with `concurrency` outstanding, reads again 5 s and 30 s after the last answer. Environment
// variables (e.g. MALLOC_ARENA_MAX) pass through to the agent. Names and temp dirs are removed.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connect } from 'amqplib';
import type { AgentEvent } from '../src/protocol/index.js';

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

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  await new Promise((r) => server.close(r));
  return port;
}

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
  const suffix = `clvm13mem-${process.pid}-${randomBytes(3).toString('hex')}`;
  const work = await mkdtemp(join(tmpdir(), 'mem-bench-'));
  const port = await freePort();
  const config = {
    hostId: suffix,
    broker: { urls: [args.url] },
    topology: {
      commandsExchange: `${suffix}.commands`,
      eventsExchange: `${suffix}.events`,
      queuePrefix: `${suffix}.agent.`,
      deadLetterExchange: `${suffix}.dlx`,
      deadLetterQueue: `${suffix}.dead`,
    },
    stateDir: join(work, 'state'),
    store: { roots: [join(work, 'store')] },
    pools: { fileRoots: [join(work, 'pools')] },
    http: { host: '127.0.0.1', port },
    log: { level: 'warn' },
  };
  const configFile = join(work, 'config.json');
  await writeFile(configFile, JSON.stringify(config));
  if (!args['no-build'])
    execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AGENT_')));
  const snapshotFlags = args['heap-snapshot']
    ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${work}`]
    : [];
  const child: ChildProcess = spawn(
    process.execPath,
    [...nodeFlags, ...snapshotFlags, join(ROOT, 'dist/main.js')],
    {
      cwd: work,
      env: { ...env, AGENT_CONFIG: configFile },
      stdio: ['ignore', 'inherit', 'inherit'],
    },
  );
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const conn = await connect(args.url);
  try {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const ready = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
      if (ready?.status === 200) break;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error('the agent did not become ready');
      await new Promise((r) => setTimeout(r, 100));
    }
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
    child.kill('SIGTERM');
    await exited;
    const ch = await conn.createChannel();
    await ch.deleteQueue(`${suffix}.agent.${suffix}`);
    await ch.deleteQueue(config.topology.deadLetterQueue);
    for (const x of [
      config.topology.commandsExchange,
      config.topology.eventsExchange,
      config.topology.deadLetterExchange,
    ]) {
      await ch.deleteExchange(x);
    }
    await conn.close();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
