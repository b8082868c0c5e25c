import { AgentError } from './agent-error.js';

/** The VM is in a state the operation cannot work with (e.g. revert while it runs). Retryable: stop it first. */
export class VmStateError extends AgentError {
  constructor(vm: string, state: string, reason: string) {
    super('VM_STATE_INVALID', `VM ${vm} is ${state}: ${reason}`, {
      retryable: true,
      details: { vm, state, reason },
    });
  }
}
