// The host's export bandwidth, shared by its concurrent exports.
//
// `qemu-img convert -r <bytes/s>` limits one process, and its rate is fixed for the whole run.
// Dividing the limit among the exports when each starts would leave the first one with the whole
// limit and the total above it as soon as a second one starts. Instead the exports take turns:
// each qemu-img runs with -r = its own rate (the host limit, or a command's lower one), and only a
// set whose rates fit in the host limit runs at a time; the others are stopped (SIGSTOP) and
// continued (SIGCONT) in round-robin every `quantumMs`. The total stays at or below the host
// limit (plus at most one rate-limit slice per turn), n exports of the same rate each get 1/n of
// it over time, and when one finishes the others get its share at the next turn.
import type { Logger } from '../observability/logger.js';

export interface ExportBandwidthOptions {
  /** Bytes per second of all the host's exports together; 0: no limit (nothing is shared). */
  hostLimit: number;
  /** How long one set of exports runs before the next set's turn. */
  quantumMs?: number;
  /** Stops or continues a process; default process.kill. */
  sendSignal?: (pid: number, signal: 'SIGSTOP' | 'SIGCONT') => void;
  logger?: Logger;
}

/** One export's admission: its rate and the hooks that let the scheduler pause it. */
export interface ExportTicket {
  /** For `qemu-img convert -r`, bytes per second while it runs; undefined: no limit. */
  readonly rate: number | undefined;
  /** The export's qemu-img process, once spawned. */
  attach(pid: number): void;
  /** The export ended (done, failed or aborted); a stopped process is continued so it can exit. */
  release(): void;
}

interface Entry {
  rate: number;
  pid: number | undefined;
  /** Whether it may run in the current turn. */
  runnable: boolean;
  /** Whether its process is stopped now. */
  stopped: boolean;
}

export const DEFAULT_QUANTUM_MS = 5000;

export class ExportBandwidth {
  readonly hostLimit: number;
  private readonly quantumMs: number;
  private readonly sendSignal: (pid: number, signal: 'SIGSTOP' | 'SIGCONT') => void;
  private readonly logger: Logger | undefined;
  private readonly entries: Entry[] = [];
  /** Index of the entry whose turn starts the running set. */
  private turn = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(opts: ExportBandwidthOptions) {
    if (!Number.isSafeInteger(opts.hostLimit) || opts.hostLimit < 0)
      throw new RangeError('hostLimit must be a whole number of bytes per second (0: no limit)');
    this.hostLimit = opts.hostLimit;
    this.quantumMs = opts.quantumMs ?? DEFAULT_QUANTUM_MS;
    this.sendSignal = opts.sendSignal ?? ((pid, signal) => process.kill(pid, signal));
    this.logger = opts.logger;
  }

  /** The rate an export runs at: the command's, never above the host limit. */
  rateFor(requested: number | undefined): number | undefined {
    if (this.hostLimit === 0) return requested;
    return Math.min(requested ?? this.hostLimit, this.hostLimit);
  }

  /** Exports admitted and not yet released (running or waiting for their turn). */
  get active(): number {
    return this.entries.length;
  }

  /**
   * Admits an export. With a host limit it takes part in the turns until release() (or until
   * `signal` aborts: a stopped process must be continued for the kill to take effect).
   */
  admit(requested: number | undefined, signal?: AbortSignal): ExportTicket {
    const rate = this.rateFor(requested);
    if (this.hostLimit === 0 || rate === undefined) {
      return { rate, attach: () => undefined, release: () => undefined };
    }
    const entry: Entry = { rate, pid: undefined, runnable: false, stopped: false };
    this.entries.push(entry);
    this.reschedule();
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      signal?.removeEventListener('abort', release);
      const index = this.entries.indexOf(entry);
      this.entries.splice(index, 1);
      if (index < this.turn) this.turn -= 1;
      if (entry.stopped && entry.pid !== undefined) this.signalProcess(entry, 'SIGCONT');
      this.reschedule();
    };
    signal?.addEventListener('abort', release, { once: true });
    return {
      rate,
      attach: (pid) => {
        if (released) return;
        entry.pid = pid;
        // Spawned while another set has the turn: it waits (after at most a few ms of copying).
        if (!entry.runnable) this.signalProcess(entry, 'SIGSTOP');
      },
      release,
    };
  }

  /** Stops the turn timer and continues every stopped export (agent shutdown). */
  close(): void {
    this.clearTimer();
    for (const entry of this.entries) if (entry.stopped) this.signalProcess(entry, 'SIGCONT');
  }

  /** Picks the running set from the current turn: entries in order while their rates fit. */
  private reschedule(): void {
    const n = this.entries.length;
    if (n === 0) {
      this.turn = 0;
      this.clearTimer();
      return;
    }
    if (this.turn >= n) this.turn = 0;
    let budget = this.hostLimit;
    let running = 0;
    for (let k = 0; k < n; k++) {
      const entry = this.entries[(this.turn + k) % n]!;
      // The entry whose turn it is always runs; the following ones while they fit.
      const fits = k === 0 || (entry.rate <= budget && running === k);
      entry.runnable = fits;
      if (fits) {
        budget -= entry.rate;
        running += 1;
      }
    }
    for (const entry of this.entries) {
      if (entry.pid === undefined) continue;
      if (entry.runnable && entry.stopped) this.signalProcess(entry, 'SIGCONT');
      else if (!entry.runnable && !entry.stopped) this.signalProcess(entry, 'SIGSTOP');
    }
    if (running < n && !this.timer) {
      this.timer = setInterval(() => this.nextTurn(), this.quantumMs);
      this.timer.unref();
    } else if (running === n) {
      this.clearTimer();
    }
  }

  private nextTurn(): void {
    const n = this.entries.length;
    if (n === 0) return;
    const running = this.entries.filter((e) => e.runnable).length;
    this.turn = (this.turn + running) % n;
    this.reschedule();
  }

  private signalProcess(entry: Entry, signal: 'SIGSTOP' | 'SIGCONT'): void {
    try {
      this.sendSignal(entry.pid!, signal);
      entry.stopped = signal === 'SIGSTOP';
    } catch (error) {
      // ESRCH: the process ended between its last output and this turn; nothing to stop.
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
      entry.stopped = false;
      this.logger?.debug({ pid: entry.pid, signal }, 'export process already gone');
    }
  }

  private clearTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
