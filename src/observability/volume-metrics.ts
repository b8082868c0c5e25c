import type { Counter, Gauge } from 'prom-client';

/**
 * Per-volume series (last success, last failure and its code, bytes exported, chain depth) with a
 * bounded cardinality: at most 4 series per volume (the failure gauge keeps only the last code:
 * the previous code's series is removed), and at most `maxVolumes` volumes. Above the cap the
 * least recently snapshotted volume's series are dropped (counted in
 * clvm_agent_volume_series_evicted_total). A hypervisor has hundreds to a few thousand volumes;
 * the default cap of 20,000 keeps one agent's scrape under ~80,000 per-volume series.
 */
export const DEFAULT_MAX_VOLUMES = 20_000;

export interface VolumeSeries {
  lastSuccess: Gauge<'volume'>;
  lastFailure: Gauge<'volume' | 'code'>;
  exportedBytes: Counter<'volume'>;
  chainDepth: Gauge<'volume'>;
  evicted: Counter;
}

export class VolumeMetrics {
  /** Volume → its last failure code; Map order = least recently touched first (LRU). */
  private readonly volumes = new Map<string, { failureCode: string | null }>();

  constructor(
    private readonly series: VolumeSeries,
    private readonly maxVolumes = DEFAULT_MAX_VOLUMES,
  ) {}

  /** A snapshot.create of `volume` succeeded at `at`, writing `bytes` and leaving a chain of `chainDepth`. */
  succeeded(volume: string, at: Date, snapshot: { bytes: number; chainDepth: number }): void {
    this.touch(volume);
    this.series.lastSuccess.set({ volume }, at.getTime() / 1000);
    this.series.exportedBytes.inc({ volume }, Math.max(0, snapshot.bytes));
    this.series.chainDepth.set({ volume }, snapshot.chainDepth);
  }

  /** A snapshot.create of `volume` failed at `at` with `code`. */
  failed(volume: string, at: Date, code: string): void {
    const state = this.touch(volume);
    if (state.failureCode !== null && state.failureCode !== code)
      this.series.lastFailure.remove({ volume, code: state.failureCode });
    state.failureCode = code;
    this.series.lastFailure.set({ volume, code }, at.getTime() / 1000);
  }

  /** Volumes with series now. */
  get size(): number {
    return this.volumes.size;
  }

  private touch(volume: string): { failureCode: string | null } {
    const state = this.volumes.get(volume) ?? { failureCode: null };
    this.volumes.delete(volume);
    this.volumes.set(volume, state);
    while (this.volumes.size > this.maxVolumes) {
      const [oldest, oldState] = this.volumes.entries().next().value as [
        string,
        { failureCode: string | null },
      ];
      this.volumes.delete(oldest);
      this.series.lastSuccess.remove({ volume: oldest });
      this.series.exportedBytes.remove({ volume: oldest });
      this.series.chainDepth.remove({ volume: oldest });
      if (oldState.failureCode !== null)
        this.series.lastFailure.remove({ volume: oldest, code: oldState.failureCode });
      this.series.evicted.inc();
    }
    return state;
  }
}

/** The `volume` label: `<vg>/<lv>` for LVM volumes, the file's path for file volumes. */
export function volumeLabel(
  volume: { kind: 'lvm'; vg: string; lv: string } | { kind: 'file'; pool: string; file: string },
): string {
  return volume.kind === 'lvm'
    ? `${volume.vg}/${volume.lv}`
    : `${volume.pool.replace(/\/+$/, '')}/${volume.file}`;
}
