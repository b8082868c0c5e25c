import { AgentError } from './agent-error.js';

/**
 * Not enough free space for an operation, found before starting it (statfs).
 * `code` is STORE_FULL on the snapshot store and POOL_FULL in a file pool. Retryable: space may be freed.
 */
export class InsufficientSpaceError extends AgentError {
  readonly neededBytes: number;
  readonly freeBytes: number;

  constructor(where: 'store' | 'pool', path: string, neededBytes: number, freeBytes: number) {
    super(
      where === 'store' ? 'STORE_FULL' : 'POOL_FULL',
      `${where === 'store' ? 'snapshot store' : 'file pool'} ${path} has ${freeBytes} bytes free, ${neededBytes} needed`,
      { retryable: true, details: { path, neededBytes, freeBytes } },
    );
    this.neededBytes = neededBytes;
    this.freeBytes = freeBytes;
  }
}
