import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import type { AgentConfig } from '../config/index.js';
import { baseHandlers, cachedProbe, capabilityProbe, type HostProbe } from '../handlers/index.js';
import { QemuImg } from '../host/qemu-img.js';
import { SnapshotStore } from '../host/store.js';
import { commandKeyPolicy } from '../jobs/command-signature.js';
import { buildEvent, quarantineNotice } from '../jobs/events.js';
import { JobRunner } from '../jobs/job-runner.js';
import { JobJournal } from '../jobs/journal.js';
import type { HandlerRegistry } from '../jobs/types.js';
import { brokerTlsOptions } from '../messaging/broker-tls.js';
import { CommandConsumer } from '../messaging/command-consumer.js';
import { BrokerConnection, ConnectionState, connectionName } from '../messaging/connection.js';
import { EventPublisher, type ReturnedEvent } from '../messaging/event-publisher.js';
import { type TopologyNames, topologyNames } from '../messaging/topology.js';
import { type HealthServer, startHealthServer } from '../observability/health-server.js';
import type { Logger } from '../observability/logger.js';
import { type AgentMetrics, createMetrics } from '../observability/metrics.js';
import { StoreHealth } from '../observability/store-health.js';
import type { EventKind } from '../protocol/index.js';
import { AGENT_VERSION } from '../version.js';
import { type Stage, startPipeline } from './pipeline.js';

/** How long ping's capability probe is reused (a probe starts several host processes). */
export const PROBE_CACHE_MS = 60_000;

export interface AgentOptions {
  config: AgentConfig;
  logger: Logger;
  /** Command handlers (the snapshot engine's); they replace the NOT_IMPLEMENTED placeholders. */
  handlers?: HandlerRegistry;
  /** What ping reports about the host; default: the real capability probe, cached 60 s. */
  probe?: HostProbe;
}

/** A started agent. */
export interface RunningAgent {
  config: AgentConfig;
  names: TopologyNames;
  metrics: AgentMetrics;
  /** Where /livez, /readyz and /metrics answer. */
  http: { host: string; port: number };
  runner: JobRunner;
  consumer: CommandConsumer;
  publisher: EventPublisher;
  connections: { consume: BrokerConnection; publish: BrokerConnection };
  /**
   * Graceful stop: `stopping` event, stop consuming, running jobs get shutdownGraceMs (then are
   * aborted and roll back), outbox flushed, connections and the HTTP server closed.
   * Idempotent; resolves with the errors of stages that failed to stop.
   */
  stop(reason?: string): Promise<Error[]>;
}

/** The mutable context the stages fill in, in order. */
interface Ctx {
  config: AgentConfig;
  logger: Logger;
  handlers: HandlerRegistry;
  probe: HostProbe;
  names: TopologyNames;
  metrics: AgentMetrics;
  stopReason: string;
  health?: HealthServer;
  connections?: { consume: BrokerConnection; publish: BrokerConnection };
  publisher?: EventPublisher;
  journal?: JobJournal;
  runner?: JobRunner;
  consumer?: CommandConsumer;
}

const stateDirs: Stage<Ctx> = {
  name: 'state directories',
  async start(ctx) {
    for (const dir of [ctx.config.stateDir, join(ctx.config.stateDir, 'jobs'), outboxDir(ctx.config)]) {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    }
  },
};

const observability: Stage<Ctx> = {
  name: 'health server',
  async start(ctx) {
    ctx.health = await startHealthServer({
      host: ctx.config.http.host,
      port: ctx.config.http.port,
      registry: ctx.metrics.registry,
      logger: ctx.logger,
      readiness: [
        {
          name: 'consumer',
          check: () =>
            ctx.consumer?.active
              ? { ok: true }
              : {
                  ok: false,
                  detail: 'no consumer on the command queue (starting, broker away, or stopping)',
                },
        },
        {
          name: 'publisher',
          check: () =>
            ctx.connections?.publish.state === ConnectionState.Ready
              ? { ok: true }
              : { ok: false, detail: 'the publishing connection to the broker is down' },
        },
        {
          name: 'outbox',
          check: () => {
            const stall = ctx.publisher?.stall();
            if (!stall) return { ok: true };
            return {
              ok: false,
              detail:
                `the oldest unsent event (${stall.eventId}) has not moved for ${Math.round(stall.sinceMs / 1000)} s ` +
                `while the broker is connected${stall.lastError ? `; last error: ${stall.lastError}` : ''}`,
            };
          },
        },
      ],
    });
    ctx.logger.info({ http: ctx.health.address }, 'health server listening');
  },
  async stop(ctx) {
    await ctx.health?.close();
  },
};

const connections: Stage<Ctx> = {
  name: 'broker connections',
  async start(ctx) {
    const b = ctx.config.broker;
    const make = (role: 'consume' | 'publish') => {
      const connection = new BrokerConnection({
        role,
        urls: b.urls,
        connectionName: connectionName(ctx.config.hostId, role),
        heartbeatSeconds: b.heartbeatSeconds,
        connectTimeoutMs: b.connectTimeoutMs,
        reconnectMinMs: b.reconnectMinMs,
        reconnectMaxMs: b.reconnectMaxMs,
        tls: brokerTlsOptions(b.tls),
        logger: ctx.logger.child({ connection: role }),
      });
      ctx.metrics.brokerConnected.set({ role }, 0);
      connection.on('connected', () => ctx.metrics.brokerConnected.set({ role }, 1));
      connection.on('disconnected', () => ctx.metrics.brokerConnected.set({ role }, 0));
      connection.on('reconnecting', () => ctx.metrics.reconnects.inc({ role }));
      return connection;
    };
    ctx.connections = { consume: make('consume'), publish: make('publish') };
    // Both connect in the background: the agent starts (and recovers jobs) with the broker away.
    ctx.connections.publish.start();
    ctx.connections.consume.start();
  },
  async stop(ctx) {
    await Promise.all([ctx.connections?.consume.close(), ctx.connections?.publish.close()]);
  },
};

const publisher: Stage<Ctx> = {
  name: 'event publisher (outbox replay)',
  async start(ctx) {
    const p = new EventPublisher({
      connection: ctx.connections!.publish,
      names: ctx.names,
      outboxDir: outboxDir(ctx.config),
      confirmTimeoutMs: ctx.config.broker.confirmTimeoutMs,
      logger: ctx.logger,
      stallAfterMs: ctx.config.broker.outboxStallMs,
      replacementFor: (original, reason) => quarantineNotice(ctx.config.hostId, original, reason),
    });
    p.on('quarantined', () => ctx.metrics.quarantinedEvents.inc());
    ctx.metrics.outboxOldestAgeSource = () => p.oldestUnsentAgeMs() / 1000;
    p.on('depth', (depth: number) => ctx.metrics.outboxDepth.set(depth));
    p.on('returned', (returned: ReturnedEvent) =>
      ctx.metrics.unroutedEvents.inc({ exchange: returned.exchange }),
    );
    ctx.publisher = p;
    await p.start();
    ctx.metrics.outboxDepth.set(p.outboxDepth);
  },
  async stop(ctx) {
    const p = ctx.publisher!;
    const drained = await p.flush(ctx.config.broker.confirmTimeoutMs);
    if (!drained) {
      ctx.logger.warn(
        { outboxDepth: p.outboxDepth },
        'outbox not drained at shutdown; it is replayed at the next start',
      );
    }
    await p.close();
  },
};

const jobs: Stage<Ctx> = {
  name: 'job journal and recovery',
  async start(ctx) {
    const { config } = ctx;
    ctx.journal = new JobJournal(config.stateDir);
    await ctx.journal.open();
    ctx.runner = new JobRunner({
      hostId: config.hostId,
      policy: {
        maxMessageBytes: config.limits.maxMessageBytes,
        signingKey: config.security.signingKey,
        commandKeys: commandKeyPolicy({ hostId: config.hostId, ...config.security }),
        storeRoots: config.store.roots,
        fileRoots: config.pools.fileRoots,
        volumeGroups: config.pools.volumeGroups,
      },
      maxConcurrentJobs: config.limits.maxConcurrentJobs,
      progressIntervalMs: config.limits.progressIntervalMs,
      journal: ctx.journal,
      sink: ctx.publisher!,
      handlers: {
        ...baseHandlers({ agentVersion: AGENT_VERSION, hostId: config.hostId, probe: ctx.probe }),
        ...ctx.handlers,
      },
      metrics: ctx.metrics,
      logger: ctx.logger,
    });
    const recovered = await ctx.runner.recover();
    if (recovered.rerun.length + recovered.republished.length + recovered.failed.length > 0) {
      ctx.logger.warn(recovered, 'recovered jobs from the journal');
    }
  },
  async stop(ctx) {
    const grace = ctx.config.limits.shutdownGraceMs;
    ctx.logger.info(
      { running: ctx.runner!.runningCount, queued: ctx.runner!.queuedCount, graceMs: grace },
      'waiting for running jobs',
    );
    const { left, aborted } = await ctx.runner!.shutdown(grace);
    if (aborted.length > 0 || left.length > 0) {
      ctx.logger.warn({ aborted, left }, 'jobs did not finish within the shutdown grace');
    }
  },
};

const consumer: Stage<Ctx> = {
  name: 'command consumer',
  async start(ctx) {
    ctx.consumer = new CommandConsumer({
      connection: ctx.connections!.consume,
      names: ctx.names,
      hostId: ctx.config.hostId,
      prefetch: ctx.config.broker.prefetch,
      handler: ctx.runner!.handleCommand,
      logger: ctx.logger,
    });
    ctx.consumer.start();
  },
  async stop(ctx) {
    await ctx.consumer!.stop();
  },
};

const lifecycle: Stage<Ctx> = {
  name: 'lifecycle events',
  async start(ctx) {
    await publishLifecycle(ctx, 'started');
    ctx.logger.info({ hostId: ctx.config.hostId, version: AGENT_VERSION }, 'agent started');
  },
  async stop(ctx) {
    await publishLifecycle(ctx, 'stopping', ctx.stopReason);
  },
};

/** Start-up order; shutdown runs the stops in reverse. */
const STAGES: readonly Stage<Ctx>[] = [
  stateDirs,
  observability,
  connections,
  publisher,
  jobs,
  consumer,
  lifecycle,
];

/**
 * Starts the agent: state dirs → health server and metrics → broker connections → publisher
 * (outbox replay) → journal and recovery → consumer → `started` event. The broker may be away:
 * everything after the connections waits for it in the background.
 */
export async function startAgent(opts: AgentOptions): Promise<RunningAgent> {
  const { config, logger } = opts;
  const ctx: Ctx = {
    config,
    logger,
    handlers: opts.handlers ?? {},
    probe: opts.probe ?? cachedProbe(capabilityProbe(config, logger), PROBE_CACHE_MS),
    names: topologyNames(config),
    metrics: createMetrics(),
    stopReason: 'shutdown',
  };
  // /metrics probes the snapshot store at each scrape (clvm_agent_store_up, _free_bytes).
  const store = new SnapshotStore({
    roots: config.store.roots,
    qemuImg: new QemuImg({
      timeoutMs: config.timeouts.toolMs,
      exportTimeoutMs: config.timeouts.exportMs,
      logger,
    }),
    logger,
  });
  const storeHealth = new StoreHealth({
    roots: store.roots,
    freeBytes: (root) => store.freeBytes(root),
    up: ctx.metrics.storeUp,
    free: ctx.metrics.storeFreeBytes,
    logger,
  });
  ctx.metrics.beforeCollect.push(() => storeHealth.refresh());
  const stopPipeline = await startPipeline(STAGES, ctx, logger);
  let stopping: Promise<Error[]> | undefined;
  return {
    config,
    names: ctx.names,
    metrics: ctx.metrics,
    http: ctx.health!.address,
    runner: ctx.runner!,
    consumer: ctx.consumer!,
    publisher: ctx.publisher!,
    connections: ctx.connections!,
    stop(reason = 'shutdown') {
      if (!stopping) {
        ctx.stopReason = reason;
        logger.info({ reason }, 'agent stopping');
        stopping = stopPipeline().then((errors) => {
          logger.info({ errors: errors.length }, 'agent stopped');
          return errors;
        });
      }
      return stopping;
    },
  };
}

function outboxDir(config: AgentConfig): string {
  return join(config.stateDir, 'outbox');
}

/**
 * `started` / `stopping` events: correlationid `agent:<hostId>`, with a sequence persisted in
 * `<stateDir>/agent.json` so it keeps increasing across restarts.
 */
async function publishLifecycle(ctx: Ctx, kind: Extract<EventKind, 'started' | 'stopping'>, reason?: string) {
  const file = join(ctx.config.stateDir, 'agent.json');
  let sequence = 0;
  try {
    sequence = (JSON.parse(await readFile(file, 'utf8')) as { sequence?: number }).sequence ?? 0;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  sequence += 1;
  await writeFileAtomic(file, `${JSON.stringify({ sequence })}\n`);
  await ctx.publisher!.publish(
    buildEvent(kind, {
      hostId: ctx.config.hostId,
      correlationId: `agent:${ctx.config.hostId}`,
      sequence,
      volume: null,
      data: { hostId: ctx.config.hostId, agentVersion: AGENT_VERSION, ...(reason ? { reason } : {}) },
    }),
  );
}
