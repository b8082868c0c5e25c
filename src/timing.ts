// Timers every layer uses: bounded waits, back-off, sleeps. No imports: any layer may use it.

/**
 * Reconnect delay for attempt `attempt` (1, 2, 3...): exponential from `minMs`, capped at `maxMs`,
 * with "equal jitter" (half fixed, half random) so a fleet of agents does not reconnect in step
 * after a broker restart, while no delay falls below half the exponential step.
 */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random = Math.random): number {
  const step = Math.min(maxMs, minMs * 2 ** Math.max(0, Math.min(attempt - 1, 30)));
  return Math.round(step / 2 + random() * (step / 2));
}

/** Resolves after `ms`, or early (without error) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Resolves or rejects like `promise`, or rejects with `onTimeout()` after `ms`. For broker calls
 * that have no timeout of their own (amqplib RPCs wait for the heartbeat to notice a dead peer).
 */
export async function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Like {@link withTimeout} for something that must be released if it arrives after we gave up
 * (a channel that opens late would otherwise stay open forever).
 */
export async function acquireWithTimeout<T>(
  promise: Promise<T>,
  ms: number,
  onTimeout: () => Error,
  release: (late: T) => Promise<unknown>,
): Promise<T> {
  try {
    return await withTimeout(promise, ms, onTimeout);
  } catch (error) {
    promise.then((late) => release(late)).catch(() => undefined);
    throw error;
  }
}

/** True when `promise` settles within `ms` (its rejection is rethrown), false on timeout. */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** `work`, tried up to `attempts` times `delayMs` apart while it throws; the last error is rethrown. */
export async function retrying<T>(
  work: () => Promise<T>,
  opts: { attempts: number; delayMs: number; onRetry?: (error: unknown, attempt: number) => void },
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      if (attempt >= opts.attempts) throw error;
      opts.onRetry?.(error, attempt);
      await new Promise((r) => setTimeout(r, opts.delayMs));
    }
  }
}
