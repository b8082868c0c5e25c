import { AgentError } from './agent-error.js';

/** The broker refused a publish (basic.nack, or the channel closed before the confirm). */
export class PublishNackedError extends AgentError {
  constructor(message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super('PUBLISH_NACKED', message, {
      cause: options.cause,
      retryable: true,
      details: options.details ?? {},
    });
  }
}
