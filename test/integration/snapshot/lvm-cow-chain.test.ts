// lvm-cow strategy on a file pool with reflink (loop-mounted XFS) and a running type='qemu' VM:
// a chain of 10 snapshots with guest writes (qemu-io inside QEMU through QMP) between them. After
// every snapshot each snapshot equals the raw reference of its moment and the live disk equals the
// current one; the VM keeps running; QEMU wrote the new backing (change-backing-file), never qemu-img.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkExitCode, infoOf } from '../../support/images.js';
import { guestFlush, virsh } from '../../support/libvirt-fixtures.js';
import { guestWriteRound, libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import { differsFromReference, type ReferenceDisk } from '../../support/reference-images.js';
import { fileSnapshotCommand, runCreate } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const { h, cleanup } = libvirtSuite('cowchain', { reflink: true });

describe('lvm-cow strategy, reflink file pool, running VM', () => {
  it('builds a 10-snapshot chain of a running VM; data matches references; the VM keeps running', async () => {
    const { active, dom, live } = await runningVolume(h, cleanup, {
      label: 'cowchain',
      file: 'vol1.qcow2',
      sizeBytes: SIZE,
      reference: 'ref-live.raw',
    });
    const frozen: ReferenceDisk[] = [];
    const names: string[] = [];

    for (let round = 1; round <= 10; round++) {
      await guestWriteRound(dom, live, round, SIZE);
      const name = `snap-${round}`;
      const cmd = fileSnapshotCommand(h, {
        file: 'vol1.qcow2',
        vm: dom.name,
        dir: 'vol1',
        parents: names,
        snapshot: name,
        options: { strategy: 'lvm-cow', verify: round === 5 ? 'full' : 'metadata', quiesce: round === 3 },
      });
      const result = await runCreate(h, cmd);
      names.push(name);
      frozen.push(await live.freeze(join(h.base, `ref-${round}.raw`)));

      expect(result.strategy.name).toBe('lvm-cow');
      expect(result.strategy.reason).toMatch(/requested \(reflink/);
      expect(result.snapshot.kind).toBe(round === 1 ? 'full' : 'delta');
      expect(result.snapshot.chainDepth).toBe(round);
      expect(result.vmPauseMs).toBeGreaterThan(0);
      expect(result.vmPauseMs).toBeLessThan(5000);
      if (round === 3) expect(result.quiesced).toBe('unavailable'); // no guest agent in a VM without an OS
      expect(result.steps.map((s) => s.name)).toEqual([
        'clone',
        'export',
        'publish',
        'verify',
        'remove-clone',
        'repoint',
      ]);
      expect((await virsh(['domstate', dom.name])).trim()).toBe('running');
      expect((await infoOf(active))['backing-filename']).toBe(join(h.storeRoot, 'vol1', name));
      if (round > 1)
        expect((await infoOf(result.snapshot.path))['backing-filename']).toBe(`snap-${round - 1}`);

      for (const [i, ref] of frozen.entries()) {
        const path = join(h.storeRoot, 'vol1', `snap-${i + 1}`);
        expect(await differsFromReference(path, ref)).toBeNull();
        expect(await checkExitCode(path)).toBe(0);
      }
      await guestFlush(dom);
      expect(await differsFromReference(active, live)).toBeNull();
    }
    expect(await readdir(h.pool)).toEqual(['vol1.qcow2']);
    expect((await readdir(join(h.storeRoot, 'vol1'))).sort()).toEqual([...names].sort());
  });
});
