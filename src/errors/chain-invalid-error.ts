import { AgentError } from './agent-error.js';

/** A backing chain is not what the command says or fails its checks; `problems` lists each finding. */
export class ChainInvalidError extends AgentError {
  readonly problems: string[];

  constructor(message: string, problems: string[], extra: Record<string, unknown> = {}) {
    super('CHAIN_INVALID', `${message}: ${problems.join('; ')}`, { details: { problems, ...extra } });
    this.problems = problems;
  }
}
