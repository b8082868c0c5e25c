import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ExportBandwidth } from '../../../src/snapshot/export-bandwidth.js';

// The turn-taking itself (which processes are stopped when); the rates qemu-img achieves with it
// are measured by bench/bandwidth.ts.

function recorder() {
  const stopped = new Set<number>();
  const calls: string[] = [];
  const sendSignal = (pid: number, signal: 'SIGSTOP' | 'SIGCONT') => {
    calls.push(`${signal}:${pid}`);
    if (signal === 'SIGSTOP') stopped.add(pid);
    else stopped.delete(pid);
  };
  return { stopped, calls, sendSignal };
}

describe('ExportBandwidth', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('without a host limit: the command rate alone, nobody is stopped', () => {
    const r = recorder();
    const bw = new ExportBandwidth({ hostLimit: 0, sendSignal: r.sendSignal });
    expect(bw.admit(undefined).rate).toBeUndefined();
    const t = bw.admit(5_000_000);
    t.attach(1);
    expect(t.rate).toBe(5_000_000);
    expect(r.calls).toEqual([]);
  });

  it('a command may lower the rate, never raise it above the host limit', () => {
    const bw = new ExportBandwidth({ hostLimit: 10_000_000, sendSignal: () => undefined });
    expect(bw.rateFor(undefined)).toBe(10_000_000);
    expect(bw.rateFor(4_000_000)).toBe(4_000_000);
    expect(bw.rateFor(50_000_000)).toBe(10_000_000);
  });

  it('three exports at the host rate take turns, one at a time, round-robin', () => {
    const r = recorder();
    const bw = new ExportBandwidth({ hostLimit: 100, quantumMs: 1000, sendSignal: r.sendSignal });
    const tickets = [1, 2, 3].map((pid) => {
      const t = bw.admit(undefined);
      t.attach(pid);
      return t;
    });
    const running = () => [1, 2, 3].filter((pid) => !r.stopped.has(pid));
    expect(running()).toEqual([1]);
    vi.advanceTimersByTime(1000);
    expect(running()).toEqual([2]);
    vi.advanceTimersByTime(1000);
    expect(running()).toEqual([3]);
    vi.advanceTimersByTime(1000);
    expect(running()).toEqual([1]);
    // The running one ends: the next one runs at once, not at the next turn.
    tickets[0]!.release();
    expect(running().filter((pid) => pid !== 1)).toEqual([2]);
    tickets[1]!.release();
    expect(running().filter((pid) => pid > 2)).toEqual([3]);
    tickets[2]!.release();
    expect(r.stopped.size).toBe(0);
    expect(bw.active).toBe(0);
  });

  it('exports whose rates fit in the host limit run together', () => {
    const r = recorder();
    const bw = new ExportBandwidth({ hostLimit: 100, quantumMs: 1000, sendSignal: r.sendSignal });
    for (const pid of [1, 2, 3]) bw.admit(40).attach(pid);
    // 40 + 40 fit, the third waits; the turn then moves past the two that ran.
    expect([...r.stopped]).toEqual([3]);
    vi.advanceTimersByTime(1000);
    expect([...r.stopped].sort()).toEqual([2]);
  });

  it('an aborted export is continued (so its kill takes effect) and leaves the turns', () => {
    const r = recorder();
    const bw = new ExportBandwidth({ hostLimit: 100, quantumMs: 1000, sendSignal: r.sendSignal });
    bw.admit(undefined).attach(1);
    const abort = new AbortController();
    bw.admit(undefined, abort.signal).attach(2);
    expect(r.stopped.has(2)).toBe(true);
    abort.abort();
    expect(r.stopped.has(2)).toBe(false);
    expect(bw.active).toBe(1);
    vi.advanceTimersByTime(5000);
    expect(r.stopped.size).toBe(0);
  });

  it('bursts above the host limit are paid back: every export pauses at the next turn', () => {
    const r = recorder();
    let now = 0;
    const bw = new ExportBandwidth({
      hostLimit: 100,
      quantumMs: 1000,
      sendSignal: r.sendSignal,
      now: () => now,
    });
    const a = bw.admit(undefined);
    a.attach(1);
    bw.admit(undefined).attach(2);
    // After 1 s at a limit of 100 B/s, 150 bytes were copied: 50 too many = 0.5 s of pause.
    now = 1000;
    a.progress(150);
    vi.advanceTimersByTime(1000);
    expect(bw.debtBytes()).toBe(50);
    expect([...r.stopped].sort()).toEqual([1, 2]);
    now = 1500;
    vi.advanceTimersByTime(500);
    expect([...r.stopped]).toEqual([1]);
  });

  it('unused bandwidth is saved up for one turn at most', () => {
    let now = 0;
    const bw = new ExportBandwidth({
      hostLimit: 100,
      quantumMs: 1000,
      sendSignal: () => undefined,
      now: () => now,
    });
    const a = bw.admit(undefined);
    a.attach(1);
    bw.admit(undefined).attach(2);
    now = 10_000; // 10 s with nothing copied: 1,000 bytes unused
    vi.advanceTimersByTime(1000);
    expect(bw.debtBytes()).toBe(-100);
  });

  it('a process that already exited (ESRCH) is not an error; other signal errors are', () => {
    const bw = new ExportBandwidth({
      hostLimit: 100,
      sendSignal: () => {
        throw Object.assign(new Error('gone'), { code: 'ESRCH' });
      },
    });
    bw.admit(undefined).attach(1);
    expect(() => bw.admit(undefined).attach(2)).not.toThrow();
    const failing = new ExportBandwidth({
      hostLimit: 100,
      sendSignal: () => {
        throw Object.assign(new Error('not permitted'), { code: 'EPERM' });
      },
    });
    failing.admit(undefined).attach(1);
    expect(() => failing.admit(undefined).attach(2)).toThrow(/not permitted/);
  });
});
