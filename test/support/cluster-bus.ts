// The management plane's side of the failover tests, itself failing over: a command sender that
// republishes until a publisher confirm arrives, and an events subscriber on a durable quorum queue
// that re-consumes after losing its node. Both ride on the agent's own BrokerConnection (all
// three URLs, reconnect with backoff).
import type { Channel, ConfirmChannel, ConsumeMessage } from 'amqplib';
import { BrokerConnection, connectionName } from '../../src/messaging/connection.js';
import type { TopologyNames } from '../../src/messaging/topology.js';
import { createLogger } from '../../src/observability/logger.js';
import { type AgentEvent, eventKindOf, TERMINAL_KINDS } from '../../src/protocol/index.js';
import { CLUSTER_URLS } from './cluster.js';
import { QueueFence } from './drain.js';

const logger = createLogger({ level: process.env.TEST_AGENT_LOG === '1' ? 'debug' : 'silent' });

function connection(role: string, hostId: string): BrokerConnection {
  const c = new BrokerConnection({
    role,
    urls: [...CLUSTER_URLS],
    connectionName: connectionName(hostId, role),
    heartbeatSeconds: 5,
    connectTimeoutMs: 3000,
    reconnectMinMs: 100,
    reconnectMaxMs: 1000,
    logger,
  });
  c.start();
  return c;
}

/** Sends commands at least once: republishes (same id) until the broker confirms. */
export class FailoverSender {
  /** Publishes that had to be repeated (no confirm, channel lost). */
  resends = 0;
  private readonly conn: BrokerConnection;
  private channel: Promise<ConfirmChannel> | undefined;

  constructor(
    private readonly names: TopologyNames,
    private readonly hostId: string,
  ) {
    this.conn = connection('test-sender', hostId);
  }

  private confirmChannel(): Promise<ConfirmChannel> {
    if (!this.channel) {
      const opening = this.conn.whenConnected().then(async (model) => {
        const ch = await model.createConfirmChannel();
        ch.on('error', () => undefined);
        ch.once('close', () => {
          if (this.channel === opening) this.channel = undefined;
        });
        return ch;
      });
      this.channel = opening;
      opening.catch(() => {
        if (this.channel === opening) this.channel = undefined;
      });
    }
    return this.channel;
  }

  async send(command: { id: string; type: string; params: unknown }): Promise<void> {
    const body = Buffer.from(JSON.stringify(command));
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) {
        this.resends += 1;
        await new Promise((r) => setTimeout(r, 200));
      }
      try {
        const ch = await this.confirmChannel();
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no confirm within 5 s')), 5000);
          ch.publish(
            this.names.commandsExchange,
            this.hostId,
            body,
            { messageId: command.id, persistent: true, contentType: 'application/json' },
            (error) => {
              clearTimeout(timer);
              if (error) reject(error instanceof Error ? error : new Error(String(error)));
              else resolve();
            },
          );
        });
        return;
      } catch {
        if (attempt > 200) throw new Error(`command ${command.id} never confirmed`);
        // A timed-out channel may still be alive but stuck on a frozen node: start over.
        const stale = this.channel;
        this.channel = undefined;
        void stale?.then((ch) => ch.close()).catch(() => undefined);
      }
    }
  }

  close(): Promise<void> {
    return this.conn.close();
  }
}

export interface JobEvents {
  /** Distinct events by event id, in arrival order. */
  events: AgentEvent[];
}

/**
 * Every event of the agent's events exchange through a durable quorum queue (so nothing published
 * while the subscriber reconnects is lost), acked after it is recorded. Deliveries of an event id
 * already seen are counted as duplicates.
 */
export class FailoverSubscriber {
  readonly byJob = new Map<string, AgentEvent[]>();
  private readonly seen = new Set<string>();
  duplicates = 0;
  consumes = 0;
  private readonly conn: BrokerConnection;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private current: Channel | undefined;
  private readonly waiters = new Set<() => void>();
  private readonly fence = new QueueFence();

  constructor(
    private readonly names: TopologyNames,
    private readonly queue: string,
    hostId: string,
  ) {
    this.conn = connection('test-subscriber', hostId);
  }

  /** Resolves once the first consumer is registered. */
  async start(): Promise<void> {
    let ready!: () => void;
    const first = new Promise<void>((resolve) => {
      ready = resolve;
    });
    this.loop = this.run(ready);
    await first;
  }

  private async run(ready: () => void): Promise<void> {
    while (!this.stopped) {
      try {
        const model = await this.conn.whenConnected();
        const ch = await model.createChannel();
        this.current = ch;
        const closed = new Promise<void>((resolve) => ch.once('close', () => resolve()));
        ch.on('error', () => undefined);
        await ch.assertExchange(this.names.eventsExchange, 'topic', { durable: true });
        await ch.assertQueue(this.queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
        await ch.bindQueue(this.queue, this.names.eventsExchange, '#');
        await ch.prefetch(500);
        await ch.consume(this.queue, (m) => m && this.onMessage(ch, m), { noAck: false });
        this.consumes += 1;
        ready();
        await closed;
      } catch {
        if (this.stopped) return;
      }
      this.current = undefined;
      if (!this.stopped) await new Promise((r) => setTimeout(r, 200));
    }
  }

  private onMessage(ch: Channel, m: ConsumeMessage): void {
    if (this.fence.take(m)) {
      ch.ack(m);
      return;
    }
    const event = JSON.parse(m.content.toString('utf8')) as AgentEvent;
    if (this.seen.has(event.id)) this.duplicates += 1;
    else {
      this.seen.add(event.id);
      const list = this.byJob.get(event.correlationid) ?? [];
      list.push(event);
      this.byJob.set(event.correlationid, list);
    }
    try {
      ch.ack(m);
    } catch {
      // Channel gone: the broker redelivers; counted as a duplicate then.
    }
    for (const wake of this.waiters) wake();
  }

  eventsOf(jobId: string): AgentEvent[] {
    return this.byJob.get(jobId) ?? [];
  }

  terminalsOf(jobId: string): AgentEvent[] {
    return this.eventsOf(jobId).filter((e) => TERMINAL_KINDS.has(eventKindOf(e.type)!));
  }

  async waitUntil(what: string, predicate: () => boolean, timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!predicate()) {
      const left = until - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(left, 250));
        this.waiters.add(wake);
      });
    }
  }

  /** Resolves once everything queued for the subscriber so far was delivered (a fence came through). */
  async drain(): Promise<void> {
    const model = await this.conn.whenConnected();
    const ch = await model.createChannel();
    try {
      await this.fence.pass(ch, this.queue, 30_000);
    } finally {
      await ch.close().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    this.stopped = true;
    await this.current?.close().catch(() => undefined);
    await this.conn.close();
    await this.loop;
  }
}
