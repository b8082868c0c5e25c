// live-rotate strategy on a plain file pool (no reflink needed) and a running type='qemu' VM:
// a chain of snapshots with guest writes between them. After every snapshot each snapshot equals
// the raw reference of its moment and the live disk equals the current one; the VM never pauses;
// each delta holds only the round's writes; libvirt names the new active layer (the result's
// volumePath, alternating between two layer names) on the local base; the volume opens whole in
// a fresh QEMU after destroy + start.
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
const { h, cleanup } = libvirtSuite('lrchain');

describe('live-rotate strategy, file pool, running VM', () => {
  it('builds a chain of a running VM with auto; data matches references; never paused', async () => {
    const { active, dom, live } = await runningVolume(h, cleanup, {
      label: 'lrchain',
      file: 'vol1.qcow2',
      sizeBytes: SIZE,
      reference: 'ref-live.raw',
    });
    const frozen: ReferenceDisk[] = [];
    const names: string[] = [];
    let current = active;

    for (let round = 1; round <= 6; round++) {
      await guestWriteRound(dom, live, round, SIZE);
      const name = `snap-${round}`;
      const cmd = fileSnapshotCommand(h, {
        file: 'vol1.qcow2',
        vm: dom.name,
        dir: 'vol1',
        parents: names,
        snapshot: name,
        options: { strategy: 'auto', verify: round === 4 ? 'full' : 'metadata', quiesce: round === 3 },
      });
      const result = await runCreate(h, cmd);
      names.push(name);
      frozen.push(await live.freeze(join(h.base, `ref-${round}.raw`)));

      expect(result.strategy.name).toBe('live-rotate');
      expect(result.strategy.reason).toMatch(
        /^auto: the VM is running and libvirt rotates the file-pool volume live/,
      );
      expect(result.snapshot.kind).toBe(round === 1 ? 'full' : 'delta');
      expect(result.vmPauseMs).toBe(0);
      if (round === 3) expect(result.quiesced).toBe('unavailable');
      expect(result.steps.map((s) => s.name)).toEqual([
        'create-overlay',
        'switch',
        'export',
        'publish',
        'verify',
        'record-layer',
        'commit-frozen',
        'remove-frozen',
      ]);
      // Alternating layer names on the base, which keeps the volume's first name.
      const layer = `vol1.qcow2.lr-${round % 2 === 1 ? 'a' : 'b'}`;
      expect(result.activePath).toBe(current);
      expect(result.volumePath).toBe(join(h.pool, layer));
      current = result.volumePath!;
      expect((await virsh(['domstate', '--reason', dom.name])).trim()).toBe('running (booted)');
      expect((await virsh(['domblklist', dom.name])).includes(current)).toBe(true);
      expect((await infoOf(current))['backing-filename']).toBe(active);
      expect((await infoOf(active))['backing-filename']).toBeUndefined();
      if (round > 1)
        expect((await infoOf(result.snapshot.path))['backing-filename']).toBe(`snap-${round - 1}`);

      for (const [i, ref] of frozen.entries()) {
        const path = join(h.storeRoot, 'vol1', `snap-${i + 1}`);
        expect(await differsFromReference(path, ref)).toBeNull();
        expect(await checkExitCode(path)).toBe(0);
      }
      await guestFlush(dom);
      expect(await differsFromReference(current, live)).toBeNull();
      expect((await readdir(h.pool)).sort()).toEqual(['.vol1.qcow2.clvm-live.json', 'vol1.qcow2', layer]);
    }
    expect((await readdir(join(h.storeRoot, 'vol1'))).sort()).toEqual([...names].sort());

    await virsh(['destroy', dom.name]);
    await virsh(['start', dom.name]);
    await guestWriteRound(dom, live, 99, SIZE);
    await guestFlush(dom);
    expect(await differsFromReference(current, live)).toBeNull();
  });
});
