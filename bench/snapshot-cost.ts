/**
 * What a snapshot costs next to its data (issue 16; docs/benchmarks.md "Snapshot cost"), one run:
 *
 * 1. Per strategy on file pools — offline (no VM), lvm-cow and live-rotate (running type='qemu'
 *    domains on a reflink XFS pool) — a chain of --depth snapshots of --small-mib fresh guest data
 *    each, then --large-rounds snapshots of --large-mib each, through the real engine
 *    (createSnapshot, default options: verify metadata). Per snapshot: wall time, export step time,
 *    overhead (wall − export), processes started by tool (node:child_process.spawn counted in this
 *    process), QEMU main-loop time summed over the snapshot's QMP commands (QEMU's trace events,
 *    bench/qemu-trace.ts) at chain depth 1, 8 and 16, and lvm-cow's pauses from QEMU's own STOP →
 *    RESUME event timestamps.
 * 2. Six running VMs with --large-mib of fresh data each, snapshotted at once (live-rotate), against
 *    `cp` + fsync of the same bytes (six raw files, in parallel, pool → store).
 *
 * Only the engine's public API and the test fixtures are used, so the same file measures another
 * checkout (copy bench/snapshot-cost.ts and bench/qemu-trace.ts into it).
 *
 *   nice -n 10 node --import tsx bench/snapshot-cost.ts [--depth 16] [--small-mib 4] [--large-mib 64]
 *     [--large-rounds 3] [--vms 6] [--fleet-strategies live-rotate,lvm-cow] [--skip strategies,fleet]
 *
 * Needs root, libvirtd (bash scripts/ensure-host.sh), xfsprogs, loop devices; QEMU with the log
 * trace backend (Debian's has it).
 */

import { rm } from 'node:fs/promises';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { fsyncPath } from '../src/fsync.js';
import type { SnapshotCreateResult } from '../src/protocol/index.js';
import { createSnapshot } from '../src/snapshot/index.js';
import {
  Cleanup,
  createQcow2,
  guestWrite,
  startTestDomain,
  type TestDomain,
} from '../test/support/libvirt-fixtures.js';
import {
  command,
  FileStepJournal,
  type Harness,
  jobContext,
  makeHarness,
} from '../test/support/snapshot-harness.js';
import { load, log, median, ms, percentile } from './bench-util.js';
import { pauses, type TraceWindow, traced } from './qemu-trace.js';

const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: {
    depth: { type: 'string', default: '16' },
    'small-mib': { type: 'string', default: '4' },
    'large-mib': { type: 'string', default: '64' },
    'large-rounds': { type: 'string', default: '3' },
    vms: { type: 'string', default: '6' },
    'fleet-strategies': { type: 'string', default: 'live-rotate,lvm-cow' },
    skip: { type: 'string', default: '' },
  },
});
const depth = Number(values.depth);
const smallMiB = Number(values['small-mib']);
const largeMiB = Number(values['large-mib']);
const largeRounds = Number(values['large-rounds']);
const fleetSize = Number(values.vms);
const skip = new Set(values.skip.split(',').filter((s) => s !== ''));
const sizeMiB = 1024;

// Every process this one starts, by tool (the engine's runTool, the virsh session, the fixtures).
const spawned = new Map<string, number>();
{
  const childProcess = createRequire(import.meta.url)(
    'node:child_process',
  ) as typeof import('node:child_process');
  const realSpawn = childProcess.spawn;
  childProcess.spawn = ((file: string, ...rest: unknown[]) => {
    const tool = basename(String(file));
    spawned.set(tool, (spawned.get(tool) ?? 0) + 1);
    if (process.env.BENCH_SHOW_SPAWNS) log(`spawn ${tool} ${JSON.stringify(rest[0]).slice(0, 300)}`);
    return (realSpawn as (...a: unknown[]) => unknown)(file, ...rest);
  }) as typeof childProcess.spawn;
  syncBuiltinESMExports();
}
const spawnCounts = (): Map<string, number> => new Map(spawned);
const spawnDelta = (before: Map<string, number>): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const [tool, n] of spawned)
    if (n - (before.get(tool) ?? 0) > 0) out[tool] = n - (before.get(tool) ?? 0);
  return out;
};

type Strategy = 'offline' | 'lvm-cow' | 'live-rotate';

interface Row {
  n: number;
  mib: number;
  wallMs: number;
  exportMs: number;
  spawns: Record<string, number>;
  /** QEMU main-loop time summed over the snapshot's QMP commands; null without a VM. */
  qmpMainLoopMs: number | null;
  qmpCommands: number;
  /** The snapshot's longest QMP command in QEMU's main loop. */
  longest: { execute: string; ms: number };
  /** lvm-cow: QEMU STOP → RESUME intervals. */
  pausesMs: number[];
  /** Each step's wall time. */
  stepsMs: Record<string, number>;
}

interface Volume {
  strategy: Strategy;
  file: string;
  dom: TestDomain | null;
  parents: string[];
}

/** Fresh data at a new offset: HMP qemu-io into the running guest's disk, else qemu-io on the file. */
async function writeDelta(h: Harness, vol: Volume, n: number, mib: number, atMiB: number): Promise<void> {
  const pattern = 1 + (n % 250);
  if (vol.dom !== null) {
    for (let m = 0; m < mib; m++) await guestWrite(vol.dom, pattern, (atMiB + m) * MiB, MiB);
    return;
  }
  const writes: string[] = [];
  for (let m = 0; m < mib; m++) writes.push('-c', `write -q -P ${pattern} ${(atMiB + m) * MiB} 1M`);
  await execa('qemu-io', ['-f', 'qcow2', ...writes, join(h.pool, vol.file)]);
}

async function snapshot(h: Harness, vol: Volume, n: number, mib: number): Promise<Row> {
  const cmd = command(
    'snapshot.create',
    {
      volume: { kind: 'file', pool: h.pool, file: vol.file },
      vm: vol.dom?.name ?? null,
      store: { root: h.storeRoot, dir: vol.strategy },
      parents: vol.parents,
      snapshot: `snap-${n}`,
      options: { strategy: vol.strategy, maxChainLength: 1000 },
    },
    `bench-${vol.strategy}-${n}-${process.pid}`,
  );
  const journal = new FileStepJournal(join(h.base, `${cmd.id}.json`));
  let wallMs = 0;
  let spawns: Record<string, number> = {};
  const run = async (): Promise<SnapshotCreateResult> => {
    const before = spawnCounts();
    const started = performance.now();
    try {
      return await createSnapshot(jobContext(cmd, journal), h.deps);
    } finally {
      wallMs = performance.now() - started;
      spawns = spawnDelta(before);
    }
  };
  let result: SnapshotCreateResult;
  let trace: TraceWindow | null = null;
  if (vol.dom === null) result = await run();
  else ({ value: result, trace } = await traced(vol.dom, run));
  if (result.strategy.name !== vol.strategy)
    throw new Error(`ran ${result.strategy.name}, not ${vol.strategy}`);
  vol.parents.push(`snap-${n}`);
  // The trace-event HMP commands themselves are the benchmark's, not the engine's.
  const commands = trace?.commands.filter((c) => !/^(hmp trace-event|\?)/.test(c.execute)) ?? [];
  return {
    n,
    mib,
    wallMs,
    exportMs: result.steps.find((s) => s.name === 'export')?.durationMs ?? 0,
    spawns,
    qmpMainLoopMs: trace === null ? null : commands.reduce((a, c) => a + (c.endMs - c.startMs), 0),
    qmpCommands: commands.length,
    longest: commands.reduce(
      (a, c) => (c.endMs - c.startMs > a.ms ? { execute: c.execute, ms: c.endMs - c.startMs } : a),
      {
        execute: '-',
        ms: 0,
      },
    ),
    pausesMs: trace === null ? [] : pauses(trace),
    stepsMs: Object.fromEntries(result.steps.map((st) => [st.name, st.durationMs])),
  };
}

async function strategies(): Promise<Map<Strategy, Row[]>> {
  const cleanup = new Cleanup();
  const h = await makeHarness('h16cost', { reflink: true, xfsBytes: 4096 * MiB });
  cleanup.add('harness', () => h.cleanup());
  const rows = new Map<Strategy, Row[]>();
  try {
    const vols: Volume[] = [];
    for (const strategy of ['offline', 'lvm-cow', 'live-rotate'] as const) {
      const file = `vol-${strategy}.qcow2`;
      await createQcow2(join(h.pool, file), sizeMiB);
      const dom =
        strategy === 'offline'
          ? null
          : await startTestDomain(cleanup, {
              label: `h16${strategy.replace('-', '')}`,
              disk: { type: 'file', path: join(h.pool, file) },
            });
      vols.push({ strategy, file, dom, parents: [] });
      rows.set(strategy, []);
    }
    // snap-0: the full first snapshot (not measured); then the delta series, strategies interleaved.
    for (const vol of vols) await snapshot(h, vol, 0, 0);
    const plan = [
      ...Array.from({ length: depth }, () => smallMiB),
      ...Array.from({ length: largeRounds }, () => largeMiB),
    ];
    let atMiB = 0;
    for (const [i, mib] of plan.entries()) {
      const n = i + 1;
      const order = n % 2 === 1 ? vols : [...vols].reverse();
      for (const vol of order) await writeDelta(h, vol, n, mib, atMiB);
      atMiB += mib;
      for (const vol of order) {
        const row = await snapshot(h, vol, n, mib);
        rows.get(vol.strategy)!.push(row);
        log(
          `${vol.strategy} snap-${n} ${mib} MiB: wall ${ms(row.wallMs)} ms, export ${ms(row.exportMs)} ms, ` +
            `processes ${JSON.stringify(row.spawns)}, QMP ${row.qmpCommands} commands ` +
            `${row.qmpMainLoopMs === null ? '-' : ms(row.qmpMainLoopMs)} ms main loop ` +
            `(longest ${row.longest.execute} ${ms(row.longest.ms)} ms), ` +
            `paused ${row.pausesMs.map(ms).join('+') || '-'} ms, load ${load()}`,
        );
      }
    }
    return rows;
  } finally {
    await cleanup.run();
  }
}

interface FleetResult {
  snapshotAllMs: number[];
  cpAllMs: number[];
  spawnsPerSnapshot: Record<string, number>;
}

/** Six running VMs with fresh data each, snapshotted at once, against cp + fsync of the same bytes. */
async function fleet(strategy: 'live-rotate' | 'lvm-cow'): Promise<FleetResult> {
  const cleanup = new Cleanup();
  const h = await makeHarness(`h16fleet${strategy.replace('-', '')}`, {
    reflink: strategy === 'lvm-cow',
    xfsBytes: (3 * fleetSize * (sizeMiB + 2 * largeMiB * largeRounds) + 512) * MiB,
  });
  cleanup.add('harness', () => h.cleanup());
  const result: FleetResult = { snapshotAllMs: [], cpAllMs: [], spawnsPerSnapshot: {} };
  try {
    const vols: Volume[] = [];
    for (let i = 0; i < fleetSize; i++) {
      const file = `vm${i}.qcow2`;
      await createQcow2(join(h.pool, file), sizeMiB);
      const dom = await startTestDomain(cleanup, {
        label: `h16fleet${i}`,
        disk: { type: 'file', path: join(h.pool, file) },
      });
      vols.push({ strategy, file: file, dom, parents: [] });
    }
    const storeDir = join(h.storeRoot, 'cp');
    await execa('mkdir', ['-p', storeDir]);
    const raws: string[] = [];
    for (let i = 0; i < fleetSize; i++) {
      const raw = join(h.pool, `raw-${i}.bin`);
      await execa('dd', ['if=/dev/urandom', `of=${raw}`, 'bs=1M', `count=${largeMiB}`, 'status=none']);
      raws.push(raw);
    }
    const snapAll = async (n: number, mib: number): Promise<number> => {
      const before = spawnCounts();
      const started = performance.now();
      await Promise.all(
        vols.map(async (vol) => {
          const cmd = command(
            'snapshot.create',
            {
              volume: { kind: 'file', pool: h.pool, file: vol.file },
              vm: vol.dom!.name,
              store: { root: h.storeRoot, dir: vol.file },
              parents: vol.parents,
              snapshot: `snap-${n}`,
              options: { strategy, maxChainLength: 1000 },
            },
            `bench-fleet-${vol.file}-${n}-${process.pid}`,
          );
          await createSnapshot(jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))), h.deps);
          vol.parents.push(`snap-${n}`);
        }),
      );
      const wall = performance.now() - started;
      if (mib > 0) {
        for (const [tool, count] of Object.entries(spawnDelta(before)))
          result.spawnsPerSnapshot[tool] = (result.spawnsPerSnapshot[tool] ?? 0) + count / fleetSize;
      }
      return wall;
    };
    await snapAll(0, 0);
    for (let round = 1; round <= largeRounds; round++) {
      for (const vol of vols) await writeDelta(h, vol, round, largeMiB, (round - 1) * largeMiB);
      const wall = await snapAll(round, largeMiB);
      result.snapshotAllMs.push(wall);
      // The same bytes with cp + fsync, six at once (sources hot in the page cache, as the guest's are).
      const started = performance.now();
      await Promise.all(
        raws.map(async (raw, i) => {
          const copy = join(storeDir, `copy-${i}`);
          await rm(copy, { force: true });
          await execa('cp', [raw, copy]);
          await fsyncPath(copy);
        }),
      );
      const cpMs = performance.now() - started;
      result.cpAllMs.push(cpMs);
      log(
        `fleet round ${round}: ${fleetSize} snapshots ${ms(wall)} ms, cp + fsync ${ms(cpMs)} ms, load ${load()}`,
      );
    }
    for (const tool of Object.keys(result.spawnsPerSnapshot))
      result.spawnsPerSnapshot[tool] = result.spawnsPerSnapshot[tool]! / largeRounds;
    return result;
  } finally {
    await cleanup.run();
  }
}

// ---------------------------------------------------------------------------------------------

const { stdout: qemuVersion } = await execa('qemu-system-x86_64', ['--version']);
const { stdout: head } = await execa('git', ['rev-parse', '--short', 'HEAD']).catch(() => ({ stdout: '?' }));
console.log(
  `${new Date().toISOString()}, commit ${head}, ${qemuVersion.split('\n')[0]}; load average at start ${load()}`,
);
console.log(
  `Chain of ${depth} × ${smallMiB} MiB deltas, then ${largeRounds} × ${largeMiB} MiB; fleet ${fleetSize} VMs × ${largeMiB} MiB.\n`,
);
if (!skip.has('strategies')) {
  const rows = await strategies();
  console.log(
    '| strategy | delta | wall p50 ms | export p50 ms | overhead p50 ms | overhead max ms | processes per snapshot |',
  );
  console.log(
    '| -------- | ----: | ----------: | ------------: | --------------: | --------------: | ---------------------- |',
  );
  for (const [strategy, all] of rows) {
    for (const mib of [smallMiB, largeMiB]) {
      const r = all.filter((x) => x.mib === mib);
      const over = r.map((x) => x.wallMs - x.exportMs);
      const tools = new Map<string, number[]>();
      for (const x of r)
        for (const [t, c] of Object.entries(x.spawns)) tools.set(t, [...(tools.get(t) ?? []), c]);
      const procs = [...tools].map(
        ([t, c]) => `${t} ${median([...c, ...Array(r.length - c.length).fill(0)])}`,
      );
      console.log(
        `| ${strategy} | ${mib} MiB | ${ms(median(r.map((x) => x.wallMs)))} | ${ms(median(r.map((x) => x.exportMs)))} | ` +
          `${ms(median(over))} | ${ms(Math.max(...over))} | ${procs.join(', ') || 'none'} |`,
      );
    }
  }
  console.log('\nStep wall time p50 (ms), small deltas:');
  for (const [strategy, all] of rows) {
    const r = all.filter((x) => x.mib === smallMiB);
    const names = Object.keys(r[0]?.stepsMs ?? {});
    console.log(
      `- ${strategy}: ${names.map((n) => `${n} ${ms(median(r.map((x) => x.stepsMs[n] ?? 0)))}`).join(', ')}`,
    );
  }
  console.log("\nQEMU main-loop time summed over one snapshot's QMP commands (ms; QMP commands):");
  console.log(
    '| strategy | depth 1 | depth 8 | depth 16 | p50 over the chain | p99 over the chain | commands over 5 ms |',
  );
  console.log(
    '| -------- | ------: | ------: | -------: | -----------------: | -----------------: | ------------------ |',
  );
  for (const strategy of ['lvm-cow', 'live-rotate'] as const) {
    const r = rows.get(strategy)!.filter((x) => x.mib === smallMiB);
    const at = (d: number) => {
      const x = r.find((y) => y.n === d);
      return x === undefined ? '-' : `${ms(x.qmpMainLoopMs ?? 0)} (${x.qmpCommands})`;
    };
    const all = r.map((x) => x.qmpMainLoopMs ?? 0);
    const longest = [...new Set(r.filter((x) => x.longest.ms > 5).map((x) => x.longest.execute))].join(', ');
    console.log(
      `| ${strategy} | ${at(1)} | ${at(8)} | ${at(16)} | ${ms(median(all))} | ${ms(percentile(all, 99))} | ${longest || '-'} |`,
    );
  }
  const cowPauses = rows.get('lvm-cow')!.flatMap((x) => x.pausesMs);
  const cowPerSnap = rows.get('lvm-cow')!.map((x) => x.pausesMs.reduce((a, b) => a + b, 0));
  console.log(
    `\nlvm-cow pause, QEMU STOP → RESUME per pause: n=${cowPauses.length} p50 ${ms(median(cowPauses))} ms, p99 ${ms(percentile(cowPauses, 99))} ms, max ${ms(Math.max(...cowPauses))} ms; ` +
      `paused per snapshot p50 ${ms(median(cowPerSnap))} ms, p99 ${ms(percentile(cowPerSnap, 99))} ms`,
  );
}
if (!skip.has('fleet')) {
  for (const strategy of values['fleet-strategies'].split(',') as Array<'live-rotate' | 'lvm-cow'>) {
    const f = await fleet(strategy);
    const snap = median(f.snapshotAllMs);
    const cp = median(f.cpAllMs);
    console.log(
      `\n${fleetSize} running VMs × ${largeMiB} MiB snapshotted at once (${strategy}): p50 ${ms(snap)} ms ` +
        `(${f.snapshotAllMs.map(ms).join(', ')}); cp + fsync of the same bytes p50 ${ms(cp)} ms ` +
        `(${f.cpAllMs.map(ms).join(', ')}); ratio ${(snap / cp).toFixed(2)}; processes per snapshot ` +
        `${Object.entries(f.spawnsPerSnapshot)
          .map(([t, c]) => `${t} ${c.toFixed(1)}`)
          .join(', ')}`,
    );
  }
}
console.log(`\n${new Date().toISOString()}: load average at end ${load()}`);
