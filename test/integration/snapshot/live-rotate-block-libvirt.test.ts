// Issue 15 on LVM, the libvirt side: live rotation of a `<disk type='block'>` whose layers are block
// devices named like LVs (/dev/<vg>/<lv>). This host has no device-mapper, so the LVs are loop
// devices behind LVM-like paths (test/support/loop-lvm.ts); real LVM is the lab suite's part
// (test/lab/suites/live-rotate-lvm.test.ts). One running type='qemu' domain, five rotations (libvirt
// switches with `stype=block`, commits into the base "LV", the old top's device is removed), then
// in sequence: domblkinfo + dumpxml → volume.resize (the LVs grow, then blockresize) →
// managedsave + start → save + restore → destroy + start → live migration to a second libvirtd and
// back. After each: libvirt describes the chain QEMU reads, the whole disk read back through QEMU
// equals a raw reference, only the base and the active layer's devices exist, the next snapshot is
// a delta equal to the disk of its moment.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resizeVolume } from '../../../src/snapshot/index.js';
import { infoOf } from '../../support/images.js';
import { guestWrite } from '../../support/libvirt-fixtures.js';
import { libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import { SecondLibvirtd } from '../../support/libvirt2.js';
import { RotationChecks } from '../../support/live-rotate-truth.js';
import { LoopLvm } from '../../support/loop-lvm.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const { h, cleanup } = libvirtSuite('lrblock');
let second: SecondLibvirtd | null = null;
afterAll(async () => {
  await second?.stop();
}, 120_000);

describe('live-rotate leaves libvirt telling the truth (block devices named like LVs)', () => {
  it('after 5 rotations: domblkinfo, dumpxml, volume.resize, managedsave, save/restore, restart, migration and back; each next snapshot right', async () => {
    const lvDir = join(h.base, 'lvs');
    await mkdir(lvDir);
    const vg = await LoopLvm.create(cleanup, lvDir, 1024 * MiB);
    const deps = { ...h.deps, lvm: vg.asLvm() };
    const size = 32 * MiB;
    const { fullyAllocatedBytes } = await h.deps.qemuImg.measure({ sizeBytes: size });
    await vg.createVolume({ vg: vg.vg, name: 'vol', sizeBytes: fullyAllocatedBytes });
    const { dom, live } = await runningVolume(h, cleanup, {
      label: 'lrblock',
      device: vg.pathOf('vol'),
      sizeBytes: size,
      reference: 'live.raw',
      referenceBytes: 64 * MiB,
    });
    const pool = {
      sourceAttribute: 'dev' as const,
      baseName: 'vol',
      pathOf: (name: string) => vg.pathOf(name),
      volumeRef: (name: string) => ({ kind: 'lvm' as const, vg: vg.vg, lv: name }),
      layers: async () => (await vg.listVolumes(vg.vg)).map((lv) => lv.name),
    };
    const r = new RotationChecks(h, deps, dom, live, pool, size);

    for (let i = 0; i < 5; i++) {
      await r.write();
      await r.snapshot(`rotation ${i + 1}`);
      expect(r.current).toBe(vg.pathOf(i % 2 === 0 ? 'vol.lr-a' : 'vol.lr-b'));
    }
    await r.libvirtIsTruthful();
    await r.readBack();

    // Grow the running volume with the agent's volume.resize: every LV of the chain grows for a
    // fully allocated QCOW2 of the new size, then libvirt grows the disk; the next commit grows the
    // base; the guest writes past the old end.
    const grown = 48 * MiB;
    const cmd = command('volume.resize', { volume: pool.volumeRef('vol'), vm: dom.name, sizeBytes: grown });
    const resized = await resizeVolume(
      jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))),
      deps,
    );
    expect(resized).toMatchObject({
      volumePath: r.current,
      previousVirtualSize: size,
      virtualSize: grown,
      through: 'libvirt',
    });
    const needed = (await h.deps.qemuImg.measure({ sizeBytes: grown })).fullyAllocatedBytes;
    expect(resized.lvs.map((lv) => lv.path).sort()).toEqual([r.base, r.current].sort());
    for (const lv of resized.lvs) expect(lv.sizeBytes).toBeGreaterThanOrEqual(needed);
    r.size = grown;
    await guestWrite(dom, 0x7e, 40 * MiB, MiB);
    await live.apply([{ pattern: 0x7e, offset: 40 * MiB, length: MiB }]);
    await r.afterOperation('volume.resize');
    await r.write();
    await r.snapshot('the commit grows the base');
    expect((await infoOf(r.base))['virtual-size']).toBe(grown);

    await r.throughLibvirtOperations(async () => {
      second = await SecondLibvirtd.start();
      return second;
    });

    await r.snapshotsStillRight();
  }, 400_000); // one domain through every operation in sequence
});
