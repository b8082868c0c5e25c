// live-rotate making a full snapshot of a VM whose disk already reads through a chain of deltas
// (maxChainLength reached): the new snapshot stands alone, the live overlay is re-pointed at it,
// and every node of the old chain is closed: QEMU holds exactly active + the new full (no leaked
// layer, fdset or open file of the old store files). The next delta builds on the new full, and a
// fresh QEMU (destroy + start) reads the same data.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { checkExitCode, infoOf } from '../../helpers/images.js';
import {
  createQcow2,
  guestFlush,
  guestWrite,
  startTestDomain,
  virsh,
} from '../../helpers/libvirt-fixtures.js';
import { differsFromReference, ReferenceDisk, roundWrites } from '../../helpers/reference-images.js';
import { blockCensus, qemuChain, qemuOpenFilesUnder, readBackThroughQemu } from '../../helpers/vm-watch.js';
import { fileSnapshotCommand, runCreate } from './harness.js';
import { libvirtSuite } from './suite.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const { h, cleanup } = libvirtSuite('lrfull');

describe('live-rotate: a full snapshot on top of a delta chain', () => {
  it('re-points at the new full and closes every node of the old chain', async () => {
    const active = join(h.pool, 'vol.qcow2');
    await createQcow2(active, SIZE / MiB);
    const dom = await startTestDomain(cleanup, { label: 'lrfull', disk: { type: 'file', path: active } });
    const live = await ReferenceDisk.create(join(h.base, 'live.raw'), SIZE);
    const store = join(h.storeRoot, 'vol');
    const names: string[] = [];
    const refs = new Map<string, ReferenceDisk>();

    const snapshot = async (round: number, parents: string[]) => {
      const writes = roundWrites(500 + round, SIZE);
      for (const w of writes) await guestWrite(dom, w.pattern, w.offset, w.length);
      await live.apply(writes);
      const cmd = fileSnapshotCommand(h, {
        file: 'vol.qcow2',
        vm: dom.name,
        dir: 'vol',
        parents,
        snapshot: `snap-${round}`,
        options: { strategy: 'live-rotate', maxChainLength: 3 },
      });
      const result = await runCreate(h, cmd);
      refs.set(`snap-${round}`, await live.freeze(join(h.base, `ref-${round}.raw`)));
      expect(result.strategy.name).toBe('live-rotate');
      return result;
    };

    for (let round = 1; round <= 3; round++) {
      await snapshot(round, names);
      names.push(`snap-${round}`);
    }
    expect((await qemuChain(dom.name)).length).toBe(4);

    // Depth 3 reached: the fourth is full, although its parents are given.
    const full = await snapshot(4, names);
    expect(full.snapshot.kind).toBe('full');
    expect(full.snapshot.fullReason).toMatch(/maxChainLength 3/);
    expect((await infoOf(full.snapshot.path))['backing-filename']).toBeUndefined();
    expect((await infoOf(active))['backing-filename']).toBe(join(store, 'snap-4'));
    expect((await qemuChain(dom.name)).map((n) => n.path)).toEqual([active, join(store, 'snap-4')]);
    const census = await blockCensus(dom.name);
    expect(census.qcow2Nodes).toHaveLength(2);
    expect(census.fdsets).toEqual(census.fdsetsInUse);
    expect(await qemuOpenFilesUnder(dom.name, store)).toEqual([join(store, 'snap-4')]);
    expect(await readdir(h.pool)).toEqual(['vol.qcow2']);

    // The old chain is still whole on its own (nothing removed it), and the new one equals it.
    for (const name of [...names, 'snap-4']) {
      expect(await checkExitCode(join(store, name))).toBe(0);
      expect(await differsFromReference(join(store, name), refs.get(name)!)).toBeNull();
    }

    // The next delta builds on the new full.
    const delta = await snapshot(5, ['snap-4']);
    expect(delta.snapshot.kind).toBe('delta');
    expect(delta.snapshot.chainDepth).toBe(2);
    expect(await differsFromReference(delta.snapshot.path, refs.get('snap-5')!)).toBeNull();
    expect(await qemuOpenFilesUnder(dom.name, store)).toEqual([join(store, 'snap-4'), join(store, 'snap-5')]);

    // The running QEMU, then a fresh one, read the live reference.
    await guestFlush(dom);
    expect(await differsFromReference(active, live)).toBeNull();
    for (const phase of ['running', 'restarted']) {
      if (phase === 'restarted') {
        await virsh(['destroy', dom.name]);
        await virsh(['start', dom.name]);
      }
      const out = join(h.base, `readback-${phase}.raw`);
      await readBackThroughQemu(dom.name, out, SIZE);
      const compare = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, live.path], {
        reject: false,
      });
      expect(compare.exitCode, `${phase}: ${String(compare.stdout)}`).toBe(0);
    }
  });
});
