// Ping latency of a real agent process against the local broker.
//   npm run bench:ping -- [--count 1000] [--concurrency 1,16] [--tsx]
// Starts the agent as a child (node dist/main.js after a build, or src/main.ts through tsx with
// --tsx), sends `count` agent.ping commands per concurrency level, and reports publish→accepted
// and publish→terminal latency (p50/p99/max) and the agent's peak RSS (VmHWM). Targets: p99 ≤ 50 ms,
// RSS ≤ 120 MB. Exchanges, queues and the temp state dir are unique and removed at the end.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connect } from 'amqplib';
import type { AgentEvent } from '../src/protocol/index.js';
import { agentEnv, agentWorkDir, stopAndRemove, waitReady } from './agent-process.js';

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

async function vm(pid: number): Promise<{ hwmMb: number; rssMb: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { hwmMb: kb('VmHWM') / 1024, rssMb: kb('VmRSS') / 1024 };
}

async function main(): Promise<void> {
  const agent = await agentWorkDir('bench', brokerUrl);
  const { suffix, port, config, configFile } = agent;

  let entry = ['--import', 'tsx', 'src/main.ts'];
  if (!args.tsx) {
    try {
      execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
      entry = ['dist/main.js'];
    } catch {
      console.error('build failed: running src/main.ts through tsx instead (RSS includes the tsx loader)');
    }
  }
  const child: ChildProcess = spawn(process.execPath, entry, {
    cwd: ROOT,
    env: agentEnv(configFile),
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));

  const conn = await connect(brokerUrl);
  try {
    await waitReady(port, child);
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
    await stopAndRemove(child, exited, conn, agent);
  }
}

await main();
