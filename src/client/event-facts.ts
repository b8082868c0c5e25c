// What an event says beyond its fields: for every reader of events (snapctl, the dashboard,
// orchestrators using this client).
import type { AgentEvent } from '../protocol/index.js';

/** The host id of an event: `source` is `clvm-snapshot-agent/<hostId>`. */
export function hostOf(event: AgentEvent): string {
  const slash = event.source.lastIndexOf('/');
  return slash >= 0 ? event.source.slice(slash + 1) : event.source;
}

/** Remaining time from bytes left and the current rate; undefined when it cannot be known. */
export function etaMs(progress: {
  bytesDone?: number | undefined;
  bytesTotal?: number | undefined;
  bytesPerSecond?: number | undefined;
}): number | undefined {
  const { bytesDone, bytesTotal, bytesPerSecond } = progress;
  if (bytesDone === undefined || bytesTotal === undefined || !bytesPerSecond || bytesPerSecond <= 0) {
    return undefined;
  }
  return (Math.max(0, bytesTotal - bytesDone) / bytesPerSecond) * 1000;
}

/** Percent done of a progress event: its `percent`, else bytesDone/bytesTotal, else by step. */
export function percentOf(progress: {
  percent?: number | undefined;
  bytesDone?: number | undefined;
  bytesTotal?: number | undefined;
  stepIndex: number;
  stepCount: number;
}): number {
  if (progress.percent !== undefined) return clampPercent(progress.percent);
  if (progress.bytesDone !== undefined && progress.bytesTotal) {
    return clampPercent((progress.bytesDone / progress.bytesTotal) * 100);
  }
  return clampPercent((progress.stepIndex / progress.stepCount) * 100);
}

function clampPercent(value: number): number {
  return Math.min(100, Math.max(0, Math.round(value * 10) / 10));
}
