import type { ConfirmChannel, GetMessage, Options } from 'amqplib';
import { assertExists, closeChannel, publishConfirmed } from '../client/messages.js';
import { AgentError } from '../errors/index.js';
import type { BrokerConnection } from '../messaging/connection.js';

/** What `dlq list` shows about one dead-lettered command. */
export interface DeadLetterSummary {
  /** 1 = head of the queue. */
  position: number;
  messageId: string | null;
  commandType: string | null;
  /** The routing key the command was first sent with: the target host id. */
  hostId: string | null;
  /** Why RabbitMQ dead-lettered it: rejected, delivery_limit, expired, maxlen. */
  reason: string | null;
  /** The queue it was dead-lettered from. */
  fromQueue: string | null;
  deathCount: number;
  deadLetteredAt: string | null;
  bytes: number;
}

/** `dlq show`: the summary plus the headers and the body. */
export interface DeadLetterDetail extends DeadLetterSummary {
  headers: Record<string, unknown>;
  properties: Record<string, unknown>;
  body: unknown;
}

interface XDeath {
  count?: number;
  reason?: string;
  queue?: string;
  exchange?: string;
  'routing-keys'?: string[];
  time?: { value: number } | number;
}

/**
 * Reads up to `limit` messages of the dead-letter queue with basic.get and gives them all back
 * (nack + requeue): `list` and `show` never lose or consume a message.
 */
export async function peekDeadLetters(
  connection: BrokerConnection,
  queue: string,
  limit: number,
): Promise<{ letters: DeadLetterDetail[]; more: boolean }> {
  await assertQueueExists(connection, queue);
  const channel = await connection.openChannel();
  try {
    const taken = await takeMessages(connection, channel, queue, limit);
    const letters = taken.messages.map((message, index) => detailOf(message, index + 1));
    channel.nackAll(true);
    return { letters, more: taken.more };
  } finally {
    // Closing the channel would requeue anything still unacked too.
    await closeChannel(connection, channel);
  }
}

export interface ReplayOptions {
  queue: string;
  commandsExchange: string;
  /** Message ids to replay, or 'all'. */
  select: readonly string[] | 'all';
  /** Route to this host instead of the original routing key. */
  hostId?: string;
  limit: number;
  confirmTimeoutMs: number;
}

export interface ReplayResult {
  replayed: Array<{ messageId: string | null; hostId: string }>;
  /** Selected ids that were not found among the messages read. */
  missing: string[];
}

/**
 * Republishes selected dead letters to the commands exchange (routing key = their host) and acks
 * each one only after the broker confirmed the publish and routed it; everything else is
 * requeued. A publish that fails or is unroutable leaves its message in the dead-letter queue.
 */
export async function replayDeadLetters(
  connection: BrokerConnection,
  options: ReplayOptions,
): Promise<ReplayResult> {
  await assertQueueExists(connection, options.queue);
  const channel = await connection.openConfirmChannel();
  const replayed: ReplayResult['replayed'] = [];
  try {
    const { messages } = await takeMessages(connection, channel, options.queue, options.limit);
    const wanted = options.select === 'all' ? undefined : new Set(options.select);
    for (const message of messages) {
      const messageId = (message.properties.messageId as string | undefined) ?? null;
      if (wanted && (messageId === null || !wanted.has(messageId))) continue;
      const hostId = options.hostId ?? originalRoutingKey(message);
      if (!hostId) {
        throw new AgentError(
          'USAGE',
          `dead letter ${messageId ?? '(no id)'} has no original routing key: give --host`,
        );
      }
      await republish(channel, message, options.commandsExchange, hostId, options.confirmTimeoutMs);
      channel.ack(message);
      replayed.push({ messageId, hostId });
      wanted?.delete(messageId ?? '');
    }
    channel.nackAll(true);
    return { replayed, missing: wanted ? [...wanted] : [] };
  } finally {
    await closeChannel(connection, channel);
  }
}

function assertQueueExists(connection: BrokerConnection, queue: string): Promise<void> {
  return assertExists(
    connection,
    (channel) => channel.checkQueue(queue),
    `the dead-letter queue "${queue}" does not exist on the broker`,
    { queue },
  );
}

async function takeMessages(
  connection: BrokerConnection,
  channel: { get(queue: string, options?: Options.Get): Promise<GetMessage | false> },
  queue: string,
  limit: number,
): Promise<{ messages: GetMessage[]; more: boolean }> {
  const messages: GetMessage[] = [];
  while (messages.length < limit) {
    const message = await connection.bounded(channel.get(queue, { noAck: false }), 'basic.get');
    if (message === false) return { messages, more: false };
    messages.push(message);
  }
  const last = messages[messages.length - 1];
  return { messages, more: last !== undefined && last.fields.messageCount > 0 };
}

async function republish(
  channel: ConfirmChannel,
  message: GetMessage,
  exchange: string,
  hostId: string,
  confirmTimeoutMs: number,
): Promise<void> {
  const headers = { ...(message.properties.headers ?? {}) };
  // Death and delivery bookkeeping belongs to the old delivery; the agent counts afresh.
  for (const key of Object.keys(headers)) {
    if (
      key === 'x-death' ||
      key.startsWith('x-first-death-') ||
      key.startsWith('x-last-death-') ||
      key === 'x-delivery-count'
    ) {
      delete headers[key];
    }
  }
  headers['x-replayed-from-dlq'] = new Date().toISOString();
  const p = message.properties;
  const { returned } = await publishConfirmed(
    channel,
    { exchange, routingKey: hostId, confirmTimeoutMs, what: 'replay' },
    message.content,
    {
      headers,
      ...(p.messageId ? { messageId: p.messageId } : {}),
      ...(p.correlationId ? { correlationId: p.correlationId } : {}),
      ...(p.replyTo ? { replyTo: p.replyTo } : {}),
      ...(p.contentType ? { contentType: p.contentType } : {}),
      ...(p.type ? { type: p.type } : {}),
      ...(p.appId ? { appId: p.appId } : {}),
    },
  );
  if (returned) {
    throw new AgentError(
      'NOT_ROUTED',
      `replay of ${String(message.properties.messageId)}: no command queue for host "${hostId}" on "${exchange}"; it stays in the dead-letter queue`,
    );
  }
}

function deathsOf(message: GetMessage): XDeath[] {
  const deaths = message.properties.headers?.['x-death'];
  return Array.isArray(deaths) ? (deaths as XDeath[]) : [];
}

function originalRoutingKey(message: GetMessage): string | null {
  return deathsOf(message)[0]?.['routing-keys']?.[0] ?? message.fields.routingKey ?? null;
}

function detailOf(message: GetMessage, position: number): DeadLetterDetail {
  const headers = message.properties.headers ?? {};
  const death = deathsOf(message)[0];
  const text = message.content.toString('utf8');
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: shown as text (a dead letter can be anything someone published).
  }
  const commandType =
    body !== null && typeof body === 'object' && typeof (body as { type?: unknown }).type === 'string'
      ? (body as { type: string }).type
      : ((message.properties.type as string | undefined) ?? null);
  const time = typeof death?.time === 'number' ? death.time : death?.time?.value;
  const { headers: _headers, ...properties } = message.properties;
  return {
    position,
    messageId: (message.properties.messageId as string | undefined) ?? null,
    commandType,
    hostId: originalRoutingKey(message),
    reason: death?.reason ?? (headers['x-first-death-reason'] as string | undefined) ?? null,
    fromQueue: death?.queue ?? (headers['x-first-death-queue'] as string | undefined) ?? null,
    deathCount: deathsOf(message).reduce((sum, d) => sum + (d.count ?? 1), 0),
    deadLetteredAt: time === undefined ? null : new Date(time * 1000).toISOString(),
    bytes: message.content.length,
    headers,
    properties: Object.fromEntries(Object.entries(properties).filter(([, v]) => v !== undefined)),
    body,
  };
}

/** The list view of a detail. */
export function summaryOf(detail: DeadLetterDetail): DeadLetterSummary {
  const { headers: _h, properties: _p, body: _b, ...summary } = detail;
  return summary;
}
