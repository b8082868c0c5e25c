import { AgentError } from './agent-error.js';

/** The configuration is invalid; the message names the key and the problem. */
export class ConfigError extends AgentError {
  constructor(message: string, options: { key?: string; cause?: unknown } = {}) {
    super('CONFIG_INVALID', message, {
      cause: options.cause,
      details: options.key ? { key: options.key } : {},
    });
  }
}
