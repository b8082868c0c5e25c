// A job's events leave in one ordered chain per job, so sequences are strictly increasing on the
// wire: `accepted` (sequence 1), throttled `progress`, and exactly one terminal event, recorded in
// the journal before it is published.
import type { AgentMetrics } from '../observability/metrics.js';
import { volumeLabel } from '../observability/volume-metrics.js';
import type { EventData, VolumeRef } from '../protocol/index.js';
import { commandSpec } from './command-table.js';
import { buildEvent } from './events.js';
import type { JobJournal, JobRecord } from './journal.js';
import type { EventSink, OutgoingEvent } from './ports.js';
import type { ProgressUpdate } from './types.js';

/** A job's outcome, as its terminal event carries it. */
export type Terminal =
  | { kind: 'succeeded'; data: EventData<'succeeded'> }
  | { kind: 'failed'; data: EventData<'failed'> };

export interface JobEventsOptions {
  hostId: string;
  journal: JobJournal;
  sink: EventSink;
  metrics: AgentMetrics;
}

export class JobEvents {
  private readonly chains = new Map<string, Promise<void>>();

  constructor(private readonly opts: JobEventsOptions) {}

  /** Queues the recorded `accepted` event (sequence 1) and notes once it is in the outbox. */
  accepted(record: JobRecord): Promise<void> {
    return this.enqueue(record.id, async () => {
      const accepted = record.accepted;
      if (!accepted || accepted.published) return;
      await this.opts.sink.publish({
        event: accepted.event,
        routingKey: accepted.routingKey,
        persistent: true,
      });
      // No directory fsync: a lost flag only means recovery sends the same event (same id) again.
      await this.opts.journal.update(
        record.id,
        (r) => {
          if (r.accepted) r.accepted.published = true;
        },
        { durable: false },
      );
    });
  }

  /**
   * True when the job's `accepted` may never have reached the outbox. Its "published" flag is
   * written after the outbox append without a directory fsync, so it can be missing although the
   * event was sent: a later event of the job (a sequence past 1, a terminal) or the event still in
   * the outbox proves it was, and then it is not sent a second time.
   */
  acceptedMissing(record: JobRecord): boolean {
    const accepted = record.accepted;
    if (!accepted || accepted.published) return false;
    if (record.sequence > 1 || record.terminal) return false;
    return !(this.opts.sink.holds?.(accepted.event.id) ?? false);
  }

  progress(record: JobRecord, update: ProgressUpdate): Promise<void> {
    return this.enqueue(record.id, async () => {
      if (record.terminal) return;
      const sequence = record.sequence + 1;
      // The sequence is persisted so it continues after a restart (progress is throttled: cheap).
      await this.opts.journal.update(record.id, (r) => {
        r.sequence = sequence;
      });
      await this.opts.sink.publish(
        buildEvent('progress', {
          hostId: this.opts.hostId,
          correlationId: record.id,
          sequence,
          volume: record.volume,
          data: { jobId: record.id, ...update },
        }),
      );
    });
  }

  /** Records the terminal event in the journal, then publishes it (also to replyTo). Exactly once. */
  finish(record: JobRecord, terminal: Terminal): Promise<void> {
    return this.enqueue(record.id, async () => {
      if (record.terminal) return;
      const sequence = record.sequence + 1;
      const outgoing = buildEvent(terminal.kind, {
        hostId: this.opts.hostId,
        correlationId: record.id,
        sequence,
        volume: record.volume,
        data: terminal.data,
        replyTo: record.replyTo,
        replyCorrelationId: record.correlationId,
      });
      await this.opts.journal.update(record.id, (r) => {
        r.sequence = sequence;
        r.state = terminal.kind;
        r.finishedAt = new Date().toISOString();
        r.terminal = { event: outgoing.event, routingKey: outgoing.routingKey, published: false };
      });
      this.countFinished(record, terminal);
      await this.opts.sink.publish(outgoing);
      // No directory fsync: if a power cut loses it, recovery publishes the same event (same id)
      // again, which at-least-once consumers already handle.
      await this.opts.journal.update(
        record.id,
        (r) => {
          r.terminal!.published = true;
        },
        { durable: false },
      );
    });
  }

  /** Publishes a recorded terminal event that never reached the outbox (start-up recovery). */
  republishTerminal(record: JobRecord): Promise<void> {
    return this.enqueue(record.id, async () => {
      await this.opts.sink.publish(this.recordedTerminal(record));
      await this.opts.journal.update(record.id, (r) => {
        r.terminal!.published = true;
      });
    });
  }

  /** Sends a finished job's recorded terminal event again (a duplicate command), to `replyTo` if given. */
  resendTerminal(record: JobRecord, replyTo: string | undefined, correlationId: string | undefined) {
    const event = this.recordedTerminal(record);
    if (replyTo) {
      event.replyTo = replyTo;
      event.correlationId = correlationId ?? record.id;
    }
    return this.enqueue(record.id, () => this.opts.sink.publish(event));
  }

  /** Resolves once every queued event has been handed to the sink (or failed). */
  async drained(): Promise<void> {
    await Promise.allSettled([...this.chains.values()]);
  }

  private recordedTerminal(record: JobRecord): OutgoingEvent {
    const terminal = record.terminal!;
    return {
      event: terminal.event,
      routingKey: terminal.routingKey,
      persistent: true,
      ...(record.replyTo
        ? { replyTo: record.replyTo, correlationId: record.correlationId ?? record.id }
        : {}),
    };
  }

  /** Job counters and the per-volume signals; before the terminal event goes out, so a subscriber
   * that reads /metrics on that event sees the job counted. */
  private countFinished(record: JobRecord, terminal: Terminal): void {
    const labels = { type: record.type, outcome: terminal.kind };
    this.opts.metrics.jobs.inc(labels);
    this.opts.metrics.jobDuration.observe(labels, terminal.data.durationMs / 1000);
    if (commandSpec(record.type).volumeOutcome && record.volume)
      recordVolumeOutcome(this.opts.metrics, record.volume, terminal);
  }

  /** Runs `emit` after every earlier emit of the same job: events leave in sequence order. */
  private enqueue(id: string, emit: () => Promise<void>): Promise<void> {
    const previous = this.chains.get(id) ?? Promise.resolve();
    const next = previous.then(emit);
    const tail = next.catch(() => undefined);
    this.chains.set(id, tail);
    void tail.then(() => {
      if (this.chains.get(id) === tail) this.chains.delete(id);
    });
    return next;
  }
}

/** The per-volume signals operators alert on: last success (with bytes and depth), last failure. */
function recordVolumeOutcome(metrics: AgentMetrics, volume: VolumeRef, terminal: Terminal): void {
  const label = volumeLabel(volume);
  if (terminal.kind === 'failed') {
    metrics.volumes.failed(label, new Date(), terminal.data.error.code);
    return;
  }
  const snapshot = (terminal.data.result as { snapshot?: { physicalSize?: number; chainDepth?: number } })
    .snapshot;
  metrics.volumes.succeeded(label, new Date(), {
    bytes: snapshot?.physicalSize ?? 0,
    chainDepth: snapshot?.chainDepth ?? 0,
  });
}
