// lvm-cow strategy on a file pool with reflink (loop-mounted XFS) and a running type='qemu' VM:
// a chain of 10 snapshots with guest writes (qemu-io inside QEMU through QMP) between them. After
// every snapshot each snapshot equals the raw reference of its moment and the live disk equals the
// current one; the VM keeps running; QEMU wrote the new backing (change-backing-file), never qemu-img.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { infoOf } from '../../support/images.js';
import { guestFlush, virsh } from '../../support/libvirt-fixtures.js';
import {
  expectChainIntact,
  libvirtSuite,
  type RunningChain,
  runningVolume,
  snapshotRound,
} from '../../support/libvirt-suite.js';
import { differsFromReference } from '../../support/reference-images.js';

const { h, cleanup } = libvirtSuite('cowchain', { reflink: true });

describe('lvm-cow strategy, reflink file pool, running VM', () => {
  it('builds a 10-snapshot chain of a running VM; data matches references; the VM keeps running', async () => {
    const { active, dom, live } = await runningVolume(h, cleanup, { label: 'cowchain', file: 'vol1.qcow2' });
    const chain: RunningChain = { dom, live, file: 'vol1.qcow2', dir: 'vol1', names: [], frozen: [] };

    for (let round = 1; round <= 10; round++) {
      const name = `snap-${round}`;
      const result = await snapshotRound(h, chain, round, {
        strategy: 'lvm-cow',
        verify: round === 5 ? 'full' : 'metadata',
        quiesce: round === 3,
      });

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

      await expectChainIntact(h, chain);
      await guestFlush(dom);
      expect(await differsFromReference(active, live)).toBeNull();
    }
    expect(await readdir(h.pool)).toEqual(['vol1.qcow2']);
    expect((await readdir(join(h.storeRoot, 'vol1'))).sort()).toEqual([...chain.names].sort());
  });
});
