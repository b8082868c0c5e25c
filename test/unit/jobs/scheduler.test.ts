import { describe, expect, it } from 'vitest';
import { JobScheduler } from '../../../src/jobs/scheduler.js';

/** A task that runs until released, recording start order. */
function gate() {
  let release!: () => void;
  const done = new Promise<void>((r) => {
    release = r;
  });
  return { done, release };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('JobScheduler', () => {
  it('runs one job per lock key at a time, in submit order', async () => {
    const started: string[] = [];
    const gates = new Map<string, ReturnType<typeof gate>>();
    const s = new JobScheduler(4, (_t, e) => {
      throw e;
    });
    for (const id of ['a1', 'b1', 'a2', 'a3']) {
      const g = gate();
      gates.set(id, g);
      s.submit({
        id,
        lockKey: id[0]!,
        run: async () => {
          started.push(id);
          await g.done;
        },
      });
    }
    await tick();
    expect(started).toEqual(['a1', 'b1']);
    expect(s.isQueued('a2')).toBe(true);
    gates.get('a1')!.release();
    await tick();
    await tick();
    expect(started).toEqual(['a1', 'b1', 'a2']);
    gates.get('a2')!.release();
    await tick();
    await tick();
    expect(started).toEqual(['a1', 'b1', 'a2', 'a3']);
    for (const g of gates.values()) g.release();
    await s.whenIdle();
    expect(s.runningCount).toBe(0);
  });

  it('holds locked jobs to the global limit but starts unlocked ones at once', async () => {
    const s = new JobScheduler(1, () => undefined);
    const g = gate();
    const started: string[] = [];
    s.submit({
      id: 'x',
      lockKey: 'v1',
      run: () => {
        started.push('x');
        return g.done;
      },
    });
    s.submit({ id: 'y', lockKey: 'v2', run: async () => void started.push('y') });
    s.submit({ id: 'ping', lockKey: null, run: async () => void started.push('ping') });
    await tick();
    expect(started).toEqual(['x', 'ping']);
    expect(s.queuedCount).toBe(1);
    g.release();
    await tick();
    await tick();
    expect(started).toEqual(['x', 'ping', 'y']);
  });

  it('cancels a queued job, pauses on shutdown, and reports a rejecting task', async () => {
    const errors: string[] = [];
    const s = new JobScheduler(1, (t) => errors.push(t.id));
    const g = gate();
    s.submit({ id: 'run', lockKey: 'v', run: () => g.done.then(() => Promise.reject(new Error('boom'))) });
    s.submit({ id: 'q1', lockKey: 'v', run: async () => undefined });
    s.submit({ id: 'q2', lockKey: 'w', run: async () => undefined });
    expect(s.cancelQueued('q1')).toBe(true);
    expect(s.cancelQueued('q1')).toBe(false);
    expect(s.pause()).toEqual(['q2']);
    g.release();
    await s.whenIdle();
    expect(errors).toEqual(['run']);
    expect(s.isQueued('q2')).toBe(true);
    expect(() => new JobScheduler(0, () => undefined)).toThrow(RangeError);
  });
});
