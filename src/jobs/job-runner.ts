import { createHash } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import {
  AgentError,
  JobCancelledError,
  NotImplementedError,
  toAgentError,
  ValidationError,
} from '../errors/index.js';
import type { CommandDisposition, EventSink, IncomingCommand, OutgoingEvent } from '../messaging/types.js';
import type { Logger } from '../observability/logger.js';
import type { AgentMetrics } from '../observability/metrics.js';
import { volumeLabel } from '../observability/volume-metrics.js';
import type { Command, CommandType, EventData, VolumeRef } from '../protocol/index.js';
import { REJECTION_CODE_LIST, type RejectionCode, volumeFamilyKey, volumeKey } from '../protocol/index.js';
import { type IntakePolicy, type IntakeResult, validateIncoming } from './command-validation.js';
import { buildEvent } from './events.js';
import type { JobJournal, JobRecord } from './journal.js';
import { ProgressThrottle } from './progress-throttle.js';
import { JobScheduler } from './scheduler.js';
import type { CommandHandlerFn, HandlerRegistry, JobContext, ProgressUpdate } from './types.js';

export interface JobRunnerOptions {
  hostId: string;
  policy: IntakePolicy;
  maxConcurrentJobs: number;
  progressIntervalMs: number;
  journal: JobJournal;
  sink: EventSink;
  /** Command handlers; `job.cancel` is built in and cannot be replaced. */
  handlers: HandlerRegistry;
  metrics: AgentMetrics;
  logger: Logger;
  /** After the shutdown grace, how long aborted jobs get to roll back before the agent stops anyway. */
  abortWaitMs?: number;
}

/** What `job.cancel` answers in its `succeeded` result. */
export interface CancelResult extends Record<string, unknown> {
  cancelled: boolean;
  state: 'unknown' | 'queued' | 'running' | 'succeeded' | 'failed';
}

type Terminal =
  | { kind: 'succeeded'; data: EventData<'succeeded'> }
  | { kind: 'failed'; data: EventData<'failed'> };

/**
 * The job layer: intake of deliveries (validate → dedup → journal → ack → `accepted`), scheduling
 * (one job per volume, a global limit), running handlers with a JobContext, and exactly one
 * terminal event per job, recorded in the journal before it is published. Also start-up
 * recovery and graceful shutdown. Every event of a job goes through one ordered chain, so
 * sequences are strictly increasing on the wire.
 */
export class JobRunner {
  private readonly scheduler: JobScheduler;
  private readonly controllers = new Map<string, AbortController>();
  /** Ids being journaled now, with the SHA-256 of their body. */
  private readonly intakeBusy = new Map<string, string>();
  private readonly emitChains = new Map<string, Promise<void>>();
  private readonly log: Logger;

  constructor(private readonly opts: JobRunnerOptions) {
    this.log = opts.logger;
    this.scheduler = new JobScheduler(opts.maxConcurrentJobs, (task, error) =>
      this.log.error({ err: error, jobId: task.id }, 'job runner failed outside a handler'),
    );
  }

  /** Jobs whose handler is running now. */
  get runningCount(): number {
    return this.scheduler.runningCount;
  }

  /** Jobs accepted and waiting for their volume or a slot. */
  get queuedCount(): number {
    return this.scheduler.queuedCount;
  }

  /**
   * The consumer's CommandHandler: returns 'dead-letter' for bad input (after a `rejected` event),
   * 'ack' once the job is durably journaled (or it is a duplicate); `accepted` follows.
   * Never throws.
   */
  readonly handleCommand = async (incoming: IncomingCommand): Promise<CommandDisposition> => {
    const bodySha256 = createHash('sha256').update(incoming.body).digest('hex');
    let result: IntakeResult;
    try {
      result = await validateIncoming(incoming, this.opts.policy);
    } catch (error) {
      // Not the command's fault (e.g. EACCES while resolving a path): refuse it, retryable.
      const agentError = toAgentError(error, 'INTAKE_FAILED');
      this.log.error({ err: error, messageId: incoming.messageId }, 'intake check failed');
      return this.reject(incoming, bodySha256, {
        error: new ValidationError('INTAKE_FAILED', agentError.message, { cause: error }),
        id: incoming.messageId ?? null,
        type: null,
        volume: null,
        retryable: true,
      });
    }
    if (!result.ok) return this.reject(incoming, bodySha256, { ...result, retryable: false });
    const command = result.command;
    const usedBy = this.intakeBusy.get(command.id) ?? this.opts.journal.get(command.id)?.bodySha256;
    if (usedBy !== undefined || this.opts.journal.has(command.id)) {
      // Older records carry no digest: treated as the same body (the behaviour they were written under).
      if (usedBy === undefined || usedBy === bodySha256) {
        // Signed mode: a seen id arriving fresh (not a broker redelivery after a crash) is a replay,
        // refused on its own; it never runs twice. Unsigned/legacy: the recorded result is re-sent.
        if (result.envelope && !incoming.redelivered) {
          return this.reject(incoming, bodySha256, {
            error: new ValidationError(
              'COMMAND_REPLAYED',
              `command id ${command.id} was already received; a signed command runs once (the first job is unaffected)`,
              { field: 'id' },
            ),
            id: command.id,
            type: command.type,
            volume: volumeOf(command),
            retryable: false,
          });
        }
        await this.answerDuplicate(command.id, incoming);
        return 'ack';
      }
      return this.reject(incoming, bodySha256, {
        error: new ValidationError(
          'ID_CONFLICT',
          `command id ${JSON.stringify(command.id)} is already used by a command with a different body; it does not run`,
          { field: 'id' },
        ),
        id: command.id,
        type: command.type,
        volume: volumeOf(command),
        retryable: false,
      });
    }
    this.intakeBusy.set(command.id, bodySha256);
    let record: JobRecord;
    try {
      record = newRecord(command, incoming, this.opts.hostId, bodySha256, result.envelope?.expiresAt ?? null);
      try {
        await this.opts.journal.create(record);
      } catch (error) {
        this.log.error({ err: error, jobId: command.id }, 'cannot journal the command');
        const agentError = toAgentError(error);
        this.intakeBusy.delete(command.id);
        return this.reject(incoming, bodySha256, {
          error: new ValidationError('JOURNAL_UNAVAILABLE', agentError.message, { cause: error }),
          id: command.id,
          type: command.type,
          volume: record.volume,
          retryable: true,
        });
      }
      // Journal → ack → accepted: the delivery is acked as soon as the job is durable; `accepted`
      // enters the job's ordered event chain first, so it still precedes every later event.
      void this.emitAccepted(record).catch((error: unknown) =>
        this.log.error({ err: error, jobId: record.id }, 'cannot publish the accepted event'),
      );
    } finally {
      this.intakeBusy.delete(command.id);
    }
    this.schedule(record, false);
    return 'ack';
  };

  /**
   * True when the job's `accepted` may never have reached the outbox. Its "published" flag is
   * written after the outbox append without a directory fsync, so it can be missing although the
   * event was sent: a later event of the job (a sequence past 1, a terminal) or the event still in
   * the outbox proves it was, and then it is not sent a second time.
   */
  private acceptedMissing(record: JobRecord): boolean {
    const accepted = record.accepted;
    if (!accepted || accepted.published) return false;
    if (record.sequence > 1 || record.terminal) return false;
    return !(this.opts.sink.holds?.(accepted.event.id) ?? false);
  }

  /** Queues the recorded `accepted` event (sequence 1) and notes once it is in the outbox. */
  private emitAccepted(record: JobRecord): Promise<void> {
    return this.enqueueEmit(record.id, async () => {
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
   * Start-up recovery: re-publishes recorded terminal events that never reached the outbox,
   * re-runs unfinished jobs with `recovering = true` (their handler decides: roll back or finish),
   * and ends jobs whose type has no handler `failed` with `recovered: true`.
   */
  async recover(): Promise<{ rerun: string[]; republished: string[]; failed: string[] }> {
    const outcome = { rerun: [] as string[], republished: [] as string[], failed: [] as string[] };
    for (const record of this.opts.journal.list()) {
      // Killed between the journal write and the outbox write: `accepted` first, before anything else.
      if (this.acceptedMissing(record)) {
        await this.emitAccepted(record);
        outcome.republished.push(record.id);
      }
      if (record.terminal) {
        if (record.terminal.published) continue;
        await this.enqueueEmit(record.id, async () => {
          await this.opts.sink.publish(this.recordedTerminal(record));
          await this.opts.journal.update(record.id, (r) => {
            r.terminal!.published = true;
          });
        });
        outcome.republished.push(record.id);
        continue;
      }
      if (this.handlerFor(record.type)) {
        this.log.warn({ jobId: record.id, commandType: record.type, state: record.state }, 'recovering job');
        this.schedule(record, true);
        outcome.rerun.push(record.id);
      } else {
        const error = new NotImplementedError(`command type ${record.type}`);
        await this.finish(record, this.failure(record, error, 0, true));
        outcome.failed.push(record.id);
      }
    }
    return outcome;
  }

  /**
   * Graceful stop: no queued job starts any more (they stay journaled and are recovered at the next
   * start); running jobs get `graceMs` to finish, then their signal is aborted (they roll back and
   * end `failed` JOB_CANCELLED, retryable) and they get `abortWaitMs` more. Resolves with the ids
   * of jobs still running at the end (they will be recovered).
   */
  async shutdown(graceMs: number): Promise<{ left: string[]; aborted: string[] }> {
    const waiting = this.scheduler.pause();
    if (waiting.length > 0) this.log.info({ jobs: waiting }, 'queued jobs stay journaled for the next start');
    const aborted: string[] = [];
    if (!(await this.idleWithin(graceMs))) {
      for (const [id, controller] of this.controllers) {
        aborted.push(id);
        controller.abort(
          new JobCancelledError(null, { reason: 'the agent is shutting down', retryable: true }),
        );
      }
      this.log.warn({ jobs: aborted }, 'shutdown grace over: jobs aborted');
      await this.idleWithin(this.opts.abortWaitMs ?? 30_000);
    }
    await Promise.allSettled([...this.emitChains.values()]);
    return { left: [...this.controllers.keys()], aborted };
  }

  private async idleWithin(ms: number): Promise<boolean> {
    const timeout = new AbortController();
    try {
      return await Promise.race([
        this.scheduler.whenIdle().then(() => true),
        delay(ms, false, { signal: timeout.signal }),
      ]);
    } finally {
      timeout.abort();
    }
  }

  private async reject(
    incoming: IncomingCommand,
    bodySha256: string,
    r: {
      error: ValidationError;
      id: string | null;
      type: string | null;
      volume: VolumeRef | null;
      retryable: boolean;
    },
  ): Promise<CommandDisposition> {
    this.opts.metrics.rejected.inc({ reason: r.error.code });
    this.log.warn(
      { jobId: r.id, code: r.error.code, field: r.error.field, messageId: incoming.messageId },
      `command rejected: ${r.error.message}`,
    );
    if (r.id === null) return 'dead-letter';
    // A message under an id that is already used must never join that job's stream.
    const used = this.intakeBusy.has(r.id) || this.opts.journal.has(r.id);
    const correlationId = used ? conflictCorrelationId(r.id, bodySha256) : r.id;
    const event = buildEvent('rejected', {
      hostId: this.opts.hostId,
      correlationId,
      sequence: 1,
      volume: r.volume,
      data: {
        jobId: r.id,
        commandType: r.type,
        error: {
          // The document lists every rejection code; anything else would be a bug, reported as such.
          code: (REJECTION_CODE_LIST as readonly string[]).includes(r.error.code)
            ? (r.error.code as RejectionCode)
            : 'INTAKE_FAILED',
          message: r.error.message,
          retryable: r.retryable,
          ...(r.error.field ? { field: r.error.field } : {}),
        },
      },
      replyTo: incoming.replyTo,
      replyCorrelationId: incoming.correlationId ?? r.id,
    });
    try {
      await this.opts.sink.publish(event);
    } catch (error) {
      this.log.error({ err: error, jobId: r.id }, 'cannot publish the rejected event');
    }
    return 'dead-letter';
  }

  /** A command id seen before never runs again; a finished one gets its recorded terminal event again. */
  private async answerDuplicate(id: string, incoming: IncomingCommand): Promise<void> {
    const record = this.opts.journal.get(id);
    if (!record?.terminal) {
      this.log.info(
        { jobId: id, redelivered: incoming.redelivered },
        'duplicate of a job in progress: acked',
      );
      return;
    }
    this.log.info(
      { jobId: id, state: record.state },
      'duplicate of a finished job: terminal event re-published',
    );
    const event = this.recordedTerminal(record);
    if (incoming.replyTo) {
      event.replyTo = incoming.replyTo;
      event.correlationId = incoming.correlationId ?? id;
    }
    await this.enqueueEmit(id, () => this.opts.sink.publish(event)).catch((error: unknown) =>
      this.log.error({ err: error, jobId: id }, 'cannot re-publish the terminal event'),
    );
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

  private schedule(record: JobRecord, recovering: boolean): void {
    this.scheduler.submit({
      id: record.id,
      lockKey: record.lockKey,
      run: () => this.run(record.id, recovering),
    });
  }

  private handlerFor(type: CommandType): CommandHandlerFn | undefined {
    if (type === 'job.cancel') return this.cancelHandler as CommandHandlerFn;
    return this.opts.handlers[type] as CommandHandlerFn | undefined;
  }

  private async run(id: string, recovering: boolean): Promise<void> {
    const journal = this.opts.journal;
    const record = journal.get(id);
    if (!record || record.terminal) return; // cancelled while it waited
    const controller = new AbortController();
    this.controllers.set(id, controller);
    this.opts.metrics.jobsInFlight.inc();
    const logger = this.log.child({
      jobId: id,
      commandType: record.type,
      volume: record.volume ? volumeKey(record.volume) : undefined,
      hostId: this.opts.hostId,
    });
    const started = performance.now();
    let finished = false;
    const throttle = new ProgressThrottle(this.opts.progressIntervalMs, (update) => {
      void this.emitProgress(record, update).catch((error: unknown) =>
        logger.warn({ err: error }, 'progress event not published'),
      );
    });
    try {
      // No directory fsync: recovery treats queued and running jobs alike; the facts ride along
      // with the next durable write of the record.
      await journal.update(
        id,
        (r) => {
          r.state = 'running';
          r.startedAt = new Date().toISOString();
          r.runs += 1;
        },
        { durable: false },
      );
      logger.info({ recovering }, 'job started');
      const ctx: JobContext = {
        jobId: id,
        command: record.command,
        logger,
        signal: controller.signal,
        progress: (update) => {
          if (!finished) throttle.update(update);
        },
        journal: journal.stepJournal(id),
        recovering,
      };
      let terminal: Terminal;
      try {
        const handler = this.handlerFor(record.type);
        if (!handler) throw new NotImplementedError(`command type ${record.type}`);
        const result = await handler(ctx);
        terminal = {
          kind: 'succeeded',
          data: {
            jobId: id,
            commandType: record.type,
            durationMs: elapsed(started),
            result: result ?? {},
          },
        };
      } catch (error) {
        const cause =
          controller.signal.aborted && !(error instanceof AgentError) ? controller.signal.reason : error;
        const failed = this.failure(record, cause, elapsed(started), recovering);
        logger.warn({ err: error, code: failed.data.error.code }, 'job failed');
        terminal = failed;
      }
      finished = true;
      throttle.flush();
      await this.finish(record, terminal);
      logger.info({ outcome: terminal.kind, durationMs: terminal.data.durationMs }, 'job finished');
    } finally {
      finished = true;
      throttle.dispose();
      this.controllers.delete(id);
      this.opts.metrics.jobsInFlight.dec();
    }
  }

  private failure(
    record: JobRecord,
    error: unknown,
    durationMs: number,
    recovering: boolean,
  ): Extract<Terminal, { kind: 'failed' }> {
    const agentError = toAgentError(error);
    const detailRolledBack = agentError.details.rolledBack;
    const details = Object.keys(agentError.details).length > 0 ? agentError.details : undefined;
    return {
      kind: 'failed',
      data: {
        jobId: record.id,
        commandType: record.type,
        durationMs,
        error: {
          code: agentError.code,
          message: agentError.message,
          retryable: agentError.retryable,
          ...(details ? { details: jsonSafe(details) } : {}),
        },
        // Nothing recorded in the step journal means no step ran: nothing to undo.
        rolledBack:
          typeof detailRolledBack === 'boolean'
            ? detailRolledBack
            : !this.opts.journal.get(record.id)?.stepsWritten,
        retryable: agentError.retryable,
        ...(recovering ? { recovered: true } : {}),
      },
    };
  }

  /** Records the terminal event in the journal, then publishes it (also to replyTo). Exactly once. */
  private async finish(record: JobRecord, terminal: Terminal): Promise<void> {
    await this.enqueueEmit(record.id, async () => {
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

  /** Job counters and the per-volume signals; before the terminal event goes out, so a subscriber
   * that reads /metrics on that event sees the job counted. */
  private countFinished(record: JobRecord, terminal: Terminal): void {
    const labels = { type: record.type, outcome: terminal.kind };
    this.opts.metrics.jobs.inc(labels);
    this.opts.metrics.jobDuration.observe(labels, terminal.data.durationMs / 1000);
    if (record.type === 'snapshot.create' && record.volume)
      recordVolumeOutcome(this.opts.metrics, record.volume, terminal);
  }

  private emitProgress(record: JobRecord, update: ProgressUpdate): Promise<void> {
    return this.enqueueEmit(record.id, async () => {
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

  /** Runs `emit` after every earlier emit of the same job: events leave in sequence order. */
  private enqueueEmit(id: string, emit: () => Promise<void>): Promise<void> {
    const previous = this.emitChains.get(id) ?? Promise.resolve();
    const next = previous.then(emit);
    const tail = next.catch(() => undefined);
    this.emitChains.set(id, tail);
    void tail.then(() => {
      if (this.emitChains.get(id) === tail) this.emitChains.delete(id);
    });
    return next;
  }

  /** job.cancel: aborts the target's signal (its handler rolls back) or drops it from the queue. */
  private readonly cancelHandler = async (ctx: JobContext<'job.cancel'>): Promise<CancelResult> => {
    const targetId = ctx.command.params.jobId;
    const target = this.opts.journal.get(targetId);
    if (!target) return { cancelled: false, state: 'unknown' };
    if (target.terminal) return { cancelled: false, state: target.state };
    const reason = `cancelled by ${ctx.jobId}`;
    if (this.scheduler.cancelQueued(targetId)) {
      await this.finish(target, this.failure(target, new JobCancelledError(null, { reason }), 0, false));
      ctx.logger.info({ target: targetId }, 'queued job cancelled');
      return { cancelled: true, state: 'queued' };
    }
    const controller = this.controllers.get(targetId);
    if (controller) {
      controller.abort(new JobCancelledError(null, { reason }));
      ctx.logger.info({ target: targetId }, 'running job aborted');
      return { cancelled: true, state: 'running' };
    }
    return { cancelled: false, state: target.state };
  };
}

/**
 * correlationid of a rejection under an id already used: `<id>#<first 16 hex of SHA-256 of the body>`.
 * "#" never appears in a command id, so it is never a job's correlationid.
 */
export function conflictCorrelationId(id: string, bodySha256: string): string {
  return `${id}#${bodySha256.slice(0, 16)}`;
}

function volumeOf(command: Command): VolumeRef | null {
  return 'volume' in command.params ? (command.params.volume ?? null) : null;
}

/** The journal record of a newly accepted command, its `accepted` event included (not yet published). */
export function newRecord(
  command: Command,
  incoming: Pick<IncomingCommand, 'replyTo' | 'correlationId'>,
  hostId: string,
  bodySha256: string,
  /** expiresAt of a signed command (the journal keeps its id at least until then). */
  commandExpiresAt: string | null = null,
): JobRecord {
  const volume = volumeOf(command);
  let lockKey: string | null = null;
  if (volume) lockKey = `volume:${volumeFamilyKey(volume)}`;
  else if (command.type === 'chain.verify')
    lockKey = `store:${command.params.store.root}/${command.params.store.dir}`;
  const accepted = buildEvent('accepted', {
    hostId,
    correlationId: command.id,
    sequence: 1,
    volume,
    data: { jobId: command.id, commandType: command.type, volume },
  });
  return {
    version: 1,
    id: command.id,
    type: command.type,
    command,
    volume,
    lockKey,
    replyTo: incoming.replyTo ?? null,
    correlationId: incoming.correlationId ?? null,
    state: 'queued',
    sequence: 1, // the accepted event
    acceptedAt: new Date().toISOString(),
    startedAt: null,
    finishedAt: null,
    runs: 0,
    steps: {},
    stepsWritten: false,
    terminal: null,
    accepted: {
      event: accepted.event,
      routingKey: accepted.routingKey,
      published: false,
    },
    bodySha256,
    commandExpiresAt,
  };
}

function elapsed(started: number): number {
  return Math.round((performance.now() - started) * 1000) / 1000;
}

/** Error details go into JSON events: drop what JSON cannot carry (causes, functions, cycles). */
function jsonSafe(details: Record<string, unknown>): Record<string, unknown> {
  try {
    return JSON.parse(JSON.stringify(details)) as Record<string, unknown>;
  } catch {
    return { note: 'details not serialisable' };
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
