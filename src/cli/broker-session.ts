import type { KeyObject } from 'node:crypto';
import { type Channel, type ChannelModel, type ConfirmChannel, type ConsumeMessage, connect } from 'amqplib';
import { AgentError } from '../errors/index.js';
import type { BrokerTlsOptions } from '../messaging/broker-tls.js';
import {
  type AgentEvent,
  type Command,
  envelopeFor,
  eventSchema,
  SIGNATURE_HEADER,
  signBody,
  signCommand,
} from '../protocol/index.js';

/** RabbitMQ's direct reply-to pseudo queue: replies come back on the publishing channel. */
export const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to';

/** `amqp://user:pass@host` → `amqp://***@host`, for messages. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//***@');
}

/**
 * Opens one connection, trying each URL in turn. Every attempt is bounded by `timeoutMs`.
 * Throws BROKER_UNREACHABLE (exit code 5) naming every URL tried (credentials hidden).
 */
export async function connectBroker(
  urls: readonly string[],
  timeoutMs: number,
  tls: BrokerTlsOptions = {},
): Promise<ChannelModel> {
  const problems: string[] = [];
  for (const url of urls) {
    try {
      const model = await withTimeout(
        connect(url, { ...tls, timeout: timeoutMs, clientProperties: { connection_name: 'snapctl' } }),
        timeoutMs,
        `no answer within ${timeoutMs} ms`,
      );
      // A connection error without a listener would crash the process; callers see closed channels.
      model.on('error', () => {});
      return model;
    } catch (error) {
      problems.push(`${redactUrl(url)}: ${messageOf(error)}`);
    }
  }
  throw new AgentError('BROKER_UNREACHABLE', `cannot connect to the broker (${problems.join('; ')})`, {
    retryable: true,
    details: { urls: urls.map(redactUrl) },
  });
}

/** A channel whose server-side close (404, 406...) is kept as an error instead of crashing. */
export async function openChannel(model: ChannelModel): Promise<Channel> {
  const channel = await model.createChannel();
  channel.on('error', () => {});
  return channel;
}

export async function openConfirmChannel(model: ChannelModel): Promise<ConfirmChannel> {
  const channel = await model.createConfirmChannel();
  channel.on('error', () => {});
  return channel;
}

/** Fails with NOT_ROUTED when the exchange does not exist (no agent declared it yet). */
export async function assertExchangeExists(
  model: ChannelModel,
  exchange: string,
  role: string,
): Promise<void> {
  const channel = await openChannel(model);
  try {
    await channel.checkExchange(exchange);
  } catch (error) {
    throw new AgentError(
      'NOT_ROUTED',
      `the ${role} exchange "${exchange}" does not exist on the broker (has an agent ever started with this topology?)`,
      { cause: error, details: { exchange } },
    );
  } finally {
    await channel.close().catch(() => {});
  }
}

/** What a subscriber gets for each message on the events exchange. */
export type EventHandler = (event: AgentEvent, meta: { routingKey: string }) => void;
/** Called for a message that is not a valid event (kept visible, never dropped silently). */
export type InvalidEventHandler = (problem: string, meta: { routingKey: string; body: string }) => void;

export interface EventSubscription {
  queue: string;
  close(): Promise<void>;
}

/**
 * Subscribes to the events exchange: a server-named, exclusive, auto-delete queue bound with
 * each pattern (e.g. `hv01.*.*`), consumed without acks. Gone when the connection closes.
 */
export async function subscribeEvents(
  model: ChannelModel,
  exchange: string,
  patterns: readonly string[],
  onEvent: EventHandler,
  onInvalid: InvalidEventHandler,
): Promise<EventSubscription> {
  await assertExchangeExists(model, exchange, 'events');
  const channel = await openChannel(model);
  const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
  for (const pattern of patterns) await channel.bindQueue(queue, exchange, pattern);
  await channel.consume(queue, (message) => handleEventMessage(message, onEvent, onInvalid), { noAck: true });
  return { queue, close: () => channel.close().catch(() => {}) };
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
  let returned = false;
  const onReturn = (message: { properties: { messageId?: string } }) => {
    if (message.properties.messageId === command.id) returned = true;
  };
  channel.on('return', onReturn);
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        channel.publish(
          options.exchange,
          options.hostId,
          body,
          {
            persistent: true,
            mandatory: true,
            messageId: command.id,
            correlationId: command.id,
            contentType: 'application/json',
            type: command.type,
            timestamp: Math.floor(Date.now() / 1000),
            appId: 'snapctl',
            headers,
            ...(options.replyTo ? { replyTo: options.replyTo } : {}),
          },
          (error: unknown) =>
            error ? reject(new Error(`broker refused the command: ${messageOf(error)}`)) : resolve(),
        );
      }),
      options.confirmTimeoutMs,
      `no publisher confirm within ${options.confirmTimeoutMs} ms`,
    );
  } finally {
    channel.off('return', onReturn);
  }
  // RabbitMQ sends basic.return before the confirm, so `returned` is final here.
  if (returned) {
    throw new AgentError(
      'NOT_ROUTED',
      `no command queue for host "${options.hostId}" on exchange "${options.exchange}" (is the agent running there?)`,
      { details: { hostId: options.hostId, exchange: options.exchange } },
    );
  }
}

/** Resolves or rejects like `promise`, or rejects with `what` after `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(what)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
