// live-rotate and libvirt's view of the disk (plain file pool, running type='qemu' VM):
// - libvirt still reports the disk at the volume's path; the running QEMU, and after destroy +
//   start a fresh QEMU that opened the resulting chain by itself, read the same data as the
//   reference (a blockdev-backup of the whole disk through QEMU, compared byte for byte);
// - after destroy + start the chain is held by libvirt's own node names, and further live-rotate
//   snapshots still rotate it (the repoint finds the parent node libvirt opened);
// - a delta after a full snapshot taken by another strategy (offline, VM stopped), then started.
// After every snapshot QEMU holds exactly the disk's chain: no leaked layer or fdset.
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { checkExitCode, infoOf } from '../../helpers/images.js';
import {
  createQcow2,
  guestFlush,
  guestWrite,
  startTestDomain,
  type TestDomain,
  virsh,
} from '../../helpers/libvirt-fixtures.js';
import {
  differsFromReference,
  type PatternWrite,
  ReferenceDisk,
  roundWrites,
} from '../../helpers/reference-images.js';
import { blockCensus, qemuChain, readBackThroughQemu } from '../../helpers/vm-watch.js';
import { fileSnapshotCommand, runCreate } from './harness.js';
import { libvirtSuite } from './suite.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const { h, cleanup } = libvirtSuite('lrrestart');

/** One volume with its domain, its live reference and the snapshots taken so far. */
class Volume {
  readonly names: string[] = [];
  readonly refs: ReferenceDisk[] = [];
  private reads = 0;

  constructor(
    readonly file: string,
    readonly dom: TestDomain,
    readonly live: ReferenceDisk,
  ) {}

  get active(): string {
    return join(h.pool, this.file);
  }

  storePath(name: string): string {
    return join(h.storeRoot, this.file, name);
  }

  /** Guest writes through the running QEMU, or with qemu-io on the image while the VM is stopped. */
  async write(writes: PatternWrite[], running = true): Promise<void> {
    if (running) {
      for (const w of writes) await guestWrite(this.dom, w.pattern, w.offset, w.length);
    } else {
      const commands = writes.flatMap((w) => ['-c', `write -q -P ${w.pattern} ${w.offset} ${w.length}`]);
      await execa('qemu-io', ['-f', 'qcow2', ...commands, this.active], { timeout: 60_000 });
    }
    await this.live.apply(writes);
  }

  async snapshot(strategy: 'live-rotate' | 'offline') {
    const name = `snap-${this.names.length + 1}`;
    const cmd = fileSnapshotCommand(h, {
      file: this.file,
      vm: this.dom.name,
      parents: this.names,
      snapshot: name,
      options: { strategy },
    });
    const result = await runCreate(h, cmd);
    this.names.push(name);
    this.refs.push(await this.live.freeze(join(h.base, `${this.file}.ref-${this.names.length}.raw`)));
    expect(result.strategy.name).toBe(strategy);
    expect(result.snapshot.chainDepth).toBe(this.names.length);
    return result;
  }

  /** Every snapshot equals its reference, the store holds the chain, the active image the live data. */
  async expectChain(running = true): Promise<void> {
    for (const [i, name] of this.names.entries()) {
      expect(await checkExitCode(this.storePath(name))).toBe(0);
      expect(await differsFromReference(this.storePath(name), this.refs[i]!)).toBeNull();
      if (i > 0) expect((await infoOf(this.storePath(name)))['backing-filename']).toBe(this.names[i - 1]);
    }
    expect((await infoOf(this.active))['backing-filename']).toBe(this.storePath(this.names.at(-1)!));
    if (running) await guestFlush(this.dom);
    expect(await checkExitCode(this.active)).toBe(0);
    expect(await differsFromReference(this.active, this.live)).toBeNull();
  }

  /** libvirt names the volume's path; the QEMU that runs the domain reads the reference's data. */
  async expectQemuView(): Promise<void> {
    const blk = (await virsh(['domblklist', this.dom.name]))
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((cols) => cols[0] === 'vda');
    expect(blk).toEqual([['vda', this.active]]);
    const chain = await qemuChain(this.dom.name);
    expect(chain.map((n) => n.path)).toEqual([
      this.active,
      ...this.names.map((n) => this.storePath(n)).reverse(),
    ]);
    const census = await blockCensus(this.dom.name);
    expect(census.qcow2Nodes).toHaveLength(census.chainDepth);
    expect(census.fdsets).toEqual(census.fdsetsInUse);
    const out = join(h.base, `${this.file}.readback-${++this.reads}.raw`);
    await readBackThroughQemu(this.dom.name, out, SIZE);
    const compare = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, this.live.path], {
      reject: false,
      timeout: 60_000,
    });
    expect(compare.exitCode, String(compare.stdout)).toBe(0);
    await execa('rm', ['-f', out]);
  }

  async restart(): Promise<void> {
    await virsh(['destroy', this.dom.name]);
    await virsh(['start', this.dom.name]);
  }
}

async function newVolume(file: string): Promise<Volume> {
  const active = join(h.pool, file);
  await createQcow2(active, SIZE / MiB);
  const dom = await startTestDomain(cleanup, { label: 'lrrestart', disk: { type: 'file', path: active } });
  return new Volume(file, dom, await ReferenceDisk.create(join(h.base, `${file}.live.raw`), SIZE));
}

describe('live-rotate: the chain libvirt and a fresh QEMU see', () => {
  it('QEMU reads the reference before and after destroy + start, and a restarted chain rotates again', async () => {
    const v = await newVolume('restart.qcow2');
    for (let round = 1; round <= 2; round++) {
      await v.write(roundWrites(120 + round, SIZE));
      await v.snapshot('live-rotate');
      await v.expectChain();
      await v.expectQemuView();
    }

    // A fresh QEMU opens active → snap-2 → snap-1 by itself, with libvirt's node names.
    await v.restart();
    expect((await virsh(['domstate', v.dom.name])).trim()).toBe('running');
    await v.expectQemuView();
    const [top] = await qemuChain(v.dom.name);
    expect(top?.nodeName).toMatch(/^libvirt-/);

    // That chain rotates too: the repoint puts snap-3 on the node libvirt opened for snap-2.
    for (let round = 3; round <= 4; round++) {
      await v.write(roundWrites(120 + round, SIZE));
      const result = await v.snapshot('live-rotate');
      expect(result.snapshot.kind).toBe('delta');
      await v.expectChain();
      await v.expectQemuView();
    }
    await v.restart();
    await v.write(roundWrites(199, SIZE));
    await v.expectChain();
    await v.expectQemuView();
  });

  it('a live-rotate delta on top of an offline full snapshot taken while the VM was stopped', async () => {
    const v = await newVolume('afteroff.qcow2');
    await virsh(['destroy', v.dom.name]);
    await v.write(roundWrites(140, SIZE), false);
    const full = await v.snapshot('offline');
    expect(full.snapshot.kind).toBe('full');
    await v.expectChain(false);

    await virsh(['start', v.dom.name]);
    await v.expectQemuView();
    for (let round = 2; round <= 3; round++) {
      await v.write(roundWrites(140 + round, SIZE));
      const delta = await v.snapshot('live-rotate');
      expect(delta.snapshot.kind).toBe('delta');
      expect(delta.snapshot.parent).toBe(`snap-${round - 1}`);
      expect(delta.vmPauseMs).toBe(0);
      await v.expectChain();
      await v.expectQemuView();
    }
    expect((await virsh(['domstate', '--reason', v.dom.name])).trim()).toBe('running (booted)');
  });
});
