// Fleet benchmark (issue 13): N simulated hosts against the 3-node cluster of
// scripts/rabbit-cluster.sh, plus a management-plane simulator.
//   npm run bench:fleet -- [--hosts 250,500,1000,1500] [--per-process 100] [--rates 1,10,100] [--seconds 15]
// For each fleet size (hosts are added, never restarted): fork processes of simulated hosts
// (bench/fleet-worker.ts: each host is the agent's real consumer, intake, journal, scheduler and
// publisher with an instant agent.ping), wait until every consumer is registered, read the
// broker's memory breakdown (rabbit_vm:memory() and the beams' RSS, summed over the nodes) and the
// workers' RSS; then the management plane sends agent.ping to random hosts at each fleet-wide
// rate for `seconds`, subscribed to all events on one queue, and records command→accepted and
// command→terminal latency. The cluster is stopped at the end unless --keep-cluster.
import { type ChildProcess, fork } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type ChannelModel, type ConfirmChannel, connect } from 'amqplib';
import type { AgentEvent } from '../src/protocol/index.js';
import { CLUSTER_URLS, cluster, NODES } from '../test/support/cluster.js';
import type { WorkerMessage, WorkerStart } from './fleet-worker.js';

const { values: args } = parseArgs({
  options: {
    hosts: { type: 'string', default: '250,500,1000,1500' },
    'per-process': { type: 'string', default: '100' },
    rates: { type: 'string', default: '1,10,100' },
    seconds: { type: 'string', default: '15' },
    'keep-cluster': { type: 'boolean', default: false },
  },
});
const steps = args.hosts.split(',').map(Number);
const perProcess = Number(args['per-process']);
const rates = args.rates.split(',').map(Number);
const seconds = Number(args.seconds);
const WORKER = fileURLToPath(new URL('./fleet-worker.ts', import.meta.url));

const topology: WorkerStart['topology'] = {
  commandsExchange: 'fleet.commands',
  eventsExchange: 'fleet.events',
  queuePrefix: 'fleet.agent.',
  deadLetterExchange: 'fleet.dlx',
  deadLetterQueue: 'fleet.dead',
  deliveryLimit: 5,
};

function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/**
 * Broker memory summed over the three nodes: rabbit_vm:memory() categories (bytes, what RabbitMQ's
 * own memory breakdown reports) and the beam processes' RSS (MB).
 */
interface BrokerMemory {
  rssMb: number;
  erlangMb: number;
  /** connection_readers + writers + channels + other. */
  connectionsMb: number;
  /** quorum_queue_procs + quorum_ets. */
  quorumMb: number;
  binaryMb: number;
}

async function brokerMemory(): Promise<BrokerMemory> {
  const sum: BrokerMemory = { rssMb: 0, erlangMb: 0, connectionsMb: 0, quorumMb: 0, binaryMb: 0 };
  for (const n of NODES) {
    const out = await cluster.slowCtl(n, 300_000, 'eval', 'rabbit_vm:memory().');
    const item = (key: string) => Number(new RegExp(`\\{${key},(\\d+)\\}`).exec(out)?.[1] ?? 0) / 1048576;
    sum.erlangMb += item('erlang');
    sum.connectionsMb += [
      'connection_readers',
      'connection_writers',
      'connection_channels',
      'connection_other',
    ]
      .map(item)
      .reduce((a, b) => a + b, 0);
    sum.quorumMb += item('quorum_queue_procs') + item('quorum_ets');
    sum.binaryMb += item('binary');
    const pid = (await cluster.pid(n)).trim();
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    sum.rssMb += Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0) / 1024;
  }
  return sum;
}

class Worker {
  readonly child: ChildProcess;
  private readonly waiters: Array<(m: WorkerMessage) => void> = [];
  constructor() {
    this.child = fork(WORKER, [], { execArgv: ['--import', 'tsx', '--expose-gc'], stdio: 'inherit' });
    this.child.on('message', (m) => this.waiters.shift()?.(m as WorkerMessage));
  }
  ask(msg: unknown): Promise<WorkerMessage> {
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.child.send(msg as object);
    });
  }
}

/** The management plane: sends commands with confirms, follows every event on one queue. */
class ManagementPlane {
  readonly sentAt = new Map<string, number>();
  readonly accepted = new Map<string, number>();
  readonly terminal = new Map<string, number>();
  private constructor(
    private readonly model: ChannelModel,
    private readonly ch: ConfirmChannel,
  ) {}

  static async open(): Promise<ManagementPlane> {
    const model = await connect(CLUSTER_URLS[0]!);
    const ch = await model.createConfirmChannel();
    const sub = await model.createChannel();
    await sub.assertExchange(topology.eventsExchange, 'topic', { durable: true });
    await sub.assertExchange(topology.commandsExchange, 'direct', { durable: true });
    const { queue } = await sub.assertQueue('', { exclusive: true });
    await sub.bindQueue(queue, topology.eventsExchange, '#');
    const plane = new ManagementPlane(model, ch);
    await sub.consume(
      queue,
      (m) => {
        if (!m) return;
        const now = performance.now();
        const event = JSON.parse(m.content.toString()) as AgentEvent;
        const at = plane.sentAt.get(event.correlationid);
        if (at === undefined) return;
        if (event.type.endsWith('.accepted')) plane.accepted.set(event.correlationid, now - at);
        else if (/\.(succeeded|failed|rejected)$/.test(event.type))
          plane.terminal.set(event.correlationid, now - at);
      },
      { noAck: true },
    );
    return plane;
  }

  send(hostId: string, id: string): void {
    this.sentAt.set(id, performance.now());
    const body = Buffer.from(JSON.stringify({ id, type: 'agent.ping', params: {} }));
    this.ch.publish(topology.commandsExchange, hostId, body, {
      messageId: id,
      persistent: true,
      contentType: 'application/json',
    });
  }

  async close(): Promise<void> {
    await this.model.close().catch(() => undefined);
  }
}

interface RateResult {
  hosts: number;
  rate: number;
  sent: number;
  answered: number;
  acceptedP50: number;
  acceptedP99: number;
  terminalP50: number;
  terminalP99: number;
  terminalMax: number;
}

async function runRate(
  plane: ManagementPlane,
  hostIds: string[],
  hosts: number,
  rate: number,
): Promise<RateResult> {
  const ids: string[] = [];
  const total = Math.max(1, Math.round(rate * seconds));
  const t0 = performance.now();
  for (let i = 0; i < total; i++) {
    const due = t0 + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const id = `f${hosts}-r${rate}-${i}`;
    ids.push(id);
    plane.send(hostIds[Math.floor(Math.random() * hostIds.length)]!, id);
  }
  const until = Date.now() + 30_000;
  while (ids.some((id) => !plane.terminal.has(id)) && Date.now() < until)
    await new Promise((r) => setTimeout(r, 100));
  const acc = ids.flatMap((id) => (plane.accepted.has(id) ? [plane.accepted.get(id)!] : []));
  const term = ids.flatMap((id) => (plane.terminal.has(id) ? [plane.terminal.get(id)!] : []));
  return {
    hosts,
    rate,
    sent: ids.length,
    answered: term.length,
    acceptedP50: percentile(acc, 50),
    acceptedP99: percentile(acc, 99),
    terminalP50: percentile(term, 50),
    terminalP99: percentile(term, 99),
    terminalMax: percentile(term, 100),
  };
}

async function main(): Promise<void> {
  const t0 = Date.now();
  await cluster.start();
  const base = await brokerMemory();
  const plane = await ManagementPlane.open();
  const stateRoot = await mkdtemp(join(tmpdir(), 'fleet-'));
  const workers: Worker[] = [];
  const hostIds: string[] = [];
  const sizes: Array<{ agentBaseMb: number } & Record<string, unknown>> = [];
  const results: RateResult[] = [];
  const f = (n: number, d = 1) => n.toFixed(d);
  try {
    for (const target of steps) {
      const tStep = performance.now();
      const ready: Array<Extract<WorkerMessage, { type: 'ready' }>> = [];
      const starting: Array<Promise<WorkerMessage>> = [];
      while (hostIds.length < target) {
        const batch: string[] = [];
        while (batch.length < perProcess && hostIds.length < target) {
          const id = `fleet-h${String(hostIds.length).padStart(5, '0')}`;
          hostIds.push(id);
          batch.push(id);
        }
        const w = new Worker();
        workers.push(w);
        starting.push(
          w.ask({
            type: 'start',
            start: {
              hostIds: batch,
              urls: [...CLUSTER_URLS],
              stateRoot: join(stateRoot, `w${workers.length}`),
              topology,
            },
          }),
        );
      }
      for (const m of await Promise.all(starting)) ready.push(m as Extract<WorkerMessage, { type: 'ready' }>);
      const startSeconds = (performance.now() - tStep) / 1000;
      let agentRss = 0;
      let agentBase = 0;
      for (const w of workers) {
        const m = (await w.ask({ type: 'rss' })) as Extract<WorkerMessage, { type: 'rss' }>;
        agentRss += m.rssMb;
      }
      // Base RSS of a worker before its hosts started (tsx + modules), from the ready messages so far.
      agentBase = (sizes.at(-1)?.agentBaseMb ?? 0) + ready.reduce((s, m) => s + m.baseRssMb, 0);
      const mem = await brokerMemory();
      const n = hostIds.length;
      const size = {
        hosts: n,
        processes: workers.length,
        startSeconds,
        broker: mem,
        brokerRssPerHostKb: ((mem.rssMb - base.rssMb) * 1024) / n,
        quorumPerQueueKb: ((mem.quorumMb - base.quorumMb) * 1024) / n,
        perConnectionKb: ((mem.connectionsMb - base.connectionsMb) * 1024) / (2 * n),
        binaryPerHostKb: ((mem.binaryMb - base.binaryMb) * 1024) / n,
        agentRssMb: agentRss,
        agentBaseMb: agentBase,
        agentPerHostKb: ((agentRss - agentBase) * 1024) / n,
      };
      sizes.push(size);
      console.log(
        `${n} hosts in ${size.processes} processes (added in ${f(startSeconds)} s): broker RSS ${f(mem.rssMb)} MB ` +
          `(+${f(size.brokerRssPerHostKb, 0)} KB per host over the empty cluster); per host queue ${f(size.quorumPerQueueKb, 0)} KB ` +
          `(quorum procs + ETS, 3 replicas), per connection ${f(size.perConnectionKb, 0)} KB, binaries ${f(size.binaryPerHostKb, 0)} KB per host; ` +
          `agents ${f(agentRss)} MB RSS, ${f(size.agentPerHostKb, 0)} KB per host`,
      );
      for (const rate of rates) {
        const r = await runRate(plane, hostIds, hostIds.length, rate);
        results.push(r);
        console.log(
          `  ${rate} cmd/s: ${r.answered}/${r.sent} answered; accepted p50 ${f(r.acceptedP50)} p99 ${f(r.acceptedP99)} ms; ` +
            `terminal p50 ${f(r.terminalP50)} p99 ${f(r.terminalP99)} max ${f(r.terminalMax)} ms`,
        );
      }
    }
    console.log(
      JSON.stringify({
        machine: { cpus: (await import('node:os')).cpus().length, node: process.version },
        base,
        sizes,
        results,
        minutes: (Date.now() - t0) / 60000,
      }),
    );
  } finally {
    for (const w of workers) if (w.child.exitCode === null) w.child.kill('SIGKILL');
    await plane.close();
    await rm(stateRoot, { recursive: true, force: true });
    if (!args['keep-cluster']) await cluster.stop();
  }
}

await main();
