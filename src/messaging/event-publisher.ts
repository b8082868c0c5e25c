import { EventEmitter } from 'node:events';
import type { ConfirmChannel, Message, Options } from 'amqplib';
import {
  AgentError,
  BrokerUnavailableError,
  messageOf,
  PublishNackedError,
  PublishTimeoutError,
} from '../errors/index.js';
import type { EventSink, OutgoingEvent } from '../jobs/ports.js';
import type { Logger } from '../observability/logger.js';
import { acquireWithTimeout, backoffDelay, sleep, withTimeout } from '../timing.js';
import { AGENT_NAME } from '../version.js';
import { type BrokerConnection, ConnectionState } from './connection.js';
import { Outbox, type OutboxEntry } from './outbox.js';
import { declareEventsExchange, type TopologyNames } from './topology.js';

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
  /**
   * The event that takes the place of one the broker can never accept (see quarantine); null or
   * absent: the entry is only moved aside.
   */
  replacementFor?: (quarantined: OutgoingEvent, reason: string) => OutgoingEvent | null;
  /** The outbox head counts as stalled when it has not moved for this long while connected (default 60 s). */
  stallAfterMs?: number;
}

/** What 'quarantined' listeners get. */
export interface QuarantinedEvent {
  event: OutgoingEvent;
  reason: string;
  replacement: OutgoingEvent | null;
}

/** The outbox head has not moved while the broker is connected (see EventPublisher.stall). */
export interface OutboxStall {
  eventId: string;
  sinceMs: number;
  lastError: string | null;
}

/** AMQP short strings (routing key, message properties) are at most 255 bytes. */
const SHORTSTR_MAX = 255;

/**
 * An event the broker can never accept: a property or routing key that AMQP cannot encode, or a
 * permanent refusal (PRECONDITION_FAILED, e.g. larger than the broker's max message size).
 * Sending it again cannot help, so it is quarantined instead of blocking the outbox.
 */
export class UnpublishableEventError extends AgentError {
  constructor(message: string, options: { cause?: unknown; eventId?: string } = {}) {
    super('EVENT_UNPUBLISHABLE', message, {
      cause: options.cause,
      retryable: false,
      details: options.eventId ? { eventId: options.eventId } : {},
    });
  }
}

/** What 'returned' listeners get: an event the broker could not route (nobody bound for its key). */
export interface ReturnedEvent {
  exchange: string;
  routingKey: string;
  messageId: string | undefined;
  replyCode: number;
  replyText: string;
}

/** The events an {@link EventPublisher} emits, with their arguments. */
export interface EventPublisherEvents {
  /** The broker returned an event (no queue bound for its routing key). */
  returned: [returned: ReturnedEvent];
  /** The broker confirmed a persistent event; it left the outbox. */
  confirmed: [event: OutgoingEvent];
  /** The outbox holds this many entries now. */
  depth: [depth: number];
  quarantined: [quarantined: QuarantinedEvent];
  stall: [stall: OutboxStall];
  'stall-end': [];
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
 * An entry the broker can never accept (UnpublishableEventError: an AMQP encoding limit, or a
 * channel closed with PRECONDITION_FAILED while it was being sent) is quarantined: kept on disk in
 * `<outbox>/quarantine/` with its reason, logged as an error, emitted as 'quarantined', and replaced
 * in place by `replacementFor`'s event. Transient failures (broker away, confirm timeout, nack)
 * still retry the same entry in order.
 *
 * While the broker is connected and the head entry does not move for `stallAfterMs`, the outbox
 * is stalled (`stall()`, a log line at start and end, 'stall' / 'stall-end' events).
 *
 * Events: see {@link EventPublisherEvents}.
 */
export class EventPublisher extends EventEmitter<EventPublisherEvents> implements EventSink {
  private readonly opts: EventPublisherOptions;
  private readonly logger: Logger;
  private outbox: Outbox | undefined;
  private channel: ConfirmChannel | undefined;
  private opening: Promise<ConfirmChannel> | undefined;
  private closing = false;
  private readonly closeController = new AbortController();
  private wake: (() => void) | undefined;
  private writer: Promise<void> | undefined;
  /** The head entry's seq and since when it is the head while connected (stall detection). */
  private headSeq: number | undefined;
  private headSince = Date.now();
  private lastError: string | null = null;
  /** A PRECONDITION_FAILED channel close seen while the head was being sent. */
  private refusal: Error | undefined;
  private stalled = false;
  private stallTimer: NodeJS.Timeout | undefined;

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
    this.opts.connection.on('connected', this.restartStallClock);
    if (this.opts.connection.state === ConnectionState.Ready) this.openSoon();
    const stallMs = this.stallAfterMs;
    this.stallTimer = setInterval(() => this.checkStall(), Math.max(50, Math.min(1000, stallMs / 4)));
    this.stallTimer.unref();
    this.writer = this.writeLoop().catch((error: unknown) => {
      this.logger.error({ err: error }, 'event writer stopped unexpectedly');
    });
  }

  /** Persistent events waiting in the outbox (0 before start). */
  get outboxDepth(): number {
    return this.outbox?.depth ?? 0;
  }

  holds(eventId: string): boolean {
    return this.outbox?.entries().some((entry) => entry.event.event.id === eventId) ?? false;
  }

  /** Whether any event of job `correlationId` is still waiting in the outbox. */
  private holdsJob(correlationId: string): boolean {
    return this.outbox?.entries().some((entry) => entry.event.event.correlationid === correlationId) ?? false;
  }

  /** Age of the oldest unsent persistent event (from its `time`), 0 when the outbox is empty. */
  oldestUnsentAgeMs(now = Date.now()): number {
    const head = this.outbox?.head();
    if (!head) return 0;
    const time = Date.parse(head.event.event.time);
    return Number.isFinite(time) ? Math.max(0, now - time) : 0;
  }

  /** The stall of the outbox head while connected, or undefined when it moves (or is empty). */
  stall(now = Date.now()): OutboxStall | undefined {
    const head = this.outbox?.head();
    if (!head || this.opts.connection.state !== ConnectionState.Ready || this.closing) return undefined;
    if (head.seq !== this.headSeq) return undefined; // the writer has not picked it up yet
    const sinceMs = now - this.headSince;
    if (sinceMs < this.stallAfterMs) return undefined;
    return { eventId: head.event.event.id, sinceMs, lastError: this.lastError };
  }

  private get stallAfterMs(): number {
    return this.opts.stallAfterMs ?? 60_000;
  }

  private readonly restartStallClock = (): void => {
    this.headSince = Date.now();
  };

  private checkStall(): void {
    const stall = this.stall();
    if (stall && !this.stalled) {
      this.stalled = true;
      this.logger.error(
        { ...stall, depth: this.outboxDepth },
        'outbox stalled: its head has not moved while the broker is connected',
      );
      this.emit('stall', stall);
    } else if (!stall && this.stalled) {
      this.stalled = false;
      this.logger.info({ depth: this.outboxDepth }, 'outbox moving again');
      this.emit('stall-end');
    }
  }

  /**
   * Persistent: resolves once the event is durably in the outbox (rejects with OutboxError when it
   * cannot be written). Non-persistent: sent now if connected, else dropped; always resolves.
   */
  async publish(e: OutgoingEvent): Promise<void> {
    if (!e.persistent) {
      // Sent at once, a transient event (progress) would overtake its job's events still waiting
      // in the outbox (`accepted` behind a slow fsync or a broker outage): a job's stream must
      // arrive in sequence order, so it is dropped instead (progress is advisory and throttled).
      if (this.holdsJob(e.event.correlationid)) {
        this.logger.debug(
          { eventId: e.event.id },
          'dropping a transient event: its job has events in the outbox',
        );
        return;
      }
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
    this.opts.connection.off('connected', this.restartStallClock);
    clearInterval(this.stallTimer);
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
    if (!channel || this.opts.connection.state !== ConnectionState.Ready) {
      if (this.opts.connection.state === ConnectionState.Ready) this.openSoon();
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
      if (entry.seq !== this.headSeq) {
        this.headSeq = entry.seq;
        this.headSince = Date.now();
        this.lastError = null;
      }
      try {
        this.refusal = undefined;
        const channel = await this.confirmChannel();
        await this.sendConfirmed(channel, entry);
      } catch (error) {
        if (this.closing) break;
        const permanent = this.permanentFailure(error, entry);
        if (permanent) {
          await this.quarantine(outbox, entry, permanent);
          continue;
        }
        this.lastError = messageOf(error);
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

  /** The reason when `error` means the broker can never accept the entry; undefined when it is transient. */
  private permanentFailure(error: unknown, entry: OutboxEntry): string | undefined {
    if (error instanceof UnpublishableEventError) return error.message;
    const refusal = this.refusal;
    if (refusal) {
      return `the broker refused event ${entry.event.event.id} for good: ${refusal.message}`;
    }
    return undefined;
  }

  /** Moves a never-publishable entry aside (see the class comment); its replacement takes its place. */
  private async quarantine(outbox: Outbox, entry: OutboxEntry, reason: string): Promise<void> {
    const original = entry.event;
    // A replacement that cannot be published either is dropped, not replaced again.
    const isReplacement = original.event.type.endsWith('.quarantined');
    let replacement: OutgoingEvent | null = null;
    if (!isReplacement) {
      try {
        replacement = this.opts.replacementFor?.(original, reason) ?? null;
      } catch (error) {
        this.logger.error({ err: error, eventId: original.event.id }, 'cannot build the quarantine notice');
      }
    }
    try {
      await outbox.quarantine(entry, reason, replacement);
    } catch (error) {
      // The entry stays the head: the next attempt quarantines it again.
      this.lastError = messageOf(error);
      this.logger.error({ err: error, eventId: original.event.id }, 'cannot quarantine an outbox entry');
      await sleep(this.opts.retryMaxMs ?? 10_000, this.closeController.signal);
      return;
    }
    this.logger.error(
      {
        eventId: original.event.id,
        type: original.event.type,
        correlationId: original.event.correlationid,
        reason,
        quarantineDir: outbox.quarantineDir,
        replacementId: replacement?.event.id ?? null,
      },
      'event the broker can never accept moved to the outbox quarantine',
    );
    this.emit('quarantined', { event: original, reason, replacement } satisfies QuarantinedEvent);
    this.emit('depth', outbox.depth);
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
    const eventId = entry.event.event?.id;
    let body: Buffer;
    try {
      body = Buffer.from(JSON.stringify(entry.event.event));
    } catch (error) {
      throw new UnpublishableEventError(`event ${eventId} cannot be serialised`, { cause: error, eventId });
    }
    const deliveries = this.deliveries(entry.event);
    // Checked before anything is sent, so an event is never half-published (event sent, reply not).
    for (const d of deliveries) assertEncodable(d, eventId);
    const confirms = deliveries.map(
      ({ exchange, routingKey, options }) =>
        new Promise<void>((resolve, reject) => {
          try {
            channel.publish(exchange, routingKey, body, options, (error: unknown) => {
              if (error) {
                reject(new PublishNackedError('the broker did not accept the event', { cause: error }));
              } else resolve();
            });
          } catch (error) {
            // amqplib throws IllegalOperationError on a closed channel (transient); anything else
            // is a frame it cannot encode (permanent).
            if (error instanceof Error && error.name === 'IllegalOperationError') reject(error);
            else
              reject(
                new UnpublishableEventError(`event ${eventId} cannot be encoded: ${String(error)}`, {
                  cause: error,
                  eventId,
                }),
              );
          }
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
      // CloudEvents AMQP binding, structured mode: the whole event is the body.
      contentType: CLOUDEVENTS_CONTENT_TYPE,
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
    channel.on('error', (error: Error) => {
      this.logger.warn({ err: error }, 'events channel error');
      // PRECONDITION_FAILED on a publish (e.g. over the broker's max message size) will not change.
      if ((error as { code?: unknown }).code === 406) this.refusal = error;
    });
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

/** The AMQP content-type of every event (CloudEvents structured mode). */
export const CLOUDEVENTS_CONTENT_TYPE = 'application/cloudevents+json';

/** Throws UnpublishableEventError when a routing key or string property exceeds AMQP's short-string limit. */
function assertEncodable(
  d: { routingKey: string; options: Options.Publish },
  eventId: string | undefined,
): void {
  const fields: Array<[string, unknown]> = [
    ['routing key', d.routingKey],
    ['messageId', d.options.messageId],
    ['correlationId', d.options.correlationId],
    ['type', d.options.type],
    ['appId', d.options.appId],
  ];
  for (const [name, value] of fields) {
    if (value === undefined) continue;
    if (typeof value !== 'string' || Buffer.byteLength(value) > SHORTSTR_MAX) {
      throw new UnpublishableEventError(
        `event ${eventId}: its ${name} does not fit an AMQP short string (${SHORTSTR_MAX} bytes)`,
        { eventId },
      );
    }
  }
}

function timestampSeconds(time: string): number {
  const ms = Date.parse(time);
  return Math.floor((Number.isFinite(ms) ? ms : Date.now()) / 1000);
}
