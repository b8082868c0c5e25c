// The host's export bandwidth, shared by its concurrent exports.
//
// `qemu-img convert -r <bytes/s>` limits one process, and its rate is fixed for the whole run.
// Dividing the limit among the exports when each starts would leave the first one with the whole
// limit and the total above it as soon as a second one starts. Instead the exports take turns:
// each qemu-img runs with -r = its own rate (the host limit, or a command's lower one), and only a
// set whose rates fit in the host limit runs at a time; the others are stopped (SIGSTOP) and
// continued (SIGCONT) in round-robin every `quantumMs`. The total stays at or below the host
// limit, n exports of the same rate each get 1/n of it over time, and when one finishes the
// others get its share at once. qemu-img's limiter forgets its history while stopped, so each
// resume copies a few MiB at full speed; the scheduler therefore also keeps account (a token
// bucket filled at the host limit, drained by the bytes the exports report) and, at the next turn,
// pauses every export until the bucket has paid back what the bursts took.
import type { Logger } from '../observability/logger.js';

export interface ExportBandwidthOptions {
  /** Bytes per second of all the host's exports together; 0: no limit (nothing is shared). */
  hostLimit: number;
  /** How long one set of exports runs before the next set's turn. */
  quantumMs?: number;
  /** Stops or continues a process; default process.kill. */
  sendSignal?: (pid: number, signal: 'SIGSTOP' | 'SIGCONT') => void;
  logger?: Logger;
  /** Monotonic milliseconds (tests). */
  now?: () => number;
}

/** One export's admission: its rate and the hooks that let the scheduler pause it. */
export interface ExportTicket {
  /** For `qemu-img convert -r`, bytes per second while it runs; undefined: no limit. */
  readonly rate: number | undefined;
  /** The export's qemu-img process, once spawned. */
  attach(pid: number): void;
  /** Bytes this export has copied so far (its progress): the account of the host's bandwidth. */
  progress(bytesDone: number): void;
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
  /** Bytes copied so far. */
  done: number;
}

export const DEFAULT_QUANTUM_MS = 2000;

export class ExportBandwidth {
  readonly hostLimit: number;
  private readonly quantumMs: number;
  private readonly sendSignal: (pid: number, signal: 'SIGSTOP' | 'SIGCONT') => void;
  private readonly logger: Logger | undefined;
  private readonly entries: Entry[] = [];
  /** Index of the entry whose turn starts the running set. */
  private turn = 0;
  private timer: NodeJS.Timeout | undefined;
  /** The account: since when exports have been active, and the bytes of those already released. */
  private accountSince = 0;
  private releasedBytes = 0;
  private pausedUntil = 0;
  private resumeTimer: NodeJS.Timeout | undefined;
  private readonly now: () => number;

  constructor(opts: ExportBandwidthOptions) {
    if (!Number.isSafeInteger(opts.hostLimit) || opts.hostLimit < 0)
      throw new RangeError('hostLimit must be a whole number of bytes per second (0: no limit)');
    this.hostLimit = opts.hostLimit;
    this.quantumMs = opts.quantumMs ?? DEFAULT_QUANTUM_MS;
    this.sendSignal = opts.sendSignal ?? ((pid, signal) => process.kill(pid, signal));
    this.logger = opts.logger;
    this.now = opts.now ?? (() => performance.now());
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
      return { rate, attach: () => undefined, progress: () => undefined, release: () => undefined };
    }
    const entry: Entry = { rate, pid: undefined, runnable: false, stopped: false, done: 0 };
    if (this.entries.length === 0) {
      this.accountSince = this.now();
      this.releasedBytes = 0;
    }
    this.entries.push(entry);
    this.reschedule();
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      signal?.removeEventListener('abort', release);
      const index = this.entries.indexOf(entry);
      this.entries.splice(index, 1);
      this.releasedBytes += entry.done;
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
      progress: (bytesDone) => {
        entry.done = Math.max(entry.done, bytesDone);
      },
      release,
    };
  }

  /** Bytes copied beyond what the host limit allowed since exports became active. */
  debtBytes(): number {
    const done = this.releasedBytes + this.entries.reduce((sum, e) => sum + e.done, 0);
    const allowed = ((this.now() - this.accountSince) / 1000) * this.hostLimit;
    return done - allowed;
  }

  /** Stops the turn timer and continues every stopped export (agent shutdown). */
  close(): void {
    this.clearTimer();
    this.pausedUntil = 0;
    for (const entry of this.entries) if (entry.stopped) this.signalProcess(entry, 'SIGCONT');
  }

  /** Picks the running set from the current turn: entries in order while their rates fit. */
  private reschedule(): void {
    const n = this.entries.length;
    if (n === 0) {
      this.turn = 0;
      this.pausedUntil = 0;
      this.clearTimer();
      return;
    }
    if (this.turn >= n) this.turn = 0;
    const paused = this.now() < this.pausedUntil;
    let budget = this.hostLimit;
    let running = 0;
    for (let k = 0; k < n; k++) {
      const entry = this.entries[(this.turn + k) % n]!;
      // The entry whose turn it is always runs (unless all pause); the following ones while they fit.
      const fits = !paused && (k === 0 || (entry.rate <= budget && running === k));
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
    // Turns are needed while some wait, or to settle the account (also for a single export).
    if (!this.timer) {
      this.timer = setInterval(() => this.nextTurn(), this.quantumMs);
      this.timer.unref();
    }
  }

  private nextTurn(): void {
    const n = this.entries.length;
    if (n === 0) return;
    const running = this.entries.filter((e) => e.runnable).length;
    this.turn = (this.turn + Math.max(running, 1)) % n;
    let debt = this.debtBytes();
    // Unused bandwidth (slow storage, exports with lower rates) is not saved up beyond one turn,
    // or later bursts would never be paid back.
    const maxCredit = (this.hostLimit * this.quantumMs) / 1000;
    if (debt < -maxCredit) {
      this.accountSince += ((-maxCredit - debt) / this.hostLimit) * 1000;
      debt = -maxCredit;
    }
    if (debt > 0 && n > 1) {
      // Bursts after resumes went above the limit: everyone waits until the bucket has refilled.
      const pauseMs = (debt / this.hostLimit) * 1000;
      this.pausedUntil = this.now() + pauseMs;
      if (this.resumeTimer) clearTimeout(this.resumeTimer);
      this.resumeTimer = setTimeout(() => {
        this.resumeTimer = undefined;
        this.reschedule();
      }, pauseMs);
      this.resumeTimer.unref();
    }
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
    if (this.resumeTimer) clearTimeout(this.resumeTimer);
    this.timer = undefined;
    this.resumeTimer = undefined;
  }
}
