import type { Gauge } from 'prom-client';
import type { Logger } from './logger.js';

/**
 * The snapshot store's health for /metrics: each root's free bytes (statfs through the store
 * adapter), asked at scrape time. A hung NFS mount never answers statfs and would hold a libuv
 * thread per call, so one probe per root is in flight at most and a probe that takes longer than
 * `timeoutMs` reports the root down (0) until it answers.
 */
export class StoreHealth {
  private readonly pending = new Map<string, Promise<void>>();

  constructor(
    private readonly opts: {
      roots: readonly string[];
      freeBytes: (root: string) => Promise<number>;
      up: Gauge<'root'>;
      free: Gauge<'root'>;
      timeoutMs?: number;
      logger?: Logger;
    },
  ) {}

  /** Probes every root (at most one probe per root in flight) and sets the gauges. */
  async refresh(): Promise<void> {
    await Promise.all(this.opts.roots.map((root) => this.probe(root)));
  }

  private async probe(root: string): Promise<void> {
    let inFlight = this.pending.get(root);
    if (!inFlight) {
      inFlight = this.opts
        .freeBytes(root)
        .then(
          (bytes) => {
            this.opts.free.set({ root }, bytes);
            this.opts.up.set({ root }, bytes > 0 ? 1 : 0);
          },
          (error: unknown) => {
            this.opts.logger?.warn({ err: error, root }, 'snapshot store root unhealthy');
            this.opts.up.set({ root }, 0);
          },
        )
        .finally(() => this.pending.delete(root));
      this.pending.set(root, inFlight);
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.opts.timeoutMs ?? 2000);
      timer.unref();
    });
    const outcome = await Promise.race([inFlight.then(() => 'done' as const), timedOut]);
    clearTimeout(timer);
    if (outcome === 'timeout') this.opts.up.set({ root }, 0);
  }
}
