import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ProgressThrottle } from '../../../src/jobs/progress-throttle.js';
import type { ProgressUpdate } from '../../../src/jobs/types.js';

const step = (stepIndex: number, percent: number): ProgressUpdate => ({
  step: `s${stepIndex}`,
  stepIndex,
  stepCount: 3,
  percent,
});

describe('ProgressThrottle', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('sends at most one update per interval, always the latest', () => {
    const sent: ProgressUpdate[] = [];
    const t = new ProgressThrottle(
      1000,
      (u) => sent.push(u),
      () => Date.now(),
    );
    t.update(step(0, 1));
    t.update(step(0, 2));
    t.update(step(0, 3));
    expect(sent.map((u) => u.percent)).toEqual([1]);
    vi.advanceTimersByTime(999);
    expect(sent).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(sent.map((u) => u.percent)).toEqual([1, 3]);
    vi.advanceTimersByTime(5000);
    expect(sent).toHaveLength(2);
  });

  it('passes the last update of a step when the next step begins, and on flush', () => {
    const sent: ProgressUpdate[] = [];
    const t = new ProgressThrottle(
      1000,
      (u) => sent.push(u),
      () => Date.now(),
    );
    t.update(step(0, 10));
    t.update(step(0, 100));
    t.update(step(1, 5));
    expect(sent.map((u) => [u.stepIndex, u.percent])).toEqual([
      [0, 10],
      [0, 100],
    ]);
    t.update(step(1, 50));
    t.flush();
    expect(sent.map((u) => [u.stepIndex, u.percent])).toEqual([
      [0, 10],
      [0, 100],
      [1, 50],
    ]);
    t.dispose();
    vi.advanceTimersByTime(5000);
    expect(sent).toHaveLength(3);
  });
});
