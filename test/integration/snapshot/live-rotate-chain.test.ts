// live-rotate strategy on a plain file pool (no reflink needed) and a running type='qemu' VM:
// a chain of snapshots with guest writes between them. After every snapshot each snapshot equals
// the raw reference of its moment and the live disk equals the current one; the VM never pauses;
// each delta holds only the round's writes; libvirt names the new active layer (the result's
// volumePath, alternating between two layer names) on the local base; the volume opens whole in
// a fresh QEMU after destroy + start.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { infoOf } from '../../support/images.js';
import { guestFlush, virsh } from '../../support/libvirt-fixtures.js';
import {
  expectChainIntact,
  guestWriteRound,
  libvirtSuite,
  type RunningChain,
  runningVolume,
  snapshotRound,
  VOLUME_BYTES,
} from '../../support/libvirt-suite.js';
import { differsFromReference } from '../../support/reference-images.js';
import { STEP_ORDER } from '../../support/step-order.js';

const { h, cleanup } = libvirtSuite('lrchain');

describe('live-rotate strategy, file pool, running VM', () => {
  it('builds a chain of a running VM with auto; data matches references; never paused', async () => {
    const { active, dom, live } = await runningVolume(h, cleanup, { label: 'lrchain', file: 'vol1.qcow2' });
    const chain: RunningChain = { dom, live, file: 'vol1.qcow2', dir: 'vol1', names: [], frozen: [] };
    let current = active;

    for (let round = 1; round <= 6; round++) {
      const _name = `snap-${round}`;
      const result = await snapshotRound(h, chain, round, {
        strategy: 'auto',
        verify: round === 4 ? 'full' : 'metadata',
        quiesce: round === 3,
      });

      expect(result.strategy.name).toBe('live-rotate');
      expect(result.strategy.reason).toMatch(
        /^auto: the VM is running and libvirt rotates the file-pool volume live/,
      );
      expect(result.snapshot.kind).toBe(round === 1 ? 'full' : 'delta');
      expect(result.vmPauseMs).toBe(0);
      if (round === 3) expect(result.quiesced).toBe('unavailable');
      expect(result.steps.map((s) => s.name)).toEqual(STEP_ORDER['live-rotate']);
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

      await expectChainIntact(h, chain);
      await guestFlush(dom);
      expect(await differsFromReference(current, live)).toBeNull();
      expect((await readdir(h.pool)).sort()).toEqual(['.vol1.qcow2.clvm-live.json', 'vol1.qcow2', layer]);
    }
    expect((await readdir(join(h.storeRoot, 'vol1'))).sort()).toEqual([...chain.names].sort());

    await virsh(['destroy', dom.name]);
    await virsh(['start', dom.name]);
    await guestWriteRound(dom, live, 99, VOLUME_BYTES);
    await guestFlush(dom);
    expect(await differsFromReference(current, live)).toBeNull();
  });
});
