import { AgentError } from './agent-error.js';

/**
 * The job stopped because it was cancelled (job.cancel) or the agent shut down before it finished.
 * `step` is where it stopped (null: before any step). It is also the abort reason of a job's
 * signal, so `signal.throwIfAborted()` throws it.
 */
export class JobCancelledError extends AgentError {
  constructor(step: string | null, options: { reason?: string; retryable?: boolean } = {}) {
    const why = options.reason ? ` (${options.reason})` : '';
    super(
      'JOB_CANCELLED',
      step === null ? `the job was cancelled${why}` : `the job was cancelled during step ${step}${why}`,
      { retryable: options.retryable ?? false, details: { step } },
    );
  }
}
