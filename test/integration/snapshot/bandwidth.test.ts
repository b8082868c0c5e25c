// Export bandwidth limits through the real engine and qemu-img: the limit reaches qemu-img as -r
// (one request in flight), a command cannot raise it, and exports cannot go faster than it — alone
// or together. Only lower bounds on time are asserted (a loaded machine is only ever slower); the
// upper side and the sharing are measured in bench/bandwidth.ts (docs/benchmarks.md).
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runTool } from '../../../src/host/exec.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { ExportBandwidth } from '../../../src/snapshot/export-bandwidth.js';
import { MiB, makeQcow2, sameContent, writePattern } from '../../support/images.js';
import { fileSnapshotCommand, type Harness, makeHarness, runCreate } from '../../support/snapshot-harness.js';

let h: Harness;
const converts: Array<{ args: readonly string[]; ms: number }> = [];

beforeAll(async () => {
  h = await makeHarness('i17-bw');
  h.deps.qemuImg = new QemuImg({
    timeoutMs: 60_000,
    exportTimeoutMs: 120_000,
    run: async (file, args, options) => {
      const started = performance.now();
      try {
        return await runTool(file, args, options);
      } finally {
        if (args[0] === 'convert') converts.push({ args, ms: performance.now() - started });
      }
    },
  });
});
afterAll(async () => {
  await h?.cleanup();
});

async function volume(name: string, dataMiB: number): Promise<string> {
  const path = await makeQcow2(join(h.pool, name), 64 * MiB);
  await writePattern(path, 0x3c, 0, dataMiB * MiB);
  return path;
}

function rateArg(args: readonly string[]): number | undefined {
  const i = args.indexOf('-r');
  return i < 0 ? undefined : Number(args[i + 1]);
}

describe('export bandwidth', () => {
  it('a command limit below the host limit is passed as -r with -m 1, and the copy takes at least bytes/rate', async () => {
    h.deps.bandwidth = new ExportBandwidth({ hostLimit: 16 * MiB });
    const path = await volume('a.qcow2', 8);
    converts.length = 0;
    const result = await runCreate(
      h,
      fileSnapshotCommand(h, {
        file: 'a.qcow2',
        vm: null,
        parents: [],
        snapshot: 'a-1.qcow2',
        options: { strategy: 'offline', bandwidthBytesPerSecond: 4 * MiB },
      }),
    );
    const convert = converts.find((c) => c.args.includes('-p'))!;
    expect(rateArg(convert.args)).toBe(4 * MiB);
    expect(convert.args.join(' ')).toContain('-m 1');
    // 8 MiB at 4 MiB/s is 2 s; qemu-img's limiter lets the first 2 MiB request and part of a
    // 100 ms slice through at once (measured ~1.45 s): at least (8 - 3) MiB / 4 MiB/s.
    expect(convert.ms).toBeGreaterThan(((8 - 3) / 4) * 1000);
    expect(await sameContent(path, result.snapshot.path)).toBe(true);
  });

  it('a command cannot raise the host limit; two exports together stay at or below it', async () => {
    h.deps.bandwidth = new ExportBandwidth({ hostLimit: 8 * MiB, quantumMs: 500 });
    await volume('b.qcow2', 6);
    await volume('c.qcow2', 6);
    converts.length = 0;
    const started = performance.now();
    const results = await Promise.all(
      ['b', 'c'].map((v) =>
        runCreate(
          h,
          fileSnapshotCommand(h, {
            file: `${v}.qcow2`,
            vm: null,
            parents: [],
            snapshot: `${v}-1.qcow2`,
            options: { strategy: 'offline', bandwidthBytesPerSecond: 64 * MiB },
          }),
        ),
      ),
    );
    const wallMs = performance.now() - started;
    for (const c of converts.filter((x) => x.args.includes('-p'))) expect(rateArg(c.args)).toBe(8 * MiB);
    // 12 MiB at 8 MiB/s together, less each export's first-request burst: (12 - 2 × 3) / 8 s.
    expect(wallMs).toBeGreaterThan(((12 - 2 * 3) / 8) * 1000);
    expect(results.map((r) => r.snapshot.chainDepth)).toEqual([1, 1]);
    expect(h.deps.bandwidth.active).toBe(0);
  });
});
