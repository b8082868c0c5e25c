import { AgentError } from './agent-error.js';

/** The event outbox could not be read or written (disk full, unreadable entry...). */
export class OutboxError extends AgentError {
  constructor(message: string, options: { cause?: unknown; path?: string } = {}) {
    super('OUTBOX_UNAVAILABLE', message, {
      cause: options.cause,
      retryable: true,
      details: options.path ? { path: options.path } : {},
    });
  }
}
