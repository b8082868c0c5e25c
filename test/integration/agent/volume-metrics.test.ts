import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent, TestClient } from '../../support/agent.js';
import { MiB, makeQcow2, writePattern } from '../../support/images.js';

// The operator's signals, read from a real agent's /metrics (src/main.ts in a child process)
// after real snapshot jobs: per volume the last success, the last failure and its code, bytes
// exported and chain depth; per store root up and free bytes. The alert rules and the dashboard
// query these names (test/unit/helm checks that).

/** Samples of one metric in the Prometheus text format: labels → value. */
function samples(text: string, name: string): Array<{ labels: Record<string, string>; value: number }> {
  const out: Array<{ labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ labels, value: Number(m[3]) });
  }
  return out;
}

describe('per-volume and store metrics of a real agent', () => {
  let agent: TestAgent;
  let client: TestClient;

  beforeAll(async () => {
    agent = await startTestAgent({ mode: 'child' });
    client = await TestClient.open(agent);
  });

  afterAll(async () => {
    await client?.close();
    await agent?.stop();
  });

  it('reports last success, last failure and its code, bytes exported, chain depth, store up', async () => {
    const pool = join(agent.config.pools.fileRoots[0]!, 'p1');
    const store = agent.config.store.roots[0]!;
    await mkdir(pool, { recursive: true });
    const volume = await makeQcow2(join(pool, 'vol.qcow2'), 32 * MiB);
    await writePattern(volume, 0x11, 0, 2 * MiB);
    const before = Date.now() / 1000;

    const create = async (id: string, snapshot: string, parents: string[]) => {
      await client.send({
        id,
        type: 'snapshot.create',
        params: {
          volume: { kind: 'file', pool, file: 'vol.qcow2' },
          vm: null,
          store: { root: store, dir: 'vol' },
          parents,
          snapshot,
          options: { strategy: 'offline' },
        },
      });
      return (await client.waitTerminal(id, 60_000)).event;
    };
    const sizes: number[] = [];
    for (const [i, parents] of [[], ['snap-1.qcow2']].entries()) {
      const terminal = await create(`i17-metrics-ok-${i}-${agent.hostId}`, `snap-${i + 1}.qcow2`, parents);
      expect(terminal.type, JSON.stringify(terminal.data)).toMatch(/succeeded$/);
      sizes.push(
        (terminal.data as unknown as { result: { snapshot: { physicalSize: number } } }).result.snapshot
          .physicalSize,
      );
      await writePattern(volume, 0x22 + i, 4 * MiB, MiB);
    }
    // A snapshot name that is already taken in the store: the job fails with a code.
    const failed = await create(`i17-metrics-bad-${agent.hostId}`, 'snap-1.qcow2', [
      'snap-1.qcow2',
      'snap-2.qcow2',
    ]);
    expect(failed.type).toMatch(/failed$/);
    const code = (failed.data as unknown as { error: { code: string } }).error.code;

    const text = await (await fetch(`${await agent.httpUrl()}/metrics`)).text();
    const label = `${pool}/vol.qcow2`;
    const of = (name: string) => samples(text, name).filter((s) => s.labels.volume === label);

    const success = of('clvm_agent_volume_last_success_timestamp_seconds');
    expect(success).toHaveLength(1);
    expect(success[0]!.value).toBeGreaterThanOrEqual(Math.floor(before));
    expect(success[0]!.value).toBeLessThanOrEqual(Date.now() / 1000 + 1);
    expect(of('clvm_agent_volume_chain_depth').map((s) => s.value)).toEqual([2]);
    expect(of('clvm_agent_volume_exported_bytes_total').map((s) => s.value)).toEqual([sizes[0]! + sizes[1]!]);
    const failure = of('clvm_agent_volume_last_failure_timestamp_seconds');
    expect(failure.map((s) => s.labels.code)).toEqual([code]);
    expect(failure[0]!.value).toBeGreaterThanOrEqual(success[0]!.value);

    const up = samples(text, 'clvm_agent_store_up');
    expect(up).toEqual([{ labels: { root: store }, value: 1 }]);
    expect(samples(text, 'clvm_agent_store_free_bytes')[0]!.value).toBeGreaterThan(0);
  });
});
