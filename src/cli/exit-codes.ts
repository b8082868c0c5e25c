import { AgentError, ConfigError, ValidationError } from '../errors/index.js';

/**
 * snapctl exit codes. Scripts branch on these, so they are stable and documented in
 * docs/operations.md ("snapctl exit codes").
 */
export const EXIT = {
  /** The command succeeded (the job's terminal event was `succeeded`). */
  ok: 0,
  /** The job failed (`failed` event), or an operation of snapctl itself failed. */
  failed: 1,
  /** Bad usage: unknown option, missing argument, a command the schema refuses. Nothing was sent. */
  usage: 2,
  /** The agent refused the command (`rejected` event: bad signature, invalid params, duplicate...). */
  rejected: 3,
  /** No terminal event before --timeout. The job may still be running: watch it or ask again. */
  timeout: 4,
  /** The broker could not be reached (connection refused, DNS, TLS, credentials). */
  brokerUnreachable: 5,
  /** The broker has no route: the exchange or the host's command queue does not exist. */
  notRouted: 6,
} as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** Error codes snapctl raises itself (as AgentError codes) and the exit code each one maps to. */
export const CLI_ERROR_EXIT: Readonly<Record<string, ExitCode>> = {
  USAGE: EXIT.usage,
  JOB_FAILED: EXIT.failed,
  JOB_REJECTED: EXIT.rejected,
  TIMEOUT: EXIT.timeout,
  BROKER_UNREACHABLE: EXIT.brokerUnreachable,
  NOT_ROUTED: EXIT.notRouted,
};

/** The exit code for anything thrown by a snapctl command. */
export function exitCodeOf(error: unknown): ExitCode {
  // The operator's input or configuration was wrong: nothing was sent.
  if (error instanceof ValidationError || error instanceof ConfigError) return EXIT.usage;
  if (error instanceof AgentError) return CLI_ERROR_EXIT[error.code] ?? EXIT.failed;
  return EXIT.failed;
}

/** A usage error: printed as one line, exit code 2. */
export function usageError(message: string, details: Record<string, unknown> = {}): AgentError {
  return new AgentError('USAGE', message, { details });
}
