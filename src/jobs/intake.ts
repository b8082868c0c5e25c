// Intake of deliveries: validate → dedup → journal → ack → `accepted`. Bad input is refused with a
// `rejected` event and dead-lettered; a command id seen before never runs twice.
import { createHash } from 'node:crypto';
import { toAgentError, ValidationError } from '../errors/index.js';
import type { Logger } from '../observability/logger.js';
import type { AgentMetrics } from '../observability/metrics.js';
import type { Command, VolumeRef } from '../protocol/index.js';
import { REJECTION_CODE_LIST, type RejectionCode } from '../protocol/index.js';
import { commandSpec } from './command-table.js';
import { type IntakePolicy, type IntakeResult, validateIncoming } from './command-validation.js';
import { buildEvent } from './events.js';
import type { JobEvents } from './job-events.js';
import type { JobJournal, JobRecord } from './journal.js';
import type { CommandDisposition, EventSink, IncomingCommand } from './ports.js';

export interface CommandIntakeOptions {
  hostId: string;
  policy: IntakePolicy;
  journal: JobJournal;
  sink: EventSink;
  events: JobEvents;
  metrics: AgentMetrics;
  logger: Logger;
  /** Hands a newly journaled job to the scheduler. */
  schedule(record: JobRecord): void;
}

interface Rejection {
  error: ValidationError;
  id: string | null;
  type: string | null;
  volume: VolumeRef | null;
  retryable: boolean;
}

export class CommandIntake {
  /** Ids being journaled now, with the SHA-256 of their body. */
  private readonly busy = new Map<string, string>();

  constructor(private readonly opts: CommandIntakeOptions) {}

  /**
   * The consumer's CommandHandler: returns 'dead-letter' for bad input (after a `rejected` event),
   * 'ack' once the job is durably journaled (or it is a duplicate); `accepted` follows.
   * Never throws.
   */
  readonly handleCommand = async (incoming: IncomingCommand): Promise<CommandDisposition> => {
    const { journal, logger: log } = this.opts;
    const bodySha256 = createHash('sha256').update(incoming.body).digest('hex');
    let result: IntakeResult;
    try {
      result = await validateIncoming(incoming, this.opts.policy);
    } catch (error) {
      // Not the command's fault (e.g. EACCES while resolving a path): refuse it, retryable.
      const agentError = toAgentError(error, 'INTAKE_FAILED');
      log.error({ err: error, messageId: incoming.messageId }, 'intake check failed');
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
    const usedBy = this.busy.get(command.id) ?? journal.get(command.id)?.bodySha256;
    if (usedBy !== undefined || journal.has(command.id)) {
      const refused = (error: ValidationError) =>
        this.reject(incoming, bodySha256, {
          error,
          id: command.id,
          type: command.type,
          volume: volumeOf(command),
          retryable: false,
        });
      // Older records carry no digest: treated as the same body (the behaviour they were written under).
      if (usedBy === undefined || usedBy === bodySha256) {
        // Signed mode: a seen id arriving fresh (not a broker redelivery after a crash) is a replay,
        // refused on its own; it never runs twice. Unsigned/legacy: the recorded result is re-sent.
        if (result.envelope && !incoming.redelivered) {
          return refused(
            new ValidationError(
              'COMMAND_REPLAYED',
              `command id ${command.id} was already received; a signed command runs once (the first job is unaffected)`,
              { field: 'id' },
            ),
          );
        }
        await this.answerDuplicate(command.id, incoming);
        return 'ack';
      }
      return refused(
        new ValidationError(
          'ID_CONFLICT',
          `command id ${JSON.stringify(command.id)} is already used by a command with a different body; it does not run`,
          { field: 'id' },
        ),
      );
    }
    this.busy.set(command.id, bodySha256);
    let record: JobRecord;
    try {
      record = newRecord(command, incoming, this.opts.hostId, bodySha256, result.envelope?.expiresAt ?? null);
      try {
        await journal.create(record);
      } catch (error) {
        log.error({ err: error, jobId: command.id }, 'cannot journal the command');
        const agentError = toAgentError(error);
        this.busy.delete(command.id);
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
      void this.opts.events
        .accepted(record)
        .catch((error: unknown) =>
          log.error({ err: error, jobId: record.id }, 'cannot publish the accepted event'),
        );
    } finally {
      this.busy.delete(command.id);
    }
    this.opts.schedule(record);
    return 'ack';
  };

  private async reject(
    incoming: IncomingCommand,
    bodySha256: string,
    r: Rejection,
  ): Promise<CommandDisposition> {
    this.opts.metrics.rejected.inc({ reason: r.error.code });
    this.opts.logger.warn(
      { jobId: r.id, code: r.error.code, field: r.error.field, messageId: incoming.messageId },
      `command rejected: ${r.error.message}`,
    );
    if (r.id === null) return 'dead-letter';
    // A message under an id that is already used must never join that job's stream.
    const used = this.busy.has(r.id) || this.opts.journal.has(r.id);
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
      this.opts.logger.error({ err: error, jobId: r.id }, 'cannot publish the rejected event');
    }
    return 'dead-letter';
  }

  /** A command id seen before never runs again; a finished one gets its recorded terminal event again. */
  private async answerDuplicate(id: string, incoming: IncomingCommand): Promise<void> {
    const log = this.opts.logger;
    const record = this.opts.journal.get(id);
    if (!record?.terminal) {
      log.info({ jobId: id, redelivered: incoming.redelivered }, 'duplicate of a job in progress: acked');
      return;
    }
    log.info({ jobId: id, state: record.state }, 'duplicate of a finished job: terminal event re-published');
    await this.opts.events
      .resendTerminal(record, incoming.replyTo, incoming.correlationId)
      .catch((error: unknown) =>
        log.error({ err: error, jobId: id }, 'cannot re-publish the terminal event'),
      );
  }
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
    lockKey: commandSpec(command.type).lockKey(command),
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
