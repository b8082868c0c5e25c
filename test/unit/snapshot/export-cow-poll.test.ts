// The export step: the part is durable before the step is done; the lvm-cow export watches the
// copy-on-write fill level while qemu-img copies, one read at a time.
import { describe, expect, it } from 'vitest';
import { exportStep } from '../../../src/snapshot/common-steps.js';
import type { SnapshotDeps } from '../../../src/snapshot/deps.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('export step', () => {
  it('fsyncs the part after the copy, before the step counts as done (P2: qemu-img writes it cache=unsafe)', async () => {
    const calls: string[] = [];
    const deps = {
      store: {
        removePart: async () => calls.push('removePart'),
        removeStaleParts: async () => [],
        syncPart: async (path: string) => calls.push(`syncPart ${path}`),
      },
      qemuImg: { convert: async (o: { target: string }) => calls.push(`convert ${o.target}`) },
    } as unknown as SnapshotDeps;
    const step = exportStep(deps, {
      source: '/dev/vg/vol',
      partPath: '/store/vol/.snap-1.part',
      parentBacking: 'snap-0',
      compress: false,
      forceShare: true,
    });
    await step.run({ signal: new AbortController().signal, progress: () => {} });
    expect(calls).toEqual([
      'removePart',
      'convert /store/vol/.snap-1.part',
      'syncPart /store/vol/.snap-1.part',
    ]);
  });
});

describe('export of a copy-on-write clone', () => {
  it('never runs two fill-level reads at once, and none outlives the step', async () => {
    let active = 0;
    let most = 0;
    let reads = 0;
    const deps = {
      store: {
        removePart: async () => undefined,
        removeStaleParts: async () => [],
        syncPart: async () => undefined,
      },
      qemuImg: { convert: async () => sleep(300) },
      cowPollMs: 5,
    } as unknown as SnapshotDeps;
    const step = exportStep(deps, {
      source: '/dev/vg/vol-cow-x',
      partPath: '/nonexistent-store/.snap-1.part',
      parentBacking: null,
      compress: false,
      forceShare: true,
      cow: {
        volume: '/dev/vg/vol',
        // Slower than the poll interval, like lvs on a loaded host.
        health: async () => {
          reads++;
          active++;
          most = Math.max(most, active);
          await sleep(40);
          active--;
          return { overflowed: false, percent: 1 };
        },
      },
    });
    await step.run({ signal: new AbortController().signal, progress: () => {} });
    expect(reads).toBeGreaterThan(2);
    expect(most).toBe(1);
    expect(active).toBe(0);
  });
});
