// Ping latency of a real agent process against the local broker.
//   npm run bench:ping -- [--count 1000] [--concurrency 1,16] [--tsx]
// Starts the agent as a child (node dist/main.js after a build, or src/main.ts through tsx with
// --tsx), sends `count` agent.ping commands per concurrency level, and reports publish→accepted
// and publish→terminal latency (p50/p99/max) and the agent's peak RSS (VmHWM). Targets: p99 ≤ 50 ms,
// RSS ≤ 120 MB. Exchanges, queues and the temp state dir are unique and removed at the end.
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
    count: { type: 'string', default: '1000' },
    concurrency: { type: 'string', default: '1,16' },
    url: { type: 'string', default: process.env.TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672' },
    tsx: { type: 'boolean', default: false },
  },
});
const count = Number(args.count);
const levels = args.concurrency.split(',').map(Number);
const brokerUrl = args.url;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  await new Promise((r) => server.close(r));
  return port;
}

async function vm(pid: number): Promise<{ hwmMb: number; rssMb: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { hwmMb: kb('VmHWM') / 1024, rssMb: kb('VmRSS') / 1024 };
}

async function main(): Promise<void> {
  const suffix = `bench-${process.pid}-${randomBytes(3).toString('hex')}`;
  const work = await mkdtemp(join(tmpdir(), 'ping-bench-'));
  const port = await freePort();
  const config = {
    hostId: suffix,
    broker: { urls: [brokerUrl] },
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

  let entry = ['--import', 'tsx', 'src/main.ts'];
  if (!args.tsx) {
    try {
      execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
      entry = ['dist/main.js'];
    } catch {
      console.error('build failed: running src/main.ts through tsx instead (RSS includes the tsx loader)');
    }
  }
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AGENT_')));
  const child: ChildProcess = spawn(process.execPath, entry, {
    cwd: ROOT,
    env: { ...env, AGENT_CONFIG: configFile },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));

  const conn = await connect(brokerUrl);
  try {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const ready = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
      if (ready?.status === 200) break;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error('the agent did not become ready');
      await new Promise((r) => setTimeout(r, 100));
    }
    const ch = await conn.createChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    await ch.bindQueue(queue, config.topology.eventsExchange, `${suffix}.agent.*`);
    const sentAt = new Map<string, number>();
    const accepted = new Map<string, number>();
    const terminal = new Map<string, number>();
    const waiters = new Map<string, () => void>();
    await ch.consume(
      queue,
      (m) => {
        if (!m) return;
        const now = performance.now();
        const event = JSON.parse(m.content.toString()) as AgentEvent;
        const id = event.correlationid;
        const start = sentAt.get(id);
        if (start === undefined) return;
        if (event.type.endsWith('.accepted')) accepted.set(id, now - start);
        else if (event.type.endsWith('.succeeded') || event.type.endsWith('.failed')) {
          terminal.set(id, now - start);
          waiters.get(id)?.();
        }
      },
      { noAck: true },
    );
    const ping = (id: string) =>
      new Promise<void>((resolve) => {
        waiters.set(id, resolve);
        sentAt.set(id, performance.now());
        ch.publish(
          config.topology.commandsExchange,
          suffix,
          Buffer.from(JSON.stringify({ id, type: 'agent.ping', params: {} })),
          {
            messageId: id,
            contentType: 'application/json',
            persistent: true,
          },
        );
      });

    const t0 = performance.now();
    await ping('warmup');
    const coldMs = performance.now() - t0;
    const results: Array<Record<string, number>> = [];
    for (const concurrency of levels) {
      for (const m of [sentAt, accepted, terminal]) m.clear();
      let next = 0;
      const started = performance.now();
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < count) {
            const id = `ping-c${concurrency}-${next++}`;
            await ping(id);
          }
        }),
      );
      const seconds = (performance.now() - started) / 1000;
      const acc = [...accepted.values()].sort((a, b) => a - b);
      const term = [...terminal.values()].sort((a, b) => a - b);
      results.push({
        concurrency,
        pings: term.length,
        perSecond: Math.round(term.length / seconds),
        acceptedP50: percentile(acc, 50),
        acceptedP99: percentile(acc, 99),
        terminalP50: percentile(term, 50),
        terminalP99: percentile(term, 99),
        terminalMax: term.at(-1) ?? Number.NaN,
      });
    }
    const mem = await vm(child.pid!);
    const fmt = (n: number) => n.toFixed(1);
    console.log(`\nagent: ${entry.join(' ')}; first ping (cold capability probe): ${fmt(coldMs)} ms`);
    console.log('concurrency | pings | pings/s | accepted p50 / p99 ms | terminal p50 / p99 / max ms');
    for (const r of results) {
      console.log(
        `${String(r.concurrency).padStart(11)} | ${String(r.pings).padStart(5)} | ${String(r.perSecond).padStart(7)} | ` +
          `${fmt(r.acceptedP50!)} / ${fmt(r.acceptedP99!)}`.padStart(21) +
          ` | ${fmt(r.terminalP50!)} / ${fmt(r.terminalP99!)} / ${fmt(r.terminalMax!)}`,
      );
    }
    console.log(`agent peak RSS (VmHWM): ${fmt(mem.hwmMb)} MB; RSS now: ${fmt(mem.rssMb)} MB`);
    console.log(JSON.stringify({ coldMs, results, peakRssMb: mem.hwmMb }));
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
