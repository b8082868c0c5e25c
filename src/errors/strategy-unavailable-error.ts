import { AgentError } from './agent-error.js';

/** The requested (or every possible) snapshot strategy cannot run for this volume and VM state. */
export class StrategyUnavailableError extends AgentError {
  constructor(strategy: string, reason: string) {
    super('STRATEGY_UNAVAILABLE', `strategy ${strategy} cannot run: ${reason}`, {
      details: { strategy, reason },
    });
  }
}
