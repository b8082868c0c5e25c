import { AgentError } from './agent-error.js';

/**
 * The copy-on-write snapshot filled up during the export (the VM wrote more than it holds): the
 * frozen copy is no longer readable. Retryable: a quieter moment or a bigger CoW may succeed.
 */
export class CowOverflowError extends AgentError {
  constructor(volume: string, percent: number | null) {
    super('COW_OVERFLOW', `copy-on-write snapshot of ${volume} overflowed during the export`, {
      retryable: true,
      details: { volume, percent },
    });
  }
}
