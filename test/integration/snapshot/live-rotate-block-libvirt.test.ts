import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resizeVolume } from '../../../src/snapshot/index.js';
import { infoOf } from '../../support/images.js';
import { guestWrite } from '../../support/libvirt-fixtures.js';
import { libvirtSuite } from '../../support/libvirt-suite.js';
import { SecondLibvirtd } from '../../support/libvirt2.js';
import { rotatingLoopLvmVolume } from '../../support/live-rotate-truth.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const { h, cleanup } = libvirtSuite('lrblock');
let second: SecondLibvirtd | null = null;
afterAll(async () => {
  await second?.stop();
}, 120_000);

describe('live-rotate leaves libvirt telling the truth (block devices named like LVs)', () => {
  it('after 5 rotations: domblkinfo, dumpxml, volume.resize, managedsave, save/restore, restart, migration and back; each next snapshot right', async () => {
    const size = 32 * MiB;
    const { vg, deps, dom, live, pool, r } = await rotatingLoopLvmVolume(h, cleanup, {
      label: 'lrblock',
      sizeBytes: size,
      referenceBytes: 64 * MiB,
    });

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
