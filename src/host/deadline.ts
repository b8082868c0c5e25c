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

interface StuckCall {
  operation: string;
  path: string;
  since: number;
}

/**
 * Calls that outlived their deadline and have not answered yet, one per key (a root: one mount).
 * Each holds one of libuv's few threads (4 by default) until the server answers, and the agent's
 * journal needs those threads too: while one call on a root is stuck, further calls on that root
 * fail at once instead of taking another thread. The root is tried again as soon as it answers.
 */
export class StuckCallGate {
  private readonly stuck = new Map<string, StuckCall>();

  /** The stuck call on `key`, if any (store-health and logs may name it). */
  stuckOn(key: string): Readonly<StuckCall> | undefined {
    return this.stuck.get(key);
  }

  run<T>(
    key: string,
    work: () => Promise<T>,
    call: { operation: string; path: string; timeoutMs: number },
  ): Promise<T> {
    const earlier = this.stuck.get(key);
    if (earlier !== undefined) {
      const seconds = Math.round((performance.now() - earlier.since) / 1000);
      return Promise.reject(
        new AgentError(
          'HOST_TIMEOUT',
          `${call.operation} of ${call.path} not tried: ${earlier.operation} of ${earlier.path} under ${key} has not answered for ${seconds} s (is the store reachable?)`,
          {
            retryable: true,
            details: { operation: call.operation, path: call.path, stuck: earlier.operation },
          },
        ),
      );
    }
    let settled = false;
    const promise = work().finally(() => {
      settled = true;
    });
    return withDeadline(promise, call).catch((error: unknown) => {
      if (!settled && !this.stuck.has(key)) {
        this.stuck.set(key, { operation: call.operation, path: call.path, since: performance.now() });
        const clear = () => this.stuck.delete(key);
        promise.then(clear, clear);
      }
      throw error;
    });
  }
}
