import { AgentError } from './agent-error.js';

/** A command type whose handler this agent version does not have. */
export class NotImplementedError extends AgentError {
  constructor(what: string) {
    super('NOT_IMPLEMENTED', `${what} is not implemented by this agent version`);
  }
}
