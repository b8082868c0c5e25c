// The LVM adapter against real lvm2 + device-mapper (inside the lab guest).
// Oracles: the kernel's view of devices (blockdev --getsize64, the device node), qemu-io pattern reads.
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostCommandError, LvmVolumeInUseError, LvmVolumeNotFoundError } from '../../../src/errors/index.js';
import { Lvm } from '../../../src/host/lvm.js';
import { holdOpen, nbdUrl, type ScratchVg, scratchVg, sh } from '../../support/lab/lab.js';

const MiB = 1024 * 1024;
const lvm = new Lvm({ timeoutMs: 60_000 });
let scratch: ScratchVg;
let vg: string;

beforeAll(async () => {
  scratch = await scratchVg();
  vg = scratch.vg;
});
afterAll(async () => {
  await scratch?.cleanup();
});

async function kernelSize(path: string): Promise<number> {
  return Number((await sh('blockdev', ['--getsize64', path])).trim());
}

describe('Lvm on real LVM', () => {
  it('reads the lvm2 version', async () => {
    expect(await lvm.version()).toMatch(/^2\.03\.\d+$/);
  });

  it('reports the VG and accounts its free space per extent', async () => {
    const before = await lvm.volumeGroup(vg);
    expect(before.extentSizeBytes).toBe(4 * MiB);
    expect(before.sizeBytes).toBeGreaterThan(3000 * MiB);
    expect(before.freeBytes).toBe(before.sizeBytes);
    expect(before.shared).toBe(false);

    // 10 MiB + 1 byte rounds up to 3 extents.
    const created = await lvm.createVolume({
      vg,
      name: 'rounded',
      sizeBytes: 10 * MiB + 1,
      tags: ['kind:qcow2'],
    });
    expect(created).toMatchObject({
      sizeBytes: 12 * MiB,
      activeHere: true,
      open: false,
      tags: ['kind:qcow2'],
    });
    expect(await kernelSize(created.path)).toBe(12 * MiB);
    const after = await lvm.volumeGroup(vg);
    expect(before.freeBytes - after.freeBytes).toBe(12 * MiB);

    await lvm.removeVolume(vg, 'rounded');
    expect(await lvm.getVolume(vg, 'rounded')).toBeUndefined();
    expect(existsSync(created.path)).toBe(false);
    expect((await lvm.volumeGroup(vg)).freeBytes).toBe(before.freeBytes);
  });

  it('lists volumes, finds names with dots and pluses, and says when a VG is missing', async () => {
    await lvm.createVolume({ vg, name: 'a.b+c', sizeBytes: 4 * MiB });
    await lvm.createVolume({ vg, name: 'a.b', sizeBytes: 4 * MiB });
    expect((await lvm.getVolume(vg, 'a.b+c'))?.name).toBe('a.b+c');
    expect((await lvm.listVolumes(vg, 'a.b')).map((v) => v.name)).toEqual(['a.b']);
    expect((await lvm.listVolumes(vg)).map((v) => v.name)).toEqual(expect.arrayContaining(['a.b', 'a.b+c']));
    expect(await lvm.getVolume(vg, 'nothere')).toBeUndefined();
    const missingVg = await lvm.getVolume('novg0', 'a.b').catch((e: unknown) => e);
    expect(missingVg).toBeInstanceOf(HostCommandError);
    expect(missingVg).toMatchObject({ kind: 'not-found' });
    await expect(lvm.removeVolume(vg, 'nothere')).rejects.toBeInstanceOf(LvmVolumeNotFoundError);
    await lvm.removeVolume(vg, 'a.b+c');
    await lvm.removeVolume(vg, 'a.b');
  });

  it('refuses an LV larger than the free space as no-space', async () => {
    const { freeBytes } = await lvm.volumeGroup(vg);
    await expect(lvm.createVolume({ vg, name: 'huge', sizeBytes: freeBytes + MiB })).rejects.toMatchObject({
      kind: 'no-space',
    });
  });

  it('activates and deactivates', async () => {
    const lv = await lvm.createVolume({ vg, name: 'act', sizeBytes: 4 * MiB });
    await lvm.activate(vg, 'act', 'off');
    expect(await lvm.getVolume(vg, 'act')).toMatchObject({
      activeHere: false,
      attr: expect.stringMatching(/^-wi-{7}$/),
    });
    expect(existsSync(lv.path)).toBe(false);
    await lvm.activate(vg, 'act', 'exclusive');
    expect((await lvm.getVolume(vg, 'act'))?.activeHere).toBe(true);
    expect(await kernelSize(lv.path)).toBe(4 * MiB);
    await lvm.activate(vg, 'act', 'off');
    await lvm.activate(vg, 'act', 'local');
    expect((await lvm.getVolume(vg, 'act'))?.activeHere).toBe(true);
    await lvm.removeVolume(vg, 'act');
  });

  it('renames an LV held open (the holder keeps writing to it) and refuses to remove it while open', async () => {
    const lv = await lvm.createVolume({ vg, name: 'held', sizeBytes: 8 * MiB });
    const holder = await holdOpen(lv.path);
    try {
      expect(await lvm.getVolume(vg, 'held')).toMatchObject({ open: true, activeHere: true });
      const refused = await lvm.removeVolume(vg, 'held').catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(LvmVolumeInUseError);
      // lvm2's own check agrees (the adapter refused before calling it).
      await sh('lvremove', ['--yes', `${vg}/held`], { okExitCodes: [5] });
      expect(await lvm.getVolume(vg, 'held')).toBeDefined();

      await lvm.renameVolume(vg, 'held', 'held-frozen');
      expect(await lvm.getVolume(vg, 'held')).toBeUndefined();
      expect(await lvm.getVolume(vg, 'held-frozen')).toMatchObject({ open: true });
      // Written through the holder after the rename: lands on the renamed LV.
      await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 64k', nbdUrl(holder.socket)]);
      await sh('qemu-io', ['-r', '-U', '-f', 'raw', '-c', 'read -P 0x5a 1M 64k', `/dev/${vg}/held-frozen`]);
    } finally {
      await holder.stop();
    }
    expect((await lvm.getVolume(vg, 'held-frozen'))?.open).toBe(false);
    await lvm.removeVolume(vg, 'held-frozen');
  });

  it('takes a copy-on-write snapshot that keeps the old data and reports its fill level', async () => {
    const origin = await lvm.createVolume({ vg, name: 'orig', sizeBytes: 16 * MiB });
    await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 2M', origin.path]);
    const snap = await lvm.createSnapshot({ vg, origin: 'orig', name: 'orig-cow', sizeBytes: 6 * MiB });
    expect(snap).toMatchObject({
      origin: 'orig',
      sizeBytes: 8 * MiB,
      snapshotInvalid: false,
      segType: 'linear',
    });
    const before = snap.snapshotPercent ?? -1;
    expect(before).toBeGreaterThanOrEqual(0);
    expect((await lvm.getVolume(vg, 'orig'))?.attr[0]).toBe('o');

    await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 0 2M', origin.path]);
    await sh('qemu-io', ['-r', '-U', '-f', 'raw', '-c', 'read -P 0x11 0 2M', snap.path]);
    await sh('qemu-io', ['-r', '-U', '-f', 'raw', '-c', 'read -P 0x22 0 2M', origin.path]);
    const filled = await lvm.getVolume(vg, 'orig-cow');
    // 2 MiB of 8 MiB copied away, plus exception-store metadata.
    expect(filled?.snapshotPercent).toBeGreaterThan(before + 20);
    expect(filled?.snapshotPercent).toBeLessThan(40);

    await lvm.removeVolume(vg, 'orig-cow');
    expect((await lvm.getVolume(vg, 'orig'))?.attr[0]).toBe('-');
    await lvm.removeVolume(vg, 'orig');
  });
});
