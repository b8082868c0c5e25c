import { AgentError } from './agent-error.js';

/** The broker did not confirm a publish in time; the event stays in the outbox and is sent again. */
export class PublishTimeoutError extends AgentError {
  constructor(timeoutMs: number, details: Record<string, unknown> = {}) {
    super('PUBLISH_TIMEOUT', `no publisher confirm within ${timeoutMs} ms`, {
      retryable: true,
      details: { timeoutMs, ...details },
    });
  }
}
