// One process of simulated hosts for bench/fleet.ts (forked over IPC). Each simulated host is the
// agent's own messaging and job stack — two BrokerConnections (consume, publish), EventPublisher
// with its on-disk outbox, JobJournal, JobRunner (intake + scheduler) and CommandConsumer —
// wired like src/service/agent.ts, minus the per-process parts (health server, process metrics),
// with an instant agent.ping (a fixed capability report instead of the host probe).
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentConfig } from '../src/config/index.js';
import { baseHandlers, type HostProbe } from '../src/handlers/index.js';
import { JobRunner } from '../src/jobs/job-runner.js';
import { JobJournal } from '../src/jobs/journal.js';
import { CommandConsumer } from '../src/messaging/command-consumer.js';
import { BrokerConnection, connectionName } from '../src/messaging/connection.js';
import { EventPublisher } from '../src/messaging/event-publisher.js';
import { type TopologyNames, topologyNames } from '../src/messaging/topology.js';
import { createLogger } from '../src/observability/logger.js';
import { createMetrics } from '../src/observability/metrics.js';

export interface WorkerStart {
  hostIds: string[];
  urls: string[];
  stateRoot: string;
  topology: Omit<AgentConfig['topology'], 'declare'>;
}

export type WorkerMessage =
  | { type: 'ready'; hosts: number; ms: number; rssMb: number; heapUsedMb: number; baseRssMb: number }
  | { type: 'rss'; rssMb: number; heapUsedMb: number }
  | { type: 'stopped' };

const logger = createLogger({ level: 'warn' });
const probe: HostProbe = async () => ({
  tools: { qemuImg: 'fleet', qemu: 'fleet', libvirt: 'fleet', lvm2: 'fleet' },
  strategies: ['auto', 'offline'],
});

interface SimHost {
  consumer: CommandConsumer;
  publisher: EventPublisher;
  runner: JobRunner;
  connections: BrokerConnection[];
}

/** One simulated host; `urls` is rotated per host so connections spread over the nodes. */
async function startHost(hostId: string, index: number, msg: WorkerStart): Promise<SimHost> {
  const names: TopologyNames = topologyNames({ hostId, topology: msg.topology });
  const stateDir = join(msg.stateRoot, hostId);
  await mkdir(join(stateDir, 'outbox'), { recursive: true });
  const urls = [...msg.urls.slice(index % msg.urls.length), ...msg.urls.slice(0, index % msg.urls.length)];
  const connection = (role: string) => {
    const c = new BrokerConnection({
      role,
      urls,
      connectionName: connectionName(hostId, role),
      heartbeatSeconds: 15,
      connectTimeoutMs: 10_000,
      reconnectMinMs: 200,
      reconnectMaxMs: 10_000,
      logger,
    });
    c.start();
    return c;
  };
  const publish = connection('publish');
  const consume = connection('consume');
  const publisher = new EventPublisher({
    connection: publish,
    names,
    outboxDir: join(stateDir, 'outbox'),
    confirmTimeoutMs: 10_000,
    logger,
  });
  await publisher.start();
  const journal = new JobJournal(stateDir);
  await journal.open();
  const runner = new JobRunner({
    hostId,
    policy: {
      maxMessageBytes: 65536,
      signingKey: '',
      storeRoots: ['/nonexistent'],
      fileRoots: ['/nonexistent'],
      volumeGroups: [],
    },
    maxConcurrentJobs: 2,
    progressIntervalMs: 1000,
    journal,
    sink: publisher,
    handlers: baseHandlers({ agentVersion: 'fleet', hostId, probe }),
    metrics: createMetrics({ defaultMetrics: false }),
    logger,
  });
  const consumer = new CommandConsumer({
    connection: consume,
    names,
    hostId,
    prefetch: 4,
    handler: runner.handleCommand,
    logger,
  });
  consumer.start();
  return { consumer, publisher, runner, connections: [publish, consume] };
}

function memory(): { rssMb: number; heapUsedMb: number } {
  const m = process.memoryUsage();
  return { rssMb: m.rss / 1048576, heapUsedMb: m.heapUsed / 1048576 };
}

const hosts: SimHost[] = [];
let stateRoot = '';

process.on('message', async (raw: unknown) => {
  const msg = raw as { type: 'start'; start: WorkerStart } | { type: 'rss' } | { type: 'stop' };
  if (msg.type === 'start') {
    const t0 = performance.now();
    global.gc?.();
    const baseRssMb = memory().rssMb;
    stateRoot = msg.start.stateRoot;
    // A few at a time: a fleet does not connect in one instant either.
    for (let i = 0; i < msg.start.hostIds.length; i += 10) {
      const batch = msg.start.hostIds.slice(i, i + 10);
      hosts.push(...(await Promise.all(batch.map((id, j) => startHost(id, i + j, msg.start)))));
    }
    while (!hosts.every((h) => h.consumer.active)) await new Promise((r) => setTimeout(r, 100));
    global.gc?.();
    process.send!({
      type: 'ready',
      hosts: hosts.length,
      ms: performance.now() - t0,
      baseRssMb,
      ...memory(),
    } satisfies WorkerMessage);
  } else if (msg.type === 'rss') {
    global.gc?.();
    process.send!({ type: 'rss', ...memory() } satisfies WorkerMessage);
  } else if (msg.type === 'stop') {
    await Promise.all(
      hosts.map(async (h) => {
        await h.consumer.stop();
        await h.runner.shutdown(5000);
        await h.publisher.flush(5000);
        await h.publisher.close();
        await Promise.all(h.connections.map((c) => c.close()));
      }),
    );
    await rm(stateRoot, { recursive: true, force: true });
    process.send!({ type: 'stopped' } satisfies WorkerMessage);
    process.exit(0);
  }
});
