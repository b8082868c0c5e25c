// Small helpers the engine benchmarks share: percentiles and millisecond formatting, the load
// average, progress lines on stderr.
import { loadavg } from 'node:os';

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

export const median = (v: number[]): number => percentile(v, 50);

export const ms = (v: number): string => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

/** The 1/5/15-minute load average, for the record next to every timing. */
export const load = (): string =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');

/** A progress line on stderr (results go to stdout). */
export const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};
