/**
 * What a live-rotate snapshot costs (docs/benchmarks.md "live-rotate through libvirt"), one run:
 * one running type='qemu' VM on a plain file pool; each round the guest writes fresh data (1 MiB
 * per HMP qemu-io call), then the real engine (createSnapshot, strategy live-rotate) snapshots it.
 * Prints the wall time of each snapshot and of its steps (median and max over the delta rounds),
 * the bytes each delta exported, and the bytes written into the local base by the commit (the old
 * top's allocation: the extra local write of each delta). Only the engine's public API is used, so
 * the same script measures an older design too (run it from that checkout).
 *
 *   nice -n 10 node --import tsx bench/live-rotate-cost.ts [--rounds 8] [--write-mib 16] [--size-mib 256]
 *
 * Needs root and libvirtd (bash scripts/ensure-host.sh).
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { Cleanup, createQcow2, guestWrite, startTestDomain } from '../test/support/libvirt-fixtures.js';
import { fileSnapshotCommand, makeHarness, runCreate } from '../test/support/snapshot-harness.js';

const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '8' },
    'write-mib': { type: 'string', default: '16' },
    'size-mib': { type: 'string', default: '256' },
  },
});
const rounds = Number(values.rounds);
const writeMiB = Number(values['write-mib']);
const sizeMiB = Number(values['size-mib']);

function stats(xs: number[]): string {
  const sorted = [...xs].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)] ?? 0;
  return `median ${median.toFixed(0)} ms, max ${(sorted.at(-1) ?? 0).toFixed(0)} ms`;
}

async function allocated(path: string): Promise<number> {
  const { stdout } = await execa('qemu-img', ['map', '-U', '--output=json', path]);
  const map = JSON.parse(stdout) as Array<{ length: number; data: boolean; depth: number }>;
  return map.filter((e) => e.data && e.depth === 0).reduce((sum, e) => sum + e.length, 0);
}

async function main(): Promise<void> {
  const cleanup = new Cleanup();
  const h = await makeHarness('lrcost');
  cleanup.add('harness', () => h.cleanup());
  try {
    const volume = join(h.pool, 'vol.qcow2');
    await createQcow2(volume, sizeMiB);
    const dom = await startTestDomain(cleanup, { label: 'lrcost', disk: { type: 'file', path: volume } });
    const names: string[] = [];
    const totals: number[] = [];
    const steps = new Map<string, number[]>();
    const exported: number[] = [];
    const committed: number[] = [];
    let offset = 0;
    for (let round = 1; round <= rounds; round++) {
      for (let i = 0; i < writeMiB; i++) {
        await guestWrite(dom, 1 + (round % 250), offset % (sizeMiB * MiB), MiB);
        offset += MiB;
      }
      const started = performance.now();
      const result = await runCreate(
        h,
        fileSnapshotCommand(h, {
          file: 'vol.qcow2',
          vm: dom.name,
          dir: 'vol',
          parents: names,
          snapshot: `snap-${round}`,
          options: { strategy: 'live-rotate' },
        }),
      );
      const ms = performance.now() - started;
      names.push(`snap-${round}`);
      if (round === 1) continue; // the full one
      totals.push(ms);
      for (const s of result.steps) steps.set(s.name, [...(steps.get(s.name) ?? []), s.durationMs]);
      exported.push(await allocated(result.snapshot.path));
      // The old top merged into the base holds what the delta exported (new design only).
      if (result.steps.some((s) => s.name === 'commit-frozen')) committed.push(exported.at(-1)!);
    }
    const mib = (xs: number[]) => (xs.reduce((a, b) => a + b, 0) / xs.length / MiB).toFixed(1);
    console.log(
      `live-rotate, ${rounds - 1} delta snapshots of ${writeMiB} MiB fresh guest writes each (${sizeMiB} MiB disk)`,
    );
    console.log(`- snapshot wall time (engine call): ${stats(totals)}`);
    for (const [name, xs] of steps) console.log(`  - ${name}: ${stats(xs)}`);
    console.log(`- exported per delta: ${mib(exported)} MiB`);
    if (committed.length > 0)
      console.log(`- written into the local base by the commit per delta: ${mib(committed)} MiB`);
  } finally {
    await cleanup.run();
  }
}

await main();
