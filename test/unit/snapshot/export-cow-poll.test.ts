// The lvm-cow export watches the copy-on-write fill level while qemu-img copies: one read at a time.
import { describe, expect, it } from 'vitest';
import { exportStep } from '../../../src/snapshot/common-steps.js';
import type { SnapshotDeps } from '../../../src/snapshot/deps.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('export of a copy-on-write clone', () => {
  it('never runs two fill-level reads at once, and none outlives the step', async () => {
    let active = 0;
    let most = 0;
    let reads = 0;
    const deps = {
      store: { removePart: async () => undefined, removeStaleParts: async () => [] },
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
