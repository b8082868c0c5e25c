import type { ProgressUpdate } from './types.js';

/**
 * Turns a handler's progress calls into at most one event per `intervalMs`, keeping the latest
 * update. The last update of a step is always passed (sent at once when the next step begins),
 * and flush() sends what is pending before the job's terminal event.
 */
export class ProgressThrottle {
  private pending: ProgressUpdate | undefined;
  private lastSentAt = Number.NEGATIVE_INFINITY;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly intervalMs: number,
    private readonly send: (update: ProgressUpdate) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  update(update: ProgressUpdate): void {
    if (this.pending && !sameStep(this.pending, update)) this.sendNow();
    this.pending = update;
    const wait = this.lastSentAt + this.intervalMs - this.now();
    if (wait <= 0) {
      this.sendNow();
    } else if (!this.timer) {
      this.timer = setTimeout(() => this.sendNow(), wait);
      this.timer.unref();
    }
  }

  /** Sends the pending update, if any, and stops the timer. */
  flush(): void {
    if (this.pending) this.sendNow();
    this.clearTimer();
  }

  /** Drops the pending update and the timer. */
  dispose(): void {
    this.pending = undefined;
    this.clearTimer();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private sendNow(): void {
    this.clearTimer();
    const update = this.pending;
    this.pending = undefined;
    if (!update) return;
    this.lastSentAt = this.now();
    this.send(update);
  }
}

function sameStep(a: ProgressUpdate, b: ProgressUpdate): boolean {
  return a.stepIndex === b.stepIndex && a.step === b.step;
}
