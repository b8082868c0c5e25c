import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Channel, type ChannelModel, type ConsumeMessage, connect } from 'amqplib';
import { runTool } from '../../src/host/exec.js';
import type { OutgoingEvent } from '../../src/jobs/ports.js';
import { BrokerConnection, connectionName } from '../../src/messaging/connection.js';
import type { TopologyNames } from '../../src/messaging/topology.js';
import { type Logger, silentLogger } from '../../src/observability/logger.js';
import { type AgentEvent, eventTypePrefix } from '../../src/protocol/index.js';
import { brokerUrl } from './broker.js';
import { QueueFence } from './drain.js';
import { uniqueSuffix } from './names.js';
import { waitUntil } from './wait.js';

export const logger: Logger = process.env.TEST_LOG
  ? (await import('pino')).pino({ level: 'debug' })
  : silentLogger();

/** Names no other test (or test file running in parallel) uses. */
export function uniqueNames(label: string): { names: TopologyNames; hostId: string } {
  const tag = `${label}-${uniqueSuffix()}`;
  return {
    hostId: `h-${tag}`,
    names: {
      commandsExchange: `t.msg.cmd.${tag}`,
      eventsExchange: `t.msg.evt.${tag}`,
      commandQueue: `t.msg.agent.${tag}`,
      deadLetterExchange: `t.msg.dlx.${tag}`,
      deadLetterQueue: `t.msg.dead.${tag}`,
      deliveryLimit: 3,
    },
  };
}

/** A BrokerConnection with quick reconnects, for tests. */
export function testConnection(hostId: string, role: string, urls = [brokerUrl()]): BrokerConnection {
  return new BrokerConnection({
    role,
    urls,
    connectionName: connectionName(hostId, role),
    heartbeatSeconds: 5,
    connectTimeoutMs: 2000,
    reconnectMinMs: 50,
    reconnectMaxMs: 500,
    logger,
  });
}

/** The test's own plain connection (named, so it never looks like an agent's). */
export async function adminConnection(label: string): Promise<{ model: ChannelModel; channel: Channel }> {
  const model = await connect(brokerUrl(), {
    clientProperties: { connection_name: `messaging-test/${label}` },
  });
  model.on('error', () => undefined);
  const channel = await model.createChannel();
  channel.on('error', () => undefined);
  return { model, channel };
}

export async function rabbitmqctl(args: string[]): Promise<string> {
  const { stdout } = await runTool('rabbitmqctl', [...args, '-q'], { timeoutMs: 30_000 });
  return stdout;
}

export interface QueueInfo {
  name: string;
  type: string;
  arguments: Record<string, unknown>;
}

/** `rabbitmqctl list_queues name type arguments`, arguments as a plain object. */
export async function listQueues(): Promise<QueueInfo[]> {
  const rows = JSON.parse(
    (await rabbitmqctl(['list_queues', 'name', 'type', 'arguments', '--formatter', 'json'])) || '[]',
  ) as Array<{ name: string; type: string; arguments: Array<[string, string, unknown]> }>;
  return rows.map((row) => ({
    name: row.name,
    type: row.type,
    arguments: Object.fromEntries(row.arguments.map(([key, , value]) => [key, value])),
  }));
}

export async function listExchanges(): Promise<Array<{ name: string; type: string; durable: boolean }>> {
  return JSON.parse(
    (await rabbitmqctl(['list_exchanges', 'name', 'type', 'durable', '--formatter', 'json'])) || '[]',
  );
}

/**
 * Broker-side pids (`<rabbit@node.N.M.0>`, the form close_connection takes) of the connections
 * whose connection_name is `name`. The JSON formatter prints pids in another form, so the
 * connection's `name` (its address pair) links the JSON listing to the tab-separated one.
 */
export async function connectionPids(name: string): Promise<string[]> {
  const rows = JSON.parse(
    (await rabbitmqctl(['list_connections', 'name', 'client_properties', '--formatter', 'json'])) || '[]',
  ) as Array<{ name: string; client_properties: Array<[string, string, unknown]> }>;
  const addresses = new Set(
    rows
      .filter((row) =>
        row.client_properties.some(([key, , value]) => key === 'connection_name' && value === name),
      )
      .map((row) => row.name),
  );
  const table = await rabbitmqctl(['list_connections', 'pid', 'name', '--no-table-headers']);
  return table
    .split('\n')
    .map((line) => line.split('\t'))
    .filter(([pid, address]) => pid && address && addresses.has(address.trim()))
    .map(([pid]) => pid!.trim());
}

/** `rabbitmqctl close_connection` of this test's own connection, found by its connection_name. */
export async function closeConnectionByName(name: string): Promise<void> {
  const pids = await connectionPids(name);
  if (pids.length !== 1) throw new Error(`expected one connection named ${name}, found ${pids.length}`);
  await closeConnectionByPid(pids[0]!);
}

export async function closeConnectionByPid(pid: string): Promise<void> {
  await rabbitmqctl(['close_connection', pid, 'closed by the messaging test']);
}

/** Every message on the events exchange (bound '#'), in arrival order. */
export interface EventCollector {
  messages: ConsumeMessage[];
  events(): AgentEvent[];
  ids(): string[];
  waitFor(predicate: (messages: ConsumeMessage[]) => boolean, timeoutMs?: number): Promise<void>;
  /** Once the publisher's outbox is empty: everything it sent has been collected (a fence came through). */
  drain(): Promise<void>;
  close(): Promise<void>;
}

export async function collectEvents(
  names: TopologyNames,
  label: string,
  pattern = '#',
): Promise<EventCollector> {
  const { model, channel } = await adminConnection(`collector-${label}`);
  await channel.assertExchange(names.eventsExchange, 'topic', { durable: true });
  const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
  await channel.bindQueue(queue, names.eventsExchange, pattern);
  const messages: ConsumeMessage[] = [];
  const fence = new QueueFence();
  await channel.consume(queue, (message) => message && !fence.take(message) && messages.push(message), {
    noAck: true,
  });
  return {
    messages,
    events: () => messages.map((m) => JSON.parse(m.content.toString('utf8')) as AgentEvent),
    ids: () => messages.map((m) => String(m.properties.messageId)),
    waitFor: (predicate, timeoutMs = 20_000) => waitUntil(() => predicate(messages), timeoutMs, 'events'),
    drain: () => fence.pass(channel, queue),
    close: () => model.close().catch(() => undefined),
  };
}

/** A persistent (or not) `started` event with a recognisable sequence number. */
export function testEvent(
  hostId: string,
  n: number,
  opts: { persistent?: boolean; routingKey?: string; replyTo?: string; correlationId?: string } = {},
): OutgoingEvent {
  const event = {
    specversion: '1.0',
    id: `evt-${hostId}-${String(n).padStart(6, '0')}`,
    source: `clvm-snapshot-agent/${hostId}`,
    type: `${eventTypePrefix}started`,
    subject: 'agent',
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    correlationid: `job-${hostId}`,
    sequence: String(n).padStart(10, '0'),
    data: { hostId, agentVersion: 'test' },
  } as AgentEvent;
  const outgoing: OutgoingEvent = {
    event,
    routingKey: opts.routingKey ?? `${hostId}.agent.started`,
    persistent: opts.persistent ?? true,
  };
  if (opts.replyTo) outgoing.replyTo = opts.replyTo;
  if (opts.correlationId) outgoing.correlationId = opts.correlationId;
  return outgoing;
}

export async function tempDir(label: string): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), `msg-${label}-`));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/**
 * Collapses the received ids: an event the publisher sent again because its confirm was lost
 * shows up twice in a row. Returns the ids with such adjacent repeats removed, and how many.
 */
export function collapseAdjacentRepeats(ids: string[]): { ids: string[]; repeats: number } {
  const out: string[] = [];
  for (const id of ids) if (out.at(-1) !== id) out.push(id);
  return { ids: out, repeats: ids.length - out.length };
}

/**
 * Runs every clean-up (last registered first) even when some fail, then throws the first
 * failure: one broken clean-up must not leave the others' queues, connections or dirs behind.
 */
export async function runCleanups(cleanups: Array<() => Promise<unknown>>): Promise<void> {
  const failures: unknown[] = [];
  for (const cleanup of cleanups.splice(0).reverse()) {
    try {
      await cleanup();
    } catch (error) {
      failures.push(error);
    }
  }
  if (failures.length > 0) throw failures[0];
}

/** Records unhandled rejections and uncaught exceptions while a test runs. */
export function watchProcessErrors(): { errors: unknown[]; stop(): void } {
  const errors: unknown[] = [];
  const onError = (error: unknown) => errors.push(error);
  process.on('unhandledRejection', onError);
  process.on('uncaughtException', onError);
  return {
    errors,
    stop: () => {
      process.off('unhandledRejection', onError);
      process.off('uncaughtException', onError);
    },
  };
}
