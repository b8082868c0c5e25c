// The snapshot store on a disk with a volatile write cache: every flush/FUA point of real jobs.
//
// A VM kill (the power-cut matrix) loses only what the guest kernel had not sent; the lab's disks
// keep every write QEMU received. A real disk with a write cache can also lose writes the kernel
// sent but did not flush. Here the store's ext4 (with its journal, default mount options) sits on a
// dm-log-writes device, which logs each write only once a later flush has completed (FUA writes when
// they complete). Offline snapshot jobs of a file-pool QCOW2 volume (a full snap-1, then with
// `lab_logwrites=full` a delta snap-2) run on it. Then the log (test/support/lab/log-writes.ts) is replayed onto a copy of the
// store as it was before the jobs, stopping after EVERY flush/FUA entry: the disk as it is if the
// power fails right after that request. At each point the replayed disk is mounted through a
// throwaway dm snapshot (ext4 journal recovery, as at boot) and checked:
//   - e2fsck -fn finds the recovered file system clean;
//   - every file under a snapshot name is one of the published snapshots, passes `qemu-img check`
//     and equals its raw reference (`qemu-img compare` through its chain): no partly written
//     snapshot is ever visible under its final name; `.snap-N.part` files may be there;
//   - a snapshot whose publish had returned (a mark in the log) is there at every later point;
//   - after the last point every snapshot is there and no part file is left.
// docs/reliability.md "A disk that loses unflushed writes" has the results.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilePool } from '../../../src/host/file-pool.js';
import { Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
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
const STORE_BYTES = 96 * MiB;
const VIRTUAL = 16 * MiB;
/**
 * `lab_logwrites=full` (kernel argument → environment; `npm run test:logwrites`): two jobs, a full
 * snap-1 and a delta snap-2, every point checked (45 points, ~7 min at host load average 17). By
 * default, inside `npm test`: snap-1 only, its own points (between its start and done marks) and the
 * last point checked (32 points in its log, 24 distinct states, ~3 min with all of them at load 12).
 */
const FULL = process.env.lab_logwrites === 'full';
const SNAPSHOTS = FULL ? ['snap-1', 'snap-2'] : ['snap-1'];

const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 120_000 });
let disks: ReplayDisks;
let logged: LoggedDevice | undefined;
let work: string;
let mountPoint: string;
const STORE_DIR = 'vol';
/** The published snapshots and their references, in publish order. */
const references = new Map<string, ReferenceDisk>();

interface PointResult {
  point: number;
  entry: number;
  flags: number;
  changed: boolean;
  /** Mounted and checked (false: the same disk as the previous checked point, or, in the sample, outside the job). */
  checked: boolean;
  visible: string[];
  parts: string[];
  ms: number;
}
const results: PointResult[] = [];
let summary: ReplaySummary | undefined;

beforeAll(async () => {
  disks = await ReplayDisks.claim('lw', STORE_BYTES);
  work = mkdtempSync(join(tmpdir(), 'logwrites-'));
  mountPoint = join(work, 'store');
  mkdirSync(mountPoint);
  mkdirSync(join(work, 'pool'));
});

afterAll(async () => {
  if (results.length > 0) {
    mkdirSync('.lab-cache', { recursive: true });
    writeFileSync(
      join('.lab-cache', 'log-writes.json'),
      `${JSON.stringify({ mode: FULL ? 'full' : 'sample', summary, points: results }, null, 1)}\n`,
    );
  }
  await sh('umount', [mountPoint], { okExitCodes: [0, 1] }).catch(() => undefined);
  await logged?.remove();
  await disks?.release();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Whether a job was running at a point: its last `start:` mark has no `done:` mark after it. */
function inJob(marks: string[]): boolean {
  const start = marks.findLastIndex((m) => m.startsWith('start:'));
  return start >= 0 && !marks.slice(start).includes(`done:${marks[start]!.slice('start:'.length)}`);
}

async function mark(name: string): Promise<void> {
  await logged?.mark(name);
}

/** The job layer's journal in memory; a mark goes into the log once publish has returned. */
class MarkingJournal implements StepJournal {
  private facts: Record<string, unknown> = {};
  private marked = false;
  constructor(private readonly snapshot: string) {}
  read<T extends Record<string, unknown>>(): T {
    return structuredClone(this.facts) as T;
  }
  async write(patch: Record<string, unknown>): Promise<void> {
    this.facts = { ...this.facts, ...structuredClone(patch) };
    const record = this.facts.engine as EngineRecord | undefined;
    if (!this.marked && record?.steps.publish === 'done') {
      this.marked = true;
      await mark(`published:${this.snapshot}`);
    }
  }
}

function deps(): SnapshotDeps {
  return {
    qemuImg,
    store: new SnapshotStore({ roots: [mountPoint], qemuImg }),
    filePool: new FilePool({ roots: [work], qemuImg, timeoutMs: 60_000 }),
    lvm: new Lvm({ timeoutMs: 60_000 }),
    libvirt: new Libvirt({ uri: 'qemu:///system', timeoutMs: 30_000 }), // never reached: no VM
  };
}

describe(`the store on dm-log-writes, replayed to every flush/FUA point (${FULL ? 'full' : 'sample'})`, () => {
  it(`records ${SNAPSHOTS.length} offline job(s) on the logged store`, async () => {
    // Journal and inode tables written now, so no lazy-init thread writes during the jobs.
    await sh('mke2fs', [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-m',
      '0',
      '-E',
      'nodiscard,lazy_itable_init=0,lazy_journal_init=0',
      disks.data.path,
    ]);
    // The replay starts from this state.
    await sh('dd', [`if=${disks.data.path}`, `of=${disks.replica.path}`, 'bs=1M', 'conv=fsync']);
    logged = await LoggedDevice.create('lwstore', disks.data.path, disks.log.path, STORE_BYTES);
    await sh('mount', ['-t', 'ext4', logged.path, mountPoint]);
    await mark('mounted');

    const volume = join(work, 'pool', 'vol.qcow2');
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', volume, String(VIRTUAL)]);
    const live = await ReferenceDisk.create(join(work, 'vol.raw'), VIRTUAL);
    const parents: string[] = [];
    for (const [round, name] of SNAPSHOTS.entries()) {
      // 3 MiB somewhere new, in the volume and in its reference.
      const pattern = 17 + round * 40;
      const offset = (2 + round * 5) * MiB;
      await sh('qemu-io', ['-f', 'qcow2', '-c', `write -q -P ${pattern} ${offset} ${3 * MiB}`, volume]);
      await live.apply([{ pattern, offset, length: 3 * MiB }]);
      references.set(name, await live.freeze(join(work, `${name}.raw`)));
      await mark(`start:${name}`);
      const cmd = command('snapshot.create', {
        volume: { kind: 'file', pool: join(work, 'pool'), file: 'vol.qcow2' },
        vm: null,
        store: { root: mountPoint, dir: STORE_DIR },
        parents,
        snapshot: name,
        options: { strategy: 'offline', verify: 'metadata' },
      });
      const result = await createSnapshot(jobContext(cmd, new MarkingJournal(name)), deps());
      expect(result.strategy.name).toBe('offline');
      await mark(`done:${name}`);
      parents.push(name);
      expect(await differsFromReference(join(mountPoint, STORE_DIR, name), references.get(name)!)).toBeNull();
    }
    await sh('umount', [mountPoint]);
    await logged.remove();
    logged = undefined;
  }, 600_000);

  it('every flush/FUA point: the recovered store shows only complete snapshots', async () => {
    expect(logged, 'the jobs were recorded').toBeUndefined();
    let dirty = false;
    const snapName = uniqueName('lwsnap');
    const checkPoint = async (point: ReplayPoint): Promise<void> => {
      const started = performance.now();
      const result: PointResult = {
        point: point.ordinal,
        entry: point.entry.index,
        flags: point.entry.flags,
        changed: point.changed,
        checked: false,
        visible: [],
        parts: [],
        ms: 0,
      };
      results.push(result);
      dirty ||= point.changed;
      // Nothing written since the previous checked point: the same disk, already checked. The
      // sample checks only the job's points (between its start and done marks) and the last one.
      if (!dirty || !(FULL || point.last || inJob(point.marks))) return;
      dirty = false;
      result.checked = true;
      // A throwaway view of the replayed disk: journal recovery and the mount write to the COW only.
      await withThrowawayView(snapName, disks.replica.path, disks.cow.path, STORE_BYTES, async (view) => {
        await sh('mount', ['-t', 'ext4', view, mountPoint]);
        try {
          const dir = join(mountPoint, STORE_DIR);
          const files = existsSync(dir) ? readdirSync(dir).sort() : [];
          result.visible = files.filter((f) => !f.startsWith('.'));
          result.parts = files.filter((f) => f.startsWith('.'));
          const where = `point ${point.ordinal} (log entry ${point.entry.index})`;
          expect(
            result.parts.every((f) => /^\.snap-\d+\.part$/.test(f)),
            `${where}: ${files}`,
          ).toBe(true);
          for (const name of result.visible) {
            const reference = references.get(name);
            expect(reference, `${where}: unexpected file ${name}`).toBeDefined();
            const path = join(dir, name);
            expect((await qemuImg.check(path)).ok, `${where}: qemu-img check ${name}`).toBe(true);
            expect(await differsFromReference(path, reference!), `${where}: ${name}`).toBeNull();
          }
          // Durable once published: publish fsyncs the file and the directory before it returns.
          for (const m of point.marks.filter((m) => m.startsWith('published:'))) {
            expect(result.visible, `${where}: ${m}`).toContain(m.slice('published:'.length));
          }
        } finally {
          await sh('umount', [mountPoint]);
        }
        // The file system journal recovery left (e2fsck exits 0 when clean).
        await sh('e2fsck', ['-f', '-n', view]);
      });
      result.ms = Math.round(performance.now() - started);
    };
    summary = await replayEveryCrashPoint(disks.log.path, disks.replica.path, checkPoint);
    const checked = results.filter((r) => r.checked);
    console.log(
      replayReport(
        'log-writes replay',
        summary,
        checked.length,
        checked.map(
          (r) =>
            `point ${String(r.point).padStart(3)} entry ${String(r.entry).padStart(5)} flags ${r.flags} ` +
            `visible [${r.visible.join(',')}] parts [${r.parts.join(',')}] ${r.ms} ms`,
        ),
      ),
    );
    expect(summary.marks).toEqual(
      expect.arrayContaining([...SNAPSHOTS.map((s) => `published:${s}`), 'dm-log-writes-end']),
    );
    expect(summary.points).toBeGreaterThan(0);
    // Where the jobs ended: both snapshots there, no part file left.
    const last = checked.at(-1)!;
    expect(last.point).toBe(summary.points);
    expect(last.visible).toEqual(SNAPSHOTS);
    expect(last.parts).toEqual([]);
  }, 900_000);
});
