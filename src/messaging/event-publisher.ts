import { EventEmitter } from 'node:events';
import type { ConfirmChannel, Message, Options } from 'amqplib';
import {
  AgentError,
  BrokerUnavailableError,
  PublishNackedError,
  PublishTimeoutError,
} from '../errors/index.js';
import type { Logger } from '../observability/logger.js';
import { AGENT_NAME } from '../version.js';
import type { BrokerConnection } from './connection.js';
import { Outbox, type OutboxEntry } from './outbox.js';
import { acquireWithTimeout, backoffDelay, sleep, withTimeout } from './timing.js';
import { declareEventsExchange, type TopologyNames } from './topology.js';
import type { EventSink, OutgoingEvent } from './types.js';

export interface EventPublisherOptions {
  connection: BrokerConnection;
  names: TopologyNames;
  /** Directory of the on-disk outbox (under the agent's state dir; must survive restarts). */
  outboxDir: string;
  /** How long to wait for the broker's confirm of one publish. */
  confirmTimeoutMs: number;
  logger: Logger;
  /** Backoff after a failed publish on a live connection (defaults 200 ms .. 10 s). */
  retryMinMs?: number;
  retryMaxMs?: number;
}

/** What 'returned' listeners get: an event the broker could not route (nobody bound for its key). */
export interface ReturnedEvent {
  exchange: string;
  routingKey: string;
  messageId: string | undefined;
  replyCode: number;
  replyText: string;
}

/**
 * Publishes events on the events exchange over its own connection, with publisher confirms.
 *
 * Persistent events (see OutgoingEvent) are appended durably to the outbox first — publish()
 * resolves then — and one writer loop sends them strictly in outbox order, one at a time: publish
 * persistent + mandatory, wait for the confirm (confirmTimeoutMs), remove the entry. A confirm
 * timeout, nack or lost channel keeps the entry; it is sent again on a fresh channel, after a
 * reconnect if needed, and the outbox is replayed in order after a restart. Delivery is therefore
 * at least once: an event whose confirm was lost with the connection is sent twice (same AMQP
 * messageId = event id), right after itself, never out of order. Consumers dedup by event id.
 *
 * A persistent event the broker returns as unroutable (nobody bound to its routing key) was still
 * confirmed by the broker: it is logged with a warning, emitted as 'returned' and dropped from the
 * outbox — retrying could not route it either, and it must not block the events behind it.
 *
 * Events with `replyTo` are also sent to the default exchange with routing key = replyTo and the
 * AMQP correlationId, not mandatory: a caller that has gone away must not block the outbox.
 *
 * Non-persistent events (progress) are sent only while connected, without waiting for a confirm,
 * and never stored: while the broker is away they are dropped.
 *
 * Events: 'returned' (ReturnedEvent), 'confirmed' (OutgoingEvent), 'depth' (outbox depth).
 */
export class EventPublisher extends EventEmitter implements EventSink {
  private readonly opts: EventPublisherOptions;
  private readonly logger: Logger;
  private outbox: Outbox | undefined;
  private channel: ConfirmChannel | undefined;
  private opening: Promise<ConfirmChannel> | undefined;
  private closing = false;
  private readonly closeController = new AbortController();
  private wake: (() => void) | undefined;
  private writer: Promise<void> | undefined;

  constructor(opts: EventPublisherOptions) {
    super();
    this.opts = opts;
    this.logger = opts.logger.child({ component: 'event-publisher' });
  }

  /** Opens the outbox and starts the writer, which replays what the outbox holds once connected. */
  async start(): Promise<void> {
    if (this.outbox) return;
    this.outbox = await Outbox.open(this.opts.outboxDir, this.logger);
    if (this.outbox.depth > 0) {
      this.logger.info(
        { depth: this.outbox.depth },
        'outbox holds events from before; replaying them in order',
      );
    }
    this.emit('depth', this.outbox.depth);
    // Open the channel on every (re)connect, so progress flows again even when no persistent event is due.
    this.opts.connection.on('connected', this.openSoon);
    if (this.opts.connection.connected) this.openSoon();
    this.writer = this.writeLoop().catch((error: unknown) => {
      this.logger.error({ err: error }, 'event writer stopped unexpectedly');
    });
  }

  /** Persistent events waiting in the outbox (0 before start). */
  get outboxDepth(): number {
    return this.outbox?.depth ?? 0;
  }

  /**
   * Persistent: resolves once the event is durably in the outbox (rejects with OutboxError when it
   * cannot be written). Non-persistent: sent now if connected, else dropped; always resolves.
   */
  async publish(e: OutgoingEvent): Promise<void> {
    if (!e.persistent) {
      this.sendTransient(e);
      return;
    }
    if (!this.outbox || this.closing) {
      throw new AgentError('PUBLISHER_NOT_RUNNING', 'the event publisher is not started or already closed', {
        details: { eventId: e.event.id },
      });
    }
    await this.outbox.append(e);
    this.emit('depth', this.outbox.depth);
    this.wake?.();
  }

  /** Waits until the outbox is empty; false when `timeoutMs` passes first. */
  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.outboxDepth > 0) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.off('depth', done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.on('depth', done);
      });
    }
    return true;
  }

  /**
   * Stops the writer and closes the channel (not the connection, which the caller owns).
   * What is still in the outbox stays on disk for the next start.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.opts.connection.off('connected', this.openSoon);
    this.closeController.abort();
    this.wake?.();
    await this.writer;
    await this.opening?.catch(() => undefined);
    const channel = this.channel;
    this.channel = undefined;
    if (channel) {
      await channel.close().catch((error: unknown) => {
        this.logger.debug({ err: error }, 'closing the events channel failed (already closed?)');
      });
    }
  }

  /** Opens the channel in the background; a failure is only logged (the writer loop retries on its own). */
  private readonly openSoon = (): void => {
    if (this.closing || this.channel) return;
    this.confirmChannel().catch((error: unknown) => {
      if (!this.closing) this.logger.warn({ err: error }, 'could not open the events channel yet');
    });
  };

  private sendTransient(e: OutgoingEvent): void {
    const channel = this.channel;
    if (!channel || !this.opts.connection.connected) {
      if (this.opts.connection.connected) this.openSoon();
      this.logger.debug(
        { eventId: e.event.id, type: e.event.type },
        'broker away: dropping a non-persistent event',
      );
      return;
    }
    try {
      for (const { exchange, routingKey, options } of this.deliveries(e)) {
        channel.publish(
          exchange,
          routingKey,
          Buffer.from(JSON.stringify(e.event)),
          options,
          (error: unknown) => {
            if (error)
              this.logger.debug({ err: error, eventId: e.event.id }, 'non-persistent event not confirmed');
          },
        );
      }
    } catch (error) {
      // The channel closed between the check and the publish: best effort, so drop it.
      this.logger.debug({ err: error, eventId: e.event.id }, 'dropping a non-persistent event');
    }
  }

  /** The one loop that sends persistent events, oldest first, one at a time. */
  private async writeLoop(): Promise<void> {
    const outbox = this.outbox!;
    let failures = 0;
    while (!this.closing) {
      const entry = outbox.head();
      if (!entry) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          if (outbox.head() || this.closing) resolve();
        });
        this.wake = undefined;
        continue;
      }
      try {
        const channel = await this.confirmChannel();
        await this.sendConfirmed(channel, entry);
      } catch (error) {
        if (this.closing) break;
        failures += 1;
        this.logger.warn(
          { err: error, eventId: entry.event.event.id, failures, depth: outbox.depth },
          'event not confirmed; it stays in the outbox and is sent again',
        );
        await this.dropChannel();
        await sleep(
          backoffDelay(failures, this.opts.retryMinMs ?? 200, this.opts.retryMaxMs ?? 10_000),
          this.closeController.signal,
        );
        continue;
      }
      failures = 0;
      await this.removeConfirmed(outbox, entry);
    }
  }

  private async removeConfirmed(outbox: Outbox, entry: OutboxEntry): Promise<void> {
    try {
      await outbox.remove(entry);
    } catch (error) {
      // The entry left the in-memory queue, so this run goes on; its file would be sent again after a restart.
      this.logger.error(
        { err: error, eventId: entry.event.event.id },
        'confirmed event could not be deleted from the outbox; it will be sent again after a restart',
      );
    }
    this.emit('confirmed', entry.event);
    this.emit('depth', outbox.depth);
  }

  /** Publishes one entry (and its reply) and waits for every confirm. */
  private async sendConfirmed(channel: ConfirmChannel, entry: OutboxEntry): Promise<void> {
    const body = Buffer.from(JSON.stringify(entry.event.event));
    const confirms = this.deliveries(entry.event).map(
      ({ exchange, routingKey, options }) =>
        new Promise<void>((resolve, reject) => {
          channel.publish(exchange, routingKey, body, options, (error: unknown) => {
            if (error) {
              reject(new PublishNackedError('the broker did not accept the event', { cause: error }));
            } else resolve();
          });
        }),
    );
    const ms = this.opts.confirmTimeoutMs;
    await withTimeout(
      Promise.all(confirms),
      ms,
      () => new PublishTimeoutError(ms, { eventId: entry.event.event.id }),
    );
  }

  /** Where one event goes: the events exchange, plus the caller's reply queue when it asked for one. */
  private deliveries(
    e: OutgoingEvent,
  ): Array<{ exchange: string; routingKey: string; options: Options.Publish }> {
    const base: Options.Publish = {
      contentType: 'application/json',
      messageId: e.event.id,
      type: e.event.type,
      timestamp: timestampSeconds(e.event.time),
      appId: AGENT_NAME,
      persistent: e.persistent,
    };
    const list = [
      {
        exchange: this.opts.names.eventsExchange,
        routingKey: e.routingKey,
        options: { ...base, mandatory: e.persistent },
      },
    ];
    if (e.replyTo) {
      list.push({
        exchange: '',
        routingKey: e.replyTo,
        options: { ...base, mandatory: false, correlationId: e.correlationId ?? e.event.correlationid },
      });
    }
    return list;
  }

  /** The open confirm channel, creating it (and declaring the events exchange) when needed. */
  private confirmChannel(): Promise<ConfirmChannel> {
    if (this.channel) return Promise.resolve(this.channel);
    if (!this.opening) {
      this.opening = this.openChannel().finally(() => {
        this.opening = undefined;
      });
    }
    return this.opening;
  }

  private async openChannel(): Promise<ConfirmChannel> {
    const model = await this.opts.connection.whenConnected(this.closeController.signal);
    const ms = this.opts.confirmTimeoutMs;
    const channel = await acquireWithTimeout(
      model.createConfirmChannel(),
      ms,
      () => new BrokerUnavailableError(`opening the events channel took over ${ms} ms`, { role: 'publish' }),
      (late) => late.close(),
    );
    channel.on('error', (error: Error) => this.logger.warn({ err: error }, 'events channel error'));
    channel.on('close', () => {
      if (this.channel === channel) this.channel = undefined;
    });
    channel.on('return', (message: Message) => this.onReturn(message));
    try {
      await withTimeout(
        declareEventsExchange(channel, this.opts.names),
        ms,
        () =>
          new BrokerUnavailableError(`declaring the events exchange took over ${ms} ms`, { role: 'publish' }),
      );
    } catch (error) {
      await channel.close().catch(() => undefined);
      throw error;
    }
    if (this.closing) {
      // close() ran while this channel was opening: do not leave it behind.
      await channel.close().catch(() => undefined);
      throw new BrokerUnavailableError('the event publisher is closed', { role: 'publish' });
    }
    this.channel = channel;
    return channel;
  }

  private async dropChannel(): Promise<void> {
    const channel = this.channel;
    this.channel = undefined;
    if (channel) {
      // A channel that timed out may be stuck; the next attempt uses a fresh one.
      const ms = this.opts.confirmTimeoutMs;
      await withTimeout(
        channel.close(),
        ms,
        () =>
          new BrokerUnavailableError(`closing the events channel took over ${ms} ms`, { role: 'publish' }),
      ).catch((error: unknown) => {
        this.logger.debug({ err: error }, 'closing the events channel failed (already closed?)');
      });
    }
  }

  private onReturn(message: Message): void {
    const returned: ReturnedEvent = {
      exchange: message.fields.exchange,
      routingKey: message.fields.routingKey,
      messageId: typeof message.properties.messageId === 'string' ? message.properties.messageId : undefined,
      replyCode: (message.fields as { replyCode?: number }).replyCode ?? 0,
      replyText: (message.fields as { replyText?: string }).replyText ?? '',
    };
    this.logger.warn(
      returned,
      'the broker could not route an event (nobody bound to its routing key); dropped',
    );
    this.emit('returned', returned);
  }
}

function timestampSeconds(time: string): number {
  const ms = Date.parse(time);
  return Math.floor((Number.isFinite(ms) ? ms : Date.now()) / 1000);
}
