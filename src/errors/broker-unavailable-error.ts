import { AgentError } from './agent-error.js';

/** No broker connection (being closed, or the wait for one was aborted); sending again later may work. */
export class BrokerUnavailableError extends AgentError {
  constructor(message: string, options: { cause?: unknown; role?: string } = {}) {
    super('BROKER_UNAVAILABLE', message, {
      cause: options.cause,
      retryable: true,
      details: options.role ? { role: options.role } : {},
    });
  }
}
