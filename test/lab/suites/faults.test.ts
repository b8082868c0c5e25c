// Bad days for storage: the snapshot engine on a store and an LVM pool that fail mid-job.
//
// The store (ext4, no journal, errors=continue) and the pool's only PV sit on device-mapper devices
// (test/support/lab/faults.ts) whose tables are reloaded at a chosen step of a job: EIO on reads, writes or
// both, a slow device, or a file system / VG that fills up. The switch happens when the job's
// journal says the step started (the engine journals every step before running it), or, for
// "during export", at the export's first progress between 0 and 100 % (the export is slowed with
// the engine's export-rate failpoint so there is a middle).
//
// For every case: exactly one outcome (succeeded, or failed with a specific code and rolledBack);
// a failure before the point of no return is rolled back (the transient fault is cleared when
// the rollback starts); the volume reads exactly its reference (qemu-img compare against a raw
// reference written with qemu-io) and passes qemu-img check; no snapshot file is left under the
// snapshot's name unless the job succeeded or passed its point of no return, and then it matches
// the reference; no temporary LV is left by a rolled-back or succeeded job; then the fault is
// cleared, the store repaired (umount, e2fsck, mount) and the next snapshot succeeds and matches.
//
// live-rotate's volume is held by a bare QEMU standing in for libvirt (test/support/lab/bare-qemu.ts)
// and written by the guest through it. Its point of no return is the switch, its second step: a
// failure after it is not rolled back and may leave the old top in the live chain, which the next
// rotation's commit merges (the strategy's design). So for it the volume is checked through QEMU
// (an NBD export of its disk against the reference) and by its layers: every LV of the volume is a
// layer of the chain QEMU runs on (none stray), and after the next snapshot the chain is the base and
// one active layer again.
//
// `lab_fault_matrix=full` (kernel argument → environment; `npm run test:faults`) runs every case;
// by default a sample runs (one guest boot, inside `npm test`). Results: a table on stdout and
// .lab-cache/fault-matrix-<sample|full>.json.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/errors/index.js';
import { runTool } from '../../../src/host/exec.js';
import { FilePool } from '../../../src/host/file-pool.js';
import { Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import type { ProgressUpdate, StepJournal } from '../../../src/jobs/types.js';
import { createSnapshot, type EngineRecord, type SnapshotDeps } from '../../../src/snapshot/index.js';
import { Failpoints } from '../../support/failpoints.js';
import { BareQemu } from '../../support/lab/bare-qemu.js';
import { type FaultMode, FaultyPool, FaultyStore, loadFaultModules } from '../../support/lab/faults.js';
import { claimDisk, sh } from '../../support/lab/lab.js';
import { differsFromReference, ReferenceDisk } from '../../support/reference-images.js';
import { command, jobContext } from '../../support/snapshot-harness.js';
import { STEP_ORDER } from '../../support/step-order.js';

const MiB = 1024 * 1024;
const VIRTUAL = 32 * MiB;
const FULL = process.env.lab_fault_matrix === 'full';
// `lab_qemu_cache=direct`: live-rotate's bare QEMU opens its layers O_DIRECT (libvirt's cache='none');
// by default through the page cache (libvirt's cache='default'), as in L4 (docs/reliability.md).
const CACHE_DIRECT = process.env.lab_qemu_cache === 'direct';

type Strategy = 'offline' | 'lvm-cow' | 'live-rotate';
type Fault = 'eio' | 'eio-read' | 'eio-write' | 'slow' | 'enospc';
type Where = 'store' | 'pool';
/**
 * The job's moment: its first step (staging / clone / overlay), the export (mid-copy), publish,
 * verify, the point of no return (live-rotate's switch), live-rotate's block commit after it.
 */
type Moment = 'create' | 'export' | 'publish' | 'verify' | 'promote' | 'commit';

const STEP: Record<Strategy, Partial<Record<Moment, string>>> = {
  offline: {
    create: 'create-staging',
    export: 'export',
    publish: 'publish',
    verify: 'verify',
    promote: 'promote-staging',
  },
  'lvm-cow': { create: 'clone', export: 'export', publish: 'publish', verify: 'verify', promote: 'repoint' },
  'live-rotate': {
    create: 'create-overlay',
    promote: 'switch',
    export: 'export',
    publish: 'publish',
    verify: 'verify',
    commit: 'commit-frozen',
  },
};
const PONR: Record<Strategy, string> = {
  offline: 'promote-staging',
  'lvm-cow': 'repoint',
  'live-rotate': 'switch',
};

interface FaultCase {
  strategy: Strategy;
  where: Where;
  fault: Fault;
  moment: Moment;
}

/** Which moments a fault on a device can matter at (the others would only prove a no-op). */
const MOMENTS: Record<Where, Record<Fault, Moment[]>> = {
  store: {
    eio: ['export', 'publish', 'verify', 'promote'],
    'eio-write': ['export', 'publish'],
    'eio-read': ['verify', 'promote'],
    slow: ['export', 'publish'],
    enospc: ['export', 'publish'],
  },
  pool: {
    eio: ['create', 'export', 'verify', 'promote', 'commit'],
    'eio-write': ['create', 'promote', 'commit'],
    'eio-read': ['export', 'verify'],
    slow: ['export'],
    enospc: ['create'],
  },
};

/** A small sample for `npm test`: each strategy, both devices, every moment at least once. */
const SAMPLE = new Set([
  'offline/store/eio-write/publish',
  'offline/pool/eio/promote',
  'lvm-cow/store/eio/export',
  'lvm-cow/pool/eio-read/verify',
  'live-rotate/store/eio/publish',
  'live-rotate/pool/eio/commit',
]);
/** A fault lasts this long, or until the job starts rolling back (a burst: a store or disk that comes back). */
const BURST_MS = 3_000;

const caseName = (c: FaultCase) => `${c.strategy}/${c.where}/${c.fault}/${c.moment}`;
const CASES: FaultCase[] = (['offline', 'lvm-cow', 'live-rotate'] as const)
  .flatMap((strategy) =>
    (['store', 'pool'] as const).flatMap((where) =>
      (Object.entries(MOMENTS[where]) as Array<[Fault, Moment[]]>).flatMap(([fault, moments]) =>
        moments.map((moment) => ({ strategy, where, fault, moment })),
      ),
    ),
  )
  .filter((c) => STEP[c.strategy][c.moment] !== undefined)
  .filter((c) => FULL || SAMPLE.has(caseName(c)))
  // Round-robin over strategy × device, so a run stopped early has covered each of them.
  .map((c, i, all) => ({
    c,
    rank: all.slice(0, i).filter((d) => d.strategy === c.strategy && d.where === c.where).length,
  }))
  .sort((a, b) => a.rank - b.rank)
  .map(({ c }) => c);

/** The job layer's journal in memory, calling `onWrite` (awaited) with each new engine record. */
class TriggerJournal implements StepJournal {
  private facts: Record<string, unknown> = {};
  constructor(private readonly onWrite: (record: EngineRecord) => Promise<void>) {}
  read<T extends Record<string, unknown>>(): T {
    return structuredClone(this.facts) as T;
  }
  async write(patch: Record<string, unknown>): Promise<void> {
    this.facts = { ...this.facts, ...structuredClone(patch) };
    const record = this.facts.engine as EngineRecord | undefined;
    if (record) await this.onWrite(record);
  }
}

interface Outcome {
  case: string;
  result: 'succeeded' | 'failed' | 'check-failed';
  error?: string;
  code?: string;
  rolledBack?: boolean;
  step?: string | null;
  retryable?: boolean;
  message?: string;
  fsck?: number;
  leftLvs?: string[];
  /** live-rotate: the layers of QEMU's chain after the job (top first). */
  chain?: string[];
  /** live-rotate commit cases: a fresh descriptor's fsync of the base before the strategy's ('ok' or the errno). */
  freshFsync?: string;
  /** live-rotate: layers kept by LAYER_MERGE_NOT_DURABLE, repaired by the operator's procedure. */
  repaired?: string[];
  seconds: number;
}

const lvm = new Lvm({ timeoutMs: 60_000 });
const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 120_000 });
// Faulted jobs export slowly (qemu-img convert -r), so "during the export" has a middle.
const slowQemuImg = new QemuImg({
  timeoutMs: 60_000,
  exportTimeoutMs: 120_000,
  run: Failpoints.parse('export-rate=4M').wrapRunner(runTool),
});
let release: () => void = () => undefined;
let store: FaultyStore;
let pool: FaultyPool;
let work: string;
const outcomes: Outcome[] = [];

interface Volume {
  lv: string;
  path: string;
  live: ReferenceDisk;
  /** Snapshots the caller knows (succeeded jobs), oldest first. */
  parents: string[];
  /** Snapshots published by jobs that then failed past their point of no return (not in the caller's records). */
  orphans: string[];
  counter: number;
  round: number;
  /** live-rotate: the running VM holding the volume's chain. */
  vm?: BareQemu;
}
const volumes = new Map<Strategy, Volume>();

function deps(slow: boolean, vm: BareQemu | undefined): SnapshotDeps {
  const img = slow ? slowQemuImg : qemuImg;
  return {
    qemuImg: img,
    store: new SnapshotStore({ roots: [store.mountPoint], qemuImg: img }),
    filePool: new FilePool({ roots: [work], qemuImg: img, timeoutMs: 60_000 }),
    lvm,
    // Reached only by live-rotate, through the bare QEMU; the others have no VM.
    libvirt:
      (vm as unknown as Libvirt | undefined) ?? new Libvirt({ uri: 'qemu:///system', timeoutMs: 60_000 }),
    cowPollMs: 200,
  };
}

beforeAll(async () => {
  await loadFaultModules();
  const disk = claimDisk();
  release = disk.release;
  // Stale labels from an earlier user of the disk must not show up under the slices.
  await sh('dd', ['if=/dev/zero', `of=${disk.disk}`, 'bs=1M', 'count=4', 'conv=fsync']);
  pool = await FaultyPool.create(disk.disk, 1024 * MiB, MiB);
  // Room for live-rotate's full snapshots: each job that failed past its switch makes the next one full.
  store = await FaultyStore.create(disk.disk, 768 * MiB, 1026 * MiB);
  work = mkdtempSync(join(tmpdir(), 'faults-'));
  for (const strategy of ['offline', 'lvm-cow', 'live-rotate'] as const) {
    if (!CASES.some((c) => c.strategy === strategy)) continue;
    const lv = `vol-${strategy}`;
    const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
    const created = await lvm.createVolume({ vg: pool.vg, name: lv, sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({ path: created.path, sizeBytes: VIRTUAL });
    const live = await ReferenceDisk.create(join(work, `${lv}.raw`), VIRTUAL);
    const vm =
      strategy === 'live-rotate'
        ? await BareQemu.start(created.path, work, { cacheDirect: CACHE_DIRECT })
        : undefined;
    volumes.set(strategy, {
      lv,
      path: created.path,
      live,
      parents: [],
      orphans: [],
      counter: 0,
      round: 0,
      vm,
    });
  }
});

/** The outcomes so far, after every case (a long full run stopped early still leaves its record). */
function saveOutcomes(): void {
  mkdirSync('.lab-cache', { recursive: true });
  const file = join('.lab-cache', `fault-matrix-${FULL ? 'full' : 'sample'}.json`);
  writeFileSync(file, `${JSON.stringify(outcomes, null, 1)}\n`);
}

afterAll(async () => {
  const label = FULL ? 'full' : 'sample';
  saveOutcomes();
  console.log(
    [
      `fault matrix (${label}): case → outcome`,
      ...outcomes.map(
        (o) =>
          `${o.case.padEnd(34)} ${o.result}${o.code ? ` ${o.code}` : ''}${o.rolledBack === undefined ? '' : ` rolledBack=${o.rolledBack}`}${o.step ? ` step=${o.step}` : ''}${o.retryable ? ' retryable' : ''} fsck=${o.fsck ?? '-'} ${o.seconds}s${o.leftLvs?.length ? ` left=${o.leftLvs.join(',')}` : ''}${o.freshFsync ? ` freshFsync=${o.freshFsync}` : ''}${o.repaired ? ` repaired=${o.repaired.length}` : ''}`,
      ),
    ].join('\n'),
  );
  for (const v of volumes.values()) await v.vm?.kill();
  await store?.remove().catch(() => undefined);
  await pool?.remove().catch(() => undefined);
  if (work) rmSync(work, { recursive: true, force: true });
  release();
});

/** The guest writes 6 MiB somewhere new (through qemu-io), and the reference gets the same write. */
async function guestWrites(v: Volume): Promise<void> {
  v.round++;
  const pattern = 1 + ((v.round * 37) % 250);
  const offset = ((v.round * 5) % 26) * MiB;
  if (v.vm) await v.vm.guestWrite(pattern, offset, 6 * MiB);
  else await sh('qemu-io', ['-f', 'qcow2', '-c', `write -q -P ${pattern} ${offset} ${6 * MiB}`, v.path]);
  await v.live.apply([{ pattern, offset, length: 6 * MiB }]);
}

async function runJob(
  v: Volume,
  strategy: Strategy,
  name: string,
  opts: {
    journal?: StepJournal;
    slow?: boolean;
    verify?: 'metadata' | 'full';
    onProgress?: (u: ProgressUpdate) => void;
  } = {},
) {
  const cmd = command('snapshot.create', {
    volume: { kind: 'lvm', vg: pool.vg, lv: v.lv },
    vm: v.vm ? 'lab-vm' : null,
    store: { root: store.mountPoint, dir: v.lv },
    parents: v.parents,
    snapshot: name,
    options: { strategy, verify: opts.verify ?? 'metadata' },
  });
  const journal = opts.journal ?? new TriggerJournal(async () => undefined);
  return createSnapshot(
    jobContext(cmd, journal, { onProgress: opts.onProgress }),
    deps(opts.slow ?? false, v.vm),
  );
}

const lvNames = async () => (await lvm.listVolumes(pool.vg)).map((lv) => lv.name).sort();

async function expectVolumeMatches(v: Volume): Promise<void> {
  if (v.vm) {
    // The chain QEMU runs on: what the guest reads (through QEMU), its top read by qemu-img, every layer clean.
    const chain = await v.vm.diskSources();
    expect(await v.vm.readBackDiffers(v.live)).toBeNull();
    expect(await differsFromReference(chain[0]!, v.live)).toBeNull();
    for (const layer of chain)
      expect((await qemuImg.check(layer, { forceShare: true })).ok, layer).toBe(true);
    return;
  }
  expect(await differsFromReference(v.path, v.live)).toBeNull();
  expect((await qemuImg.check(v.path)).ok).toBe(true);
}

/** live-rotate: every LV of the volume is a layer of the chain QEMU runs on (no stray LV); the chain, top first. */
async function expectLayersInChain(v: Volume): Promise<string[]> {
  const chain = (await v.vm!.diskSources()).map((path) => path.slice(`/dev/${pool.vg}/`.length));
  const layers = (await lvNames()).filter((lv) => lv === v.lv || lv.startsWith(`${v.lv}.`));
  expect(layers).toEqual([...chain].sort());
  return chain;
}

describe(`snapshot jobs on a failing store and pool (${FULL ? 'full matrix' : 'sample'})`, () => {
  it.each(CASES.map((c) => [caseName(c), c] as const))(
    '%s',
    async (_name, c) => {
      try {
        await runCase(c);
      } catch (error) {
        // The reason goes into the record too: a long run stopped early prints no failure summary.
        outcomes.push({
          case: caseName(c),
          result: 'check-failed',
          error: String(error).slice(0, 400),
          seconds: 0,
        });
        saveOutcomes();
        throw error;
      }
    },
    // Two jobs, a slowed export and a store repair: minutes when the host is loaded.
    600_000,
  );
});

async function runCase(c: FaultCase): Promise<void> {
  const started = performance.now();
  const v = volumes.get(c.strategy)!;
  const device = c.where === 'store' ? store.device : pool.device;
  const step = STEP[c.strategy][c.moment]!; // CASES holds only the moments a strategy has
  await guestWrites(v);
  const lvsBefore = await lvNames();
  const chainBefore = v.vm ? await v.vm.diskSources() : [];
  const reference = await v.live.freeze(join(work, `${v.lv}-ref-${v.round}.raw`));

  let armed = false;
  let clearing: Promise<void> | null = null;
  let burst: NodeJS.Timeout | undefined;
  const clear = (): Promise<void> => {
    clearTimeout(burst);
    clearing ??=
      c.fault === 'enospc' ? (c.where === 'store' ? store.unfill() : pool.unfill()) : device.set('ok');
    return clearing;
  };
  const armBurst = () => {
    armed = true;
    burst = setTimeout(() => void clear().catch(() => undefined), BURST_MS);
  };
  const inject = async () => {
    if (c.fault === 'enospc') await (c.where === 'store' ? store.fill() : pool.fill());
    else await device.set(c.fault as FaultMode);
    armBurst();
  };
  const duringExport = c.moment === 'export' && c.fault !== 'enospc';
  // live-rotate's commit: what a descriptor opened only now (after the commit) hears from the base's
  // fsync, before the strategy's own (opened before the commit). Tells whether someone (QEMU) saw the
  // writeback error first: then only a descriptor opened before the error reports it.
  let freshFsync: string | undefined;
  const journal = new TriggerJournal(async (record) => {
    if (
      v.vm &&
      c.moment === 'commit' &&
      freshFsync === undefined &&
      record.steps['remove-frozen'] === 'started'
    ) {
      freshFsync = await fsyncNow(v.path);
    }
    if (!armed && !duringExport && record.steps[step] === 'started') await inject();
    // A transient fault: the rollback runs on a healthy device.
    if (armed && record.phase === 'rolling-back') await clear();
  });
  const onProgress = (u: ProgressUpdate) => {
    if (armed || !duringExport || u.step !== 'export') return;
    if ((u.percent ?? 0) > 0 && (u.percent ?? 100) < 100) {
      device.setSync(c.fault as FaultMode);
      armBurst();
    }
  };
  const name = `snap-${++v.counter}`;
  const outcome: Outcome = { case: caseName(c), result: 'succeeded', seconds: 0 };
  let caughtDetails: Record<string, unknown> = {};
  try {
    await runJob(v, c.strategy, name, {
      journal,
      slow: c.moment === 'export',
      verify: c.moment === 'verify' ? 'full' : 'metadata',
      onProgress,
    });
  } catch (error) {
    expect(error).toBeInstanceOf(AgentError);
    const e = error as AgentError;
    caughtDetails = e.details;
    Object.assign(outcome, {
      result: 'failed',
      code: e.code,
      rolledBack: e.details.rolledBack,
      step: e.details.step,
      retryable: e.retryable,
      message: e.message.slice(0, 200),
    });
  }
  if (freshFsync !== undefined) outcome.freshFsync = freshFsync;
  expect(armed, 'the fault was switched on during the job').toBe(true);
  await clear();
  if (c.where === 'store') outcome.fsck = await store.repair();
  outcomes.push(outcome);
  saveOutcomes();
  if (outcome.code === 'LAYER_MERGE_NOT_DURABLE') outcome.repaired = await repairUnmerged(v, caughtDetails);

  // One clear outcome: a specific code, and the rollback flag where the point of no return was not reached.
  if (outcome.result === 'failed') {
    expect(outcome.code).not.toBe('INTERNAL');
    expect(typeof outcome.rolledBack).toBe('boolean');
    const failedAt = (STEP_ORDER[c.strategy] as readonly string[]).indexOf(outcome.step ?? '');
    const ponr = (STEP_ORDER[c.strategy] as readonly string[]).indexOf(PONR[c.strategy]);
    if (failedAt >= 0 && failedAt < ponr) expect(outcome.rolledBack).toBe(true);
  }
  // The volume reads exactly as before the job (a snapshot never changes what the guest sees).
  await expectVolumeMatches(v);
  const snapshotPath = join(store.mountPoint, v.lv, name);
  if (outcome.result === 'succeeded' || outcome.rolledBack === false) {
    // Published: complete, and equal to the volume at the job's moment.
    if (existsSync(snapshotPath)) {
      expect((await qemuImg.check(snapshotPath)).ok).toBe(true);
      expect(await differsFromReference(snapshotPath, reference)).toBeNull();
      if (outcome.result === 'failed') v.orphans.push(name);
    } else expect(outcome.result).toBe('failed');
  } else {
    expect(existsSync(snapshotPath), `${name} must not be published by a rolled-back job`).toBe(false);
  }
  // live-rotate's layers come and go with each rotation: checked against QEMU's chain instead.
  const left = (await lvNames()).filter((lv) => !lvsBefore.includes(lv) && !lv.startsWith(`${v.lv}.`));
  outcome.leftLvs = left;
  if (v.vm) {
    outcome.chain = await expectLayersInChain(v);
    // Rolled back: the chain it started on. Succeeded: a new top on the base. Failed past the
    // switch: the new top, maybe with the old top still above the base (the next commit merges it).
    if (outcome.rolledBack === true) expect(await v.vm.diskSources()).toEqual(chainBefore);
    else if (outcome.result === 'succeeded') expect(outcome.chain).toHaveLength(2);
    else expect(outcome.chain.length).toBeLessThanOrEqual(3);
    saveOutcomes();
  }
  if (outcome.result === 'succeeded' || outcome.rolledBack === true) expect(left).toEqual([]);
  if (outcome.result === 'succeeded') v.parents.push(name);

  // The fault is gone: the next snapshot succeeds and is correct.
  const next = `snap-${++v.counter}`;
  const result = await runJob(v, c.strategy, next);
  expect(result.strategy.name).toBe(c.strategy);
  v.parents.push(next);
  expect((await qemuImg.check(join(store.mountPoint, v.lv, next))).ok).toBe(true);
  expect(await differsFromReference(join(store.mountPoint, v.lv, next), reference)).toBeNull();
  await expectVolumeMatches(v);
  // A layer a failed rotation left is merged by this one: the base and one active layer again.
  if (v.vm) expect(await expectLayersInChain(v)).toHaveLength(2);
  // Only snapshots the caller knows carry a snapshot's name, plus those of jobs that failed past their point of no return.
  const visible = readdirSync(join(store.mountPoint, v.lv)).filter((f) => !f.startsWith('.'));
  expect(visible.filter((f) => !v.parents.includes(f)).sort()).toEqual([...v.orphans].sort());
  outcome.seconds = Math.round((performance.now() - started) / 100) / 10;
  saveOutcomes();
}

/**
 * live-rotate, after LAYER_MERGE_NOT_DURABLE: the kept layers are marked, the next snapshot refuses
 * the volume, then the repair docs/strategies.md gives (VM stopped: check the base, commit each kept
 * layer into it with O_DIRECT, remove the layer) and the VM starts again on its chain. Returns the
 * repaired layers.
 */
async function repairUnmerged(v: Volume, details: Record<string, unknown>): Promise<string[]> {
  const kept = details.keptLayers as string[];
  const base = details.base as string;
  expect(kept.length).toBeGreaterThan(0);
  for (const layer of kept) {
    const lv = await lvm.getVolume(pool.vg, layer.slice(`/dev/${pool.vg}/`.length));
    expect(lv?.tags, `${layer} is marked`).toContain('clvm-unmerged');
  }
  await expect(runJob(v, 'live-rotate', `refused-${v.counter}`)).rejects.toMatchObject({
    code: 'LAYER_MERGE_NOT_DURABLE',
  });
  const top = (await v.vm!.diskSources())[0]!;
  await v.vm!.quit();
  await sh('qemu-img', ['check', '-r', 'all', '-f', 'qcow2', base], { okExitCodes: [0, 3] });
  for (const layer of kept) {
    await sh('qemu-img', ['commit', '-t', 'none', '-f', 'qcow2', layer]);
    await sh('lvremove', ['-q', '-y', layer]);
  }
  v.vm = await BareQemu.start(top, work, { cacheDirect: CACHE_DIRECT });
  return kept;
}

/** fsync of `path` through a descriptor opened now: 'ok' or the error's code. */
async function fsyncNow(path: string): Promise<string> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
    return 'ok';
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? String(error);
  } finally {
    await handle.close();
  }
}
