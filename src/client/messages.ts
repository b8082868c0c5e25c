import type { KeyObject } from 'node:crypto';
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage, Options } from 'amqplib';
import { AgentError, messageOf } from '../errors/index.js';
import type { BrokerConnection } from '../messaging/connection.js';
import {
  type AgentEvent,
  type Command,
  envelopeFor,
  eventSchema,
  SIGNATURE_HEADER,
  signBody,
  signCommand,
} from '../protocol/index.js';
import { withTimeout } from '../timing.js';

/** RabbitMQ's direct reply-to pseudo queue: replies come back on the publishing channel. */
export const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to';

/** Closes a channel we are done with; a channel the broker already closed has nothing to release. */
export async function closeChannel(connection: BrokerConnection, channel: Channel): Promise<void> {
  await connection.bounded(channel.close(), 'close a channel').catch(() => {});
}

/**
 * Runs `check` (checkExchange, checkQueue) on a channel of its own: a missing entity closes the
 * channel on the broker's side. Fails with NOT_ROUTED and `problem` as message.
 */
export async function assertExists(
  connection: BrokerConnection,
  check: (channel: Channel) => Promise<unknown>,
  problem: string,
  details: Record<string, unknown>,
): Promise<void> {
  const channel = await connection.openChannel();
  try {
    await connection.bounded(check(channel), 'check an exchange or queue');
  } catch (error) {
    throw new AgentError('NOT_ROUTED', problem, { cause: error, details });
  } finally {
    await closeChannel(connection, channel);
  }
}

/** Fails with NOT_ROUTED when the exchange does not exist (no agent declared it yet). */
export function assertExchangeExists(
  connection: BrokerConnection,
  exchange: string,
  role: string,
): Promise<void> {
  return assertExists(
    connection,
    (channel) => channel.checkExchange(exchange),
    `the ${role} exchange "${exchange}" does not exist on the broker (has an agent ever started with this topology?)`,
    { exchange },
  );
}

/** What a subscriber gets for each message on the events exchange. */
export type EventHandler = (event: AgentEvent, meta: { routingKey: string }) => void;
/** Called for a message that is not a valid event (kept visible, never dropped silently). */
export type InvalidEventHandler = (problem: string, meta: { routingKey: string; body: string }) => void;

export interface EventSubscription {
  readonly queue: string;
  close(): Promise<void>;
}

export interface SubscribeOptions {
  exchange: string;
  /** Binding patterns, e.g. `hv01.*.*`. */
  patterns: readonly string[];
  onEvent: EventHandler;
  onInvalid: InvalidEventHandler;
  /** Subscribe on this connection instead of the live one (inside a set-up, see BrokerConnection.addSetup). */
  model?: ChannelModel;
}

/**
 * Subscribes to the events exchange: a server-named, exclusive, auto-delete queue bound with
 * each pattern, consumed without acks. Gone when the connection closes.
 */
export async function subscribeEvents(
  connection: BrokerConnection,
  options: SubscribeOptions,
): Promise<EventSubscription> {
  const { exchange, onEvent, onInvalid } = options;
  if (!options.model) await assertExchangeExists(connection, exchange, 'events');
  const channel = await connection.openChannel(options.model);
  try {
    if (options.model) await connection.bounded(channel.checkExchange(exchange), 'check the events exchange');
    const { queue } = await connection.bounded(
      channel.assertQueue('', { exclusive: true, autoDelete: true, durable: false }),
      'declare the event queue',
    );
    for (const pattern of options.patterns)
      await connection.bounded(channel.bindQueue(queue, exchange, pattern), 'bind the event queue');
    await connection.bounded(
      channel.consume(queue, (message) => handleEventMessage(message, onEvent, onInvalid), { noAck: true }),
      'consume the event queue',
    );
    return { queue, close: () => closeChannel(connection, channel) };
  } catch (error) {
    await closeChannel(connection, channel);
    throw error;
  }
}

/** Remembers the last `capacity` event ids: at-least-once delivery becomes once per subscriber. */
export class EventDeduper {
  private readonly seen = new Set<string>();
  constructor(private readonly capacity = 10_000) {}

  /** True the first time an id is offered. */
  first(id: string): boolean {
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    if (this.seen.size > this.capacity) this.seen.delete(this.seen.values().next().value as string);
    return true;
  }
}

/** Parses one delivery as a CloudEvent of ours; reports anything else through `onInvalid`. */
export function handleEventMessage(
  message: ConsumeMessage | null,
  onEvent: EventHandler,
  onInvalid: InvalidEventHandler,
): void {
  if (!message) return;
  const routingKey = message.fields.routingKey;
  const body = message.content.toString('utf8');
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch (error) {
    onInvalid(`not JSON: ${messageOf(error)}`, { routingKey, body });
    return;
  }
  const parsed = eventSchema.safeParse(json);
  if (!parsed.success) {
    onInvalid(`not a valid event: ${parsed.error.issues[0]?.message ?? 'schema mismatch'}`, {
      routingKey,
      body,
    });
    return;
  }
  onEvent(parsed.data, { routingKey });
}

/** The management plane's Ed25519 key: signs each command for its target host. */
export interface CommandSigner {
  privateKey: KeyObject;
  keyId: string;
  /** expiresAt = issuedAt + lifetimeMs. */
  lifetimeMs: number;
}

export interface PublishCommandOptions {
  exchange: string;
  hostId: string;
  /** Ed25519 signer (preferred); the legacy HMAC signingKey is used only without it. */
  signer?: CommandSigner;
  signingKey?: string;
  /** Set the AMQP replyTo (e.g. DIRECT_REPLY_TO); the channel must already consume it. */
  replyTo?: string;
  confirmTimeoutMs: number;
}

/**
 * Publishes persistent and mandatory on a confirm channel and waits for the broker's confirm.
 * Resolves with true when the broker returned the message (no queue bound for `routingKey`):
 * RabbitMQ sends basic.return before the confirm, so the answer is final.
 */
export async function publishConfirmed(
  channel: ConfirmChannel,
  target: { exchange: string; routingKey: string; confirmTimeoutMs: number; what: string },
  content: Buffer,
  properties: Options.Publish,
): Promise<{ returned: boolean }> {
  let returned = false;
  const onReturn = (message: { properties: { messageId?: string } }) => {
    if (message.properties.messageId === properties.messageId) returned = true;
  };
  channel.on('return', onReturn);
  const ms = target.confirmTimeoutMs;
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        channel.publish(
          target.exchange,
          target.routingKey,
          content,
          { ...properties, persistent: true, mandatory: true },
          (error: unknown) =>
            error ? reject(new Error(`broker refused the ${target.what}: ${messageOf(error)}`)) : resolve(),
        );
      }),
      ms,
      () => new Error(`no publisher confirm within ${ms} ms`),
    );
  } finally {
    channel.off('return', onReturn);
  }
  return { returned };
}

/**
 * Publishes a command (persistent, mandatory, messageId = command id) and waits for the
 * broker's confirm. Throws NOT_ROUTED when no queue is bound for the host.
 */
export async function publishCommand(
  channel: ConfirmChannel,
  command: Command,
  options: PublishCommandOptions,
): Promise<void> {
  const body = Buffer.from(JSON.stringify(command));
  let headers: Record<string, string> = {};
  if (options.signer) {
    const { privateKey, keyId, lifetimeMs } = options.signer;
    headers = signCommand(body, envelopeFor(options.hostId, keyId, lifetimeMs), privateKey);
  } else if (options.signingKey) headers[SIGNATURE_HEADER] = signBody(body, options.signingKey);
  const { returned } = await publishConfirmed(
    channel,
    {
      exchange: options.exchange,
      routingKey: options.hostId,
      confirmTimeoutMs: options.confirmTimeoutMs,
      what: 'command',
    },
    body,
    {
      messageId: command.id,
      correlationId: command.id,
      contentType: 'application/json',
      type: command.type,
      timestamp: Math.floor(Date.now() / 1000),
      appId: 'snapctl',
      headers,
      ...(options.replyTo ? { replyTo: options.replyTo } : {}),
    },
  );
  if (returned) {
    throw new AgentError(
      'NOT_ROUTED',
      `no command queue for host "${options.hostId}" on exchange "${options.exchange}" (is the agent running there?)`,
      { details: { hostId: options.hostId, exchange: options.exchange } },
    );
  }
}
