/** One unit of work for the scheduler. */
export interface ScheduledTask {
  id: string;
  /** Tasks with the same key run one at a time, in submit order; null: no lock and no global limit. */
  lockKey: string | null;
  run: () => Promise<void>;
}

/**
 * Runs tasks with two rules: one task per lock key (volume) at a time, others wait in order;
 * at most `maxConcurrent` locked tasks at once. Unlocked tasks (ping, cancel) start at once:
 * they touch no storage and must answer even while long exports hold every slot.
 * `run` must not reject (the job runner turns failures into `failed` events); a rejection is
 * reported to `onError`.
 */
export class JobScheduler {
  private readonly queue: ScheduledTask[] = [];
  private readonly runningIds = new Set<string>();
  private readonly heldLocks = new Set<string>();
  private lockedRunning = 0;
  private paused = false;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly maxConcurrent: number,
    private readonly onError: (task: ScheduledTask, error: unknown) => void,
  ) {
    if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) {
      throw new RangeError('maxConcurrent must be a positive integer');
    }
  }

  submit(task: ScheduledTask): void {
    if (task.lockKey === null) {
      this.start(task);
      return;
    }
    this.queue.push(task);
    this.pump();
  }

  /** Removes a task that has not started yet; false when it is running or unknown. */
  cancelQueued(id: string): boolean {
    const index = this.queue.findIndex((t) => t.id === id);
    if (index < 0) return false;
    this.queue.splice(index, 1);
    this.pump();
    return true;
  }

  isQueued(id: string): boolean {
    return this.queue.some((t) => t.id === id);
  }

  isRunning(id: string): boolean {
    return this.runningIds.has(id);
  }

  get runningCount(): number {
    return this.runningIds.size;
  }

  get queuedCount(): number {
    return this.queue.length;
  }

  /** Stops starting queued tasks (shutdown); running ones go on. Returns the ids left waiting. */
  pause(): string[] {
    this.paused = true;
    return this.queue.map((t) => t.id);
  }

  /** Resolves when no task is running (queued tasks do not count once paused). */
  whenIdle(): Promise<void> {
    if (this.runningIds.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private pump(): void {
    if (this.paused) return;
    for (let i = 0; i < this.queue.length && this.lockedRunning < this.maxConcurrent; ) {
      const task = this.queue[i]!;
      if (this.heldLocks.has(task.lockKey!)) {
        i++;
        continue;
      }
      this.queue.splice(i, 1);
      this.heldLocks.add(task.lockKey!);
      this.lockedRunning++;
      this.start(task);
    }
  }

  private start(task: ScheduledTask): void {
    this.runningIds.add(task.id);
    void Promise.resolve()
      .then(task.run)
      .catch((error: unknown) => this.onError(task, error))
      .finally(() => {
        this.runningIds.delete(task.id);
        if (task.lockKey !== null) {
          this.heldLocks.delete(task.lockKey);
          this.lockedRunning--;
        }
        if (this.runningIds.size === 0) {
          const waiters = this.idleWaiters;
          this.idleWaiters = [];
          for (const resolve of waiters) resolve();
        }
        this.pump();
      });
  }
}
