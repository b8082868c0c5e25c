import { EventEmitter } from 'node:events';
import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import { BrokerUnavailableError } from '../errors/index.js';
import type { CommandDisposition, CommandHandler, IncomingCommand } from '../jobs/ports.js';
import type { Logger } from '../observability/logger.js';
import { acquireWithTimeout, backoffDelay, sleep, withTimeout } from '../timing.js';
import type { BrokerConnection } from './connection.js';
import { declareTopology, type TopologyNames } from './topology.js';

export interface CommandConsumerOptions {
  connection: BrokerConnection;
  names: TopologyNames;
  hostId: string;
  /** Unacknowledged deliveries the broker may push to us at once. */
  prefetch: number;
  handler: CommandHandler;
  logger: Logger;
  /** Bound on declaring the topology and registering the consumer (default 30 s). */
  setupTimeoutMs?: number;
  /** Backoff between failed set-ups on a live connection (defaults 500 ms .. 30 s). */
  retryMinMs?: number;
  retryMaxMs?: number;
}

type ConsumeEnd = 'channel-closed' | 'cancelled' | 'stopped';

/** The events a {@link CommandConsumer} emits, with their arguments. */
export interface CommandConsumerEvents {
  /** A consumer is registered on the command queue. */
  active: [];
  inactive: [];
  /** Setting up the consumer failed (`failures` in a row); it tries again after a backoff. */
  retrying: [failures: number, error: unknown];
}

/**
 * Consumes this host's command queue. On every (re)connect, server-side channel close or
 * consumer cancel notification (e.g. the queue was deleted) it declares the topology again and
 * registers a new consumer, so the agent heals without a restart.
 *
 * Each delivery goes to the handler; its CommandDisposition decides: 'ack', or 'dead-letter'
 * (`nack` without requeue: the quorum queue moves it to the dead-letter exchange). A handler that
 * throws counts as 'dead-letter'. When the channel died before the ack, nothing is done: RabbitMQ
 * redelivers the command (with a higher x-delivery-count) and the job layer dedups by command id.
 *
 * Events: see {@link CommandConsumerEvents}.
 */
export class CommandConsumer extends EventEmitter<CommandConsumerEvents> {
  private readonly opts: CommandConsumerOptions;
  private readonly logger: Logger;
  private started = false;
  private stopping = false;
  private isActive = false;
  private readonly stopController = new AbortController();
  private readonly stopRequested: Promise<ConsumeEnd>;
  private resolveStop!: (end: ConsumeEnd) => void;
  private readonly inFlight = new Set<Promise<void>>();
  private loop: Promise<void> | undefined;

  constructor(opts: CommandConsumerOptions) {
    super();
    this.opts = opts;
    this.logger = opts.logger.child({ component: 'command-consumer', queue: opts.names.commandQueue });
    this.stopRequested = new Promise((resolve) => {
      this.resolveStop = resolve;
    });
  }

  /** True while a consumer is registered on the command queue (drives /readyz). */
  get active(): boolean {
    return this.isActive;
  }

  /** Deliveries whose handler has not finished yet. */
  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /** Starts consuming in the background (idempotent); waits for the connection when it is down. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.loop = this.run().catch((error: unknown) => {
      this.logger.error({ err: error }, 'command consumer loop stopped unexpectedly');
    });
  }

  /**
   * Cancels the consumer (no new commands), waits for the in-flight handlers to finish and be
   * acked or dead-lettered, then closes the channel.
   */
  async stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = true;
      this.stopController.abort();
      this.resolveStop('stopped');
    }
    await this.loop;
    await Promise.allSettled([...this.inFlight]);
    this.setActive(false);
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      let model: ChannelModel;
      try {
        model = await this.opts.connection.whenConnected(this.stopController.signal);
      } catch (error) {
        if (this.stopping) break;
        // The connection was closed under us; keep waiting in case it is restarted, but slowly.
        failures += 1;
        this.logger.warn({ err: error }, 'no broker connection for the command consumer');
        await this.pause(failures);
        continue;
      }
      try {
        const end = await this.consumeOn(model);
        failures = 0;
        if (end === 'channel-closed') this.logger.warn('command channel closed; consuming again');
      } catch (error) {
        if (this.stopping) break;
        failures += 1;
        this.logger.warn({ err: error, failures }, 'could not consume commands; retrying');
        this.emit('retrying', failures, error);
        await this.pause(failures);
      }
    }
  }

  private pause(failures: number): Promise<void> {
    const delay = backoffDelay(failures, this.opts.retryMinMs ?? 500, this.opts.retryMaxMs ?? 30_000);
    return sleep(delay, this.stopController.signal);
  }

  /** One channel's life: declare, consume, re-consume after cancels; returns when the channel ends. */
  private async consumeOn(model: ChannelModel): Promise<ConsumeEnd> {
    const ms = this.opts.setupTimeoutMs ?? 30_000;
    const channel = await acquireWithTimeout(
      model.createChannel(),
      ms,
      () => new BrokerUnavailableError(`opening a channel took over ${ms} ms`, { role: 'consume' }),
      (late) => late.close(),
    );
    let channelOpen = true;
    const closed = new Promise<ConsumeEnd>((resolve) => {
      channel.once('close', () => {
        channelOpen = false;
        resolve('channel-closed');
      });
    });
    // A server-side channel close (404, 406...) arrives as 'error' then 'close'; 'close' restarts us.
    channel.on('error', (error: Error) => this.logger.warn({ err: error }, 'command channel error'));
    try {
      await this.setUp(channel, false);
      while (!this.stopping) {
        let cancelled!: (end: ConsumeEnd) => void;
        const cancel = new Promise<ConsumeEnd>((resolve) => {
          cancelled = resolve;
        });
        const { consumerTag } = await this.bounded(
          channel.consume(
            this.opts.names.commandQueue,
            (message) => {
              if (message === null) cancelled('cancelled');
              else this.onDelivery(channel, message);
            },
            { noAck: false },
          ),
          'basic.consume',
        );
        this.setActive(true);
        this.logger.info({ consumerTag }, 'consuming commands');
        const end = await Promise.race([closed, cancel, this.stopRequested]);
        this.setActive(false);
        if (end === 'channel-closed') return end;
        if (end === 'stopped') {
          await this.bounded(channel.cancel(consumerTag), 'basic.cancel');
          await Promise.allSettled([...this.inFlight]);
          return end;
        }
        this.logger.warn(
          { consumerTag },
          'the broker cancelled the consumer (queue deleted?); declaring again',
        );
        await this.setUp(channel, true);
      }
      return 'stopped';
    } finally {
      this.setActive(false);
      if (channelOpen) {
        await channel.close().catch((error: unknown) => {
          this.logger.debug({ err: error }, 'closing the command channel failed (already closing?)');
        });
      }
    }
  }

  private async setUp(channel: Channel, again: boolean): Promise<void> {
    const { names, hostId } = this.opts;
    await this.bounded(declareTopology(channel, names, hostId), 'declare topology');
    if (!again) await this.bounded(channel.prefetch(this.opts.prefetch), 'basic.qos');
  }

  private bounded<T>(promise: Promise<T>, what: string): Promise<T> {
    const ms = this.opts.setupTimeoutMs ?? 30_000;
    return withTimeout(
      promise,
      ms,
      () =>
        new BrokerUnavailableError(`${what}: no answer from the broker within ${ms} ms`, { role: 'consume' }),
    );
  }

  private onDelivery(channel: Channel, message: ConsumeMessage): void {
    const command = toIncomingCommand(message);
    if (command.deliveryCount > 0) this.logRedelivery(command);
    const work = this.handle(channel, message, command);
    this.inFlight.add(work);
    void work.finally(() => this.inFlight.delete(work));
  }

  private async handle(channel: Channel, message: ConsumeMessage, command: IncomingCommand): Promise<void> {
    let disposition: CommandDisposition;
    try {
      disposition = await this.opts.handler(command);
    } catch (error) {
      this.logger.error(
        { err: error, messageId: command.messageId },
        'command handler threw; dead-lettering the command',
      );
      disposition = 'dead-letter';
    }
    try {
      if (disposition === 'ack') channel.ack(message);
      else channel.nack(message, false, false);
    } catch (error) {
      // The channel is gone: the broker has already put the message back for redelivery.
      this.logger.warn(
        { err: error, messageId: command.messageId, disposition },
        'channel closed before the command was settled; RabbitMQ will redeliver it',
      );
    }
  }

  /**
   * x-delivery-count grows each time a consumer holding the command unacked goes away (agent
   * crash, channel or node lost), and the queue dead-letters it past the delivery limit. The agent
   * acks right after journaling, so only commands caught in that short window count a loss;
   * a command close to the limit is worth a warning (see docs/operations.md, delivery limit).
   */
  private logRedelivery(command: IncomingCommand): void {
    const limit = this.opts.names.deliveryLimit;
    const fields = {
      messageId: command.messageId,
      deliveryCount: command.deliveryCount,
      deliveryLimit: limit,
    };
    if (command.deliveryCount >= limit - 1) {
      this.logger.warn(
        fields,
        'command redelivered near the delivery limit: one more consumer loss dead-letters it',
      );
    } else {
      this.logger.info(fields, 'command redelivered (an earlier consumer lost it unacked)');
    }
  }

  private setActive(active: boolean): void {
    if (this.isActive === active) return;
    this.isActive = active;
    this.emit(active ? 'active' : 'inactive');
  }
}

/** The delivery as the job layer sees it; `x-delivery-count` (quorum queues) becomes deliveryCount. */
export function toIncomingCommand(message: ConsumeMessage): IncomingCommand {
  const headers = (message.properties.headers ?? {}) as Record<string, unknown>;
  return {
    body: message.content,
    messageId: stringOrUndefined(message.properties.messageId),
    correlationId: stringOrUndefined(message.properties.correlationId),
    replyTo: stringOrUndefined(message.properties.replyTo),
    headers,
    contentType:
      typeof message.properties.contentType === 'string' ? message.properties.contentType : undefined,
    contentEncoding:
      typeof message.properties.contentEncoding === 'string' ? message.properties.contentEncoding : undefined,
    redelivered: message.fields.redelivered,
    deliveryCount: deliveryCountOf(headers['x-delivery-count']),
  };
}

/**
 * A short-string property the agent may echo back (messageId, correlationId, replyTo). amqplib
 * decodes invalid UTF-8 as U+FFFD, which can make it longer than AMQP's 255 bytes: such a value
 * could never be sent again, so it is treated as absent.
 */
function stringOrUndefined(value: unknown): string | undefined {
  return typeof value === 'string' && value.length > 0 && Buffer.byteLength(value) <= 255 ? value : undefined;
}

function deliveryCountOf(value: unknown): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value;
  if (typeof value === 'bigint' && value >= 0n) return Number(value);
  return 0;
}
