import { AgentError } from './agent-error.js';

/** The job journal could not be written: a command cannot be accepted durably (retryable). */
export class JournalError extends AgentError {
  constructor(message: string, cause: unknown) {
    super('JOURNAL_UNAVAILABLE', message, { cause, retryable: true });
  }
}
