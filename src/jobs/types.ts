import type { Logger } from '../observability/logger.js';
import type { Command, CommandType, EventData } from '../protocol/index.js';

/** Progress a running job reports; the job runner throttles it into `progress` events. */
export type ProgressUpdate = Omit<EventData<'progress'>, 'jobId'>;

/**
 * Durable per-job scratch space for a handler's steps: each write is fsynced before it returns,
 * so recovery after `kill -9` sees every fact recorded before the crash.
 */
export interface StepJournal {
  /** The facts recorded so far (step states, temp names, "vm paused by us"...). */
  read<T extends Record<string, unknown>>(): T;
  /** Merges `patch` into the recorded facts and fsyncs. */
  write(patch: Record<string, unknown>): Promise<void>;
}

/** Everything a command handler gets for one job. */
export interface JobContext<T extends CommandType = CommandType> {
  jobId: string;
  command: Extract<Command, { type: T }>;
  logger: Logger;
  /** Aborted by job.cancel or shutdown; handlers stop at the next safe point and roll back. */
  signal: AbortSignal;
  progress(update: ProgressUpdate): void;
  journal: StepJournal;
  /** True when this run is start-up recovery of a job that was running when the agent died. */
  recovering: boolean;
}

/** A command handler returns the `result` of its `succeeded` event, or throws an AgentError. */
export type CommandHandlerFn<T extends CommandType = CommandType> = (
  ctx: JobContext<T>,
) => Promise<Record<string, unknown>>;

/**
 * Failure of a handler: when it throws an error with `rolledBack` set, the `failed` event says so.
 * Handlers throw AgentError (or a subclass) with `details.rolledBack` = true|false.
 */
export type HandlerRegistry = Partial<{ [T in CommandType]: CommandHandlerFn<T> }>;
