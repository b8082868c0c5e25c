import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../../src/observability/metrics.js';
import { volumeLabel } from '../../../src/observability/volume-metrics.js';

async function seriesOf(metrics: ReturnType<typeof createMetrics>, name: string) {
  const all = await metrics.registry.getMetricsAsJSON();
  return all.find((m) => m.name === name)?.values ?? [];
}

describe('per-volume metrics', () => {
  it('keep one failure series per volume: a new code replaces the previous one', async () => {
    const metrics = createMetrics({ defaultMetrics: false });
    metrics.volumes.failed('vg/a', new Date(1000_000), 'HOST_BUSY');
    metrics.volumes.failed('vg/a', new Date(2000_000), 'STORE_FULL');
    const failures = await seriesOf(metrics, 'clvm_agent_volume_last_failure_timestamp_seconds');
    expect(failures).toEqual([{ labels: { volume: 'vg/a', code: 'STORE_FULL' }, value: 2000 }]);
  });

  it('stay under the volume cap: the least recently snapshotted volume is dropped and counted', async () => {
    const metrics = createMetrics({ defaultMetrics: false, maxVolumes: 3 });
    for (const [i, v] of ['a', 'b', 'c'].entries())
      metrics.volumes.succeeded(`vg/${v}`, new Date(i * 1000), { bytes: 10, chainDepth: 1 });
    metrics.volumes.failed('vg/a', new Date(5000), 'X'); // a is the most recent now
    metrics.volumes.succeeded('vg/d', new Date(6000), { bytes: 5, chainDepth: 2 });
    expect(metrics.volumes.size).toBe(3);
    const volumes = (await seriesOf(metrics, 'clvm_agent_volume_last_success_timestamp_seconds')).map(
      (s) => s.labels.volume,
    );
    expect(volumes.sort()).toEqual(['vg/a', 'vg/c', 'vg/d']);
    expect((await seriesOf(metrics, 'clvm_agent_volume_chain_depth')).length).toBe(3);
    expect((await seriesOf(metrics, 'clvm_agent_volume_series_evicted_total'))[0]?.value).toBe(1);
  });

  it('label: vg/lv or the file path', () => {
    expect(volumeLabel({ kind: 'lvm', vg: 'vg0', lv: 'vol-1' })).toBe('vg0/vol-1');
    expect(volumeLabel({ kind: 'file', pool: '/var/lib/images/', file: 'a.qcow2' })).toBe(
      '/var/lib/images/a.qcow2',
    );
  });
});
