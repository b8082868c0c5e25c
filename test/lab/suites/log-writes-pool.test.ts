// The LVM pool on a disk with a volatile write cache: every flush/FUA point of an offline job on LVM.
//
// The same method as log-writes.test.ts (the store), for the pool: the VG's only PV is a
// dm-log-writes device, an offline snapshot of an LV volume runs on it (create-staging, export,
// publish, verify, rebase-staging, retire-active, promote-staging, remove-retired: LVM metadata
// writes and QCOW2 header writes), and the log is replayed onto a copy of the PV as it was before
// the job, stopping after EVERY flush/FUA entry. At each point the VG is activated from a throwaway
// dm snapshot of the replayed copy and checked:
//   - LVM reads its metadata (`lvs`);
//   - the volume is there under its name, or under its retired name (recovery renames it back);
//   - every LV holding a QCOW2 header passes `qemu-img check`, its backing chain opens, and it
//     reads exactly as the volume did before the job (`qemu-img compare` with a raw reference).
// The PV's label is on several devices (the data slice under the log, the replayed copy and its
// snapshot): this process's lvm calls see only one, through its own lvm.conf (LVM_SYSTEM_DIR with a
// global_filter), and the suite runs only in `npm run test:logwrites` (vitest.lab.config.ts), where
// no other lab suite scans for PVs beside it.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilePool } from '../../../src/host/file-pool.js';
import { Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { readQcow2Header } from '../../../src/host/qcow2-header.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import type { StepJournal } from '../../../src/jobs/types.js';
import { createSnapshot, type EngineRecord, type SnapshotDeps } from '../../../src/snapshot/index.js';
import { sh, uniqueName } from '../../support/lab/lab.js';
import { type ReplayPoint, type ReplaySummary, replayEveryCrashPoint } from '../../support/lab/log-writes.js';
import {
  LoggedDevice,
  ReplayDisks,
  replayReport,
  withThrowawayView,
} from '../../support/lab/log-writes-devices.js';
import { differsFromReference, ReferenceDisk } from '../../support/reference-images.js';
import { command, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const PV_BYTES = 96 * MiB;
const VIRTUAL = 16 * MiB;

const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 120_000 });
let disks: ReplayDisks;
let logged: LoggedDevice | undefined;
let work: string;
let storeRoot: string;
let startState: string;
let reference: ReferenceDisk;
let plan: { stagingName: string; retiredName: string } | undefined;
const vg = uniqueName('lwpvg');
const VOLUME = 'vol';

// This process's lvm: the lab's lvm.conf, seeing one device only, no hints, no metadata backups.
const lvmDir = mkdtempSync(join(tmpdir(), 'lwp-lvm-'));
process.env.LVM_SYSTEM_DIR = lvmDir;
function lvmSees(device: string): void {
  const lab = readFileSync(new URL('../guest/lvm.conf', import.meta.url), 'utf8');
  const conf = lab.replace(
    'devices {',
    `devices {\n\tglobal_filter = [ "a|^${device}$|", "r|.*|" ]\n\thints = "none"`,
  );
  writeFileSync(join(lvmDir, 'lvm.conf'), `${conf}\nbackup {\n\tbackup = 0\n\tarchive = 0\n}\n`);
}

interface PointResult {
  point: number;
  entry: number;
  flags: number;
  /** The job's last step mark before the point (`<step>:<started|done>`). */
  marks: string[];
  checked: boolean;
  /** The point comes after the job returned (its `done:snap-1` mark). */
  afterDone: boolean;
  lvs: string[];
  /** What the staging LV held, if it existed: no header, a QCOW2 that checks, or one that does not. */
  staging?: 'zeros' | 'qcow2' | 'incomplete';
  ms: number;
}

async function stagingState(path: string): Promise<'zeros' | 'qcow2' | 'incomplete'> {
  if ((await readQcow2Header(path)) === null) return 'zeros';
  return (await qemuImg.check(path)).ok ? 'qcow2' : 'incomplete';
}
const results: PointResult[] = [];
let summary: ReplaySummary | undefined;
let finalLvs: string[] = [];

beforeAll(async () => {
  disks = await ReplayDisks.claim('lwp', PV_BYTES);
  // The replica must not show the PV before the replay writes it: zero its label area.
  await sh('dd', ['if=/dev/zero', `of=${disks.replica.path}`, 'bs=1M', 'count=1', 'conv=fsync']);
  work = mkdtempSync(join(tmpdir(), 'logwrites-pool-'));
  storeRoot = join(work, 'store');
  mkdirSync(storeRoot);
  startState = join(work, 'pv-start.img');
});

afterAll(async () => {
  if (results.length > 0) {
    mkdirSync('.lab-cache', { recursive: true });
    writeFileSync(
      join('.lab-cache', 'log-writes-pool.json'),
      `${JSON.stringify({ summary, plan, points: results, finalLvs }, null, 1)}\n`,
    );
  }
  await sh('vgchange', ['-q', '-an', vg], { okExitCodes: [0, 5] }).catch(() => undefined);
  await logged?.remove();
  await disks?.release();
  if (work) rmSync(work, { recursive: true, force: true });
  rmSync(lvmDir, { recursive: true, force: true });
  delete process.env.LVM_SYSTEM_DIR;
});

async function mark(name: string): Promise<void> {
  await logged?.mark(name);
}

/** The job layer's journal in memory; keeps the plan (the staging and retired LV names). */
class PlanJournal implements StepJournal {
  private facts: Record<string, unknown> = {};
  read<T extends Record<string, unknown>>(): T {
    return structuredClone(this.facts) as T;
  }
  async write(patch: Record<string, unknown>): Promise<void> {
    this.facts = { ...this.facts, ...structuredClone(patch) };
    const record = this.facts.engine as
      | EngineRecord<{ stagingName: string; retiredName: string }>
      | undefined;
    if (record?.plan) plan = { stagingName: record.plan.stagingName, retiredName: record.plan.retiredName };
    // Each step's start and end in the log: where a point lies in the job.
    for (const [step, state] of Object.entries(record?.steps ?? {})) {
      if (this.seen[step] !== state) await mark(`${step}:${state}`);
      this.seen[step] = state;
    }
  }
  private readonly seen: Record<string, string> = {};
}

describe('the LVM pool on dm-log-writes, replayed to every flush/FUA point', () => {
  it('records an offline job of an LV volume on the logged PV', async () => {
    // The VG, the volume and its data first, on the data slice: the replay's starting state.
    lvmSees(disks.data.path);
    await sh('pvcreate', ['-q', '-y', '-ff', disks.data.path]);
    await sh('vgcreate', ['-q', '-s', '4m', vg, disks.data.path]);
    const lvm = new Lvm({ timeoutMs: 60_000 });
    const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
    const volume = await lvm.createVolume({ vg, name: VOLUME, sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({ path: volume.path, sizeBytes: VIRTUAL });
    await sh('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x5a ${2 * MiB} ${3 * MiB}`, volume.path]);
    reference = await ReferenceDisk.create(join(work, 'vol.raw'), VIRTUAL);
    await reference.apply([{ pattern: 0x5a, offset: 2 * MiB, length: 3 * MiB }]);
    await sh('vgchange', ['-q', '-an', vg]);
    await sh('dd', [`if=${disks.data.path}`, `of=${startState}`, 'bs=1M', 'conv=fsync']);

    // From here every write to the PV goes through the log.
    logged = await LoggedDevice.create('lwpool', disks.data.path, disks.log.path, PV_BYTES);
    lvmSees(logged.path);
    await sh('vgchange', ['-q', '-ay', vg]);
    await mark('start:snap-1');
    const cmd = command('snapshot.create', {
      volume: { kind: 'lvm', vg, lv: VOLUME },
      vm: null,
      store: { root: storeRoot, dir: 'vol' },
      parents: [],
      snapshot: 'snap-1',
      options: { strategy: 'offline', verify: 'metadata' },
    });
    const deps: SnapshotDeps = {
      qemuImg,
      store: new SnapshotStore({ roots: [storeRoot], qemuImg }),
      filePool: new FilePool({ roots: [work], qemuImg, timeoutMs: 60_000 }),
      lvm,
      libvirt: new Libvirt({ uri: 'qemu:///system', timeoutMs: 30_000 }), // never reached: no VM
    };
    const result = await createSnapshot(jobContext(cmd, new PlanJournal()), deps);
    expect(result.strategy.name).toBe('offline');
    await mark('done:snap-1');
    expect(await differsFromReference(volume.path, reference)).toBeNull();
    await sh('vgchange', ['-q', '-an', vg]);
    await logged.remove();
    logged = undefined;
    expect(plan, 'the job journaled its plan').toBeDefined();
  }, 600_000);

  it('every flush/FUA point: the volume opens and reads as before the job', async () => {
    expect(logged, 'the job was recorded').toBeUndefined();
    await sh('dd', [`if=${startState}`, `of=${disks.replica.path}`, 'bs=1M', 'conv=fsync']);
    const snapName = uniqueName('lwpsnap');
    const snapPath = `/dev/mapper/${snapName}`;
    lvmSees(snapPath);
    // The VG activated from a throwaway view of the replica (whatever lvm or a check writes goes to
    // the COW) for `check`, then deactivated and the view removed.
    const onReplica = (check: () => Promise<void>): Promise<void> =>
      withThrowawayView(snapName, disks.replica.path, disks.cow.path, PV_BYTES, async () => {
        await sh('vgchange', ['-q', '-ay', vg]);
        try {
          await check();
        } finally {
          await sh('vgchange', ['-q', '-an', vg]);
        }
      });
    const lvNames = async (): Promise<string[]> => {
      const report = JSON.parse(await sh('lvs', ['--reportformat', 'json', '-o', 'lv_name', vg])) as {
        report: Array<{ lv: Array<{ lv_name: string }> }>;
      };
      return report.report[0]!.lv.map((l) => l.lv_name).sort();
    };
    let dirty = true; // the starting state is checked at the first point
    const checkPoint = async (point: ReplayPoint): Promise<void> => {
      const started = performance.now();
      const result: PointResult = {
        point: point.ordinal,
        entry: point.entry.index,
        flags: point.entry.flags,
        marks: point.marks.filter((m) => m.includes(':')).slice(-1),
        checked: false,
        afterDone: point.marks.includes('done:snap-1'),
        lvs: [],
        ms: 0,
      };
      results.push(result);
      dirty ||= point.changed;
      if (!dirty) return;
      dirty = false;
      result.checked = true;
      const where = `point ${point.ordinal} (log entry ${point.entry.index})`;
      await onReplica(async () => {
        result.lvs = await lvNames();
        expect(
          result.lvs.includes(VOLUME) || result.lvs.includes(plan!.retiredName),
          `${where}: the volume by its name or its retired name: ${result.lvs}`,
        ).toBe(true);
        for (const lv of result.lvs) {
          const path = `/dev/${vg}/${lv}`;
          // The staging LV counts once it is the volume (promote: the point of no return); before
          // that a rollback removes it, whatever it holds (created, half-written by qemu-img create).
          if (lv === plan!.stagingName) {
            result.staging = await stagingState(path);
            continue;
          }
          const check = await qemuImg.check(path);
          expect(check.ok, `${where}: qemu-img check ${lv}: ${JSON.stringify(check)}`).toBe(true);
          expect(await differsFromReference(path, reference), `${where}: ${lv}`).toBeNull();
        }
      });
      result.ms = Math.round(performance.now() - started);
    };
    summary = await replayEveryCrashPoint(disks.log.path, disks.replica.path, checkPoint);
    const checked = results.filter((r) => r.checked);
    console.log(
      replayReport(
        'log-writes replay (pool)',
        summary,
        checked.length,
        checked.map(
          (r) =>
            `point ${String(r.point).padStart(3)} entry ${String(r.entry).padStart(5)} after ${r.marks.join('')} ` +
            `lvs [${r.lvs.join(',')}]${r.staging ? ` staging ${r.staging}` : ''} ${r.ms} ms`,
        ),
      ),
    );
    expect(summary.marks).toEqual(expect.arrayContaining(['done:snap-1', 'dm-log-writes-end']));
    expect(summary.points).toBeGreaterThan(0);
    // P5: the adapter flushes the PV after each LVM change, so the job's renames and removal are on
    // the disk when it returns: its last point already has the volume alone (without the flush the
    // last point still had the names from before the swap).
    const lastInJob = checked.filter((r) => !r.afterDone).at(-1);
    expect(lastInJob?.lvs, 'the LVs at the last flush point before the job returned').toEqual([VOLUME]);
    // The whole log, unflushed writes too (the disk with no power loss): where the job ended, the
    // volume alone (the staging LV promoted under its name, the retired one gone), on snap-1.
    await onReplica(async () => {
      finalLvs = await lvNames();
      expect(finalLvs).toEqual([VOLUME]);
      const path = `/dev/${vg}/${VOLUME}`;
      expect((await qemuImg.check(path)).ok).toBe(true);
      expect(await differsFromReference(path, reference)).toBeNull();
    });
  }, 900_000);
});
