import { setTimeout as delay } from 'node:timers/promises';
import { AgentError, JobCancelledError, NotImplementedError, toAgentError } from '../errors/index.js';
import type { Logger } from '../observability/logger.js';
import type { AgentMetrics } from '../observability/metrics.js';
import { type CommandType, volumeKey } from '../protocol/index.js';
import { type CommandTypeHandledBy, commandSpec } from './command-table.js';
import type { IntakePolicy } from './command-validation.js';
import { CommandIntake } from './intake.js';
import { JobEvents, type Terminal } from './job-events.js';
import type { JobJournal, JobRecord } from './journal.js';
import type { CommandHandler, EventSink } from './ports.js';
import { ProgressThrottle } from './progress-throttle.js';
import { JobScheduler } from './scheduler.js';
import type { CommandHandlerFn, HandlerRegistry, JobContext } from './types.js';

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

/**
 * The job layer: intake (intake.ts) hands journaled jobs to the scheduler (one job per lock key, a
 * global limit); this runs their handlers with a JobContext and ends each with exactly one terminal
 * event (job-events.ts, one ordered chain per job). Also start-up recovery, graceful shutdown and
 * job.cancel.
 */
export class JobRunner {
  private readonly scheduler: JobScheduler;
  private readonly controllers = new Map<string, AbortController>();
  private readonly events: JobEvents;
  private readonly log: Logger;
  /** The consumer's CommandHandler (intake): never throws. */
  readonly handleCommand: CommandHandler;

  constructor(private readonly opts: JobRunnerOptions) {
    this.log = opts.logger;
    this.scheduler = new JobScheduler(opts.maxConcurrentJobs, (task, error) =>
      this.log.error({ err: error, jobId: task.id }, 'job runner failed outside a handler'),
    );
    this.events = new JobEvents(opts);
    this.handleCommand = new CommandIntake({
      ...opts,
      events: this.events,
      schedule: (record) => this.schedule(record, false),
    }).handleCommand;
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
   * Start-up recovery: re-publishes recorded terminal events that never reached the outbox,
   * re-runs unfinished jobs with `recovering = true` (their handler decides: roll back or finish),
   * and ends jobs whose type has no handler `failed` with `recovered: true`.
   */
  async recover(): Promise<{ rerun: string[]; republished: string[]; failed: string[] }> {
    const outcome = { rerun: [] as string[], republished: [] as string[], failed: [] as string[] };
    for (const record of this.opts.journal.list()) {
      // Killed between the journal write and the outbox write: `accepted` first, before anything else.
      if (this.events.acceptedMissing(record)) {
        await this.events.accepted(record);
        outcome.republished.push(record.id);
      }
      if (record.terminal) {
        if (record.terminal.published) continue;
        await this.events.republishTerminal(record);
        outcome.republished.push(record.id);
        continue;
      }
      if (this.handlerFor(record.type)) {
        this.log.warn({ jobId: record.id, commandType: record.type, state: record.state }, 'recovering job');
        this.schedule(record, true);
        outcome.rerun.push(record.id);
      } else {
        const error = new NotImplementedError(`command type ${record.type}`);
        await this.events.finish(record, this.failure(record, error, 0, true));
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
    await this.events.drained();
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

  private schedule(record: JobRecord, recovering: boolean): void {
    this.scheduler.submit({
      id: record.id,
      lockKey: record.lockKey,
      run: () => this.run(record.id, recovering),
    });
  }

  private handlerFor(type: CommandType): CommandHandlerFn | undefined {
    if (isBuiltIn(type)) return this.builtIn[type];
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
      void this.events
        .progress(record, update)
        .catch((error: unknown) => logger.warn({ err: error }, 'progress event not published'));
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
      await this.events.finish(record, terminal);
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

  /** job.cancel: aborts the target's signal (its handler rolls back) or drops it from the queue. */
  private readonly cancelHandler = async (ctx: JobContext<'job.cancel'>): Promise<CancelResult> => {
    const targetId = ctx.command.params.jobId;
    const target = this.opts.journal.get(targetId);
    if (!target) return { cancelled: false, state: 'unknown' };
    if (target.terminal) return { cancelled: false, state: target.state };
    const reason = `cancelled by ${ctx.jobId}`;
    if (this.scheduler.cancelQueued(targetId)) {
      await this.events.finish(
        target,
        this.failure(target, new JobCancelledError(null, { reason }), 0, false),
      );
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

  /** The handlers of the job layer's own command types (COMMAND_TABLE: handler 'job-layer'). */
  private readonly builtIn: Record<CommandTypeHandledBy<'job-layer'>, CommandHandlerFn> = {
    'job.cancel': this.cancelHandler as CommandHandlerFn,
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

function isBuiltIn(type: CommandType): type is CommandTypeHandledBy<'job-layer'> {
  return commandSpec(type).handler === 'job-layer';
}
