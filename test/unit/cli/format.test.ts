import { describe, expect, it } from 'vitest';
import { formatBytes, formatDuration, formatRate } from '../../../src/cli/format.js';
import { shortId } from '../../../src/cli/watch.js';
import { etaMs, percentOf } from '../../../src/client/event-facts.js';

describe('formatters', () => {
  it('formatBytes uses binary units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 1024 ** 3)).toBe('3.0 GiB');
    expect(formatBytes(undefined)).toBe('-');
  });

  it('formatRate and formatDuration', () => {
    expect(formatRate(2 * 1024 * 1024)).toBe('2.0 MiB/s');
    expect(formatDuration(850)).toBe('850ms');
    expect(formatDuration(12_400)).toBe('12.4s');
    expect(formatDuration(185_000)).toBe('3m05s');
    expect(formatDuration(3_720_000)).toBe('1h02m');
    expect(formatDuration(undefined)).toBe('-');
  });

  it('etaMs from bytes left and rate; unknown without a rate', () => {
    expect(etaMs({ bytesDone: 400, bytesTotal: 1000, bytesPerSecond: 100 })).toBe(6000);
    expect(etaMs({ bytesDone: 400, bytesTotal: 1000 })).toBeUndefined();
    expect(etaMs({ bytesDone: 400, bytesTotal: 1000, bytesPerSecond: 0 })).toBeUndefined();
  });

  it('percentOf prefers percent, then bytes, then steps; clamped to 0..100', () => {
    expect(percentOf({ percent: 42.26, stepIndex: 0, stepCount: 4 })).toBe(42.3);
    expect(percentOf({ bytesDone: 1, bytesTotal: 4, stepIndex: 0, stepCount: 4 })).toBe(25);
    expect(percentOf({ stepIndex: 1, stepCount: 4 })).toBe(25);
    expect(percentOf({ percent: 140, stepIndex: 0, stepCount: 1 })).toBe(100);
  });

  it('shortId keeps short ids and shortens long ones', () => {
    expect(shortId('job-1')).toBe('job-1');
    expect(shortId('snapctl-0f3a9c1e-1111-2222-3333-444455556666')).toBe('snapctl-…556666');
  });
});
