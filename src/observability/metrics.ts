import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

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
  /** Outbox entries the broker can never accept, moved to the quarantine folder. */
  quarantinedEvents: Counter;
  /** Age of the oldest unsent persistent event, read at scrape time from `outboxOldestAgeSource`. */
  outboxOldestAge: Gauge;
  /** Seconds since the oldest unsent event was made (the publisher sets it once started). */
  outboxOldestAgeSource: () => number;
}

/** Creates the metrics on a fresh registry; `defaultMetrics` adds process metrics (RSS, CPU, event loop). */
export function createMetrics(options: { defaultMetrics?: boolean } = {}): AgentMetrics {
  const registry = new Registry();
  let metrics: AgentMetrics | undefined;
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'clvm_agent_' });
  const registers = [registry];
  metrics = {
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
  return metrics;
}
