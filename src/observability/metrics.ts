import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { VolumeMetrics } from './volume-metrics.js';

/**
 * The agent's Prometheus metrics, on a registry of its own (not prom-client's global one, so
 * several agents in one test process do not collide).
 */
export interface AgentMetrics {
  registry: Registry;
  /** Finished jobs by command type and outcome (succeeded | failed). */
  jobs: Counter<'type' | 'outcome'>;
  jobDuration: Histogram<'type' | 'outcome'>;
  jobsInFlight: Gauge;
  /** 1 while the role's connection (consume | publish) is up. */
  brokerConnected: Gauge<'role'>;
  reconnects: Counter<'role'>;
  outboxDepth: Gauge;
  /** Commands refused at intake, by rejection code. */
  rejected: Counter<'reason'>;
  /** Events the broker returned as unroutable (nobody bound for their routing key). */
  unroutedEvents: Counter<'exchange'>;
  /** Per volume (bounded: src/observability/volume-metrics.ts): last success, last failure, bytes, depth. */
  volumeLastSuccess: Gauge<'volume'>;
  volumeLastFailure: Gauge<'volume' | 'code'>;
  volumeExportedBytes: Counter<'volume'>;
  volumeChainDepth: Gauge<'volume'>;
  /** Volumes whose series were dropped to keep the per-volume series under the cap. */
  volumeSeriesEvicted: Counter;
  /** Per store root: 1 when it answers statfs in time with free space, and its free bytes. */
  storeUp: Gauge<'root'>;
  storeFreeBytes: Gauge<'root'>;
  /** Records snapshot outcomes into the per-volume series, keeping their number bounded. */
  volumes: VolumeMetrics;
  /** Work to do before each scrape (e.g. probing the store); set by the agent. */
  beforeCollect: Array<() => Promise<void>>;
  /** Outbox entries the broker can never accept, moved to the quarantine folder. */
  quarantinedEvents: Counter;
  /** Age of the oldest unsent persistent event, read at scrape time from `outboxOldestAgeSource`. */
  outboxOldestAge: Gauge;
  /** Seconds since the oldest unsent event was made (the publisher sets it once started). */
  outboxOldestAgeSource: () => number;
}

/** Creates the metrics on a fresh registry; `defaultMetrics` adds process metrics (RSS, CPU, event loop). */
export function createMetrics(options: { defaultMetrics?: boolean; maxVolumes?: number } = {}): AgentMetrics {
  const registry = new Registry();
  let metrics: AgentMetrics | undefined;
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'clvm_agent_' });
  const registers = [registry];
  const beforeCollect: Array<() => Promise<void>> = [];
  // Both store gauges are collected in parallel at a scrape: they share one run of the hooks.
  let running: Promise<void> | undefined;
  const runBeforeCollect = (): Promise<void> => {
    running ??= Promise.all(beforeCollect.map((hook) => hook())).then(
      () => {
        running = undefined;
      },
      (error: unknown) => {
        running = undefined;
        throw error;
      },
    );
    return running;
  };
  const base: Omit<AgentMetrics, 'volumes' | 'beforeCollect'> = {
    registry,
    jobs: new Counter({
      name: 'clvm_agent_jobs_total',
      help: 'Finished jobs by command type and outcome',
      labelNames: ['type', 'outcome'],
      registers,
    }),
    jobDuration: new Histogram({
      name: 'clvm_agent_job_duration_seconds',
      help: 'Job run time from start to terminal event',
      labelNames: ['type', 'outcome'],
      buckets: [0.01, 0.05, 0.25, 1, 5, 30, 120, 600, 1800, 7200, 21600],
      registers,
    }),
    jobsInFlight: new Gauge({
      name: 'clvm_agent_jobs_in_flight',
      help: 'Jobs whose handler is running',
      registers,
    }),
    brokerConnected: new Gauge({
      name: 'clvm_agent_broker_connected',
      help: '1 when the connection of the role (consume, publish) is up',
      labelNames: ['role'],
      registers,
    }),
    reconnects: new Counter({
      name: 'clvm_agent_broker_reconnects_total',
      help: 'Broker reconnect attempts by connection role',
      labelNames: ['role'],
      registers,
    }),
    outboxDepth: new Gauge({
      name: 'clvm_agent_outbox_depth',
      help: 'Persistent events waiting in the outbox for a publisher confirm',
      registers,
    }),
    rejected: new Counter({
      name: 'clvm_agent_commands_rejected_total',
      help: 'Commands refused at intake, by reason code',
      labelNames: ['reason'],
      registers,
    }),
    unroutedEvents: new Counter({
      name: 'clvm_agent_events_unrouted_total',
      help: 'Events the broker returned as unroutable (no queue bound for the routing key)',
      labelNames: ['exchange'],
      registers,
    }),
    volumeLastSuccess: new Gauge({
      name: 'clvm_agent_volume_last_success_timestamp_seconds',
      help: 'Unix time of the last successful snapshot.create of the volume',
      labelNames: ['volume'],
      registers,
    }),
    volumeLastFailure: new Gauge({
      name: 'clvm_agent_volume_last_failure_timestamp_seconds',
      help: 'Unix time of the last failed snapshot.create of the volume; code = its error code (one series per volume)',
      labelNames: ['volume', 'code'],
      registers,
    }),
    volumeExportedBytes: new Counter({
      name: 'clvm_agent_volume_exported_bytes_total',
      help: 'Bytes of the snapshots written to the store for the volume (their size on the store)',
      labelNames: ['volume'],
      registers,
    }),
    volumeChainDepth: new Gauge({
      name: 'clvm_agent_volume_chain_depth',
      help: 'Snapshots in the volume chain after its last successful snapshot.create',
      labelNames: ['volume'],
      registers,
    }),
    volumeSeriesEvicted: new Counter({
      name: 'clvm_agent_volume_series_evicted_total',
      help: 'Volumes whose per-volume series were dropped (least recently snapshotted first) to stay under the cap',
      registers,
    }),
    storeUp: new Gauge({
      name: 'clvm_agent_store_up',
      help: '1 when the snapshot store root answers statfs in time and has free space, else 0',
      labelNames: ['root'],
      registers,
      // prom-client awaits collect() at each scrape: the hooks refresh what they measure.
      collect: runBeforeCollect,
    }),
    storeFreeBytes: new Gauge({
      name: 'clvm_agent_store_free_bytes',
      help: 'Bytes available to the agent on the snapshot store root (last successful statfs)',
      labelNames: ['root'],
      registers,
      collect: runBeforeCollect,
    }),
    quarantinedEvents: new Counter({
      name: 'clvm_agent_events_quarantined_total',
      help: 'Outbox entries the broker can never accept, moved to the outbox quarantine folder',
      registers,
    }),
    outboxOldestAge: new Gauge({
      name: 'clvm_agent_outbox_oldest_age_seconds',
      help: 'Age of the oldest persistent event not yet confirmed by the broker (0 when the outbox is empty)',
      registers,
      collect() {
        this.set(metrics?.outboxOldestAgeSource() ?? 0);
      },
    }),
    outboxOldestAgeSource: () => 0,
  };
  const volumes = new VolumeMetrics(
    {
      lastSuccess: base.volumeLastSuccess,
      lastFailure: base.volumeLastFailure,
      exportedBytes: base.volumeExportedBytes,
      chainDepth: base.volumeChainDepth,
      evicted: base.volumeSeriesEvicted,
    },
    options.maxVolumes,
  );
  metrics = { ...base, volumes, beforeCollect };
  return metrics;
}
