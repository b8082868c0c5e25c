import { describe, expect, it } from 'vitest';
import { backoffDelay, sleep, withTimeout } from '../../src/timing.js';

describe('backoffDelay', () => {
  it('doubles from the minimum up to the maximum, with half of each step jittered', () => {
    const low = () => 0;
    const high = () => 0.999999;
    expect([1, 2, 3, 4].map((a) => backoffDelay(a, 200, 10_000, low))).toEqual([100, 200, 400, 800]);
    expect([1, 2, 3, 4].map((a) => backoffDelay(a, 200, 10_000, high))).toEqual([200, 400, 800, 1600]);
    expect(backoffDelay(50, 200, 10_000, low)).toBe(5000);
    expect(backoffDelay(50, 200, 10_000, high)).toBe(10_000);
  });

  it('never exceeds the maximum, even for huge attempt numbers', () => {
    for (let attempt = 1; attempt < 2000; attempt += 97) {
      const delay = backoffDelay(attempt, 50, 500);
      expect(delay).toBeGreaterThanOrEqual(25);
      expect(delay).toBeLessThanOrEqual(500);
    }
  });
});

describe('sleep and withTimeout', () => {
  it('sleep ends early when its signal aborts', async () => {
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort(), 20);
    await sleep(10_000, controller.signal);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('withTimeout rejects with the given error, and passes results through', async () => {
    await expect(withTimeout(new Promise(() => undefined), 20, () => new Error('too slow'))).rejects.toThrow(
      'too slow',
    );
    await expect(withTimeout(Promise.resolve(7), 1000, () => new Error('x'))).resolves.toBe(7);
  });
});
