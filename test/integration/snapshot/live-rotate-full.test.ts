// live-rotate making a full snapshot after a chain of deltas (maxChainLength reached): the new
// snapshot stands alone; the running VM never reads from the store at all (its chain is its active
// layer on the local base, whatever the store holds: no store file open in QEMU, no leaked layer
// or fdset). The next delta builds on the new full, and a fresh QEMU (destroy + start) reads the
// same data.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { checkExitCode, infoOf } from '../../support/images.js';
import { guestFlush, virsh } from '../../support/libvirt-fixtures.js';
import { guestWriteRound, libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import { differsFromReference, type ReferenceDisk } from '../../support/reference-images.js';
import { fileSnapshotCommand, runCreate } from '../../support/snapshot-harness.js';
import { blockCensus, qemuChain, qemuOpenFilesUnder, readBackThroughQemu } from '../../support/vm-watch.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const { h, cleanup } = libvirtSuite('lrfull');

describe('live-rotate: a full snapshot on top of a delta chain', () => {
  it('stands alone; the VM reads only its local layers; the next delta builds on it', async () => {
    const { active, dom, live } = await runningVolume(h, cleanup, { label: 'lrfull' });
    const store = join(h.storeRoot, 'vol');
    const names: string[] = [];
    const refs = new Map<string, ReferenceDisk>();

    const snapshot = async (round: number, parents: string[]) => {
      await guestWriteRound(dom, live, 500 + round, SIZE);
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

    let current = active;
    for (let round = 1; round <= 3; round++) {
      current = (await snapshot(round, names)).volumePath!;
      names.push(`snap-${round}`);
    }
    expect((await qemuChain(dom.name)).map((n) => n.path)).toEqual([current, active]);

    // Depth 3 reached: the fourth is full, although its parents are given.
    const full = await snapshot(4, names);
    expect(full.snapshot.kind).toBe('full');
    expect(full.snapshot.fullReason).toMatch(/maxChainLength 3/);
    expect((await infoOf(full.snapshot.path))['backing-filename']).toBeUndefined();
    current = full.volumePath!;
    expect((await infoOf(current))['backing-filename']).toBe(active);
    expect((await infoOf(active))['backing-filename']).toBeUndefined();
    expect((await qemuChain(dom.name)).map((n) => n.path)).toEqual([current, active]);
    const census = await blockCensus(dom.name);
    expect(census.qcow2Nodes).toHaveLength(2);
    expect(census.fdsets).toEqual(census.fdsetsInUse);
    expect(await qemuOpenFilesUnder(dom.name, store)).toEqual([]);
    expect((await readdir(h.pool)).filter((f) => !f.startsWith('.')).sort()).toEqual(
      ['vol.qcow2', current.slice(h.pool.length + 1)].sort(),
    );

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
    expect(await qemuOpenFilesUnder(dom.name, store)).toEqual([]);
    current = delta.volumePath!;

    // The running QEMU, then a fresh one, read the live reference.
    await guestFlush(dom);
    expect(await differsFromReference(current, live)).toBeNull();
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
