import { AgentError } from '../errors/index.js';
import { withTimeout } from '../timing.js';

/** How long one file-system call on the store may take by default (a dead hard NFS mount never answers). */
export const FS_CALL_TIMEOUT_MS = 60_000;

/**
 * Resolves with `work`, or rejects with HOST_TIMEOUT (retryable) after `timeoutMs`. The call itself
 * cannot be cancelled: a system call stuck on a dead NFS mount keeps its libuv thread until the
 * server answers, but the job that asked for it no longer waits.
 */
export function withDeadline<T>(
  work: Promise<T>,
  call: { operation: string; path: string; timeoutMs: number },
): Promise<T> {
  return withTimeout(
    work,
    call.timeoutMs,
    () =>
      new AgentError(
        'HOST_TIMEOUT',
        `${call.operation} of ${call.path} did not answer within ${call.timeoutMs} ms (is the store reachable?)`,
        {
          retryable: true,
          details: { operation: call.operation, path: call.path, timeoutMs: call.timeoutMs },
        },
      ),
  );
}
