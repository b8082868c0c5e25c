// Issue 15: after live rotations libvirt tells the truth. One running type='qemu' domain on a plain
// file pool, five live-rotate snapshots, then in sequence the operations that follow in real life,
// each followed by a check that libvirt's description is the chain QEMU really reads, a read-back
// of the whole disk through the (new) QEMU compared with an independent raw reference, and the next
// snapshot (a delta holding exactly the disk of its moment):
//   domblkinfo + dumpxml → blockresize (grow while running) → managedsave + start (what
//   libvirt-guests does at host shutdown) → save + restore → destroy + start → live migration to a
//   second libvirtd and back.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { deleteSnapshot, revertSnapshot } from '../../../src/snapshot/index.js';
import { infoOf } from '../../support/images.js';
import { guestWrite, virsh } from '../../support/libvirt-fixtures.js';
import { libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import { SecondLibvirtd } from '../../support/libvirt2.js';
import { RotationChecks } from '../../support/live-rotate-truth.js';
import { differsFromReference, type ReferenceDisk } from '../../support/reference-images.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const { h, cleanup } = libvirtSuite('lrtruth');
let second: SecondLibvirtd | null = null;
afterAll(async () => {
  await second?.stop();
}, 120_000);

describe('live-rotate leaves libvirt telling the truth (file pool)', () => {
  it('after 5 rotations: domblkinfo, dumpxml, blockresize, managedsave, save/restore, restart, migration and back; each next snapshot right', async () => {
    const {
      active: base,
      dom,
      live,
    } = await runningVolume(h, cleanup, {
      label: 'lrtruth',
      file: 'vol.qcow2',
      sizeBytes: 32 * MiB,
      reference: 'live.raw',
      referenceBytes: 64 * MiB,
    });
    const pool = {
      sourceAttribute: 'file' as const,
      baseName: 'vol.qcow2',
      pathOf: (name: string) => join(h.pool, name),
      volumeRef: (name: string) => ({ kind: 'file' as const, pool: h.pool, file: name }),
      layers: async () => (await readdir(h.pool)).filter((f) => !f.startsWith('.')),
    };
    const r = new RotationChecks(h, h.deps, dom, live, pool, 32 * MiB);

    for (let i = 0; i < 5; i++) {
      await r.write();
      await r.snapshot(`rotation ${i + 1}`);
    }
    await r.libvirtIsTruthful();
    await r.readBack();

    // Grow the volume while the VM runs, through libvirt: the top layer grows; the next commit
    // grows the base; the snapshot has the new size; the guest writes past the old end.
    await virsh(['blockresize', dom.name, 'vda', '48M']);
    r.size = 48 * MiB;
    await guestWrite(dom, 0x7e, 40 * MiB, MiB);
    await live.apply([{ pattern: 0x7e, offset: 40 * MiB, length: MiB }]);
    await r.afterOperation('blockresize');
    expect((await infoOf(base))['virtual-size']).toBe(r.size);

    await r.throughLibvirtOperations(async () => {
      second = await SecondLibvirtd.start();
      return second;
    });

    await r.snapshotsStillRight();

    // A retention policy deletes the oldest snapshot of the running VM: a store-only merge (the VM
    // reads none of the store), by the volume's first name.
    const run = (type: 'snapshot.delete' | 'snapshot.revert', params: unknown) => {
      const cmd = command(type, params);
      const ctx = jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`)));
      return type === 'snapshot.delete'
        ? deleteSnapshot(ctx as never, h.deps)
        : revertSnapshot(ctx as never, h.deps);
    };
    const volume = { kind: 'file', pool: h.pool, file: 'vol.qcow2' };
    const store = { root: h.storeRoot, dir: 'vol' };
    await run('snapshot.delete', { volume, vm: dom.name, store, chain: r.names, snapshot: 'snap-1' });
    expect(
      await differsFromReference(join(h.storeRoot, 'vol', 'snap-2'), { path: r.refs[1]! } as ReferenceDisk),
    ).toBeNull();
    await r.libvirtIsTruthful();
    await r.readBack();

    // Stopped, the defined domain's description pins the layer's chain: a revert (a new image
    // under the layer's name) is refused before anything changes, naming the way out.
    await virsh(['destroy', dom.name]);
    await expect(
      run('snapshot.revert', { volume, vm: dom.name, store, chain: r.names.slice(1), snapshot: 'snap-2' }),
    ).rejects.toMatchObject({
      code: 'VOLUME_STATE_UNEXPECTED',
      message: expect.stringMatching(/virsh edit/),
    });
    await virsh(['start', dom.name]);
    await r.readBack();
  }, 300_000); // one domain through every operation in sequence (~70-100 s on this shared machine)
});
