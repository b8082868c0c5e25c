// live-rotate on real LVM (inside the lab guest): a QCOW2 volume on an LV, held by a running QEMU,
// rotated live six times with guest writes between the rotations. Each rotation puts a new thick
// LV `<vol>.lr-a|b` on top, exports the old top and commits it down into the base LV `<vol>`, then
// removes it: no LV is ever renamed. Checked after each: the snapshot and the live volume equal raw
// references (`qemu-img compare`), only the base and the active layer's LVs exist, QEMU holds
// exactly those two. Then `volume.resize` grows the running volume (lvextend of both LVs, then
// block_resize), the guest writes past the old end, the next snapshot has the new size; QEMU is
// stopped and started again on the chain and reads every byte right (through its own NBD export);
// the next snapshot after that is right too.
//
// The lab has no libvirt, so the VM is a bare QEMU driven over QMP as the Libvirt adapter
// (BareQemu, test/support/lab/bare-qemu.ts).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilePool } from '../../../src/host/file-pool.js';
import type { Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import { createSnapshot, resizeVolume, type SnapshotDeps } from '../../../src/snapshot/index.js';
import { BareQemu } from '../../support/lab/bare-qemu.js';
import { dmNode, heldDmDevices, type ScratchVg, scratchVg } from '../../support/lab/lab.js';
import { differsFromReference, ReferenceDisk, roundWrites } from '../../support/reference-images.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const lvm = new Lvm({ timeoutMs: 60_000 });
const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 120_000 });
let scratch: ScratchVg;
let vg: string;
let work: string;
let vm: BareQemu | null = null;

beforeAll(async () => {
  scratch = await scratchVg('lrvg');
  vg = scratch.vg;
  work = mkdtempSync(join(tmpdir(), 'lr-'));
});
afterAll(async () => {
  await vm?.kill();
  rmSync(work, { recursive: true, force: true });
  await scratch?.cleanup();
});

describe('live-rotate on an LVM volume held by a running QEMU', () => {
  it('rotates 6 times (new LVs, commit into the base LV), grows with volume.resize, survives a QEMU restart', async () => {
    let size = 32 * MiB;
    const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: size });
    const base = await lvm.createVolume({ vg, name: 'vol', sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({ path: base.path, sizeBytes: size });
    vm = await BareQemu.start(base.path, work);
    const store = join(work, 'store');
    const deps: SnapshotDeps = {
      qemuImg,
      store: new SnapshotStore({ roots: [store], qemuImg }),
      filePool: new FilePool({ roots: [work], qemuImg, timeoutMs: 60_000 }),
      lvm,
      libvirt: vm as unknown as Libvirt,
    };
    const live = await ReferenceDisk.create(join(work, 'ref-live.raw'), 64 * MiB);
    const names: string[] = [];
    const refs: ReferenceDisk[] = [];
    let current = base.path;
    let round = 0;

    const write = async (): Promise<void> => {
      round += 1;
      const writes = roundWrites(round, size);
      for (const w of writes) await vm!.guestWrite(w.pattern, w.offset, w.length);
      await live.apply(writes);
    };
    const lvNames = async () => (await lvm.listVolumes(vg)).map((lv) => lv.name).sort();
    const resize = (sizeBytes: number) => {
      const cmd = command('volume.resize', {
        volume: { kind: 'lvm', vg, lv: 'vol' },
        vm: 'lab-vm',
        sizeBytes,
      });
      return resizeVolume(jobContext(cmd, new FileStepJournal(join(work, `${cmd.id}.json`))), deps);
    };
    const snapshot = async (label: string): Promise<void> => {
      const started = performance.now();
      const name = `snap-${names.length + 1}`;
      // Any of the volume's names finds its active layer: the base name on even snapshots.
      const lv = names.length % 2 === 0 ? 'vol' : current.slice(`/dev/${vg}/`.length);
      const result = await createSnapshot(
        jobContext(
          command('snapshot.create', {
            volume: { kind: 'lvm', vg, lv },
            vm: 'lab-vm',
            store: { root: store, dir: 'vol' },
            parents: names,
            snapshot: name,
          }),
          new FileStepJournal(join(work, `${name}.json`)),
        ),
        deps,
      );
      expect(result.strategy.name, label).toBe('live-rotate');
      expect(result.snapshot.kind, `${label}: ${result.snapshot.fullReason}`).toBe(
        names.length === 0 ? 'full' : 'delta',
      );
      expect(result.snapshot.virtualSize).toBe(size);
      expect(result.activePath).toBe(current);
      current = result.volumePath!;
      expect(current).toBe(`/dev/${vg}/vol.lr-${names.length % 2 === 0 ? 'a' : 'b'}`);
      names.push(name);
      refs.push(await live.freeze(join(work, `ref-${name}.raw`)));
      expect(await differsFromReference(result.snapshot.path, refs.at(-1)!), label).toBeNull();
      expect((await qemuImg.check(result.snapshot.path)).ok).toBe(true);
      // Only the base LV and the active layer's LV are left; QEMU holds exactly those two.
      expect(await lvNames()).toEqual(['vol', current.slice(`/dev/${vg}/`.length)].sort());
      expect(heldDmDevices(vm!.pid)).toEqual([dmNode(base.path), dmNode(current)].sort());
      expect(await vm!.diskSources()).toEqual([current, base.path]);
      expect(await differsFromReference(current, live), label).toBeNull();
      console.log(
        `${label}: ${name} ${result.snapshot.kind}, ${Math.round(performance.now() - started)} ms`,
        `(steps: ${result.steps.map((st) => `${st.name} ${st.durationMs}`).join(', ')})`,
      );
    };

    for (let i = 0; i < 6; i++) {
      await write();
      await snapshot(`rotation ${i + 1}`);
    }

    // Grow the running volume: both LVs are lvextended for a fully allocated QCOW2 of the new size,
    // then QEMU's disk grows; the guest writes past the old end.
    const grown = 48 * MiB;
    const resized = await resize(grown);
    const needed = (await qemuImg.measure({ sizeBytes: grown })).fullyAllocatedBytes;
    expect(resized).toMatchObject({
      volumePath: current,
      previousVirtualSize: size,
      virtualSize: grown,
      through: 'libvirt',
    });
    expect(resized.lvs.map((l) => l.path).sort()).toEqual([base.path, current].sort());
    for (const lv of await lvm.listVolumes(vg)) expect(lv.sizeBytes).toBeGreaterThanOrEqual(needed);
    size = grown;
    expect(await vm.virtualSize()).toBe(size);
    await vm.guestWrite(0x7e, 40 * MiB, MiB);
    await live.apply([{ pattern: 0x7e, offset: 40 * MiB, length: MiB }]);
    expect(await vm.readBackDiffers(live)).toBeNull();
    // Shrinking is refused before anything changes.
    await expect(resize(16 * MiB)).rejects.toMatchObject({ code: 'VOLUME_SHRINK_REFUSED' });
    await write();
    await snapshot('after volume.resize');
    await write();
    await snapshot('the commit grows the base');
    expect((await qemuImg.info(base.path, { forceShare: true })).virtualSize).toBe(size);

    // QEMU stopped and started again on the chain (what a VM restart does): every byte reads right.
    await vm.quit();
    vm = await BareQemu.start(current, work);
    deps.libvirt = vm as unknown as Libvirt;
    expect(await vm.diskSources()).toEqual([current, base.path]);
    expect(await vm.readBackDiffers(live)).toBeNull();
    await write();
    await snapshot('after the restart');
    expect(await vm.readBackDiffers(live)).toBeNull();

    // Every snapshot still equals the disk of its moment; the chain in the store checks clean.
    for (const [i, name] of names.entries()) {
      expect(await differsFromReference(join(store, 'vol', name), refs[i]!), name).toBeNull();
    }
    await vm.quit();
    vm = null;
    expect((await qemuImg.check(current)).ok).toBe(true);
    expect((await qemuImg.check(base.path)).ok).toBe(true);
  }, 600_000); // six rotations and more on nested TCG (several minutes under load)
});
