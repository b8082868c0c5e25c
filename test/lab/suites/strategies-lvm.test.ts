// Snapshot strategies on an LVM pool, without a VM (inside the lab guest, real LVM).
//
// THE PLACE FOR THE ENGINE'S STRATEGIES ON AN LVM POOL: the last describe block runs the snapshot
// engine's createSnapshot (src/snapshot) with strategies offline and lvm-cow on `scratch.vg`, no VM.
//
// The blocks before it prove the building blocks those strategies are made of, with the adapters:
// a QCOW2 on an LV, `lvcreate --snapshot` of it, `qemu-img convert -U [-B parent]` of the snapshot to
// a store directory, the offline staging-LV swap, and copy-on-write overflow detection.
// Oracles: `qemu-img compare`, `qemu-img check`, `qemu-io read -P` (QEMU's, not ours).
import { mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostCommandError } from '../../../src/errors/index.js';
import { FilePool } from '../../../src/host/file-pool.js';
import { Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import type { JobContext } from '../../../src/jobs/types.js';
import { silentLogger } from '../../../src/observability/logger.js';
import { commandSchema } from '../../../src/protocol/index.js';
import { createSnapshot, type SnapshotDeps } from '../../../src/snapshot/index.js';
import { type ScratchVg, scratchVg, sh } from '../../support/lab/lab.js';
import { MemoryJournal } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const VIRTUAL = 32 * MiB;
const lvm = new Lvm({ timeoutMs: 60_000 });
const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 120_000 });
let scratch: ScratchVg;
let vg: string;
let store: string;

beforeAll(async () => {
  scratch = await scratchVg('stratvg');
  vg = scratch.vg;
  store = mkdtempSync(join(tmpdir(), 'store-'));
});
afterAll(async () => {
  rmSync(store, { recursive: true, force: true });
  await scratch?.cleanup();
});

/** qemu-io on a QCOW2 (writes as a guest would; -U reads of an image in use). */
async function qemuIo(image: string, command: string, opts: { readOnly?: boolean } = {}): Promise<void> {
  const args = opts.readOnly ? ['-r', '-U'] : [];
  await sh('qemu-io', [...args, '-f', 'qcow2', '-c', command, image]);
}

/** A QCOW2 volume on a new LV sized by qemu-img measure (rounded to extents by the adapter). */
async function qcow2Volume(name: string): Promise<string> {
  const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
  const lv = await lvm.createVolume({ vg, name, sizeBytes: fullyAllocatedBytes });
  await qemuImg.create({ path: lv.path, sizeBytes: VIRTUAL });
  return lv.path;
}

/** Exports like a strategy does: to a .part file, then rename to the final name. */
async function exportTo(source: string, name: string, parent?: string): Promise<string> {
  const part = join(store, `.${name}.part`);
  await qemuImg.convert({
    source,
    target: part,
    forceShare: true,
    ...(parent ? { backing: { file: parent, format: 'qcow2' as const } } : {}),
  });
  const final = join(store, name);
  renameSync(part, final);
  return final;
}

describe('copy-on-write export from an LVM snapshot (lvm-cow building blocks)', () => {
  let volume: string;

  it('exports a full snap-1 from an LVM snapshot while the origin keeps changing', async () => {
    volume = await qcow2Volume('vol-cow');
    await qemuIo(volume, 'write -P 0x11 0 1M');
    await qemuIo(volume, 'write -P 0x12 8M 1M');
    const cow = await lvm.createSnapshot({ vg, origin: 'vol-cow', name: 'vol-cow-s1', sizeBytes: 8 * MiB });
    // The VM goes on writing after the freeze point.
    await qemuIo(volume, 'write -P 0x21 0 1M');

    const snap1 = await exportTo(cow.path, 'snap-1');
    expect((await qemuImg.compare(cow.path, snap1, { forceShare: true })).identical).toBe(true);
    expect((await qemuImg.compare(volume, snap1, { forceShare: true })).identical).toBe(false);
    await qemuIo(snap1, 'read -P 0x11 0 1M', { readOnly: true });
    await qemuIo(snap1, 'read -P 0x12 8M 1M', { readOnly: true });
    expect((await qemuImg.check(snap1)).ok).toBe(true);
    expect((await lvm.getVolume(vg, 'vol-cow-s1'))?.snapshotInvalid).toBe(false);
    await lvm.removeVolume(vg, 'vol-cow-s1');
  });

  it('exports a delta snap-2 (-B snap-1, relative) after the volume is re-pointed at snap-1', async () => {
    // Stopped-VM re-point (header only: the data is the same); a running VM uses QMP change-backing-file.
    await qemuImg.rebase({
      image: volume,
      backing: { file: join(store, 'snap-1'), format: 'qcow2' },
      unsafe: true,
    });
    await qemuIo(volume, 'write -P 0x31 16M 1M');
    const cow = await lvm.createSnapshot({ vg, origin: 'vol-cow', name: 'vol-cow-s2', sizeBytes: 8 * MiB });
    await qemuIo(volume, 'write -P 0x41 16M 1M');

    const snap2 = await exportTo(cow.path, 'snap-2', 'snap-1');
    const chain = await qemuImg.chain(snap2);
    expect(chain.map((c) => c.backingFile)).toEqual(['snap-1', null]);
    expect((await qemuImg.compare(cow.path, snap2, { forceShare: true })).identical).toBe(true);
    await qemuIo(snap2, 'read -P 0x21 0 1M', { readOnly: true });
    await qemuIo(snap2, 'read -P 0x31 16M 1M', { readOnly: true });
    expect((await qemuImg.check(snap2)).ok).toBe(true);
    await lvm.removeVolume(vg, 'vol-cow-s2');
  });

  it('detects copy-on-write overflow (more writes than the CoW LV holds) and leaves the chain intact', async () => {
    const freeBefore = (await lvm.volumeGroup(vg)).freeBytes;
    const reference = join(store, 'reference-before-overflow');
    await qemuImg.convert({ source: volume, target: reference, forceShare: true });

    const cow = await lvm.createSnapshot({ vg, origin: 'vol-cow', name: 'vol-cow-s3', sizeBytes: 4 * MiB });
    // The "VM" writes 12 MiB during the export: more than the 4 MiB exception store.
    await qemuIo(volume, 'write -P 0x51 20M 12M');
    const overflowed = await lvm.getVolume(vg, 'vol-cow-s3');
    expect(overflowed).toMatchObject({ snapshotInvalid: true, snapshotPercent: 100 });
    const failed = await exportTo(cow.path, 'snap-3', 'snap-2').catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(HostCommandError);
    rmSync(join(store, '.snap-3.part'), { force: true });

    // Nothing else was harmed: the store chain and the volume read as before (plus the new writes).
    expect((await qemuImg.check(join(store, 'snap-2'))).ok).toBe(true);
    expect((await qemuImg.check(volume)).ok).toBe(true);
    await qemuIo(volume, 'read -P 0x51 20M 12M', { readOnly: true });
    await qemuIo(volume, 'write -P 0x00 20M 12M');
    expect((await qemuImg.compare(volume, reference)).identical).toBe(true);
    await lvm.removeVolume(vg, 'vol-cow-s3');
    expect((await lvm.volumeGroup(vg)).freeBytes).toBe(freeBefore);
  });
});

describe('offline staging-LV swap (offline building blocks)', () => {
  it('exports the active LV, puts a staging LV on the new snapshot and renames it to the volume name', async () => {
    const dir = mkdtempSync(join(store, 'offline-'));
    const active = await qcow2Volume('vol-off');
    await qemuIo(active, 'write -P 0x61 0 2M');
    await qemuIo(active, 'write -P 0x62 30M 2M');
    const reference = join(dir, 'reference');
    await qemuImg.convert({ source: active, target: reference });

    // 1. staging LV holding an empty overlay on the active LV.
    const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
    const staging = await lvm.createVolume({ vg, name: 'vol-off-staging', sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({ path: staging.path, backing: { file: active, format: 'qcow2' } });
    // 2. export the active LV (full: no parent yet), atomically named.
    const part = join(dir, '.snap-1.part');
    await qemuImg.convert({ source: active, target: part });
    const snap1 = join(dir, 'snap-1');
    renameSync(part, snap1);
    // 3. re-point the staging overlay at the export (header only: same data).
    await qemuImg.rebase({ image: staging.path, backing: { file: snap1, format: 'qcow2' }, unsafe: true });
    // 4. old active LV out, staging takes the volume's name: the volume path never changes.
    await lvm.removeVolume(vg, 'vol-off');
    await lvm.renameVolume(vg, 'vol-off-staging', 'vol-off');

    const chain = await qemuImg.chain(active);
    expect(chain.map((c) => c.filename)).toEqual([active, snap1]);
    expect((await qemuImg.compare(active, reference)).identical).toBe(true);
    expect((await qemuImg.check(active)).ok).toBe(true);
    await qemuIo(active, 'read -P 0x62 30M 2M', { readOnly: true });
    await lvm.removeVolume(vg, 'vol-off');
  });
});

describe('snapshot engine on an LVM pool, no VM (offline and lvm-cow)', () => {
  it('builds a chain whose every snapshot and the active volume match raw references', async () => {
    const storeRoot = mkdtempSync(join(tmpdir(), 'engine-store-'));
    const deps: SnapshotDeps = {
      qemuImg,
      store: new SnapshotStore({ roots: [storeRoot], qemuImg }),
      filePool: new FilePool({ roots: [storeRoot], qemuImg, timeoutMs: 60_000 }),
      lvm,
      // Never reached without a VM; constructing it runs nothing.
      libvirt: new Libvirt({ uri: 'qemu:///system', timeoutMs: 60_000 }),
      cowPollMs: 200,
    };
    const active = await qcow2Volume('vol-eng');
    const lvsBefore = (await lvm.listVolumes(vg)).map((v) => v.name).sort();
    const parents: string[] = [];
    const references: string[] = [];
    try {
      for (const [round, strategy] of [
        [1, 'offline'],
        [2, 'lvm-cow'],
        [3, 'offline'],
        [4, 'lvm-cow'],
      ] as const) {
        await qemuIo(active, `write -P 0x${(0x70 + round).toString(16)} ${round * 4}M 2M`);
        const reference = join(storeRoot, `ref-${round}.raw`);
        await qemuImg.convert({ source: active, target: reference, targetFormat: 'raw' });
        references.push(reference);
        const name = `snap-${round}`;
        const command = commandSchema.parse({
          id: `lab-${round}-${process.pid}`,
          type: 'snapshot.create',
          params: {
            volume: { kind: 'lvm', vg, lv: 'vol-eng' },
            vm: null,
            store: { root: storeRoot, dir: 'vol-eng' },
            parents,
            snapshot: name,
            options: { strategy, verify: 'full' },
          },
        });
        const ctx = {
          jobId: command.id,
          command,
          logger: silentLogger(),
          signal: new AbortController().signal,
          progress: () => {},
          journal: new MemoryJournal(),
          recovering: false,
        } as JobContext<'snapshot.create'>;
        const result = await createSnapshot(ctx, deps);
        expect(result.strategy.name).toBe(strategy);
        expect(result.activePath).toBe(active);
        parents.push(name);
        // Every snapshot so far still reads as at its moment; the volume reads the current data.
        for (const [i, ref] of references.entries()) {
          const snap = join(storeRoot, 'vol-eng', `snap-${i + 1}`);
          expect((await qemuImg.compare(snap, ref, { formatB: 'raw' })).identical).toBe(true);
          expect((await qemuImg.check(snap)).ok).toBe(true);
        }
        expect((await qemuImg.compare(active, reference, { formatB: 'raw' })).identical).toBe(true);
        // No temporary LV left behind.
        expect((await lvm.listVolumes(vg)).map((v) => v.name).sort()).toEqual(lvsBefore);
      }
      // The volume still takes writes across its whole virtual size (its LV was sized for a full image).
      await qemuIo(active, 'write -P 0x7f 0 32M');
      await qemuIo(active, 'read -P 0x7f 0 32M', { readOnly: true });
      expect((await qemuImg.check(active)).ok).toBe(true);
    } finally {
      await lvm.removeVolume(vg, 'vol-eng').catch(() => undefined);
      rmSync(storeRoot, { recursive: true, force: true });
    }
  });
});
