/**
 * lvm-cow delta growth and VM pause (docs/benchmarks.md "lvm-cow delta growth").
 *
 * The lvm-cow strategy never replaces the active image, so every export re-copies all clusters
 * written since the image was created: deltas grow with each snapshot (the seed's stated
 * trade-off). This bench runs the real engine (createSnapshot, lvm-cow) on a file pool with
 * reflink (a loop-mounted XFS) and a running type='qemu' VM; between snapshots the guest writes
 * `--write-mib` of fresh data at a new offset. It prints, per snapshot, the delta's size relative
 * to the guest bytes written since the previous snapshot, and the VM pause p50/p99. For
 * comparison it then runs the offline strategy on a copy of the same workload (VM stopped).
 *
 *   node --import tsx bench/lvm-cow-growth.ts [--size-mib 1024] [--write-mib 32] [--snapshots 20]
 *
 * Needs root, libvirtd (bash scripts/ensure-host.sh), xfsprogs and loop devices.
 */
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { silentLogger } from '../src/observability/logger.js';
import { commandSchema } from '../src/protocol/index.js';
import { createSnapshot } from '../src/snapshot/index.js';
import { Cleanup, createQcow2, guestWrite, startTestDomain } from '../test/support/libvirt-fixtures.js';
import { FileStepJournal, makeHarness } from '../test/support/snapshot-harness.js';

const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    'write-mib': { type: 'string', default: '32' },
    snapshots: { type: 'string', default: '20' },
  },
});
const sizeMiB = Number(values['size-mib']);
const writeMiB = Number(values['write-mib']);
const count = Number(values.snapshots);
if (writeMiB * count > sizeMiB) throw new Error('--write-mib × --snapshots must fit in --size-mib');

interface Row {
  n: number;
  deltaMiB: number;
  ratio: number;
  pauseMs: number;
  exportMs: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

async function runStrategy(strategy: 'lvm-cow' | 'offline'): Promise<Row[]> {
  const cleanup = new Cleanup();
  const h = await makeHarness(`bench${strategy.replace('-', '')}`, {
    reflink: true,
    xfsBytes: Math.max(512, 4 * sizeMiB) * MiB, // mkfs.xfs needs > 300 MiB
  });
  cleanup.add('harness', () => h.cleanup());
  try {
    const active = join(h.pool, 'vol.qcow2');
    await createQcow2(active, sizeMiB);
    const dom = await startTestDomain(cleanup, { label: 'benchcow', disk: { type: 'file', path: active } });
    await mkdir(join(h.base, 'journals'));
    const rows: Row[] = [];
    const parents: string[] = [];
    for (let n = 1; n <= count; n++) {
      // Fresh data at a new offset (1 MiB writes: what qemu-io through HMP handles comfortably).
      for (let m = 0; m < writeMiB; m++)
        await guestWrite(dom, 1 + (n % 250), ((n - 1) * writeMiB + m) * MiB, MiB);
      if (strategy === 'offline') await execa('virsh', ['-c', 'qemu:///system', 'destroy', dom.name]);
      const cmd = commandSchema.parse({
        id: `bench-${strategy}-${n}`,
        type: 'snapshot.create',
        params: {
          volume: { kind: 'file', pool: h.pool, file: 'vol.qcow2' },
          vm: dom.name,
          store: { root: h.storeRoot, dir: 'vol' },
          parents,
          snapshot: `snap-${n}`,
          options: { strategy, verify: 'none', maxChainLength: 1000 },
        },
      });
      if (cmd.type !== 'snapshot.create') throw new Error('unreachable');
      const result = await createSnapshot(
        {
          jobId: cmd.id,
          command: cmd,
          logger: silentLogger(),
          signal: new AbortController().signal,
          progress: () => {},
          journal: new FileStepJournal(join(h.base, 'journals', `${n}.json`)),
          recovering: false,
        },
        h.deps,
      );
      if (strategy === 'offline') await execa('virsh', ['-c', 'qemu:///system', 'start', dom.name]);
      parents.push(`snap-${n}`);
      const deltaBytes = (await stat(result.snapshot.path)).blocks * 512;
      rows.push({
        n,
        deltaMiB: deltaBytes / MiB,
        ratio: deltaBytes / (writeMiB * MiB),
        pauseMs: result.vmPauseMs,
        exportMs: result.steps.find((s) => s.name === 'export')?.durationMs ?? 0,
      });
      process.stderr.write(
        `${strategy} snap-${n}: delta ${(deltaBytes / MiB).toFixed(1)} MiB, pause ${result.vmPauseMs.toFixed(1)} ms\n`,
      );
    }
    return rows;
  } finally {
    await cleanup.run();
  }
}

const cow = await runStrategy('lvm-cow');
const offline = await runStrategy('offline');
const pick = [1, 5, 10, 20].filter((n) => n <= count);
console.log(
  `\nDisk ${sizeMiB} MiB, guest writes ${writeMiB} MiB of new data between snapshots, ${count} snapshots.\n`,
);
console.log('| snapshot | lvm-cow delta MiB | ÷ guest writes | offline delta MiB | ÷ guest writes |');
console.log('| -------: | ----------------: | -------------: | ----------------: | -------------: |');
for (const n of pick) {
  const c = cow[n - 1]!;
  const o = offline[n - 1]!;
  console.log(
    `| ${n} | ${c.deltaMiB.toFixed(1)} | ${c.ratio.toFixed(2)}× | ${o.deltaMiB.toFixed(1)} | ${o.ratio.toFixed(2)}× |`,
  );
}
const pauses = cow.map((r) => r.pauseMs).sort((a, b) => a - b);
console.log(
  `\nlvm-cow VM pause per snapshot (clone + re-point), n=${pauses.length}: p50 ${percentile(pauses, 50).toFixed(1)} ms, p99 ${percentile(pauses, 99).toFixed(1)} ms, max ${pauses.at(-1)?.toFixed(1)} ms`,
);
const exportCow = cow.reduce((a, r) => a + r.exportMs, 0);
const exportOff = offline.reduce((a, r) => a + r.exportMs, 0);
console.log(`total export time: lvm-cow ${exportCow} ms, offline ${exportOff} ms`);
