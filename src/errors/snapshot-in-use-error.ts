import { AgentError } from './agent-error.js';

/** A snapshot cannot be removed or merged safely now (a running VM holds it or its child, or the chain is not as given). */
export class SnapshotInUseError extends AgentError {
  constructor(snapshot: string, reason: string, options: { retryable?: boolean } = {}) {
    super('SNAPSHOT_IN_USE', `cannot delete ${snapshot} safely: ${reason}`, {
      retryable: options.retryable ?? true,
      details: { snapshot, reason },
    });
  }
}
