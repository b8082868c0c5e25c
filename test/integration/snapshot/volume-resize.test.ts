// volume.resize on a file pool: a running type='qemu' domain grows through libvirt (the guest sees
// the new capacity and writes past the old end; the whole disk read back through QEMU equals a raw
// reference), an unchanged size changes nothing, shrinking is refused, a stopped domain's volume
// grows with qemu-img and starts with the new size. (LVM: the block-device suite and the lab.)
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { resizeVolume } from '../../../src/snapshot/index.js';
import { guestWrite, virsh } from '../../support/libvirt-fixtures.js';
import { libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import { rawDiffers } from '../../support/live-rotate-truth.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';
import { readBackThroughQemu } from '../../support/vm-watch.js';

const MiB = 1024 * 1024;
const { h, cleanup } = libvirtSuite('vresize');

describe('volume.resize (file pool)', () => {
  it('grows a running volume through libvirt and a stopped one with qemu-img; refuses to shrink', async () => {
    const { active, dom, live } = await runningVolume(h, cleanup, {
      label: 'vresize',
      file: 'vol.qcow2',
      sizeBytes: 32 * MiB,
      reference: 'live.raw',
      referenceBytes: 64 * MiB,
    });
    const resize = (sizeBytes: number) => {
      const volume = { kind: 'file', pool: h.pool, file: 'vol.qcow2' };
      const cmd = command('volume.resize', { volume, vm: dom.name, sizeBytes });
      return resizeVolume(jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))), h.deps);
    };
    const capacity = async () =>
      Number(/Capacity:\s+(\d+)/.exec(await virsh(['domblkinfo', dom.name, 'vda']))![1]);
    const readsRight = async (size: number) => {
      const out = join(h.base, `readback-${size}.raw`);
      await readBackThroughQemu(dom.name, out, size);
      expect(await rawDiffers(out, live.path)).toBeNull();
    };

    expect(await resize(48 * MiB)).toEqual({
      volumePath: active,
      previousVirtualSize: 32 * MiB,
      virtualSize: 48 * MiB,
      through: 'libvirt',
      lvs: [],
    });
    expect(await capacity()).toBe(48 * MiB);
    await guestWrite(dom, 0x5c, 44 * MiB, MiB);
    await live.apply([{ pattern: 0x5c, offset: 44 * MiB, length: MiB }]);
    await readsRight(48 * MiB);

    expect((await resize(48 * MiB)).through).toBe('unchanged');
    await expect(resize(16 * MiB)).rejects.toMatchObject({ code: 'VOLUME_SHRINK_REFUSED' });
    expect(() =>
      command('volume.resize', {
        volume: { kind: 'file', pool: h.pool, file: 'vol.qcow2' },
        sizeBytes: 1000,
      }),
    ).toThrow(/512/);
    expect(await capacity()).toBe(48 * MiB);

    await virsh(['destroy', dom.name]);
    expect((await resize(56 * MiB)).through).toBe('qemu-img');
    await virsh(['start', dom.name]);
    expect(await capacity()).toBe(56 * MiB);
    await readsRight(56 * MiB);
  }, 180_000);
});
